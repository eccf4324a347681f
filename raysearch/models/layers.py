"""Building blocks shared by the model families (conv + BN + activation, depthwise-separable
convs, MobileNetV2 inverted bottlenecks)."""

from __future__ import annotations

import torch
import torch.nn as nn


def init_weights(model: nn.Module, classifier: nn.Module) -> None:
    """He init (fan-out) of every conv, BN at identity, and the ``classifier`` (the last conv) at
    PyTorch's default fan-in init, as torchvision's heads do: He init with fan_out = classes would
    start the logits at a std of 20-30 and saturate the BCE loss."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    assert isinstance(classifier, nn.Conv2d), "the classifier is the head's last conv"
    classifier.reset_parameters()


def scaled(c: int, a: float) -> int:
    """The study's channel scaling: plain truncation, no make-divisible rounding."""
    return int(c * a)


class ConvBNAct(nn.Sequential):
    """k x k conv (no bias) + BN (+ ReLU unless ``act=False``)."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1,
                 dilation: int = 1, act: bool | type[nn.Module] = True) -> None:
        pad = dilation * (k - 1) // 2
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, k, stride, pad, dilation=dilation, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        ]
        if act:
            layers.append(nn.ReLU(inplace=True) if act is True else act())
        super().__init__(*layers)


class DSConv(nn.Sequential):
    """Depthwise-separable conv as the study built it: depthwise 3x3 (no bias) + BN, *no*
    activation, then pointwise 1x1 (no bias) + BN + ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__(
            ConvBNAct(cin, cin, 3, stride, groups=cin, act=False),
            ConvBNAct(cin, cout, 1),
        )


class InvertedResidual(nn.Module):
    """MobileNetV2 bottleneck: 1x1 expand (x t) + BN + ReLU, depthwise 3x3 + BN + ReLU,
    1x1 project + BN; residual only when stride 1 and cin == cout."""

    def __init__(self, cin: int, cout: int, t: int, stride: int) -> None:
        super().__init__()
        hidden = cin * t
        self.use_residual = stride == 1 and cin == cout
        self.block = nn.Sequential(
            ConvBNAct(cin, hidden, 1),
            ConvBNAct(hidden, hidden, 3, stride, groups=hidden),
            ConvBNAct(hidden, cout, 1, act=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.use_residual else y
