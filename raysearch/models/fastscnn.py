"""Fast-SCNN (Poudel et al. 2019) exactly as the reference study parameterized it.

Knobs (from the spec): width multiplier ``a`` (channels ``int(c * a)`` for c in 32/48/64/96/128),
expansion rate ``t`` and repetitions ``r`` of the bottlenecks of the global feature extractor,
pyramid pooling ``pp`` on/off, 1 or 3 input channels, any input size divisible by 32.

Pyramid pooling at any resolution. The study pooled a 16x16 map (512x512 input) with fixed
windows 16, 8, 4, 2, i.e. bins 1, 2, 4, 8, and had to switch pooling off below 512. Here the
windows are derived from the map size M = input / 32 (per dimension) so the *bins* stay 1, 2, 4, 8:

* a bin that divides M pools with an ordinary average pool of window M / bin (stride = window):
  at 512 this is the study's module, bit for bit;
* a bin that does not divide M pools exactly like adaptive average pooling (window i covers
  rows floor(i*M/b) .. ceil((i+1)*M/b)), computed with two fixed averaging matrices so that the
  ONNX graph has no adaptive pooling in it (the exporter gets that wrong silently);
* a bin larger than M is clamped to M: that branch pools 1x1 windows, i.e. passes the map through
  the shared 1x1 conv unchanged in size. Every branch therefore exists at every resolution, the
  parameter count does not depend on the input size, and the concat keeps its 256a channels.

The pyramid-pooling module is built even when ``pp=0`` (forward skips it), which is why the
study's parameter counts are the same with and without it.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from raysearch.models.layers import ConvBNAct, DSConv, InvertedResidual, scaled
from raysearch.models.spec import ModelSpec

PPM_BINS = (1, 2, 4, 8)


def _up(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def adaptive_pool_matrix(m: int, b: int) -> torch.Tensor:
    """(b, m) matrix whose row i averages the window adaptive average pooling uses for bin i."""
    p = torch.zeros(b, m)
    for i in range(b):
        start, end = (i * m) // b, -((-(i + 1) * m) // b)
        p[i, start:end] = 1.0 / (end - start)
    return p


class BinPool(nn.Module):
    """Average pooling of an (M_h, M_w) map into (b_h, b_w) bins, static in shape."""

    ph: torch.Tensor  # the pooling matrices (buffers) where the bins do not divide the map
    pw: torch.Tensor

    def __init__(self, map_hw: tuple[int, int], bins: int) -> None:
        super().__init__()
        self.map_hw = map_hw
        self.bins_hw = (min(bins, map_hw[0]), min(bins, map_hw[1]))
        exact = all(m % b == 0 for m, b in zip(map_hw, self.bins_hw))
        self.pool: nn.Module | None = None
        if exact:
            window = (map_hw[0] // self.bins_hw[0], map_hw[1] // self.bins_hw[1])
            self.pool = nn.AvgPool2d(window, window)
        else:
            # Not part of the state dict: derived from the spec, like the window sizes.
            self.register_buffer("ph", adaptive_pool_matrix(map_hw[0], self.bins_hw[0]), persistent=False)
            self.register_buffer("pw", adaptive_pool_matrix(map_hw[1], self.bins_hw[1]).t(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            return self.pool(x)
        return torch.matmul(torch.matmul(self.ph, x), self.pw)


class PyramidPooling(nn.Module):
    """Four bin poolings, ONE shared 1x1 conv (no bias, no BN) + ReLU, upsample, concat with the
    input, 1x1 conv + BN + ReLU back to the input width."""

    def __init__(self, cin: int, branch: int, map_hw: tuple[int, int]) -> None:
        super().__init__()
        self.map_hw = map_hw
        self.pools = nn.ModuleList(BinPool(map_hw, b) for b in PPM_BINS)
        self.shared = nn.Sequential(nn.Conv2d(cin, branch, 1, bias=False), nn.ReLU(inplace=True))
        self.out = ConvBNAct(cin + len(PPM_BINS) * branch, cin, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x] + [_up(self.shared(pool(x)), self.map_hw) for pool in self.pools]
        return self.out(torch.cat(feats, dim=1))


class LearningToDownsample(nn.Sequential):
    def __init__(self, cin: int, c32: int, c48: int, c64: int) -> None:
        super().__init__(ConvBNAct(cin, c32, 3, 2), DSConv(c32, c48, 2), DSConv(c48, c64, 2))


def _stage(cin: int, cout: int, t: int, r: int, stride: int) -> nn.Sequential:
    return nn.Sequential(*(InvertedResidual(cin if i == 0 else cout, cout, t, stride if i == 0 else 1) for i in range(r)))


class GlobalFeatureExtractor(nn.Module):
    def __init__(self, c64: int, c96: int, c128: int, c_branch: int, t: int, r: int, pp: bool,
                 map_hw: tuple[int, int]) -> None:
        super().__init__()
        self.use_pp = pp
        self.stages = nn.Sequential(
            _stage(c64, c64, t, r, 2), _stage(c64, c96, t, r, 2), _stage(c96, c128, t, r, 1)
        )
        self.ppm = PyramidPooling(c128, c_branch, map_hw)  # built even when unused (see module doc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(x)
        return self.ppm(x) if self.use_pp else x


class FeatureFusion(nn.Module):
    """Low-res path: x4 bilinear, depthwise 3x3 dilation 4 + BN + ReLU, 1x1 conv with bias;
    high-res path: 1x1 conv with bias; add, ReLU."""

    def __init__(self, c_high: int, c_low: int, cout: int) -> None:
        super().__init__()
        self.low_dw = ConvBNAct(c_low, c_low, 3, groups=c_low, dilation=4)
        self.low_pw = nn.Conv2d(c_low, cout, 1, bias=True)
        self.high_pw = nn.Conv2d(c_high, cout, 1, bias=True)

    def forward(self, high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        low = _up(low, (high.shape[2], high.shape[3]))
        return F.relu(self.high_pw(high) + self.low_pw(self.low_dw(low)))


class Classifier(nn.Sequential):
    def __init__(self, c: int, num_classes: int) -> None:
        super().__init__(DSConv(c, c), DSConv(c, c), nn.Dropout(0.1), nn.Conv2d(c, num_classes, 1, bias=True))


class FastSCNN(nn.Module):
    """Logits (N, num_classes, H, W) for an input (N, in_channels, H, W) with H, W = spec.input_hw."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        a = spec.a
        c32, c48, c64, c96, c128 = (scaled(c, a) for c in (32, 48, 64, 96, 128))
        h, w = spec.input_hw
        self.input_hw = (h, w)
        self.map_hw = (h // 32, w // 32)
        self.downsample = LearningToDownsample(spec.in_channels, c32, c48, c64)
        self.global_features = GlobalFeatureExtractor(c64, c96, c128, c32, spec.t, spec.r, bool(spec.pp), self.map_hw)
        self.fusion = FeatureFusion(c64, c128, c128)
        self.classifier = Classifier(c128, spec.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        high = self.downsample(x)
        low = self.global_features(high)
        return _up(self.classifier(self.fusion(high, low)), self.input_hw)
