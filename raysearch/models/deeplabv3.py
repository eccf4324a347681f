"""DeepLabV3 with a MobileNetV3-Large backbone, laid out like torchvision's
``deeplabv3_mobilenet_v3_large`` without its auxiliary classifier (written here because
torchvision cannot be installed beside this torch).

- Backbone: MobileNetV3-Large features (Howard et al. 2019): conv3x3/2 ->16 + hardswish, the 15
  bottlenecks of the paper's Table 1 (1x1 expand, depthwise k x k, squeeze-excitation with a
  hardsigmoid gate where the table says so, 1x1 project; ReLU or hardswish), 1x1 conv to
  6x the last width + hardswish. Output stride 16: the last stage (the 160-channel blocks) is
  dilated (rate 2) instead of strided. Channels are ``make_divisible(c * a, 8)`` as in
  MobileNetV3 (not the study's plain truncation), SE widths ``make_divisible(expanded / 4, 8)``.
  BN uses MobileNetV3's eps=1e-3, momentum=0.01.
- Head: ASPP (1x1 branch, three 3x3 branches at rates 12, 24, 36, and an image-pooling branch:
  mean over H, W, 1x1 conv, broadcast back to the feature size), 1x1 projection + dropout 0.5,
  3x3 conv, 1x1 conv to num_classes, bilinear upsample to the input (align_corners=False).
  The ASPP width is ``make_divisible(256 * a, 8)``: 256 at a=1 (torchvision's head exactly),
  and it shrinks with ``a`` so that the width knob trades the whole network, not only the
  backbone (a fixed 256-wide head over a thin backbone would dominate latency on the Pi).

Knobs: only ``a`` (``t`` and ``r`` are ignored). Parameters with 3 input channels and 1 class:
11,020,337 at a=1 (torchvision's 11,029,328 minus its aux head and 20 of its 21 classes),
2,798,793 at a=0.5.

Input sizes: any H and W divisible by 16 (the spec asks for 32); 32x32 works (2x2 features).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from raysearch.models.layers import init_weights
from raysearch.models.spec import ModelSpec

_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01


def make_divisible(v: float, divisor: int = 8) -> int:
    """MobileNet channel rounding: nearest multiple of ``divisor`` (at least ``divisor``),
    never more than 10% below ``v``."""
    rounded = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * v:
        rounded += divisor
    return rounded


class Bneck(NamedTuple):
    """One row of MobileNetV3-Large's Table 1 (channels at width 1)."""

    kernel: int
    expanded: int
    out: int
    se: bool
    hswish: bool
    stride: int


# in_channels of each block is the previous block's out (16 after the stem).
_LARGE: tuple[Bneck, ...] = (
    Bneck(3, 16, 16, False, False, 1),
    Bneck(3, 64, 24, False, False, 2),
    Bneck(3, 72, 24, False, False, 1),
    Bneck(5, 72, 40, True, False, 2),
    Bneck(5, 120, 40, True, False, 1),
    Bneck(5, 120, 40, True, False, 1),
    Bneck(3, 240, 80, False, True, 2),
    Bneck(3, 200, 80, False, True, 1),
    Bneck(3, 184, 80, False, True, 1),
    Bneck(3, 184, 80, False, True, 1),
    Bneck(3, 480, 112, True, True, 1),
    Bneck(3, 672, 112, True, True, 1),
    Bneck(5, 672, 160, True, True, 2),  # last stage: dilated for output stride 16
    Bneck(5, 960, 160, True, True, 1),
    Bneck(5, 960, 160, True, True, 1),
)
_DILATED_FROM = 12  # index of the first block of the last stage


