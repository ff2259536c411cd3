"""Linear y = x W^T + b (Gemm): dW = dy^T x (saves x when W trains), db = sum_N dy, dx = dy W."""

from __future__ import annotations

from .base import Rule, Step, reduce_sum


class Linear(Rule):
    kinds = ("linear",)

    def forward(self, b, s: Step) -> dict:
        op = s.op
        b.node("Gemm", [op.inputs[0], s.param("weight"), s.param("bias")], op.outputs, layer=op.layer, transB=1)
        return {"x": op.inputs[0]} if s.needs_backward and s.trains("weight") else {}

    def backward(self, b, s: Step, saved, dys):
        op, (dy,) = s.op, dys
        if s.trains("weight"):
            b.node("Gemm", [dy, saved["x"]], [s.grad_name("weight")], layer=op.layer, transA=1)
        if s.trains("bias"):
            reduce_sum(b, dy, [0], op.layer, out=s.grad_name("bias"))
        return [b.op("MatMul", dy, s.param("weight"), layer=op.layer) if s.input_grads[0] else None]
