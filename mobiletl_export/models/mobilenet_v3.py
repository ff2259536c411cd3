"""MobileNetV3 (large, small) with torchvision's module names (`features.N.block...`, `classifier.0/3`)."""

from __future__ import annotations

import torch
from torch import nn

from .layers import ConvBNAct, SqueezeExcitation, init_weights, make_divisible
from .mobilenet_v2 import IMAGENET
from .spec import IRB, Activation, Dropout, Head, Linear, ModelStructure, Pool

# torchvision's tables: input, kernel, expanded, output, SE, activation, stride.
LARGE = [
    (16, 3, 16, 16, False, "relu", 1), (16, 3, 64, 24, False, "relu", 2), (24, 3, 72, 24, False, "relu", 1),
    (24, 5, 72, 40, True, "relu", 2), (40, 5, 120, 40, True, "relu", 1), (40, 5, 120, 40, True, "relu", 1),
    (40, 3, 240, 80, False, "hardswish", 2), (80, 3, 200, 80, False, "hardswish", 1),
    (80, 3, 184, 80, False, "hardswish", 1), (80, 3, 184, 80, False, "hardswish", 1),
    (80, 3, 480, 112, True, "hardswish", 1), (112, 3, 672, 112, True, "hardswish", 1),
    (112, 5, 672, 160, True, "hardswish", 2), (160, 5, 960, 160, True, "hardswish", 1),
    (160, 5, 960, 160, True, "hardswish", 1),
]
SMALL = [
    (16, 3, 16, 16, True, "relu", 2), (16, 3, 72, 24, False, "relu", 2), (24, 3, 88, 24, False, "relu", 1),
    (24, 5, 96, 40, True, "hardswish", 2), (40, 5, 240, 40, True, "hardswish", 1),
    (40, 5, 240, 40, True, "hardswish", 1), (40, 5, 120, 48, True, "hardswish", 1),
    (48, 5, 144, 48, True, "hardswish", 1), (48, 5, 288, 96, True, "hardswish", 2),
    (96, 5, 576, 96, True, "hardswish", 1), (96, 5, 576, 96, True, "hardswish", 1),
]
LAST_CHANNEL = {"large": 1280, "small": 1024}
BN = dict(eps=0.001, momentum=0.01)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, kernel: int, expanded: int, cout: int, use_se: bool, act: str, stride: int):
        super().__init__()
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expanded != cin:
            layers.append(ConvBNAct(cin, expanded, kernel=1, act=act, **BN))
        layers.append(ConvBNAct(expanded, expanded, kernel, stride, groups=expanded, act=act, **BN))
        if use_se:
            layers.append(SqueezeExcitation(expanded, make_divisible(expanded // 4)))
        layers.append(ConvBNAct(expanded, cout, kernel=1, act=None, **BN))
        self.block = nn.Sequential(*layers)
        self.has_expand, self.use_se = expanded != cin, use_se

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.use_res_connect else self.block(x)

    def spec(self, prefix: str) -> IRB:
        i = 1 if self.has_expand else 0
        expand = self.block[0].spec(f"{prefix}.block.0") if self.has_expand else None
        se = self.block[i + 1].spec(f"{prefix}.block.{i + 1}") if self.use_se else None
        last = len(self.block) - 1
        return IRB(prefix, expand, self.block[i].spec(f"{prefix}.block.{i}"), se,
                   self.block[last].spec(f"{prefix}.block.{last}"), self.use_res_connect)


class MobileNetV3(nn.Module):
    def __init__(self, arch: str = "large", num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2):
        super().__init__()
        table = {"large": LARGE, "small": SMALL}[arch]

        def ch(c: int) -> int:
            return make_divisible(c * width_mult)

        features: list[nn.Module] = [ConvBNAct(3, ch(16), stride=2, act="hardswish", **BN)]
        for cin, k, exp, cout, se, act, s in table:
            features.append(InvertedResidual(ch(cin), k, ch(exp), ch(cout), se, act, s))
        last_in = ch(table[-1][3])
        features.append(ConvBNAct(last_in, 6 * last_in, kernel=1, act="hardswish", **BN))
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        last_channel = make_divisible(LAST_CHANNEL[arch] * width_mult)
        self.classifier = nn.Sequential(
            nn.Linear(6 * last_in, last_channel), nn.Hardswish(), nn.Dropout(p=dropout),
            nn.Linear(last_channel, num_classes),
        )
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))

    def structure(self) -> ModelStructure:
        last = len(self.features) - 1
        blocks = tuple(self.features[i].spec(f"features.{i}") for i in range(1, last))
        head = Head((Pool(), Linear("classifier.0", self.classifier[0]), Activation("hardswish"),
                     Dropout(self.classifier[2]), Linear("classifier.3", self.classifier[3])))
        return ModelStructure(self.features[0].spec("features.0"), blocks,
                              self.features[last].spec(f"features.{last}"), head, IMAGENET)