class ConvBNAct(nn.Sequential):
    """conv (no bias) + BN (MobileNetV3's eps/momentum) + optional activation."""

    def __init__(self, cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1,
                 dilation: int = 1, act: type[nn.Module] | None = nn.ReLU) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, k, stride, dilation * (k - 1) // 2, dilation=dilation,
                      groups=groups, bias=False),
            nn.BatchNorm2d(cout, eps=_BN_EPS, momentum=_BN_MOMENTUM),
        ]
        if act is not None:
            layers.append(act(inplace=True))
        super().__init__(*layers)


class SqueezeExcite(nn.Module):
    """Channel gate: mean over H, W -> 1x1 (bias) + ReLU -> 1x1 (bias) -> hardsigmoid."""

    def __init__(self, c: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(c, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.relu(self.fc1(x.mean(dim=(2, 3), keepdim=True)), inplace=True)
        return x * F.hardsigmoid(self.fc2(s), inplace=True)


class InvertedResidualV3(nn.Module):
    def __init__(self, cin: int, cfg: Bneck, a: float, dilation: int) -> None:
        super().__init__()
        expanded, cout = make_divisible(cfg.expanded * a), make_divisible(cfg.out * a)
        act: type[nn.Module] = nn.Hardswish if cfg.hswish else nn.ReLU
        # The residual follows the table's stride even when dilation replaces it (torchvision).
        self.use_residual = cfg.stride == 1 and cin == cout
        stride = 1 if dilation > 1 else cfg.stride
        layers: list[nn.Module] = []
        if expanded != cin:
            layers.append(ConvBNAct(cin, expanded, 1, act=act))
        layers.append(ConvBNAct(expanded, expanded, cfg.kernel, stride, groups=expanded,
                                dilation=dilation, act=act))
        if cfg.se:
            layers.append(SqueezeExcite(expanded, make_divisible(expanded // 4)))
        layers.append(ConvBNAct(expanded, cout, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.out_channels = cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.use_residual else y


class MobileNetV3LargeFeatures(nn.Sequential):
    """MobileNetV3-Large up to its last 1x1 conv, at output stride 16."""

    def __init__(self, in_channels: int, a: float) -> None:
        c = make_divisible(16 * a)
        layers: list[nn.Module] = [ConvBNAct(in_channels, c, 3, 2, act=nn.Hardswish)]
        for i, cfg in enumerate(_LARGE):
            block = InvertedResidualV3(c, cfg, a, dilation=2 if i >= _DILATED_FROM else 1)
            layers.append(block)
            c = block.out_channels
        self.out_channels = 6 * c
        layers.append(ConvBNAct(c, self.out_channels, 1, act=nn.Hardswish))
        super().__init__(*layers)


class ASPPPooling(nn.Module):
    """Image-level features: mean over H, W (exact in ONNX at any size, unlike adaptive
    pooling), 1x1 conv + BN + ReLU, broadcast back to H x W (equal to bilinear upsampling of a
    1x1 map)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = ConvBNAct(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x.mean(dim=(2, 3), keepdim=True))
        return y.expand(-1, -1, x.shape[2], x.shape[3])


class ASPP(nn.Module):
    def __init__(self, cin: int, cout: int, rates: tuple[int, ...] = (12, 24, 36)) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [ConvBNAct(cin, cout, 1)]
            + [ConvBNAct(cin, cout, 3, dilation=d) for d in rates]
            + [ASPPPooling(cin, cout)]
        )
        self.project = nn.Sequential(
            ConvBNAct((len(rates) + 2) * cout, cout, 1), nn.Dropout(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([b(x) for b in self.branches], dim=1))


class DeepLabV3(nn.Module):
    """DeepLabV3 / MobileNetV3-Large returning logits (N, num_classes, H, W)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.backbone = MobileNetV3LargeFeatures(spec.in_channels, spec.a)
        width = make_divisible(256 * spec.a)
        self.head = nn.Sequential(
            ASPP(self.backbone.out_channels, width),
            ConvBNAct(width, width, 3),
            nn.Conv2d(width, spec.num_classes, 1),
        )
        init_weights(self, self.head[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.head(self.backbone(x))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
