"""The `mobiletl` ONNX domain: sign-mask activations and their 1-bit gradient, as ONNX functions.

Each `<Act>Mask(x) -> (y, mask)` computes the activation and packs the element mask its backward needs into
uint8 (8 elements per byte, element i in bit i % 8: numpy's packbits with bitorder='little').
`MaskGrad(dy, mask) -> dx` is dy where the bit is set, else 0 (`MaskGradPadded` when the element count is not
a multiple of 8). Built from standard opset-18 ops only, so any
ONNX Runtime runs them (ORT inlines functions when it loads the model).

Kernel speeds shape the packing (ORT 1.19 CPU, measured): pack = one integer matmul of the bit planes,
unpack = a table Gather; bitwise ops and short broadcasts run as slow scalar loops.
"""

from __future__ import annotations

import numpy as np
from onnx import FunctionProto, TensorProto, helper, numpy_helper

from .builder import DOMAIN, OPSET

_WEIGHTS = [1, 2, 4, 8, 16, 32, 64, 128]
_BIT_TABLE = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1, bitorder="little")  # [256, 8]


class _Nodes:
    """Tiny node list with auto-named single outputs, for function bodies."""

    def __init__(self):
        self.nodes, self.n = [], 0

    def __call__(self, op, *inputs, out=None, **attrs):
        self.n += 1
        out = out or f"t{self.n}"
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=f"{op}{self.n}", **attrs))
        return out

    def const(self, value, dtype):
        return self("Constant", value=numpy_helper.from_array(np.asarray(value, dtype=dtype)))


def _pack(f: _Nodes, mask: str, out: str) -> None:
    """bool tensor -> uint8 [ceil(E / 8)]: Pad to whole bytes, [8, E/8] bit planes, one [1, 8] @ [8, E/8] integer
    matmul with weights 2^b (QLinearMatMul with unit scales and zero points is exact: sums stay <= 255).
    Measured 3-4x faster than multiplying [E/8, 8] by the weights and reducing (short broadcasts are slow)."""
    flat = f("Reshape", f("Cast", mask, to=TensorProto.UINT8), f.const([-1], np.int64))
    size = f("Size", flat)
    pad = f("Sub", f("Mul", f("Div", f("Add", size, f.const(7, np.int64)), f.const(8, np.int64)),
                     f.const(8, np.int64)), size)  # (-E) mod 8
    pads = f("Concat", f.const([0], np.int64), f("Unsqueeze", pad, f.const([0], np.int64)), axis=0)
    planes = f("Transpose", f("Reshape", f("Pad", flat, pads), f.const([-1, 8], np.int64)), perm=[1, 0])
    one, zero = f.const(1.0, np.float32), f.const(0, np.uint8)
    packed = f("QLinearMatMul", f.const([_WEIGHTS], np.uint8), one, zero, planes, one, zero, one, zero)
    f("Reshape", packed, f.const([-1], np.int64), out=out)


def _mask_function(name: str, doc: str, condition, activation) -> FunctionProto:
    """`condition(f, x)` -> bool mask; `activation(f, x, zero)` writes "y", reading the scalar `zero`.

    `zero` is 0.0 computed from the packed mask, so y depends on the mask: every topological order then packs
    before the activation's consumers run and x can be freed. Without it ORT (default order, functions
    inlined) moved the packing into the backward pass and kept every float x alive across the step.
    """
    f = _Nodes()
    _pack(f, condition(f, "x"), "mask")
    first = f("Slice", "mask", f.const([0], np.int64), f.const([1], np.int64))
    zero = f("Mul", f("Reshape", f("Cast", first, to=TensorProto.FLOAT), f.const([], np.int64)),
             f.const(0.0, np.float32))
    activation(f, "x", zero)
    fn = helper.make_function(DOMAIN, name, ["x"], ["y", "mask"], f.nodes, [helper.make_opsetid("", OPSET)])
    fn.doc_string = doc
    return fn


def _relu(f, x):
    return f("Greater", x, f.const(0.0, np.float32))


