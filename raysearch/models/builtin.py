"""Registers the built-in families. Builders import their module lazily so that validating a
spec (e.g. in a Ray driver or benchd-side tool) does not import torch."""

from __future__ import annotations

from raysearch.models.registry import ModelFamily, families, register_family


def _fastscnn(spec):
    from raysearch.models.fastscnn import FastSCNN

    return FastSCNN(spec)


def _bisenetv2(spec):
    from raysearch.models.bisenetv2 import BiSeNetV2

    return BiSeNetV2(spec)


def _deeplabv3(spec):
    from raysearch.models.deeplabv3 import DeepLabV3

    return DeepLabV3(spec)


def _check_width(base: int):
    def check(spec) -> None:
        if int(base * spec.a) < 1:
            raise ValueError(
                f"a={spec.a:g} makes the narrowest layer of {spec.arch} int({base}*a)=0 channels; "
                f"use a >= {1 / base:g}"
            )

    return check


_BUILTIN = (
    ModelFamily(
        "fastscnn",
        _fastscnn,
        knobs=("a", "t", "r", "pp"),
        validate=_check_width(32),
        description="Fast-SCNN (Poudel et al. 2019) as the reference study parameterized it",
        # the study's knob values (stages 4-6), baseline first
        baseline=dict(a=1.0, t=6, r=3, pp=1),
        choices=dict(a=(1.0, 0.75, 0.5, 0.25, 0.125), t=(6, 4, 2), r=(3, 2, 1), pp=(1, 0)),
    ),
    ModelFamily(
        "bisenetv2",
        _bisenetv2,
        knobs=("a", "t", "r"),
        validate=_check_width(8),  # the stem block's 1x1 squeeze is int(8*a) wide
        description="BiSeNetV2 (Yu et al. 2021); t/r: expansion and repetitions of the GE blocks",
        baseline=dict(a=1.0, t=6, r=3),
        choices=dict(a=(1.0, 0.75, 0.5, 0.25, 0.125), t=(6, 4, 2), r=(3, 2, 1)),
    ),
    ModelFamily(
        "deeplabv3",
        _deeplabv3,
        knobs=("a",),
        validate=_check_width(16),
        description="DeepLabV3 with a MobileNetV3-Large backbone (output stride 16), ASPP head",
        baseline=dict(a=1.0),
        choices=dict(a=(1.0, 0.75, 0.5, 0.35, 0.25)),
    ),
)

for _family in _BUILTIN:
    if _family.name not in families():
        register_family(_family, builtin=True)
