"""ReLU, ReLU6, Hard-Swish, Hard-Sigmoid: exact backward (saves x) or MobileTL's 1-bit mask (saves bits).

Masked forward calls `mobiletl.<Kind>Mask(x) -> (y, mask)`, masked backward `mobiletl.MaskGrad(dy, mask)`.
Exact backward follows PyTorch's kernels, boundaries included (hardswish_backward: x < -3 -> 0,
x <= 3 -> dy * (x / 3 + 1/2), else dy).
"""

from __future__ import annotations

import math

from ..emit.builder import DOMAIN
from ..emit.functions import MASK_OPS
from .base import Rule, Step


def _exact_forward(b, kind: str, x: str, y: str, layer: str) -> None:
    if kind == "relu":
        b.node("Relu", [x], [y], layer=layer)
    elif kind == "relu6":
        b.node("Clip", [x, b.const(0.0), b.const(6.0)], [y], layer=layer)
    elif kind == "hardswish":
        b.node("HardSwish", [x], [y], layer=layer)
    elif kind == "hardsigmoid":
        b.node("HardSigmoid", [x], [y], layer=layer, alpha=1.0 / 6.0, beta=0.5)
    else:
        raise ValueError(f"unknown activation {kind!r}")


def _exact_backward(b, kind: str, x: str, dy: str, L: str) -> str:
    zero = b.const(0.0)

    def between(lo, hi):
        return b.op("And", b.op("Greater", x, b.const(lo), layer=L), b.op("Less", x, b.const(hi), layer=L), layer=L)

    if kind == "relu":
        return b.op("Where", b.op("Greater", x, zero, layer=L), dy, zero, layer=L)
    if kind == "relu6":
        return b.op("Where", between(0.0, 6.0), dy, zero, layer=L)
    if kind == "hardsigmoid":
        return b.op("Where", between(-3.0, 3.0), b.op("Mul", dy, b.const(1.0 / 6.0), layer=L), zero, layer=L)
    if kind == "hardswish":
        slope = b.op("Add", b.op("Div", x, b.const(3.0), layer=L), b.const(0.5), layer=L)
        middle = b.op("Where", b.op("LessOrEqual", x, b.const(3.0), layer=L), b.op("Mul", dy, slope, layer=L), dy,
                      layer=L)
        return b.op("Where", b.op("Less", x, b.const(-3.0), layer=L), zero, middle, layer=L)
    raise ValueError(f"unknown activation {kind!r}")


class Activation(Rule):
    kinds = tuple(MASK_OPS)

    def forward(self, b, s: Step) -> dict:
        op = s.op
        x, y = op.inputs[0], op.outputs[0]
        if not s.needs_backward:
            _exact_forward(b, op.kind, x, y, op.layer)
            return {}
        if s.masked:
            mask = b.fresh(f"{op.layer}/mask")
            b.node(MASK_OPS[op.kind][0], [x], [y, mask], layer=op.layer, domain=DOMAIN)
            return {"mask": mask}
        _exact_forward(b, op.kind, x, y, op.layer)
        return {"x": x}

    def backward(self, b, s: Step, saved, dys):
        op, (dy,) = s.op, dys
        if "mask" not in saved:
            return [_exact_backward(b, op.kind, saved["x"], dy, op.layer)]
        if math.prod(op.attrs["shape"]) % 8 == 0:  # per sample, so for every batch size
            shape = b.const([-1, *op.attrs["shape"]], "int64")
            dx = b.node("MaskGrad", [dy, saved["mask"], shape], 1, layer=op.layer, domain=DOMAIN)[0]
        else:
            dx = b.node("MaskGradPadded", [dy, saved["mask"]], 1, layer=op.layer, domain=DOMAIN)[0]
        factor = MASK_OPS[op.kind][1]
        return [b.op("Mul", dx, b.const(factor), layer=op.layer) if factor != 1.0 else dx]
