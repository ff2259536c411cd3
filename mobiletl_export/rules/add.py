"""Residual add: both inputs receive dy unchanged; nothing is saved."""

from __future__ import annotations

from .base import Rule, Step


class Add(Rule):
    kinds = ("add",)

    def forward(self, b, s: Step) -> dict:
        b.node("Add", s.op.inputs, s.op.outputs, layer=s.op.layer)
        return {}

    def backward(self, b, s: Step, saved, dys):
        return [dys[0] if need else None for need in s.input_grads]
