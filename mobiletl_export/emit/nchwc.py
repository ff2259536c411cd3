"""Depthwise convolutions on ONNX Runtime's NCHWc kernels (x86 only), with the weight reordered at run time.

ORT's fast depthwise kernel lives in its internal `com.microsoft.nchwc` domain: `ReorderInput` (NCHW ->
channels blocked by B), `Conv` on blocked tensors, `ReorderOutput`. Its layout transformer only rewrites Convs
whose weight is a constant initializer; in a training graph the weights are inputs, so ORT falls back to a
generic im2col path (forward + backward of a layer 2-6x slower: benchmarks/kernels.py). Here the graph
reorders the weight itself (depthwise layout OIHWBo: Reshape [C/B, B, K*K] -> Transpose -> Reshape), so the
blocked kernel runs with a trainable weight.

Not portable: the kernels exist only in x86-64 builds (B = 8 with AVX2, 16 with AVX-512), and B is baked in
at export; `nchwc_block_size()` reads the B of the ONNX Runtime that runs here (the runner checks it).
"""

from __future__ import annotations

from device_runner.ort import NCHWC, nchwc_block_size

from .builder import GraphBuilder

TARGETS = {"generic": 0, "x86-avx2": 8, "x86-avx512": 16}  # --target -> NCHWc block size (0: portable graph)


def target_block(target: str) -> int:
    """Block size for --target; "host" means this machine's ONNX Runtime (generic where it has no NCHWc)."""
    if target == "host":
        return nchwc_block_size()
    if target not in TARGETS:
        raise ValueError(f"unknown --target {target!r}; choose from host, {', '.join(TARGETS)}")
    return TARGETS[target]


def supports_depthwise(a: dict, block: int) -> bool:
    """Can a depthwise conv with attributes `a` (see lower.Tape.conv) run blocked? Square odd kernel,
    symmetric 'same' padding, stride 1 or 2 (stride 2: even input), channels a multiple of B."""
    k, s = a["kernel"][0], a["stride"][0]
    p = k // 2
    return (block > 0 and a["kernel"][0] == a["kernel"][1] and k % 2 == 1 and tuple(a["stride"]) == (s, s)
            and s in (1, 2) and list(a["pads"]) == [p] * 4 and tuple(a["dilation"]) == (1, 1)
            and a["in_channels"] % block == 0 and (s == 1 or all(n % 2 == 0 for n in a["in_hw"])))


def flip(b: GraphBuilder, w: str, layer: str) -> str:
    """W[:, :, ::-1, ::-1]: the kernel of the input gradient of a stride-1 correlation (generic path too)."""
    end = -(2**62)
    return b.op("Slice", w, b.const([-1, -1], "int64"), b.const([end, end], "int64"), b.const([2, 3], "int64"),
                b.const([-1, -1], "int64"), layer=layer)


