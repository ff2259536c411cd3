"""Squeeze-excite rescaling y = x * s with s [N, C, 1, 1]: dx = dy * s, ds = sum over H, W of dy * x."""

from __future__ import annotations

from .base import Rule, Step, reduce_sum


class Scale(Rule):
    kinds = ("scale",)

    def forward(self, b, s: Step) -> dict:
        op = s.op
        b.node("Mul", op.inputs, op.outputs, layer=op.layer)
        if not s.needs_backward:
            return {}
        x, gate = op.inputs
        return {**({"gate": gate} if s.input_grads[0] else {}), **({"x": x} if s.input_grads[1] else {})}

    def backward(self, b, s: Step, saved, dys):
        op, (dy,) = s.op, dys
        dx = b.op("Mul", dy, saved["gate"], layer=op.layer) if s.input_grads[0] else None
        dgate = None
        if s.input_grads[1]:
            dgate = reduce_sum(b, b.op("Mul", dy, saved["x"], layer=op.layer), [2, 3], op.layer, keepdims=1)
        return [dx, dgate]
