"""Per-layer cost of what the compiler emits, against the single ORT kernel a naive emitter would use and PyTorch.

usage: python benchmarks/kernels.py [--batch 8] [--threads 2] [--runs 30]

Each row is one layer of MobileNetV2's top blocks (224 px), forward + backward (y, dX, dW), built by the conv
rule itself (rules/conv.py) into a one-layer ONNX model with the weight as an input, as in a training graph:
  ConvGrad   Conv forward + com.microsoft ConvGrad (dX and dW in one kernel): the obvious emission
  generic    ours, --target generic (portable graph)
  nchwc      ours, --target host (ORT's x86 blocked kernels; emit/nchwc.py), where the layer qualifies
  pytorch    F.conv2d forward + autograd backward
Masks: ReLU6 forward + backward on the expanded tensor, exact (Clip, saves x, Where) vs ours (1-bit mask).
Median ms over --runs after warm-up; the variants of a row alternate, so a slow spell hits them alike.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import onnxruntime as ort

from device_runner.ort import nchwc_block_size
from mobiletl_export.emit.builder import FLOAT, GraphBuilder
from mobiletl_export.emit.functions import mobiletl_functions
from mobiletl_export.rules import RULES, Op, Step

LAYERS = [  # name, kind, in channels, out channels, kernel, stride, input size
    ("features.13 dw 3x3", "dwconv", 576, 576, 3, 1, 14),
    ("features.14 dw 3x3 s2", "dwconv", 576, 576, 3, 2, 14),
    ("features.15 dw 3x3", "dwconv", 960, 960, 3, 1, 7),
    ("features.15 expand 1x1", "conv", 160, 960, 1, 1, 7),
    ("features.15 project 1x1", "conv", 960, 160, 1, 1, 7),
]


def conv_op(kind, cin, cout, k, stride, hw) -> Op:
    p = k // 2
    out = (hw + 2 * p - k) // stride + 1
    return Op(kind, "layer", ["x"], ["y"], {"weight": "w"},
              dict(kernel=(k, k), stride=(stride, stride), pads=(p, p, p, p), dilation=(1, 1),
                   group=cin if kind == "dwconv" else 1, in_hw=(hw, hw), out_hw=(out, out), in_channels=cin,
                   output_padding=[hw - ((out - 1) * stride - 2 * p + k)] * 2))


def layer_model(op: Op, variant: str) -> bytes:
    b = GraphBuilder("layer", nchwc_block=nchwc_block_size() if variant == "nchwc" else 0)
    for name in ("x", "w", "dy"):
        b.add_input(name, FLOAT, None)
    if variant == "ConvGrad":
        a = op.attrs
        attrs = dict(kernel_shape=list(a["kernel"]), strides=list(a["stride"]), pads=list(a["pads"]),
                     group=a["group"])
        b.node("Conv", ["x", "w"], ["y"], **attrs)
        b.node("ConvGrad", ["dy", "x", "w"], ["dx", "w_grad"], domain="com.microsoft", **attrs)
    else:
        step = Step(op, "train", trained=frozenset({"weight"}), input_grads=(True,))
        saved = RULES[op.kind].forward(b, step)
        (dx,) = RULES[op.kind].backward(b, step, saved, ["dy"])
        b.node("Identity", [dx], ["dx"])
    for name in ("y", "dx", "w_grad"):
        b.add_output(name, FLOAT, None)
    return b.model().SerializeToString()


def mask_model(masked: bool) -> bytes:
    op = Op("relu6", "act", ["x"], ["y"], attrs={"shape": (960, 7, 7)})
    b = GraphBuilder("act")
    b.add_input("x", FLOAT, None)
    b.add_input("dy", FLOAT, None)
    step = Step(op, "train", masked=masked, input_grads=(True,))
    saved = RULES["relu6"].forward(b, step)
    (dx,) = RULES["relu6"].backward(b, step, saved, ["dy"])
    b.node("Identity", [dx], ["dx"])
    b.add_output("y", FLOAT, None)
    b.add_output("dx", FLOAT, None)
    return b.model(functions=mobiletl_functions() if masked else ()).SerializeToString()


def session(model: bytes, threads: int):
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level = threads, 1, 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def torch_layer(op: Op, x, w, dy, threads: int):
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    a = op.attrs
    xt, wt, dyt = (torch.from_numpy(v) for v in (x, w, dy))
    xt.requires_grad_(True)
    wt.requires_grad_(True)

    def run():
        y = F.conv2d(xt, wt, stride=a["stride"], padding=a["pads"][0], groups=a["group"])
        y.backward(dyt)
        xt.grad = wt.grad = None

    return run


def timed(fns: dict, runs: int) -> dict:
    for fn in fns.values():
        for _ in range(3):
            fn()
    times = {k: [] for k in fns}
    for _ in range(runs):
        for k, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[k].append((time.perf_counter() - start) * 1000)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=30)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    block = nchwc_block_size()
    print(f"batch {args.batch}, {args.threads} threads, NCHWc block size here: {block or 'none'}; median ms")
    print(f"{'layer (fwd + dX + dW)':<26} {'ConvGrad':>9} {'generic':>9} {'nchwc':>9} {'pytorch':>9}")
    for name, kind, cin, cout, k, stride, hw in LAYERS:
        op = conv_op(kind, cin, cout, k, stride, hw)
        out = op.attrs["out_hw"][0]
        x = rng.standard_normal((args.batch, cin, hw, hw), dtype=np.float32)
        w = rng.standard_normal((cout, 1 if kind == "dwconv" else cin, k, k), dtype=np.float32)
        dy = rng.standard_normal((args.batch, cout, out, out), dtype=np.float32)
        feeds = {"x": x, "w": w, "dy": dy}
        variants = ["ConvGrad", "generic"] + (["nchwc"] if block and kind == "dwconv" else [])
        sessions = {v: session(layer_model(op, v), args.threads) for v in variants}
        results = {v: s.run(None, feeds) for v, s in sessions.items()}
        for v in variants[1:]:  # every variant computes the same y, dX, dW
            for got, want in zip(results[v], results["ConvGrad"]):
                np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3 * np.abs(want).max())
        fns = {v: (lambda s=s: s.run(None, feeds)) for v, s in sessions.items()}
        fns["pytorch"] = torch_layer(op, x, w, dy, args.threads)
        t = timed(fns, args.runs)
        cells = [f"{t[v]:9.2f}" if v in t else f"{'-':>9}" for v in ("ConvGrad", "generic", "nchwc", "pytorch")]
        print(f"{name:<26} " + " ".join(cells))
    x = (rng.standard_normal((args.batch, 960, 7, 7), dtype=np.float32) * 4).astype(np.float32)
    dy = rng.standard_normal(x.shape, dtype=np.float32)
    exact, masked = session(mask_model(False), args.threads), session(mask_model(True), args.threads)
    np.testing.assert_array_equal(exact.run(None, {"x": x, "dy": dy})[1], masked.run(None, {"x": x, "dy": dy})[1])
    t = timed({"exact": lambda: exact.run(None, {"x": x, "dy": dy}),
               "mask": lambda: masked.run(None, {"x": x, "dy": dy})}, args.runs)
    print(f"ReLU6 fwd+bwd [{args.batch},960,7,7]: exact {t['exact']:.2f} ms, 1-bit mask {t['mask']:.2f} ms")


if __name__ == "__main__":
    main()
