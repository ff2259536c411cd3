"""The portable artifact contract: MobileTL training as plain ONNX models that any onnxruntime >= 1.17 runs.

Same rules as the ORT-training contract (emit/graphs.training_pass), with `GraphBuilder.portable` set so every
backward uses standard ai.onnx ops (plus the model-local `mobiletl` functions, themselves standard ops), and
the optimizer inside the graph. Files (docs/MANIFEST.md describes them for runtimes in any language):

  train_step.onnx   features f32 [N, C, H, W], labels i64 [N], each trainable tensor by its state_dict key,
                    params f32 [P] (the same values, flat), exp_avg f32 [P], exp_avg_sq f32 [P],
                    step i64 [] (optimizer steps taken so far), lr f32 []
                    -> loss f32 [], logits f32 [N, K], params_out, exp_avg_out, exp_avg_sq_out (f32 [P] each)
                    (SGD: no moments)
  eval_step.onnx    features, labels, each trainable tensor by key -> loss, logits
  inference.onnx    image f32 [N, 3, R, R] -> logits f32 [N, K]: backbone + region, trainable tensors at the
                    initial values in a trailing chunk (see `append_initializers`) so a runner completes it
                    with the trained values without an ONNX library
  parameters.safetensors   trainable tensors by state_dict key (their own shapes, float32)

The optimizer state is ONE flat float32 vector per quantity (`params`, `exp_avg`, `exp_avg_sq`; the manifest
gives each key's offset, shape and size, in state_dict order): the optimizer then runs as a dozen element-wise
nodes on [P] instead of a dozen per tensor (measured 5-8 ms vs 115-180 ms for AdamW,
../shared/portable-runtimes.md), and a runtime keeps three arrays. The forward and backward read the trainable
tensors through per-key inputs, which a runtime binds to views of `params` (no copy). Frozen region tensors
(BN statistics, frozen weights) are initializers of the step models.

AdamW follows torch.optim.AdamW (torch/optim/adamw.py, single-tensor path) operation for operation:
  p <- p * (1 - lr * wd);  m <- m + (1 - b1) * (g - m);  v <- v * b2 + (1 - b2) * g * g
  p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps),  t = step + 1
SGD (onnxblock's SGD, the ORT-training contract's): p <- p - lr * g.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import numpy_helper

from device_runner.inference import field

from ..emit.builder import FLOAT, INT64, GraphBuilder
from ..emit.functions import mobiletl_functions
from ..emit.graphs import backbone_pass, eval_pass, param_keys, shape_of, training_pass
from ..lower import Tape

FILES = {
    "train_step": "train_step.onnx",
    "eval_step": "eval_step.onnx",
    "inference": "inference.onnx",
    "parameters": "parameters.safetensors",
}
BETAS = (0.9, 0.999)
ADAMW_EPS = 1e-8  # torch.optim.AdamW's default (the ORT-training contract's optimizer uses the same)
STATE = {"adamw": ("exp_avg", "exp_avg_sq"), "sgd": ()}  # optimizer state vectors, torch's names


def layout(state: dict[str, np.ndarray], trainable: tuple[str, ...]) -> list[dict]:
    """Where each trainable tensor lives in the flat `params` vector: name, shape, offset, size (elements)."""
    out, offset = [], 0
    for key in trainable:
        shape = list(state[key].shape)
        size = int(np.prod(shape))
        out.append({"name": key, "shape": shape, "offset": offset, "size": size})
        offset += size
    return out


def flatten(state: dict[str, np.ndarray], entries: list[dict]) -> np.ndarray:
    """The flat float32 [P] vector of the tensors in `entries` (layout order)."""
    return np.concatenate([state[e["name"]].reshape(-1) for e in entries]).astype(np.float32)


def _parameter_inputs(b: GraphBuilder, entries: list[dict]) -> None:
    """One input per trainable tensor, named by its key (what the forward and backward read). A runtime binds
    views of its flat `params` buffer (no copy; a `Split` in the graph would copy all P floats for the whole
    step: +20 MiB for mbv3-large top-5)."""
    b.phase = "param"
    for e in entries:
        b.add_input(e["name"], FLOAT, e["shape"])


def _frozen_initializers(b: GraphBuilder, keys: list[str], trainable: tuple[str, ...],
                         state: dict[str, np.ndarray]) -> None:
    for key in keys:
        if key not in trainable:
            b.add_initializer(key, state[key])


def _optimizer(b: GraphBuilder, entries: list[dict], name: str, weight_decay: float) -> list[str]:
    """Flat gradient, then the update; returns the names of the updated state vectors (graph outputs)."""
    b.phase = "opt"
    L = "optimizer"
    # Flatten to [1, n] + one Concat + one Reshape, not a Reshape per gradient: onnxruntime >= 1.2x's
    # ReshapeFusion merges Reshape(Reshape(dW)) pairs into new nodes that its default order then runs at the
    # end of the step, so every dW (and the dY/X it reads) waited there: mbv2 top-5 b32 peaked at 366 MiB
    # instead of 175 (benchmarks/train_step.py)
    flat = [b.op("Flatten", f"{e['name']}_grad", layer=L, axis=0) for e in entries]
    g = b.op("Reshape", b.op("Concat", *flat, layer=L, axis=1) if len(flat) > 1 else flat[0],
             b.const([-1], "int64"), layer=L)
    size = sum(e["size"] for e in entries)
    b.add_input("params", FLOAT, [size])  # the same values as the per-tensor inputs, flat: read only here
    b.add_input("lr", FLOAT, [])
    if name == "sgd":
        b.node("Sub", ["params", b.op("Mul", g, "lr", layer=L)], ["params_out"], layer=L)
        return ["params_out"]
    if name != "adamw":
        raise ValueError(f"unknown optimizer {name!r}; choose adamw or sgd")
    for vec in STATE["adamw"]:
        b.add_input(vec, FLOAT, [size])
    b.add_input("step", INT64, [])
    b1, b2 = (b.const(v) for v in BETAS)
    one = b.const(1.0)
    t = b.op("Add", b.op("Cast", "step", layer=L, to=FLOAT), one, layer=L)
    decayed = b.op("Mul", "params", b.op("Sub", one, b.op("Mul", "lr", b.const(weight_decay), layer=L), layer=L),
                   layer=L)
    m = b.node("Add", ["exp_avg", b.op("Mul", b.op("Sub", g, "exp_avg", layer=L), b.const(1.0 - BETAS[0]),
                                       layer=L)], ["exp_avg_out"], layer=L)[0]
    v = b.node("Add", [b.op("Mul", "exp_avg_sq", b2, layer=L),
                       b.op("Mul", b.op("Mul", g, g, layer=L), b.const(1.0 - BETAS[1]), layer=L)],
               ["exp_avg_sq_out"], layer=L)[0]
    correction1 = b.op("Sub", one, b.op("Pow", b1, t, layer=L), layer=L)
    correction2_sqrt = b.op("Sqrt", b.op("Sub", one, b.op("Pow", b2, t, layer=L), layer=L), layer=L)
    step_size = b.op("Div", "lr", correction1, layer=L)
    denom = b.op("Add", b.op("Div", b.op("Sqrt", v, layer=L), correction2_sqrt, layer=L), b.const(ADAMW_EPS),
                 layer=L)
    update = b.op("Mul", b.op("Div", m, denom, layer=L), step_size, layer=L)
    b.node("Sub", [decayed, update], ["params_out"], layer=L)
    return ["params_out", "exp_avg_out", "exp_avg_sq_out"]


def _user_inputs(b: GraphBuilder, tape: Tape) -> None:
    b.add_input(tape.input, FLOAT, shape_of(tape, tape.input))
    b.add_input("labels", INT64, ["batch"])


def build_train_step(tape: Tape, state: dict[str, np.ndarray], trainable: tuple[str, ...], masked: frozenset,
                     optimizer: str, weight_decay: float, nchwc_block: int = 0) -> onnx.ModelProto:
    """One standard-ONNX model per training step: forward, MobileTL backward, optimizer (module docstring).
    `masked`: activation kinds whose backward reads a 1-bit mask (TrainingPlan.masked_activations).
    Node phases: fwd/, bwd/ (same nodes as the ORT-training graph's but for the standard dW and loss
    gradient), opt/."""
    b = GraphBuilder("mobiletl_train_step", nchwc_block=nchwc_block, portable=True)
    entries = layout(state, trainable)
    _user_inputs(b, tape)
    _parameter_inputs(b, entries)
    _frozen_initializers(b, param_keys(tape), trainable, state)
    b.phase = "fwd"
    training_pass(b, tape, trainable, masked)
    outputs = _optimizer(b, entries, optimizer, weight_decay)
    b.add_output("loss", FLOAT, [])
    b.add_output(tape.output, FLOAT, shape_of(tape, tape.output))
    size = sum(e["size"] for e in entries)
    for name in outputs:
        b.add_output(name, FLOAT, [size])
    return b.model(functions=mobiletl_functions() if masked else ())


def build_eval_step(tape: Tape, state: dict[str, np.ndarray], trainable: tuple[str, ...],
                    nchwc_block: int = 0) -> onnx.ModelProto:
    """features, labels, the trainable tensors by key -> loss, logits (exact forward, dropout off)."""
    b = GraphBuilder("mobiletl_eval_step", nchwc_block=nchwc_block, portable=True)
    _user_inputs(b, tape)
    _parameter_inputs(b, layout(state, trainable))
    _frozen_initializers(b, param_keys(tape), trainable, state)
    b.phase = "fwd"
    eval_pass(b, tape)
    b.add_output("loss", FLOAT, [])
    b.add_output(tape.output, FLOAT, shape_of(tape, tape.output))
    return b.model()


def build_inference(backbone: Tape, region: Tape, state: dict[str, np.ndarray],
                    trainable: tuple[str, ...]) -> tuple[bytes, int]:
    """(serialized image -> logits model, byte offset of its trailing trainable-tensor chunk).

    Bytes [0, offset) are the whole model but the trainable tensors; bytes [offset, end) are one more
    ModelProto.graph field holding only those initializers (initial values). Protobuf merges repeated
    occurrences of a message field, so every ONNX reader sees one graph with all initializers; a runner
    writes its trained model as bytes[:offset] + append_initializers(trained) (device_runner/inference.py
    does exactly this without an ONNX library)."""
    b = GraphBuilder("mobiletl_inference")
    b.add_input(backbone.input, FLOAT, shape_of(backbone, backbone.input))
    backbone_pass(b, backbone)
    b.phase = "fwd"
    eval_pass(b, region, with_loss=False)
    for key in param_keys(backbone) + param_keys(region):
        if key not in trainable:
            b.add_initializer(key, state[key])
    b.add_output(region.output, FLOAT, shape_of(region, region.output))
    head = b.model().SerializeToString()
    tail = append_initializers({k: state[k] for k in trainable})
    return head + tail, len(head)


def append_initializers(tensors: dict[str, np.ndarray]) -> bytes:
    """ModelProto field 7 (graph) holding only float32 initializers, the TensorProtos encoded by onnx's own
    serializer. The runner encodes them by hand (device_runner/inference.py); a test checks the bytes agree."""
    graph = onnx.GraphProto()
    graph.initializer.extend(numpy_helper.from_array(np.ascontiguousarray(v, np.float32), k) for k, v in tensors.items())
    return field(7, graph.SerializeToString())


def write_parameters(path, state: dict[str, np.ndarray], trainable: tuple[str, ...], optimizer: str) -> None:
    """parameters.safetensors: the initial trainable tensors (optimizer state starts at zero, step 0)."""
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(state[k], np.float32) for k in trainable}, str(path),
              metadata={"format": "mobiletl-portable/1", "optimizer": optimizer, "step": "0"})
    os.chmod(path, 0o644)  # safetensors writes 0600 (a temporary file renamed); the export's other files are 0644


def manifest_section(entries: list[dict], optimizer: str, weight_decay: float, inference_offset: int) -> dict:
    """The manifest's `portable` object (docs/MANIFEST.md)."""
    state = list(STATE[optimizer])
    train_inputs = {"features": "features", "labels": "labels", "params": "params", "lr": "lr"}
    # besides these roles, both step models have one input per entry of `parameters`, named by its key
    train_outputs = {"loss": "loss", "logits": "logits", "params": "params_out"}
    if optimizer == "adamw":
        train_inputs.update({"step": "step", **{v: v for v in state}})
        train_outputs.update({v: f"{v}_out" for v in state})
    return {
        "parameters": entries,
        "parameter_count": sum(e["size"] for e in entries),
        "optimizer": {"name": optimizer, "state": state,
                      **({"betas": list(BETAS), "eps": ADAMW_EPS, "weight_decay": weight_decay}
                         if optimizer == "adamw" else {})},
        "train_step": {"inputs": train_inputs, "outputs": train_outputs},
        "eval_step": {"inputs": {"features": "features", "labels": "labels"},
                      "outputs": {"loss": "loss", "logits": "logits"}},
        "inference": {"inputs": {"image": "image"}, "outputs": {"logits": "logits"},
                      "trainable_offset": inference_offset},
        "min_onnxruntime": "1.17",
    }

