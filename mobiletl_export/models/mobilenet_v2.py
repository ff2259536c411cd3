"""MobileNetV2 with torchvision's module names (`features.N...`, `classifier.1`)."""

from __future__ import annotations

import torch
from torch import nn

from .layers import ConvBNAct, init_weights, make_divisible
from .spec import IRB, ConvBN, Dropout, Head, Linear, ModelStructure, Normalization, Pool

IMAGENET = Normalization(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))

# torchvision's table: expansion t, output channels c, repeats n, first stride s.
SETTING = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = int(round(cin * expand_ratio))
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNAct(cin, hidden, kernel=1, act="relu6"))
        layers += [
            ConvBNAct(hidden, hidden, stride=stride, groups=hidden, act="relu6"),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.has_expand = expand_ratio != 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)

    def spec(self, prefix: str) -> IRB:
        i = 1 if self.has_expand else 0
        expand = self.conv[0].spec(f"{prefix}.conv.0") if self.has_expand else None
        project = ConvBN(f"{prefix}.conv.{i + 1}", self.conv[i + 1], f"{prefix}.conv.{i + 2}", self.conv[i + 2], None)
        return IRB(prefix, expand, self.conv[i].spec(f"{prefix}.conv.{i}"), None, project, self.use_res_connect)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2):
        super().__init__()
        cin = make_divisible(32 * width_mult)
        self.last_channel = make_divisible(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [ConvBNAct(3, cin, stride=2, act="relu6")]
        for t, c, n, s in SETTING:
            cout = make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        features.append(ConvBNAct(cin, self.last_channel, kernel=1, act="relu6"))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(self.last_channel, num_classes))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))

    def structure(self) -> ModelStructure:
        last = len(self.features) - 1
        blocks = tuple(self.features[i].spec(f"features.{i}") for i in range(1, last))
        head = Head((Pool(), Dropout(self.classifier[0]), Linear("classifier.1", self.classifier[1])))
        return ModelStructure(self.features[0].spec("features.0"), blocks,
                              self.features[last].spec(f"features.{last}"), head, IMAGENET)
