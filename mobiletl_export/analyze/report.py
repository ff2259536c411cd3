"""The memory and FLOPs report of an artifact folder, computed from its graphs.

Per block (each trained IRB, the tail, the head; the frozen stem and lower IRBs only run forward):
  stored   bytes of tensors the training pass keeps for its backward (forward-produced, backward-read), at
           their real dtype and packed size, measured by running the graph at the given batch; a tensor is
           counted in the block whose backward reads it first (so a block's input counts in that block)
  fwd/bwd  FLOPs of Conv, ConvGrad, ConvTranspose, Gemm, MatMul nodes, as 2 x multiply-adds; element-wise
           ops (BN, activations, masks) are not counted
  params   trainable parameters
Totals add the peak of live tensors over the training graph's node order (a liveness pass: a tensor lives
from the node that produces it to its last reader), the parameters, ORT's gradient accumulation buffers
(one per trainable tensor) and the optimizer state (AdamW: two moments; SGD: none). The liveness pass runs
on the graph with the `mobiletl` functions inlined (as ORT runs it), so the temporaries of mask packing count.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx.inliner

from device_runner.ort import nchwc_mismatch

from ..plan import resolve_hardswish_backward, variant_note
from .memory import USER_INPUTS, measure_tensors, stored_tensor_names

MATMUL_OPS = {"Conv", "ConvGrad", "ConvTranspose", "Gemm", "MatMul"}


@dataclass
class BlockReport:
    name: str
    stored_bytes: int = 0
    fwd_flops: int = 0
    bwd_flops: int = 0
    trainable_params: int = 0
    portable_stored_bytes: int = 0  # the same measurements on the portable train_step.onnx
    portable_peak_live_bytes: int = 0  # its liveness peak, parameter/optimizer state vectors excluded (in place)


@dataclass
class Report:
    model: str
    method: str
    top_k: int
    batch: int
    resolution: int
    blocks: list = field(default_factory=list)
    stored_bytes: int = 0
    peak_live_bytes: int = 0
    param_bytes: int = 0
    grad_bytes: int = 0
    optimizer_bytes: int = 0
    training_bytes: int = 0  # parameters + gradients + optimizer state + peak live tensors
    fwd_flops: int = 0
    bwd_flops: int = 0
    backbone_fwd_flops: int = 0
    trainable_params: int = 0
    hardswish_backward: str = ""  # "sign" (mobiletl's 1-bit mask) or "exact" (manifest field; plan.py)

    def to_json(self) -> dict:
        return asdict(self)


def _layer(node: onnx.NodeProto) -> str:
    parts = node.name.split("/")
    return parts[1] if len(parts) > 2 else ""


def _block_of(layer: str, manifest: dict) -> str | None:
    for block in manifest["trained_blocks"]:
        if layer == block or layer.startswith(block + "."):
            return block
    if any(layer == t or layer.startswith(t + ".") for t in manifest["tail_layers"]):
        return "tail"
    if layer.startswith("head.") or layer == "loss" or any(layer.startswith(h) for h in manifest["head_layers"]):
        return "head"
    return None


def _flops(node: onnx.NodeProto, shape) -> int:
    """2 x multiply-adds of the matmul-like ops."""
    op = node.op_type
    if op == "Conv":
        return 2 * int(np.prod(shape(node.output[0]))) * int(np.prod(shape(node.input[1])[1:]))
    if op == "ConvGrad":  # dW always here; dX when asked for
        per = 2 * int(np.prod(shape(node.input[0]))) * int(np.prod(shape(node.input[2])[1:]))
        return per * (2 if node.output[0] else 1)
    if op == "ConvTranspose":
        return 2 * int(np.prod(shape(node.input[0]))) * int(np.prod(shape(node.input[1])[1:]))
    if op in ("Gemm", "MatMul"):
        a, out = shape(node.input[0]), shape(node.output[0])
        trans_a = any(at.name == "transA" and at.i for at in node.attribute)
        k = a[0] if trans_a else a[-1]
        return 2 * int(np.prod(out)) * int(k)
    return 0


def _shapes(model: onnx.ModelProto, batch: int) -> dict:
    names = sorted({o for n in model.graph.node for o in n.output if o and n.op_type != "Constant"})
    sizes = measure_tensors(model, names, batch)
    for inp in model.graph.input:
        dims = [d.dim_value if d.HasField("dim_value") else batch for d in inp.type.tensor_type.shape.dim]
        itemsize = {onnx.TensorProto.FLOAT: 4, onnx.TensorProto.INT64: 8, onnx.TensorProto.BOOL: 1}.get(
            inp.type.tensor_type.elem_type, 4)
        sizes[inp.name] = ("", tuple(dims), int(np.prod(dims)) * itemsize)
    for init in model.graph.initializer:  # the backbone's parameters (shapes only are used)
        sizes[init.name] = ("", tuple(init.dims), 0)
    return sizes


def _liveness_peak(model: onnx.ModelProto, sizes: dict, params: set) -> int:
    nodes = list(model.graph.node)
    last_use: dict[str, int] = {}
    for i, node in enumerate(nodes):
        for name in node.input:
            last_use[name] = i
    end = len(nodes)
    for out in model.graph.output:
        last_use[out.name] = end
    born = {name: 0 for name in USER_INPUTS if name in sizes}
    for i, node in enumerate(nodes):
        for name in node.output:
            if name and node.op_type != "Constant":
                born[name] = i
    delta = np.zeros(end + 2, np.int64)
    for name, start in born.items():
        if name in params or name not in sizes:
            continue
        stop = last_use.get(name, start)
        delta[start] += sizes[name][2]
        delta[stop + 1] -= sizes[name][2]
    return int(np.cumsum(delta).max())


def analyze_folder(folder: Path, batch: int = 8) -> Report:
    folder = Path(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    missing = [k for k in ("trained_blocks", "tail_layers", "head_layers") if k not in manifest]
    if missing:
        raise ValueError(f"{folder}/manifest.json lacks {', '.join(missing)}: it was written by an older "
                         "mobiletl-export; export the folder again")
    why = nchwc_mismatch(manifest.get("target", {}).get("nchwc_block", 0))
    if why:
        raise ValueError(f"cannot analyse {folder}: the report runs its training graph, but {why}")
    training = onnx.load(str(folder / manifest["files"]["training_model"]))
    inlined = onnx.inliner.inline_local_functions(training)  # keeps every graph-level tensor's name
    sizes = _shapes(inlined, batch)  # one run measures both views
    shape = lambda name: sizes[name][1]  # noqa: E731
    params = set(manifest["trainable"]) | set(manifest["frozen"])
    params |= {i.name for i in training.graph.input if i.name.endswith(".accumulation.buffer")} | {"lazy_reset_grad"}
    blocks = {b: BlockReport(b) for b in manifest["trained_blocks"] + ["tail", "head"]}

    for node in training.graph.node:
        block = _block_of(_layer(node), manifest)
        if block is None or node.op_type not in MATMUL_OPS:
            continue
        if node.name.startswith("fwd/"):
            blocks[block].fwd_flops += _flops(node, shape)
        elif node.name.startswith("bwd/"):
            blocks[block].bwd_flops += _flops(node, shape)

    first_reader = {}
    for node in training.graph.node:
        if node.name.startswith("bwd/"):
            for name in node.input:
                first_reader.setdefault(name, node)
    for name in stored_tensor_names(training):
        block = _block_of(_layer(first_reader[name]), manifest) or "head"
        blocks[block].stored_bytes += sizes[name][2]

    param_shapes = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in training.graph.input}
    for key in manifest["trainable"]:
        block = _block_of(key.rsplit(".", 1)[0], manifest) or "head"
        blocks[block].trainable_params += int(np.prod(param_shapes[key]))

    trainable_bytes = 4 * sum(b.trainable_params for b in blocks.values())
    frozen_bytes = 4 * sum(int(np.prod(param_shapes[k])) for k in manifest["frozen"])
    report = Report(manifest["model"], manifest["method"], manifest["top_k"], batch, manifest["resolution"],
                    [asdict(b) for b in blocks.values()])
    report.stored_bytes = sum(b.stored_bytes for b in blocks.values())
    report.peak_live_bytes = _liveness_peak(inlined, sizes, params)
    report.param_bytes = trainable_bytes + frozen_bytes
    report.grad_bytes = trainable_bytes
    report.optimizer_bytes = 2 * trainable_bytes if manifest["optimizer"]["name"] == "adamw" else 0
    report.training_bytes = report.param_bytes + report.grad_bytes + report.optimizer_bytes + report.peak_live_bytes
    report.fwd_flops = sum(b.fwd_flops for b in blocks.values())
    report.bwd_flops = sum(b.bwd_flops for b in blocks.values())
    report.trainable_params = trainable_bytes // 4
    # exports written before the field get the method's own (mobiletl always used the sign mask)
    report.hardswish_backward = resolve_hardswish_backward(manifest["method"], manifest.get("hardswish_backward"))
    _analyze_portable(report, folder, manifest, batch)
    backbone = onnx.load(str(folder / manifest["files"]["backbone"]))
    bsizes = _shapes(backbone, batch)
    report.backbone_fwd_flops = sum(_flops(n, lambda name: bsizes[name][1]) for n in backbone.graph.node)
    return report


def _analyze_portable(report: Report, folder: Path, manifest: dict, batch: int) -> None:
    """Stored bytes and liveness peak of train_step.onnx. The state vectors (params, moments, in and out) are
    held once by the runner, which updates them in place (device_runner/portable.py), so they count with the
    parameters and optimizer state, not as live tensors."""
    step = onnx.load(str(folder / manifest["files"]["train_step"]))
    inlined = onnx.inliner.inline_local_functions(step)
    sizes = _shapes(inlined, batch)
    report.portable_stored_bytes = sum(sizes[name][2] for name in stored_tensor_names(step))
    io = manifest["portable"]["train_step"]
    state = {io["inputs"][r] for r in io["inputs"] if r not in ("features", "labels")} | {
        io["outputs"][r] for r in io["outputs"] if r not in ("loss", "logits")}
    report.portable_peak_live_bytes = _liveness_peak(inlined, sizes, state)


def mib(n: int) -> str:
    return f"{n / 2**20:,.2f}"


def format_report(r: Report) -> str:
    lines = [f"{r.model} {r.method}{variant_note(r.method, r.hardswish_backward)} top-{r.top_k}, batch {r.batch}, "
             f"{r.resolution} px (FLOPs = 2 x multiply-adds of conv/linear ops)",
             f"{'block':<22}{'stored MiB':>12}{'fwd MFLOPs':>12}{'bwd MFLOPs':>12}{'trainable':>12}"]
    for b in r.blocks:
        lines.append(f"{b['name']:<22}{mib(b['stored_bytes']):>12}{b['fwd_flops'] / 1e6:>12,.1f}"
                     f"{b['bwd_flops'] / 1e6:>12,.1f}{b['trainable_params']:>12,}")
    lines.append(f"{'total':<22}{mib(r.stored_bytes):>12}{r.fwd_flops / 1e6:>12,.1f}{r.bwd_flops / 1e6:>12,.1f}"
                 f"{r.trainable_params:>12,}")
    lines.append(f"frozen backbone forward: {r.backbone_fwd_flops / 1e6:,.1f} MFLOPs")
    lines.append(f"training memory: peak live tensors {mib(r.peak_live_bytes)} MiB + parameters {mib(r.param_bytes)} "
                 f"+ gradient buffers {mib(r.grad_bytes)} + optimizer state {mib(r.optimizer_bytes)} "
                 f"= {mib(r.training_bytes)} MiB")
    if r.portable_stored_bytes:
        lines.append(f"portable step (train_step.onnx): stored {mib(r.portable_stored_bytes)} MiB, peak live tensors "
                     f"{mib(r.portable_peak_live_bytes)} MiB (parameters and optimizer state updated in place)")
    return "\n".join(lines)


def write_report(folder: Path, report: Report) -> Path:
    """report.json in the artifact folder, written atomically."""
    path = Path(folder) / "report.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report.to_json(), indent=1) + "\n")
    tmp.replace(path)
    return path
