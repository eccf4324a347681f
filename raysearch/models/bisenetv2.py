"""BiSeNetV2 (Yu et al. 2021, "BiSeNet V2: Bilateral Network with Guided Aggregation"),
inference model (no auxiliary "booster" heads), parameterized by the spec's knobs.

Layout (channels at a=1; every width is ``int(c * a)``):

- detail branch (stride 8, wide and shallow): S1 conv3x3/2 3->64, conv 64->64; S2 conv3x3/2
  64->64 + 2 convs at 64; S3 conv3x3/2 64->128 + 2 convs at 128 (conv + BN + ReLU each);
- semantic branch (stride 32, narrow and deep):
  stem block (S1+S2): conv3x3/2 ->16, then [1x1 ->8, conv3x3/2 ->16] || maxpool3x3/2, concat,
  conv3x3 32->16;
  S3: GE/2 16->32 + ``n34`` GE/1; S4: GE/2 32->64 + ``n34`` GE/1;
  S5: GE/2 64->128 + ``n5`` GE/1, then the context embedding block (global mean + BN, 1x1,
  add, 3x3);
- bilateral guided aggregation at 128 (detail and semantic paths gate each other, summed at
  stride 8, 3x3 conv);
- segmentation head: conv3x3 128->1024 + BN + ReLU, dropout 0.1, 1x1 conv to num_classes,
  bilinear upsample to the input size (align_corners=False).

Knobs:

- ``a``: width multiplier of every layer (the narrowest is the stem's 1x1 at ``int(8 * a)``, so
  ``a >= 0.125``);
- ``t``: expansion ratio of the gather-and-expansion layers (paper: 6);
- ``r``: repetitions: ``n5 = r`` stride-1 GE layers in stage 5 and ``n34 = ceil(r / 3)`` in
  each of stages 3 and 4. At r=3 this is the paper's Table 1 (1, 1, 3); r=1 and r=2 keep one
  GE/1 in stages 3/4 and thin stage 5; r=6 gives (2, 2, 6). Both counts grow with r.

With a=1, t=6, r=3, 3 input channels and 1 class the model has 3,340,177 parameters
(the reference study's "3.34 M").

Input sizes: any H and W divisible by 32 (32x32 works: the semantic branch ends at 1x1). All
resizes use sizes taken from the tensors, which are constants at export with static H/W; the
global pooling is ``mean`` (not adaptive pooling) so the ONNX graph is exact.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from raysearch.models.layers import ConvBNAct, init_weights, scaled
from raysearch.models.spec import ModelSpec


def stage_repeats(r: int) -> tuple[int, int]:
    """(stride-1 GE layers in each of stages 3 and 4, stride-1 GE layers in stage 5)."""
    return math.ceil(r / 3), r


class DetailBranch(nn.Sequential):
    def __init__(self, cin: int, c64: int, c128: int) -> None:
        super().__init__(
            ConvBNAct(cin, c64, 3, 2), ConvBNAct(c64, c64, 3),  # S1, stride 2
            ConvBNAct(c64, c64, 3, 2), ConvBNAct(c64, c64, 3), ConvBNAct(c64, c64, 3),  # S2, /4
            ConvBNAct(c64, c128, 3, 2), ConvBNAct(c128, c128, 3), ConvBNAct(c128, c128, 3),  # S3
        )


class StemBlock(nn.Module):
    """Stride 4: a strided conv, then a conv path and a max-pool path side by side, fused."""

    def __init__(self, cin: int, cout: int, mid: int) -> None:
        super().__init__()
        self.conv = ConvBNAct(cin, cout, 3, 2)
        self.left = nn.Sequential(ConvBNAct(cout, mid, 1), ConvBNAct(mid, cout, 3, 2))
        self.right = nn.MaxPool2d(3, 2, 1)
        self.fuse = ConvBNAct(2 * cout, cout, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return self.fuse(torch.cat([self.left(x), self.right(x)], dim=1))


class GELayer(nn.Module):
    """Gather-and-expansion layer. Stride 1: 3x3 conv, depthwise 3x3 expanding x t, 1x1
    projection, identity shortcut. Stride 2: the depthwise part is a strided depthwise 3x3
    (x t, no activation) then a depthwise 3x3, and the shortcut is a strided depthwise 3x3 +
    1x1 projection. ReLU after the sum."""

    def __init__(self, cin: int, cout: int, t: int, stride: int) -> None:
        super().__init__()
        mid = cin * t
        self.conv = ConvBNAct(cin, cin, 3)
        if stride == 1:
            if cin != cout:
                raise ValueError(f"a stride-1 GE layer keeps its width ({cin} != {cout})")
            self.expand: nn.Module = ConvBNAct(cin, mid, 3, groups=cin)
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.expand = nn.Sequential(
                ConvBNAct(cin, mid, 3, 2, groups=cin, act=False),
                ConvBNAct(mid, mid, 3, groups=mid),
            )
            self.shortcut = nn.Sequential(
                ConvBNAct(cin, cin, 3, 2, groups=cin, act=False),
                ConvBNAct(cin, cout, 1, act=False),
            )
        self.project = ConvBNAct(mid, cout, 1, act=False)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.expand(self.conv(x)))
        return self.act(y + self.shortcut(x))


class ContextEmbedding(nn.Module):
    """Global context: mean over H, W (exported as ReduceMean, exact at any size), BN, 1x1
    conv, broadcast-add to the input, 3x3 conv."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(c)
        self.gap_conv = ConvBNAct(c, c, 1)
        self.out = ConvBNAct(c, c, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.gap_conv(self.bn(x.mean(dim=(2, 3), keepdim=True)))
        return self.out(x + g)


class SemanticBranch(nn.Module):
    def __init__(self, cin: int, a: float, t: int, r: int) -> None:
        super().__init__()
        c16, c32, c64, c128 = (scaled(c, a) for c in (16, 32, 64, 128))
        n34, n5 = stage_repeats(r)
        self.stem = StemBlock(cin, c16, scaled(8, a))
        self.s3 = self._stage(c16, c32, t, n34)
        self.s4 = self._stage(c32, c64, t, n34)
        self.s5 = self._stage(c64, c128, t, n5)
        self.ce = ContextEmbedding(c128)

    @staticmethod
    def _stage(cin: int, cout: int, t: int, n: int) -> nn.Sequential:
        return nn.Sequential(GELayer(cin, cout, t, 2), *(GELayer(cout, cout, t, 1) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ce(self.s5(self.s4(self.s3(self.stem(x)))))


class BilateralGuidedAggregation(nn.Module):
    """Detail (stride 8) and semantic (stride 32) features gate each other with sigmoids; the
    semantic-gated detail features and the (upsampled) detail-gated semantic features are
    summed and mixed by a 3x3 conv."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.detail_keep = nn.Sequential(
            ConvBNAct(c, c, 3, groups=c, act=False), nn.Conv2d(c, c, 1, bias=False))
        self.detail_down = nn.Sequential(
            ConvBNAct(c, c, 3, 2, act=False), nn.AvgPool2d(3, 2, 1))
        self.semantic_up = ConvBNAct(c, c, 3, act=False)
        self.semantic_keep = nn.Sequential(
            ConvBNAct(c, c, 3, groups=c, act=False), nn.Conv2d(c, c, 1, bias=False))
        self.fuse = ConvBNAct(c, c, 3)

    def forward(self, detail: torch.Tensor, semantic: torch.Tensor) -> torch.Tensor:
        size = detail.shape[-2:]
        up = F.interpolate(self.semantic_up(semantic), size=size, mode="bilinear", align_corners=False)
        left = self.detail_keep(detail) * torch.sigmoid(up)
        right = self.detail_down(detail) * torch.sigmoid(self.semantic_keep(semantic))
        right = F.interpolate(right, size=size, mode="bilinear", align_corners=False)
        return self.fuse(left + right)


class SegmentHead(nn.Sequential):
    def __init__(self, cin: int, mid: int, num_classes: int) -> None:
        super().__init__(
            ConvBNAct(cin, mid, 3),
            nn.Dropout(0.1),
            nn.Conv2d(mid, num_classes, 1),
        )


class BiSeNetV2(nn.Module):
    """BiSeNetV2 returning logits (N, num_classes, H, W) at the input resolution."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        a = spec.a
        c128 = scaled(128, a)
        self.detail = DetailBranch(spec.in_channels, scaled(64, a), c128)
        self.semantic = SemanticBranch(spec.in_channels, a, spec.t, spec.r)
        self.bga = BilateralGuidedAggregation(c128)
        self.head = SegmentHead(c128, scaled(1024, a), spec.num_classes)
        init_weights(self, self.head[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.head(self.bga(self.detail(x), self.semantic(x)))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
