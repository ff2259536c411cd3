"""The structure every model exposes to the rest of the pipeline.

A model keeps torchvision's (or efficientnet_pytorch's) module names so checkpoints load unchanged, and
describes itself with the small records below. The PyTorch reference, the ONNX compiler and the analysis all
walk these records instead of the module tree, so the three read the same network.

    stem (frozen) -> blocks[0..n-1] (IRBs) -> tail (1x1 conv + BN + act) -> head (pool, linear, ...)

"Top-k" is blocks[n-k:] + tail + head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

from torch import nn

ACTIVATIONS = ("relu", "relu6", "hardswish", "hardsigmoid")


class SameConv2d(nn.Conv2d):
    """TensorFlow 'SAME' padding: total pad = max((ceil(n/s)-1)*s + k - n, 0), split floor/ceil.

    EfficientNet-Lite's ImageNet weights were trained with it; stride-2 convs pad asymmetrically.
    """

    def forward(self, x):
        from . import functional  # late import: functional imports this module

        return functional.conv2d(x, self, self.weight, self.bias)


def conv_pads(conv: nn.Conv2d, in_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """Padding (top, left, bottom, right) that `conv` applies to an input of spatial size `in_hw`."""
    if isinstance(conv, SameConv2d):
        pads = []
        for n, k, s, d in zip(in_hw, conv.kernel_size, conv.stride, conv.dilation):
            total = max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        return top, left, bottom, right
    ph, pw = conv.padding
    return ph, pw, ph, pw


def conv_out_hw(conv: nn.Conv2d, in_hw: tuple[int, int]) -> tuple[int, int]:
    top, left, bottom, right = conv_pads(conv, in_hw)
    out = []
    for n, lo, hi, k, s, d in zip(in_hw, (top, left), (bottom, right), conv.kernel_size, conv.stride, conv.dilation):
        out.append((n + lo + hi - d * (k - 1) - 1) // s + 1)
    return out[0], out[1]


@dataclass(frozen=True)
class ConvBN:
    """conv (no bias) -> BatchNorm -> optional activation."""

    conv_name: str
    conv: nn.Conv2d
    bn_name: str
    bn: nn.BatchNorm2d
    act: str | None

    @property
    def depthwise(self) -> bool:
        return self.conv.groups > 1 and self.conv.groups == self.conv.in_channels


@dataclass(frozen=True)
class SqueezeExcite:
    """x * gate(fc2(act(fc1(mean_hw(x))))); fc1/fc2 are 1x1 convs with bias."""

    fc1_name: str
    fc1: nn.Conv2d
    fc2_name: str
    fc2: nn.Conv2d
    act: str = "relu"
    gate: str = "hardsigmoid"


@dataclass(frozen=True)
class IRB:
    """Inverted residual block: [expand] -> depthwise -> [SE] -> project (+ x when `residual`)."""

    name: str
    expand: ConvBN | None
    depthwise: ConvBN
    se: SqueezeExcite | None
    project: ConvBN
    residual: bool

    def conv_bns(self) -> list[ConvBN]:
        return [c for c in (self.expand, self.depthwise, self.project) if c is not None]


@dataclass(frozen=True)
class Pool:
    """Global average pooling to [N, C] (flatten included)."""


@dataclass(frozen=True)
class Linear:
    name: str
    module: nn.Linear


@dataclass(frozen=True)
class Activation:
    kind: str


@dataclass(frozen=True)
class Dropout:
    module: nn.Dropout


HeadLayer = Union[Pool, Linear, Activation, Dropout]


@dataclass(frozen=True)
class Head:
    layers: tuple[HeadLayer, ...]

    @property
    def linears(self) -> list[Linear]:
        return [layer for layer in self.layers if isinstance(layer, Linear)]

    @property
    def classifier(self) -> Linear:
        """The final linear layer: the one replaced when the number of classes changes."""
        return self.linears[-1]


@dataclass(frozen=True)
class Normalization:
    """Input preprocessing: x = (rgb / 255 - mean) / std, channel order RGB."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]


@dataclass(frozen=True)
class ModelStructure:
    stem: ConvBN
    blocks: tuple[IRB, ...]
    tail: ConvBN
    head: Head
    normalization: Normalization

    def split(self, top_k: int) -> tuple[tuple[IRB, ...], tuple[IRB, ...]]:
        """(frozen blocks, trained blocks) for fine-tuning the top `top_k` IRBs."""
        n = len(self.blocks)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 0 <= top_k <= n:
            raise ValueError(f"top-k must be an integer in [0, {n}] for this model (it has {n} IRBs), got {top_k!r}")
        return self.blocks[: n - top_k], self.blocks[n - top_k:]