def blocked_weight(b: GraphBuilder, w: str, channels: int, k: int, layer: str) -> str:
    """Depthwise [C, 1, K, K] -> OIHWBo (what the blocked kernel reads), by Reshape/Transpose/Reshape."""
    block = b.nchwc_block
    t = b.op("Reshape", w, b.const([channels // block, block, k * k], "int64"), layer=layer)
    t = b.op("Transpose", t, perm=[0, 2, 1], layer=layer)
    return b.op("Reshape", t, b.const([channels, 1, k, k], "int64"), layer=layer)


def _blocked_conv(b: GraphBuilder, blocked_x: str, w: str, a: dict, stride: int, layer: str,
                  out: str | None) -> str:
    c, k = a["in_channels"], a["kernel"][0]
    y = b.op("Conv", blocked_x, blocked_weight(b, w, c, k, layer), domain=NCHWC, layer=layer, group=c,
             kernel_shape=[k, k], pads=[k // 2] * 4, strides=[stride, stride])
    outputs = [out] if out else 1
    return b.node("ReorderOutput", [y], outputs, domain=NCHWC, layer=layer, channels_last=0, channels=c)[0]


def depthwise(b: GraphBuilder, x: str, w: str, a: dict, layer: str, out: str | None = None) -> str:
    """y = Conv(x, w, group=C) on the blocked kernel; returns the blocked x (what the weight gradient reads)."""
    blocked = b.op("ReorderInput", x, domain=NCHWC, layer=layer, channels_last=0)
    _blocked_conv(b, blocked, w, a, a["stride"][0], layer, out)
    return blocked


def depthwise_weight_grad(b: GraphBuilder, blocked_x: str, dy: str, a: dict, layer: str, out: str) -> None:
    """dW[c, i, j] = sum over n, h, w of dy[n, c, h, w] * x_pad[n, c, s*h + i, s*w + j], as ONE blocked
    depthwise Conv whatever the batch: the padded samples of x are stacked along the height (T rows each,
    the zero rows between samples shared) and dy, stacked the same way, is the kernel (dilation s), so the
    output is exactly the K x K taps. Measured 3-7x faster than ConvGrad's dW at batch 8."""
    block, c, k, s = b.nchwc_block, a["in_channels"], a["kernel"][0], a["stride"][0]
    (h, w), (oh, ow), p = a["in_hw"], a["out_hw"], k // 2
    rows = -(-(h + p) // s) * s  # T: rows per stacked sample, a multiple of the stride
    pad_right = k - w - p + s * (ow - 1)

    def stack(t: str, shape: list[int], pads: list[int], last: list[int]) -> str:
        t = b.op("Reshape", t, b.const([0, c // block, *shape, block], "int64"), layer=layer)
        t = b.op("Pad", t, b.const(pads, "int64"), layer=layer)
        t = b.op("Reshape", t, b.const([0, c // block, -1], "int64"), layer=layer)
        t = b.op("Transpose", t, perm=[1, 0, 2], layer=layer)  # samples inside each channel block
        return b.op("Reshape", t, b.const(last, "int64"), layer=layer)

    x = stack(blocked_x, [h, w], [0, 0, p, p, 0, 0, 0, rows - h - p, pad_right, 0], [1, c, -1, w + p + pad_right])
    dyb = b.op("ReorderInput", dy, domain=NCHWC, layer=layer, channels_last=0)
    kernel = stack(dyb, [oh, ow], [0, 0, 0, 0, 0, 0, 0, rows // s - oh, 0, 0], [c, 1, -1, ow])
    g = b.op("Conv", x, kernel, domain=NCHWC, layer=layer, group=c, dilations=[s, s], strides=[1, 1],
             pads=[0, 0, k - s, 0])
    g = b.op("ReorderOutput", g, domain=NCHWC, layer=layer, channels_last=0, channels=c)
    b.node("Reshape", [g, b.const([c, 1, k, k], "int64")], [out], layer=layer)


def depthwise_input_grad(b: GraphBuilder, dy: str, w: str, a: dict, layer: str) -> str:
    """dx of a depthwise conv: correlation of dy (stride 2: zero-interleaved) with the flipped kernel."""
    c, (oh, ow) = a["in_channels"], a["out_hw"]
    if a["stride"][0] == 1:
        blocked = b.op("ReorderInput", dy, domain=NCHWC, layer=layer, channels_last=0)
    else:  # zero insertion in the blocked layout: [N, C/B, B, oh, ow] -> [N, C/B, oh, 1, ow, 1, B] -> pad 1
        block = b.nchwc_block
        t = b.op("Reshape", dy, b.const([-1, c // block, block, oh, ow], "int64"), layer=layer)
        t = b.op("Transpose", t, perm=[0, 1, 3, 4, 2], layer=layer)
        t = b.op("Reshape", t, b.const([-1, c // block, oh, 1, ow, 1, block], "int64"), layer=layer)
        t = b.op("Pad", t, b.const([0] * 7 + [0, 0, 0, 1, 0, 1, 0], "int64"), layer=layer)
        blocked = b.op("Reshape", t, b.const([-1, c, 2 * oh, 2 * ow], "int64"), layer=layer)  # blocked data
    return _blocked_conv(b, blocked, flip(b, w, layer), a, 1, layer, None)
