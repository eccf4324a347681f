"""`ModelSpec`: the one frozen description of a model variant.

Every knob of a search is a field of this dataclass, with exactly the same name; the trial turns
its config into a spec first, and every later step (model, data pipeline, exporter, benchmark
request, MLflow params) reads the knob back from the spec instead of deciding it again.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

from raysearch.models.registry import get_family

#: The input stride every supported architecture needs (Fast-SCNN downsamples by 32).
INPUT_STRIDE = 32
#: fp32: the exported graph as is; int8: statically quantized (QDQ) with onnxruntime's tools.
PRECISIONS = ("fp32", "int8")


def parse_hw(value: Any) -> tuple[int, int]:
    """Read an input size given as ``512``, ``"512"``, ``"256x512"`` (HxW) or ``[256, 512]``."""
    if isinstance(value, bool):
        raise ValueError(f"input size {value!r} is not a size: expected N, 'HxW' or [H, W]")
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, str):
        parts = value.lower().replace(" ", "").split("x")
        try:
            nums = [int(p) for p in parts]
        except ValueError:
            raise ValueError(f"input size {value!r} is not N or HxW (e.g. 512 or 256x512)") from None
        if len(nums) == 1:
            return (nums[0], nums[0])
        if len(nums) == 2:
            return (nums[0], nums[1])
        raise ValueError(f"input size {value!r} is not N or HxW (e.g. 512 or 256x512)")
    if isinstance(value, (list, tuple)) and len(value) == 2:
        try:
            return (int(value[0]), int(value[1]))
        except (TypeError, ValueError):
            pass
    raise ValueError(f"input size {value!r} is not N, 'HxW' or [H, W]")


@dataclass(frozen=True)
class ModelSpec:
    """A model variant. Field names are the search-space knob names; each field's ``help``
    (its metadata) says what it means, and the command line's model flags are made from the
    fields, their defaults and that help."""

    arch: str = field(default="fastscnn", metadata=dict(
        help="model family: fastscnn, bisenetv2, deeplabv3, or one you registered"))
    a: float = field(default=1.0, metadata=dict(help="width multiplier; channels are int(c*a)"))
    t: int = field(default=6, metadata=dict(
        help="expansion rate of the inverted-bottleneck / gather-and-expansion blocks"))
    r: int = field(default=3, metadata=dict(help="repetitions of those blocks per stage"))
    pp: int = field(default=1, metadata=dict(help="pyramid pooling off (0) / on (1) (Fast-SCNN)", choices=(0, 1)))
    input_hw: tuple[int, int] = field(default=(512, 512), metadata=dict(
        help="input size, N or HxW, multiples of 32", flag="res"))
    in_channels: int = field(default=3, metadata=dict(
        help="3 = RGB (ImageNet-normalized), 1 = the Y channel of YCrCb (0..255)", choices=(1, 3)))
    num_classes: int = field(default=1, metadata=dict(
        help="output channels; 1 = binary segmentation with one logit per pixel"))
    precision: str = field(default="fp32", metadata=dict(
        help="numbers of the deployed ONNX model: fp32, or int8 (static quantization of the exported fp32 "
             "graph, calibrated on validation images); training is always fp32", choices=PRECISIONS))
    extra: tuple[tuple[str, Any], ...] = field(default=(), compare=True)

    def __post_init__(self) -> None:
        # Normalize first (frozen: go through object.__setattr__), then validate.
        set_ = object.__setattr__
        set_(self, "arch", str(self.arch).lower())
        set_(self, "precision", str(self.precision).lower())
        set_(self, "input_hw", parse_hw(self.input_hw))
        for name in ("t", "r", "pp", "in_channels", "num_classes"):
            set_(self, name, _as_int(name, getattr(self, name)))
        a = self.a
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(float(a)):
            raise ValueError(f"a={a!r} is not a number: expected a width multiplier > 0, e.g. 0.5")
        set_(self, "a", float(a))
        set_(self, "extra", tuple(sorted(dict(self.extra).items())))
        self._validate()

    def _validate(self) -> None:
        family = get_family(self.arch)  # raises naming the unknown arch and the known ones
        if self.a <= 0:
            raise ValueError(f"a={self.a} must be > 0 (a width multiplier such as 1, 0.5, 0.125)")
        if self.t < 1:
            raise ValueError(f"t={self.t} must be >= 1 (expansion rate)")
        if self.r < 1:
            raise ValueError(f"r={self.r} must be >= 1 (block repetitions)")
        if self.pp not in (0, 1):
            raise ValueError(f"pp={self.pp} must be 0 or 1 (pyramid pooling off/on)")
        h, w = self.input_hw
        if h < INPUT_STRIDE or w < INPUT_STRIDE or h % INPUT_STRIDE or w % INPUT_STRIDE:
            raise ValueError(
                f"input_hw={h}x{w} must be a multiple of {INPUT_STRIDE} in both dimensions "
                f"(e.g. 512, 256, 96)"
            )
        if self.in_channels not in (1, 3):
            raise ValueError(f"in_channels={self.in_channels} must be 3 (RGB) or 1 (Y channel)")
        if self.num_classes < 1:
            raise ValueError(f"num_classes={self.num_classes} must be >= 1")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r} must be one of {PRECISIONS}")
        family.validate(self)

    # ---- conversions -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, config: Mapping[str, Any], *, strict: bool = False) -> "ModelSpec":
        """Build a spec from a (search) config; keys that are not spec fields are ignored
        unless ``strict``. ``res`` is accepted as a short name for ``input_hw``."""
        names = {f.name for f in fields(cls)}
        cfg = dict(config)
        if "res" in cfg and "input_hw" not in cfg:
            cfg["input_hw"] = cfg.pop("res")
        unknown = sorted(k for k in cfg if k not in names)
        if strict and unknown:
            raise ValueError(f"unknown ModelSpec field(s) {unknown}; known: {sorted(names)}")
        kwargs = {k: v for k, v in cfg.items() if k in names}
        if isinstance(kwargs.get("extra"), Mapping):
            kwargs["extra"] = tuple(kwargs["extra"].items())
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str) -> "ModelSpec":
        return cls.from_dict(json.loads(text), strict=True)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_hw"] = list(self.input_hw)
        d["extra"] = dict(self.extra)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def to_params(self) -> dict[str, str]:
        """Flat MLflow params, every one a plain number or word so that MLflow's compare view,
        scatter and parallel-coordinates plots can use it as an axis: the input size as
        ``input_h`` / ``input_w`` (and ``input_size`` when square), extras as ``extra.KEY``."""
        d = self.to_dict()
        del d["input_hw"], d["extra"]
        d.update(input_h=self.height, input_w=self.width)
        if self.height == self.width:
            d["input_size"] = self.height
        d.update({f"extra.{k}": v for k, v in self.extra})
        return {k: str(v) for k, v in d.items()}

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> "ModelSpec":
        """The spec back from `to_params` (params of other names are ignored)."""
        names = {f.name for f in fields(cls)} - {"input_hw", "extra"}
        kw: dict[str, Any] = {k: v for k, v in params.items() if k in names}
        try:
            if "input_h" not in params and "input_hw" in params:  # a run logged before input_h/input_w
                kw["input_hw"] = parse_hw(json.loads(params["input_hw"]))
            else:
                kw["input_hw"] = (int(params["input_h"]), int(params["input_w"]))
            kw["a"] = float(kw["a"])
        except (KeyError, ValueError, TypeError) as e:
            raise ValueError(f"MLflow params {dict(params)} are not a ModelSpec's (input_h, input_w, a): {e}") from None
        kw["extra"] = tuple((k.removeprefix("extra."), parse_scalar(v)) for k, v in params.items()
                            if k.startswith("extra."))
        return cls(**kw)

    def replace(self, **changes: Any) -> "ModelSpec":
        d = self.to_dict()
        d.update(changes)
        return ModelSpec.from_dict(d, strict=True)

    # ---- derived values ----------------------------------------------------------------------
    @property
    def height(self) -> int:
        return self.input_hw[0]

    @property
    def width(self) -> int:
        return self.input_hw[1]

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """NCHW shape of one input image (batch 1)."""
        return (1, self.in_channels, self.height, self.width)

    @property
    def name(self) -> str:
        """Short human-readable id, e.g. ``fastscnn-a0.125-t2-r1-pp0-128x128-c3``."""
        a = f"{self.a:g}"
        s = f"{self.arch}-a{a}-t{self.t}-r{self.r}-pp{self.pp}-{self.height}x{self.width}-c{self.in_channels}"
        if self.num_classes != 1:
            s += f"-k{self.num_classes}"
        if self.precision != "fp32":
            s += f"-{self.precision}"
        for k, v in self.extra:
            s += f"-{k}{v}"
        return s

    def extra_value(self, key: str, default: Any = None) -> Any:
        return dict(self.extra).get(key, default)


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    raise ValueError(f"{name}={value!r} is not an integer")


def parse_scalar(text: str) -> Any:
    """A knob's value from text (an MLflow param, a command-line list): a number when it reads as one."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text
