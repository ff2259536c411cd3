"""torchvision's building blocks, re-declared so state_dict keys match torchvision's exactly."""

from __future__ import annotations

import torch
from torch import nn

from .functional import activation_module
from .spec import ConvBN, SqueezeExcite


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """torchvision's `_make_divisible`: round channels to a multiple of 8, never 10 % below `v`."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvBNAct(nn.Sequential):
    """torchvision `Conv2dNormActivation`: children 0 = Conv2d, 1 = BatchNorm2d, [2 = activation]."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1,
                 act: str | None = "relu6", eps: float = 1e-5, momentum: float = 0.1):
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout, eps=eps, momentum=momentum),
        ]
        if act is not None:
            layers.append(activation_module(act))
        super().__init__(*layers)
        self.act = act

    def spec(self, prefix: str) -> ConvBN:
        return ConvBN(f"{prefix}.0", self[0], f"{prefix}.1", self[1], self.act)


class SqueezeExcitation(nn.Module):
    """torchvision `SqueezeExcitation` (fc1, fc2 are 1x1 convs with bias; ReLU then Hard-Sigmoid)."""

    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return scale * x

    def spec(self, prefix: str) -> SqueezeExcite:
        return SqueezeExcite(f"{prefix}.fc1", self.fc1, f"{prefix}.fc2", self.fc2)


def init_weights(model: nn.Module) -> None:
    """torchvision's MobileNet initialisation (call under a seeded RNG)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
