"""Runs a model's structure under a training plan with PyTorch: the semantics the exported graphs match."""

from __future__ import annotations

import contextlib
from typing import AbstractSet, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..models import functional as exact
from ..models.spec import IRB, Activation, ConvBN, Dropout, Head, Linear, Pool, SqueezeExcite
from ..plan import TrainingPlan
from .functions import FrozenScaleBatchNorm, masked_activation


class ReferenceNet(nn.Module):
    """`backbone(images) -> features` (frozen, no graph) and `top(features) -> logits` (the trained region).

    Sets `requires_grad` on the model's parameters from the plan. Dropout follows `self.training`.
    """

    def __init__(self, model: nn.Module, plan: TrainingPlan):
        super().__init__()
        self.model, self.plan = model, plan
        for name, p in model.named_parameters():
            p.requires_grad_(plan.trains(name))
        self.eval()

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        params = dict(self.model.named_parameters())
        return {k: params[k] for k in self.plan.trainable}

    @torch.no_grad()
    def backbone(self, images: torch.Tensor) -> torch.Tensor:
        x = _conv_bn(self.plan.structure.stem, images, masked=frozenset())
        for block in self.plan.frozen_blocks:
            x = _irb(block, x, masked=frozenset())
        return x

    def top(self, features: torch.Tensor) -> torch.Tensor:
        masked = self.plan.masked_activations
        x = features
        for block in self.plan.trained_blocks:
            x = _irb(block, x, masked)
        x = _conv_bn(self.plan.structure.tail, x, masked)
        return _head(self.plan.structure.head, x, masked, self.training)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.top(self.backbone(images))


_observers: list[Callable[[str, torch.Tensor], None]] = []


@contextlib.contextmanager
def observe_activations(callback: Callable[[str, torch.Tensor], None]) -> Iterator[None]:
    """Call `callback(kind, input)` for every activation the executor runs (tests use it to find inputs
    close to a kink, where float32 noise can flip a derivative)."""
    _observers.append(callback)
    try:
        yield
    finally:
        _observers.remove(callback)


def _act(kind: str | None, x: torch.Tensor, masked: AbstractSet[str]) -> torch.Tensor:
    """`masked`: activation kinds whose backward reads a 1-bit mask (TrainingPlan.masked_activations)."""
    if kind is None:
        return x
    for callback in _observers:
        callback(kind, x.detach())
    return masked_activation(kind, x) if kind in masked else exact.activation(kind, x)


def _batch_norm(bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    if bn.weight.requires_grad or not torch.is_grad_enabled():  # gamma trains (or no backward at all)
        return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
    return FrozenScaleBatchNorm.apply(x, bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.eps)


def _conv_bn(cb: ConvBN, x: torch.Tensor, masked: AbstractSet[str]) -> torch.Tensor:
    x = exact.conv2d(x, cb.conv, cb.conv.weight, None)
    return _act(cb.act, _batch_norm(cb.bn, x), masked)


def _squeeze_excite(se: SqueezeExcite, x: torch.Tensor, masked: AbstractSet[str]) -> torch.Tensor:
    s = x.mean((2, 3), keepdim=True)
    s = _act(se.act, F.conv2d(s, se.fc1.weight, se.fc1.bias), masked)
    s = _act(se.gate, F.conv2d(s, se.fc2.weight, se.fc2.bias), masked)
    return x * s


def _irb(block: IRB, x: torch.Tensor, masked: AbstractSet[str]) -> torch.Tensor:
    y = x
    if block.expand is not None:
        y = _conv_bn(block.expand, y, masked)
    y = _conv_bn(block.depthwise, y, masked)
    if block.se is not None:
        y = _squeeze_excite(block.se, y, masked)
    y = _conv_bn(block.project, y, masked)
    return x + y if block.residual else y


def _head(head: Head, x: torch.Tensor, masked: AbstractSet[str], training: bool) -> torch.Tensor:
    for layer in head.layers:
        if isinstance(layer, Pool):
            x = x.mean((2, 3))
        elif isinstance(layer, Linear):
            x = F.linear(x, layer.module.weight, layer.module.bias)
        elif isinstance(layer, Activation):
            x = _act(layer.kind, x, masked)
        elif isinstance(layer, Dropout):
            x = F.dropout(x, layer.module.p, training)
        else:
            raise TypeError(f"unknown head layer {layer!r}")
    return x
