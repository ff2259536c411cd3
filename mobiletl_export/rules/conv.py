"""Conv2d (pointwise, depthwise, with or without bias).

backward: ConvGrad (com.microsoft) gives dX, dW, dB from (dY, X, W) when W trains, so X is saved.
With W frozen, dX = ConvTranspose(dY, W) and nothing is saved.
"""

from __future__ import annotations

from .base import Rule, Step, reduce_sum


def _conv_attrs(a: dict) -> dict:
    return dict(kernel_shape=list(a["kernel"]), strides=list(a["stride"]), pads=list(a["pads"]),
                dilations=list(a["dilation"]), group=a["group"])


class Conv(Rule):
    kinds = ("conv", "dwconv")

    def forward(self, b, s: Step) -> dict:
        op = s.op
        inputs = [op.inputs[0], s.param("weight")] + ([s.param("bias")] if "bias" in op.params else [])
        b.node("Conv", inputs, op.outputs, layer=op.layer, **_conv_attrs(op.attrs))
        return {"x": op.inputs[0]} if s.needs_backward and (s.trains("weight")) else {}

    def backward(self, b, s: Step, saved, dys):
        op, (dy,) = s.op, dys
        a = op.attrs
        dx = None
        if s.trains("weight"):
            outs = [b.fresh(f"{op.layer}/dx") if s.input_grads[0] else "", s.grad_name("weight")]
            if "bias" in op.params and s.trains("bias"):
                outs.append(s.grad_name("bias"))
            b.node("ConvGrad", [dy, saved["x"], s.param("weight")], outs, layer=op.layer, domain="com.microsoft",
                   **_conv_attrs(a))
            dx = outs[0] or None
        else:
            if "bias" in op.params and s.trains("bias"):
                reduce_sum(b, dy, [0, 2, 3], op.layer, out=s.grad_name("bias"))
            if s.input_grads[0]:
                dx = b.op("ConvTranspose", dy, s.param("weight"), layer=op.layer, output_padding=a["output_padding"],
                          **_conv_attrs(a))
        return [dx]
