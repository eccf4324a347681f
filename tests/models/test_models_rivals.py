"""The two rival families of the search: BiSeNetV2 and DeepLabV3 (MobileNetV3-Large).

Shapes, parameter counts, knob mapping, validation, and an ONNX round trip through
`raysearch.training.export.export_onnx` (static H/W, dynamic batch, compared with onnxruntime) at two
input sizes each with the default exporter, and at one with torch's dynamo exporter.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from raysearch.models import ModelSpec, build_model
from raysearch.models.bisenetv2 import BiSeNetV2, GELayer, stage_repeats
from raysearch.models.deeplabv3 import DeepLabV3, make_divisible

# Measured with this code: a=1, t=6, r=3, 3 input channels, 1 class.
BISENETV2_PARAMS = 3_340_177  # the reference study quotes 3.34 M
DEEPLABV3_PARAMS_A1 = 11_020_337
DEEPLABV3_PARAMS_A05 = 2_798_793
# torchvision's deeplabv3_mobilenet_v3_large (21 classes) has 11,029,328 parameters including
# its auxiliary FCN head on the 40-channel features (3,851): ours has no aux head.
DEEPLABV3_PARAMS_21_CLASSES = 11_029_328 - 3_851


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def calibrate_bn(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Give BN layers the exact statistics of one batch, so that the eval-mode network has
    unit-scale activations like a trained one (at init, running stats 0/1 make DeepLabV3's
    output ~1e-7, which would make an ONNX comparison vacuous)."""
    for bn in model.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average: one batch -> exactly its statistics
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


SHAPE_CASES = [
    # arch, a, t, r, input_hw, in_channels, num_classes
    ("bisenetv2", 1.0, 6, 3, (64, 64), 3, 1),
    ("bisenetv2", 0.25, 4, 2, (64, 96), 1, 1),
    ("bisenetv2", 0.125, 2, 1, (32, 32), 3, 2),
    ("deeplabv3", 1.0, 6, 3, (64, 64), 3, 1),
    ("deeplabv3", 0.5, 6, 3, (64, 128), 1, 3),
    ("deeplabv3", 0.0625, 6, 3, (32, 32), 3, 1),
]


@pytest.mark.parametrize("arch,a,t,r,hw,cin,k", SHAPE_CASES)
def test_output_shape_and_spec(arch: str, a: float, t: int, r: int, hw: tuple[int, int],
                               cin: int, k: int) -> None:
    spec = ModelSpec(arch=arch, a=a, t=t, r=r, input_hw=hw, in_channels=cin, num_classes=k)
    model = build_model(spec).eval()
    assert model.spec is spec
    x = torch.randn(2, *spec.input_shape[1:])
    with torch.no_grad():
        y = model(x)
    assert tuple(y.shape) == (2, spec.num_classes, spec.height, spec.width)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("cls,arch", [(BiSeNetV2, "bisenetv2"), (DeepLabV3, "deeplabv3")])
def test_direct_construction_is_the_registry_model(cls: type[nn.Module], arch: str) -> None:
    spec = ModelSpec(arch=arch, a=0.25, input_hw=64)
    torch.manual_seed(0)
    direct = cls(spec).eval()
    torch.manual_seed(0)
    built = build_model(spec).eval()
    assert type(built) is cls and direct.spec is spec and built.spec == spec
    assert {k: v.shape for k, v in direct.state_dict().items()} == {k: v.shape for k, v in built.state_dict().items()}
    x = torch.randn(1, *spec.input_shape[1:])
    with torch.no_grad():
        assert torch.equal(direct(x), built(x))  # the same network, initialized the same way


@pytest.mark.parametrize("arch", ["bisenetv2", "deeplabv3"])
def test_trains(arch: str) -> None:
    spec = ModelSpec(arch=arch, a=0.25, t=2, r=1, input_hw=32)
    model = build_model(spec).train()
    x = torch.randn(2, 3, 32, 32)
    loss = nn.functional.binary_cross_entropy_with_logits(model(x), torch.rand(2, 1, 32, 32))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_bisenetv2_default_param_count() -> None:
    n = n_params(build_model(ModelSpec(arch="bisenetv2", a=1, t=6, r=3)))
    assert n == BISENETV2_PARAMS
    assert abs(n - 3.34e6) / 3.34e6 < 0.01