def _relu_y(f, x, zero):
    f("Clip", x, zero, out="y")


def _relu6(f, x):
    return f("And", f("Greater", x, f.const(0.0, np.float32)), f("Less", x, f.const(6.0, np.float32)))


def _relu6_y(f, x, zero):
    f("Clip", x, zero, f.const(6.0, np.float32), out="y")


def _hardswish(f, x):
    return f("GreaterOrEqual", x, f.const(0.0, np.float32))


def _hardswish_y(f, x, zero):
    f("Add", f("HardSwish", x), zero, out="y")


def _hardsigmoid(f, x):
    return f("And", f("Greater", x, f.const(-3.0, np.float32)), f("Less", x, f.const(3.0, np.float32)))


def _hardsigmoid_y(f, x, zero):
    f("Add", f("HardSigmoid", x, alpha=1.0 / 6.0, beta=0.5), zero, out="y")


def _mask_grad(padded: bool) -> FunctionProto:
    """Unpack by table lookup: byte v -> its 8 bits as floats (a [256, 8] Gather beats BitwiseAnd + Casts 3x).
    `padded`: the element count is not a multiple of 8, so the pad bits are sliced off (a copy of dy's size,
    which the whole-bytes variant avoids)."""
    f = _Nodes()
    # [1] computed from dy's data, so the unpacking (dy-sized floats) cannot be scheduled before dy exists
    first = f("Slice", f("Reshape", "dy", f.const([-1], np.int64)), f.const([0], np.int64), f.const([1], np.int64))
    one = f("Add", f("Mul", f("Cast", f("IsNaN", first), to=TensorProto.INT64), f.const(0, np.int64)),
            f.const(1, np.int64))
    mask = f("Expand", "mask", one)
    bits = f("Gather", f.const(_BIT_TABLE, np.float32), f("Cast", mask, to=TensorProto.INT32), axis=0)
    if padded:
        shape = f("Shape", "dy")
        flat = f("Reshape", bits, f.const([-1], np.int64))
        bits = f("Slice", flat, f.const([0], np.int64), f("ReduceProd", shape, keepdims=1))
        inputs = ["dy", "mask"]
    else:
        shape = "shape"  # the activation's shape, [-1, C, H, W]: dy may be a broadcastable [N, C, 1, 1]
        inputs = ["dy", "mask", "shape"]
    f("Mul", "dy", f("Reshape", bits, shape), out="dx")
    name = "MaskGradPadded" if padded else "MaskGrad"
    fn = helper.make_function(DOMAIN, name, inputs, ["dx"], f.nodes, [helper.make_opsetid("", OPSET)])
    fn.doc_string = ("dx = dy * unpack(mask); the mask holds one bit per element of dy (last byte padded)."
                     if padded else "dx = dy * unpack(mask) reshaped to `shape` (dy broadcasts to it); the mask "
                     "holds one bit per element, their count a multiple of 8.")
    return fn


MASK_OPS = {  # activation kind -> (function name, factor applied to dx after MaskGrad)
    "relu": ("ReLUMask", 1.0),
    "relu6": ("ReLU6Mask", 1.0),
    "hardswish": ("HardSwishMask", 1.0),
    "hardsigmoid": ("HardSigmoidMask", 1.0 / 6.0),
}


def mobiletl_functions() -> list[FunctionProto]:
    return [
        _mask_function("ReLUMask", "y = relu(x); mask = x > 0 (exact derivative)", _relu, _relu_y),
        _mask_function("ReLU6Mask", "y = clip(x, 0, 6); mask = 0 < x < 6 (exact derivative)", _relu6, _relu6_y),
        _mask_function("HardSwishMask", "y = hardswish(x); mask = x >= 0 (MobileTL's sign approximation)",
                       _hardswish, _hardswish_y),
        _mask_function("HardSigmoidMask", "y = hardsigmoid(x); mask = -3 < x < 3 (derivative is mask / 6)",
                       _hardsigmoid, _hardsigmoid_y),
        _mask_grad(padded=False),
        _mask_grad(padded=True),
    ]
