"""Stored activations of a training graph, read from the graph itself.

A tensor is *stored* when a forward node (`fwd/...`) or a user input produces it and a backward node
(`bwd/...`) reads it: it must stay alive from the forward pass until the backward uses it. Parameters and
constants are not activations. Sizes are measured by running the graph once with ONNX Runtime and reading
the tensors' real dtypes and shapes (packed masks included), so nothing here is a hand formula.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

USER_INPUTS = ("features", "labels")


@dataclass(frozen=True)
class StoredTensor:
    name: str
    dtype: str
    shape: tuple
    nbytes: int


def stored_tensor_names(model: onnx.ModelProto) -> list[str]:
    produced_fwd = set(USER_INPUTS) & {i.name for i in model.graph.input}
    for node in model.graph.node:
        if node.name.startswith("fwd/") and node.op_type != "Constant":
            produced_fwd.update(o for o in node.output if o)
    names: dict[str, None] = {}
    for node in model.graph.node:
        if node.name.startswith("bwd/"):
            for i in node.input:
                if i in produced_fwd:
                    names[i] = None
    return list(names)


def measure_tensors(model: onnx.ModelProto, names: list[str], batch: int, seed: int = 0) -> dict[str, tuple]:
    """Run `model` once on random inputs of `batch` samples; (dtype, shape, nbytes) of each named tensor."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {o.name for o in probe.graph.output}
    probe.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names if n not in existing)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    feeds = {}
    for inp in session.get_inputs():
        dims = [batch if not isinstance(d, int) else d for d in inp.shape]
        if inp.name == "labels":
            feeds[inp.name] = rng.integers(0, _num_classes(model), size=dims).astype(np.int64)
        elif inp.type == "tensor(bool)":
            feeds[inp.name] = np.ones(dims, dtype=bool)
        elif inp.type == "tensor(int64)":  # the portable step's optimizer step count
            feeds[inp.name] = np.zeros(dims, np.int64)
        elif inp.name == "exp_avg_sq":  # Adam's second moment is >= 0
            feeds[inp.name] = np.zeros(dims, np.float32)
        else:  # small parameters keep activations in a sane range
            scale = 1.0 if inp.name in USER_INPUTS or inp.name == "image" else 0.1
            feeds[inp.name] = np.asarray(rng.standard_normal(dims) * scale, np.float32)
    values = session.run(names, feeds)
    return {n: (str(v.dtype), tuple(v.shape), int(v.nbytes)) for n, v in zip(names, values)}


def measure_stored(model: onnx.ModelProto, batch: int, seed: int = 0) -> list[StoredTensor]:
    """Every stored tensor of the training graph, measured at `batch` samples."""
    names = stored_tensor_names(model)
    sizes = measure_tensors(model, names, batch, seed)
    return [StoredTensor(n, *sizes[n]) for n in names]


def _num_classes(model: onnx.ModelProto) -> int:
    for out in model.graph.output:
        if out.name == "logits":
            return out.type.tensor_type.shape.dim[1].dim_value
    raise ValueError("training graph has no logits output")
