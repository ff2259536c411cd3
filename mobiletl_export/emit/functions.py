"""The `mobiletl` ONNX domain: sign-mask activations and their 1-bit gradient, as ONNX functions.

Each `<Act>Mask(x) -> (y, mask)` computes the activation and packs the element mask its backward needs into
uint8 (8 elements per byte, element i in bit i % 8: numpy's packbits with bitorder='little').
`MaskGrad(dy, mask) -> dx` is dy where the bit is set, else 0. Built from standard opset-18 ops only, so any
ONNX Runtime runs them (ORT inlines functions when it loads the model).

Kernel gaps shape the packing: ReduceSum has no uint8 kernel (pack in int32, then Cast), Greater/Equal have
no uint8 kernel (unpack with BitwiseAnd, then Cast to bool).
"""

from __future__ import annotations

import numpy as np
from onnx import FunctionProto, TensorProto, helper, numpy_helper

from .builder import DOMAIN, OPSET

_WEIGHTS = [1, 2, 4, 8, 16, 32, 64, 128]


class _Nodes:
    """Tiny node list with auto-named single outputs, for function bodies."""

    def __init__(self):
        self.nodes, self.n = [], 0

    def __call__(self, op, *inputs, out=None, **attrs):
        self.n += 1
        out = out or f"t{self.n}"
        self.nodes.append(helper.make_node(op, list(inputs), [out], **attrs))
        return out

    def const(self, value, dtype):
        return self("Constant", value=numpy_helper.from_array(np.asarray(value, dtype=dtype)))


def _pack(f: _Nodes, mask: str, out: str) -> None:
    """bool tensor -> uint8 [ceil(E / 8)]."""
    flat = f("Reshape", f("Cast", mask, to=TensorProto.INT32), f.const([-1], np.int64))
    size = f("Size", flat)
    pad = f("Sub", f("Mul", f("Div", f("Add", size, f.const(7, np.int64)), f.const(8, np.int64)),
                     f.const(8, np.int64)), size)  # (-E) mod 8
    pads = f("Concat", f.const([0], np.int64), f("Unsqueeze", pad, f.const([0], np.int64)), axis=0)
    bytes8 = f("Reshape", f("Pad", flat, pads), f.const([-1, 8], np.int64))
    weighted = f("Mul", bytes8, f.const(_WEIGHTS, np.int32))
    f("Cast", f("ReduceSum", weighted, f.const([1], np.int64), keepdims=0), to=TensorProto.UINT8, out=out)


def _mask_function(name: str, doc: str, body) -> FunctionProto:
    f = _Nodes()
    mask = body(f, "x")
    _pack(f, mask, "mask")
    fn = helper.make_function(DOMAIN, name, ["x"], ["y", "mask"], f.nodes, [helper.make_opsetid("", OPSET)])
    fn.doc_string = doc
    return fn


def _relu(f, x):
    zero = f.const(0.0, np.float32)
    f("Relu", x, out="y")
    return f("Greater", x, zero)


def _relu6(f, x):
    zero, six = f.const(0.0, np.float32), f.const(6.0, np.float32)
    f("Clip", x, zero, six, out="y")
    return f("And", f("Greater", x, zero), f("Less", x, six))


def _hardswish(f, x):
    f("HardSwish", x, out="y")
    return f("GreaterOrEqual", x, f.const(0.0, np.float32))


def _hardsigmoid(f, x):
    f("HardSigmoid", x, alpha=1.0 / 6.0, beta=0.5, out="y")
    return f("And", f("Greater", x, f.const(-3.0, np.float32)), f("Less", x, f.const(3.0, np.float32)))


def _mask_grad() -> FunctionProto:
    f = _Nodes()
    bits = f("BitwiseAnd", f("Unsqueeze", "mask", f.const([1], np.int64)), f.const(_WEIGHTS, np.uint8))
    flat = f("Reshape", f("Cast", f("Cast", bits, to=TensorProto.BOOL), to=TensorProto.FLOAT),
             f.const([-1], np.int64))
    shape = f("Shape", "dy")
    keep = f("Slice", flat, f.const([0], np.int64), f("ReduceProd", shape, keepdims=1))
    f("Mul", "dy", f("Reshape", keep, shape), out="dx")
    fn = helper.make_function(DOMAIN, "MaskGrad", ["dy", "mask"], ["dx"], f.nodes, [helper.make_opsetid("", OPSET)])
    fn.doc_string = "dx = dy * unpack(mask); the mask holds one bit per element of dy."
    return fn


MASK_OPS = {  # activation kind -> (function name, factor applied to dx after MaskGrad)
    "relu": ("ReLUMask", 1.0),
    "relu6": ("ReLU6Mask", 1.0),
    "hardswish": ("HardSwishMask", 1.0),
    "hardsigmoid": ("HardSigmoidMask", 1.0 / 6.0),
}


def mobiletl_functions() -> list[FunctionProto]:
    return [
        _mask_function("ReLUMask", "y = relu(x); mask = x > 0 (exact derivative)", _relu),
        _mask_function("ReLU6Mask", "y = clip(x, 0, 6); mask = 0 < x < 6 (exact derivative)", _relu6),
        _mask_function("HardSwishMask", "y = hardswish(x); mask = x >= 0 (MobileTL's sign approximation)",
                       _hardswish),
        _mask_function("HardSigmoidMask", "y = hardsigmoid(x); mask = -3 < x < 3 (derivative is mask / 6)",
                       _hardsigmoid),
        _mask_grad(),
    ]
