"""Conv2d (pointwise, depthwise, with or without bias).

backward, split so each half takes ORT's fastest kernel (benchmarks/kernels.py):
  dW (+dB)  ConvGrad (com.microsoft) with its dX output left empty (that half is then skipped); saves X
            (NCHWc depthwise: one blocked Conv over the batch-stacked X, emit/nchwc.py; saves blocked X)
  dX        pointwise: Conv(dY, W^T) (1.5-2x faster than ConvGrad's dX)
            depthwise, stride 1: Conv(dY, flipped W, group=C); otherwise ConvTranspose(dY, W)
With --target x86-*, depthwise forward and dX run on ORT's blocked NCHWc kernels (emit/nchwc.py).
"""

from __future__ import annotations

from ..emit import nchwc
from .base import Rule, Step, reduce_sum


def _conv_attrs(a: dict) -> dict:
    return dict(kernel_shape=list(a["kernel"]), strides=list(a["stride"]), pads=list(a["pads"]),
                dilations=list(a["dilation"]), group=a["group"])


def _pointwise(a: dict) -> bool:
    return (tuple(a["kernel"]) == (1, 1) and tuple(a["stride"]) == (1, 1) and a["group"] == 1
            and not any(a["pads"]))


def _blocked(b, s: Step) -> bool:
    return s.op.kind == "dwconv" and "bias" not in s.op.params and nchwc.supports_depthwise(s.op.attrs, b.nchwc_block)


def _input_grad(b, s: Step, dy: str) -> str:
    op, a = s.op, s.op.attrs
    w, L = s.param("weight"), op.layer
    if _pointwise(a):  # dX = W^T dY per pixel
        return b.op("Conv", dy, b.op("Transpose", w, perm=[1, 0, 2, 3], layer=L), layer=L, kernel_shape=[1, 1])
    if _blocked(b, s):
        return nchwc.depthwise_input_grad(b, dy, w, a, L)
    k, (top, left, bottom, right) = a["kernel"], a["pads"]
    if op.kind == "dwconv" and tuple(a["stride"]) == (1, 1) and tuple(a["dilation"]) == (1, 1):
        pads = [k[0] - 1 - top, k[1] - 1 - left, k[0] - 1 - bottom, k[1] - 1 - right]
        return b.op("Conv", dy, nchwc.flip(b, w, L), layer=L, kernel_shape=list(k), pads=pads, group=a["group"])
    return b.op("ConvTranspose", dy, w, layer=L, output_padding=a["output_padding"], **_conv_attrs(a))


class Conv(Rule):
    kinds = ("conv", "dwconv")

    def forward(self, b, s: Step) -> dict:
        op = s.op
        keep = s.needs_backward and s.trains("weight")
        if _blocked(b, s):
            blocked = nchwc.depthwise(b, op.inputs[0], s.param("weight"), op.attrs, op.layer, out=op.outputs[0])
            return {"blocked_x": blocked} if keep else {}
        inputs = [op.inputs[0], s.param("weight")] + ([s.param("bias")] if "bias" in op.params else [])
        b.node("Conv", inputs, op.outputs, layer=op.layer, **_conv_attrs(op.attrs))
        return {"x": op.inputs[0]} if keep else {}

    def backward(self, b, s: Step, saved, dys):
        op, (dy,) = s.op, dys
        bias_grad = "bias" in op.params and s.trains("bias")
        if s.trains("weight") and "blocked_x" in saved:
            nchwc.depthwise_weight_grad(b, saved["blocked_x"], dy, op.attrs, op.layer, s.grad_name("weight"))
        elif s.trains("weight"):
            outs = ["", s.grad_name("weight")] + ([s.grad_name("bias")] if bias_grad else [])
            b.node("ConvGrad", [dy, saved["x"], s.param("weight")], outs, layer=op.layer, domain="com.microsoft",
                   **_conv_attrs(op.attrs))
        elif bias_grad:
            reduce_sum(b, dy, [0, 2, 3], op.layer, out=s.grad_name("bias"))
        return [_input_grad(b, s, dy) if s.input_grads[0] else None]