def test_deeplabv3_param_counts() -> None:
    assert n_params(build_model(ModelSpec(arch="deeplabv3", a=1))) == DEEPLABV3_PARAMS_A1
    assert n_params(build_model(ModelSpec(arch="deeplabv3", a=0.5))) == DEEPLABV3_PARAMS_A05
    n21 = n_params(build_model(ModelSpec(arch="deeplabv3", num_classes=21)))
    assert n21 == DEEPLABV3_PARAMS_21_CLASSES


def test_deeplabv3_ignores_t_and_r() -> None:
    base = n_params(build_model(ModelSpec(arch="deeplabv3", a=0.25, input_hw=64)))
    other = n_params(build_model(ModelSpec(arch="deeplabv3", a=0.25, t=2, r=1, input_hw=64)))
    assert base == other


def test_make_divisible() -> None:
    assert [make_divisible(v) for v in (16, 8, 4, 12, 36, 80, 960 * 0.75)] == [16, 8, 8, 16, 40, 80, 720]


def test_bisenetv2_repetition_mapping() -> None:
    # Paper's Table 1 at r=3: one stride-1 GE in stages 3 and 4, three in stage 5.
    assert stage_repeats(3) == (1, 3)
    assert stage_repeats(1) == (1, 1)
    assert stage_repeats(6) == (2, 6)
    pairs = [stage_repeats(r) for r in range(1, 10)]
    assert all(p <= q for p, q in zip(pairs, pairs[1:]))  # monotonic in both counts

    model = BiSeNetV2(ModelSpec(arch="bisenetv2", a=0.25, r=3, input_hw=64))
    stages = (model.semantic.s3, model.semantic.s4, model.semantic.s5)
    assert [len(s) for s in stages] == [2, 2, 4]  # one stride-2 GE + stride-1 GEs each
    assert all(isinstance(g, GELayer) for s in stages for g in s)


def test_bisenetv2_t_is_ge_expansion() -> None:
    def ge_mid(t: int) -> int:
        model = BiSeNetV2(ModelSpec(arch="bisenetv2", a=1, t=t, input_hw=64))
        return model.semantic.s5[1].project[0].in_channels

    assert ge_mid(6) == 128 * 6
    assert ge_mid(2) == 128 * 2


@pytest.mark.parametrize("arch,a", [("bisenetv2", 0.1), ("bisenetv2", 0.0), ("deeplabv3", 0.05)])
def test_too_narrow_rejected(arch: str, a: float) -> None:
    with pytest.raises(ValueError, match="a="):
        ModelSpec(arch=arch, a=a)


@pytest.mark.parametrize("arch", ["bisenetv2", "deeplabv3"])
def test_smallest_allowed_width_builds(arch: str) -> None:
    a = {"bisenetv2": 0.125, "deeplabv3": 0.0625}[arch]
    model = build_model(ModelSpec(arch=arch, a=a, input_hw=32)).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 1, 32, 32)


ONNX_CASES = [
    # arch, input_hw, exporter: the default exporter at two sizes, torch's dynamo exporter at one
    ("bisenetv2", (64, 64), "torchscript"),
    ("bisenetv2", (64, 128), "torchscript"),
    pytest.param("bisenetv2", (96, 64), "dynamo", marks=pytest.mark.slow),  # ~5-10 s each
    ("deeplabv3", (64, 64), "torchscript"),
    ("deeplabv3", (64, 128), "torchscript"),
    pytest.param("deeplabv3", (96, 64), "dynamo", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("arch,hw,exporter", ONNX_CASES)
def test_onnx_round_trip(arch: str, hw: tuple[int, int], exporter: str, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from raysearch.training.export import MAX_ABS_DIFF, export_onnx

    spec = ModelSpec(arch=arch, a=0.5, t=6, r=3, input_hw=hw)
    torch.manual_seed(0)
    model = calibrate_bn(build_model(spec), torch.randn(4, *spec.input_shape[1:]))
    # export_onnx checks onnxruntime against torch itself (max |diff| <= 1e-4, raises otherwise).
    report = export_onnx(model, tmp_path / f"{spec.name}.onnx", exporter=exporter)
    assert report.max_abs_diff <= MAX_ABS_DIFF <= 1e-4
    assert tuple(report.input_shape[1:]) == spec.input_shape[1:]  # static C, H, W

    # An independent check at another batch size (the batch axis is dynamic), and that the
    # outputs compared are not near zero.
    session = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    x = torch.randn(3, *spec.input_shape[1:])
    (got,) = session.run(None, {report.input_name: x.numpy()})
    with torch.no_grad():
        ref = model(x).numpy()
    assert got.shape == ref.shape == (3, 1, *hw)
    assert np.abs(ref).max() > 0.1
    assert np.abs(got - ref).max() < 1e-4
