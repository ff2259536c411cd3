"""Plain (exact) PyTorch functions shared by the models and the reference executor."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .spec import conv_pads


def conv2d(x: torch.Tensor, conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`conv` applied with its own padding rule (symmetric, or TF 'SAME' for SameConv2d)."""
    top, left, bottom, right = conv_pads(conv, tuple(x.shape[-2:]))
    if top == bottom and left == right:
        padding = (top, left)
    else:
        x = F.pad(x, (left, right, top, bottom))
        padding = (0, 0)
    return F.conv2d(x, weight, bias, conv.stride, padding, conv.dilation, conv.groups)


def activation(kind: str, x: torch.Tensor) -> torch.Tensor:
    if kind == "relu":
        return F.relu(x)
    if kind == "relu6":
        return F.relu6(x)
    if kind == "hardswish":
        return F.hardswish(x)
    if kind == "hardsigmoid":
        return F.hardsigmoid(x)
    raise ValueError(f"unknown activation {kind!r}")


def activation_module(kind: str) -> nn.Module:
    return {"relu": nn.ReLU, "relu6": nn.ReLU6, "hardswish": nn.Hardswish, "hardsigmoid": nn.Hardsigmoid}[kind]()
