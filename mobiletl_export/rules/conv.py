"""Conv2d (pointwise, depthwise, with or without bias).

backward, split so each half takes ORT's fastest kernel (benchmarks/kernels.py):
  dW (+dB)  ConvGrad (com.microsoft) with its dX output left empty (that half is then skipped); saves X
            (NCHWc depthwise: one blocked Conv over the batch-stacked X, emit/nchwc.py; saves blocked X)
  dX        pointwise: Conv(dY, W^T) (1.5-2x faster than ConvGrad's dX)
            depthwise, stride 1: Conv(dY, flipped W, group=C); otherwise ConvTranspose(dY, W)
With --target x86-*, depthwise forward and dX run on ORT's blocked NCHWc kernels (emit/nchwc.py).

Portable step (standard ops only, `b.portable`): dW without ConvGrad, both halves channel-major (C first,
then batch, so the batch stays dynamic while every shape attribute is static):
  pointwise dW[o, i] = sum_{n,p} dY[n,o,p] X[n,i,p]: dY, X -> [C, N*P] (Transpose), one MatMul dYc @ Xc^T
  (ORT fuses the Transpose into the MatMul)
  depthwise (and any grouped conv with one input channel per group) dW[c, 0, i, j] =
  sum_{n,h,w} dY[n,c,h,w] X_pad[n,c,s*h+i,s*w+j]: one Conv of X as [1, C*N, H, W] with dY as the kernel
  [C, N, oh, ow], group C, dilation = stride. Measured on ORT 1.32 (benchmarks/kernels.py) at or near
  ConvGrad's speed; other standard forms (per-tap Slice * dY + ReduceSum) were 2-5x slower.
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


def _standard_weight_grad(b, s: Step, dy: str, x: str) -> None:
    """dW (+dB) from standard ops into `<key>_grad`; see the module docstring."""
    op, a = s.op, s.op.attrs
    L, c_in, (h, w) = op.layer, a["in_channels"], a["in_hw"]
    if _pointwise(a):  # [C, N, H, W] -> [C, N*H*W] (Reshape's 0 keeps C)
        dyc, xc = (b.op("Reshape", b.op("Transpose", t, perm=[1, 0, 2, 3], layer=L), b.const([0, -1], "int64"),
                        layer=L) for t in (dy, x))
        dw = b.op("MatMul", dyc, b.op("Transpose", xc, perm=[1, 0], layer=L), layer=L)
        b.node("Reshape", [dw, b.op("Shape", s.param("weight"), layer=L)], [s.grad_name("weight")], layer=L)
    elif a["group"] == c_in and op.kind == "dwconv":
        k, (sh, sw), (oh, ow) = a["kernel"], a["stride"], a["out_hw"]
        top, left = a["pads"][:2]
        # the kernel (dY) spans oh x ow with dilation s, the output must be exactly K x K taps
        end = [k[0] + sh * (oh - 1) - h - top, k[1] + sw * (ow - 1) - w - left]  # bottom, right
        xs = b.op("Reshape", b.op("Transpose", x, perm=[1, 0, 2, 3], layer=L), b.const([1, -1, h, w], "int64"),
                  layer=L)
        pads = [top, left, *end]
        if min(pads) < 0:  # crop with a (negative) Pad first: Conv's pads must be >= 0
            xs = b.op("Pad", xs, b.const([0, 0, top, left, 0, 0, *end], "int64"), layer=L)
            pads = [0, 0, 0, 0]
        kernel = b.op("Transpose", dy, perm=[1, 0, 2, 3], layer=L)  # [C, N, oh, ow]
        g = b.op("Conv", xs, kernel, layer=L, group=c_in, pads=pads, dilations=[sh, sw], strides=[1, 1])
        b.node("Reshape", [g, b.const([c_in, 1, k[0], k[1]], "int64")], [s.grad_name("weight")], layer=L)
    else:
        raise NotImplementedError(f"{L}: portable weight gradient of a {a['kernel']} conv with group "
                                  f"{a['group']} (only pointwise and depthwise convs train)")
    if "bias" in op.params and s.trains("bias"):
        reduce_sum(b, dy, [0, 2, 3], L, out=s.grad_name("bias"))


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
        elif s.trains("weight") and b.portable:
            _standard_weight_grad(b, s, dy, saved["x"])
        elif s.trains("weight"):
            outs = ["", s.grad_name("weight")] + ([s.grad_name("bias")] if bias_grad else [])
            b.node("ConvGrad", [dy, saved["x"], s.param("weight")], outs, layer=op.layer, domain="com.microsoft",
                   **_conv_attrs(op.attrs))
        elif bias_grad:
            reduce_sum(b, dy, [0, 2, 3], op.layer, out=s.grad_name("bias"))
        return [_input_grad(b, s, dy) if s.input_grads[0] else None]
