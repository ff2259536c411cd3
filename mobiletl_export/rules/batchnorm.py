"""Eval-mode BatchNorm (frozen running statistics): y = (x - mean) * s + beta, s = gamma / sqrt(var + eps).

An affine map, so with gamma frozen its backward stores nothing: dx = dy * s, dbeta = sum(dy) over N, H, W.
Only a trained gamma needs the input: dgamma = sum(dy * (x - mean)) / sqrt(var + eps), computed as
(sum(dy * x) - mean * sum(dy)) / sqrt(var + eps): one full-size temporary instead of three, at the start of
the backward where every stored tensor is still alive.
"""

from __future__ import annotations

from .base import Rule, Step, channel_view, reduce_sum


class BatchNorm(Rule):
    kinds = ("batchnorm",)

    def forward(self, b, s: Step) -> dict:
        op = s.op
        b.node("BatchNormalization", [op.inputs[0]] + [s.param(r) for r in ("gamma", "beta", "mean", "var")],
               op.outputs, layer=op.layer, epsilon=op.attrs["eps"])
        return {"x": op.inputs[0]} if s.needs_backward and s.trains("gamma") else {}

    def backward(self, b, s: Step, saved, dys):
        op, (dy,) = s.op, dys
        L = op.layer
        inv_std = b.op("Reciprocal", b.op("Sqrt", b.op("Add", s.param("var"), b.const(op.attrs["eps"]), layer=L),
                                          layer=L), layer=L)
        dbeta = None
        if s.trains("beta"):
            dbeta = reduce_sum(b, dy, [0, 2, 3], L, out=s.grad_name("beta"))
        if s.trains("gamma"):
            dbeta = dbeta or reduce_sum(b, dy, [0, 2, 3], L)
            dy_x = reduce_sum(b, b.op("Mul", dy, saved["x"], layer=L), [0, 2, 3], L)
            centered = b.op("Sub", dy_x, b.op("Mul", s.param("mean"), dbeta, layer=L), layer=L)
            b.node("Mul", [centered, inv_std], [s.grad_name("gamma")], layer=L)
        if not s.input_grads[0]:
            return [None]
        scale = channel_view(b, b.op("Mul", s.param("gamma"), inv_std, layer=L), L)
        return [b.op("Mul", dy, scale, layer=L)]
