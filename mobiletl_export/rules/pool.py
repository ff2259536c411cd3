"""Global average pooling: `pool` flattens to [N, C] (head), `se_pool` keeps [N, C, 1, 1] (squeeze-excite).

backward spreads dy / (H * W) over the input's (static) H x W; it saves nothing. With `broadcast_grad`
(lower.py sets it when an activation produced the input, whose backward multiplies the gradient by a
full-size mask or input) it returns dy / (H * W) as [N, C, 1, 1] and that multiply broadcasts it: one
activation-sized tensor less at the start of the backward, where the training peak is.
"""

from __future__ import annotations

from .base import Rule, Step


class GlobalPool(Rule):
    kinds = ("pool", "se_pool")

    def forward(self, b, s: Step) -> dict:
        op = s.op
        if op.kind == "se_pool":
            b.node("GlobalAveragePool", op.inputs, op.outputs, layer=op.layer)
        else:
            pooled = b.op("GlobalAveragePool", op.inputs[0], layer=op.layer)
            b.node("Flatten", [pooled], op.outputs, layer=op.layer, axis=1)
        return {}

    def backward(self, b, s: Step, saved, dys):
        op, (dy,) = s.op, dys
        L = op.layer
        h, w = op.attrs["in_hw"]
        if op.kind == "pool":
            dy = b.op("Unsqueeze", dy, b.const([2, 3], "int64"), layer=L)
        scaled = b.op("Mul", dy, b.const(1.0 / (h * w)), layer=L)
        if op.attrs.get("broadcast_grad"):
            return [scaled]
        n_c = b.op("Slice", b.op("Shape", dy, layer=L), b.const([0], "int64"), b.const([2], "int64"), layer=L)
        shape = b.op("Concat", n_c, b.const([h, w], "int64"), layer=L, axis=0)
        return [b.op("Expand", scaled, shape, layer=L)]
