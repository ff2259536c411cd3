"""Training-step time and peak memory of the top-k region: stock ORT vs our export vs PyTorch, side by side.

usage: python benchmarks/train_step.py [--models mbv2,mbv3-large] [--batches 8,32] [--steps 20] [--repeats 3]
           [--configs stock-ort,ours-vanilla,ours-mobiletl,portable-mobiletl,pytorch] [--top-k 5] [--target host]
           [--json results.json]

ours-*: the ORT-training artifacts through onnxruntime-training 1.19.2's Module/Optimizer (`--backend
ort-training`); portable-mobiletl: the same export's portable step (train_step.onnx, InferenceSession) on the
newest plain onnxruntime, run by the runner's own environment `.venv-runner` (scripts/setup.sh), no torch.

Same region (last k IRBs + tail + head), 10 classes, AdamW lr 1e-3, 224 px, 2 threads; a step is forward +
backward + optimizer update (+ gradient reset); 3 warm-up steps, then --steps timed ones. Each cell runs
--repeats rounds, each running every configuration once in turn, and shows medians over the rounds: this
VM's speed drifts over minutes (seen: every config 10-25% slower for a while, ours-mobiletl the most, with
no other process running), so interleaving keeps the ratios fair. The run ends with the CPU time other
processes took meanwhile (from /proc/stat): the 2 cores must be otherwise idle.
Each configuration runs in fresh processes: "prepare" writes the artifacts (an export's freed heap, kept by
glibc, could otherwise absorb training allocations unseen), "measure" imports its runtime and trains.

Memory ("peak MB", MiB above baseline): after imports (pytorch: also one tiny AdamW step, since torch imports
~65 MB of Python modules on first optimizer use) and input creation, gc + malloc_trim(0), read VmRSS_0 and
RssFile_0, and reset the kernel's high-water mark ("5" > /proc/self/clear_refs). After the steps:
    peak = VmHWM - VmRSS_0 - (RssFile_end - RssFile_0)
The kernel updates VmHWM at every fault and unmap, so short spikes count exactly, with no sampling thread
competing for the 2 cores or the GIL. The RssFile term drops library code paged in on a kernel's first use
(not training memory; it stays resident, while the anonymous peak recurs every step). The window opens
before the training objects exist, so the peak holds parameters, gradients, optimizer state, stored
activations, workspaces, allocator slack and session overhead. pytorch's frozen backbone weights are moved
to the meta device (the ORT configs never load them). A refused reset is flagged ("hwm_reset": false).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = ("stock-ort", "ours-vanilla", "ours-mobiletl", "portable-mobiletl", "pytorch")
RUNNER_PYTHON = Path(__file__).resolve().parents[1] / ".venv-runner" / "bin" / "python"  # plain onnxruntime
NUM_CLASSES, RESOLUTION, THREADS, LR, WARMUP = 10, 224, 2, 1e-3, 3
TARGETS = ("mobiletl vs stock ORT: memory <= 0.5x, time <= 0.8x; mobiletl time <= PyTorch; portable step vs "
           "ORT-training step: time <= 1.1x, memory <= 1.05x; portable time <= PyTorch")
RESULT_TAG = "RESULT "  # a worker's last stdout line: RESULT {json}
OPTIONS = {"target": "host"}  # --target of our exports (set by main, passed on to the workers)


# ----------------------------------------------------------------------------------------------- memory

def _status_mb(field: str) -> float:
    """A /proc/self/status field (kB) in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def start_memory_window() -> dict:
    """Release freed memory, reset the high-water mark; returns the baseline (MiB) and whether reset worked."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        reset = True
    except OSError:
        reset = False
    return {"rss": _status_mb("VmRSS"), "file": _status_mb("RssFile"), "hwm_reset": reset}


def peak_above(baseline: dict) -> float:
    """Peak resident memory since the window opened, minus library code paged in meanwhile (MiB)."""
    return _status_mb("VmHWM") - baseline["rss"] - (_status_mb("RssFile") - baseline["file"])


# ------------------------------------------------------------------------------------- prepare (subprocess)

def _region_module(model, plan):
    """A plain nn.Module running the region with the model's own modules: state_dict keys stay the model's."""
    from torch import nn

    from mobiletl_export.models.functional import activation_module
    from mobiletl_export.models.spec import Activation, Dropout, Linear, Pool

    class Region(nn.Module):
        def __init__(self):
            super().__init__()
            for name, child in model.named_children():  # same attribute names -> same parameter names
                self.add_module(name, child)
            structure = plan.structure
            self.steps = [model.get_submodule(block.name) for block in plan.trained_blocks]
            self.steps.append(model.get_submodule(structure.tail.conv_name.rsplit(".", 1)[0]))
            for layer in structure.head.layers:
                if isinstance(layer, Pool):
                    self.steps.append(lambda x: x.mean((2, 3)))
                elif isinstance(layer, (Linear, Dropout)):
                    self.steps.append(layer.module)
                elif isinstance(layer, Activation):
                    self.steps.append(activation_module(layer.kind))
                else:
                    raise TypeError(f"unknown head layer {layer!r}")

        def forward(self, x):
            for step in self.steps:
                x = step(x)
            return x

    return Region()


def _feature_shape(model, plan) -> list[int]:
    """The region's input shape (C, H, W), from a run of the frozen backbone."""
    import torch

    from mobiletl_export.reference import ReferenceNet

    return list(ReferenceNet(model, plan).backbone(torch.zeros(1, 3, RESOLUTION, RESOLUTION)).shape[1:])


def _cap_ir_version(path: Path, limit: int = 10) -> None:
    """ORT 1.19.2 loads IR <= 10; rewrite a model file written with a newer IR version."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    if proto.ir_version > limit:
        proto.ir_version = limit
        onnx.save(proto, str(path))


def prepare_stock(model_name: str, top_k: int, out: Path) -> dict:
    """Stock tooling: torch.onnx.export of the region (training mode), then generate_artifacts."""
    import warnings

    import onnx
    import torch
    from onnxruntime.training import artifacts

    from mobiletl_export.models import create_model
    from mobiletl_export.plan import make_plan

    warnings.filterwarnings("ignore")  # the exporter warns once per BatchNorm about num_batches_tracked
    model = create_model(model_name, NUM_CLASSES, dropout=0.0, seed=0)
    plan = make_plan(model, "vanilla", top_k)
    shape = _feature_shape(model, plan)
    region_path = out / "region.onnx"
    torch.onnx.export(_region_module(model, plan), (torch.zeros(1, *shape),), str(region_path),
                      input_names=["features"], output_names=["logits"],
                      dynamic_axes={"features": {0: "N"}, "logits": {0: "N"}},
                      training=torch.onnx.TrainingMode.TRAINING, do_constant_folding=False,
                      opset_version=17, dynamo=False)
    proto = onnx.load(str(region_path))
    proto.ir_version = min(proto.ir_version, 10)
    params = [init.name for init in proto.graph.initializer]
    requires_grad = [k for k in plan.trainable if k in params]
    frozen = [k for k in params if k not in requires_grad]  # BN running statistics
    art = out / "artifacts"
    art.mkdir()
    try:
        artifacts.generate_artifacts(proto, requires_grad=requires_grad, frozen_params=frozen,
                                     loss=artifacts.LossType.CrossEntropyLoss,
                                     optimizer=artifacts.OptimType.AdamW, artifact_directory=str(art))
    except Exception as exc:  # noqa: BLE001 - any failure of the stock tooling is a result, not a crash
        return {"error": _one_line(exc)}
    for path in art.glob("*.onnx"):
        _cap_ir_version(path)
    return {"features": shape, "dir": str(art)}


def prepare_ours(model_name: str, top_k: int, method: str, out: Path) -> dict:
    from mobiletl_export.export import ExportConfig, export

    result = export(ExportConfig(model=model_name, top_k=top_k, method=method, resolution=RESOLUTION,
                                 weights="random", num_classes=NUM_CLASSES, out=str(out / "artifacts"),
                                 target=OPTIONS["target"]))
    return {"features": result.manifest["inputs"]["training"]["features"][1:], "dir": str(result.out)}


def prepare_pytorch(model_name: str, top_k: int, out: Path) -> dict:
    from mobiletl_export.models import create_model
    from mobiletl_export.plan import make_plan

    model = create_model(model_name, NUM_CLASSES, dropout=0.0, seed=0)
    return {"features": _feature_shape(model, make_plan(model, "vanilla", top_k))}


def prepare(config: str, model_name: str, top_k: int, out: Path) -> dict:
    if config == "stock-ort":
        return prepare_stock(model_name, top_k, out)
    if config.startswith(("ours-", "portable-")):
        return prepare_ours(model_name, top_k, config.split("-", 1)[1], out)
    return prepare_pytorch(model_name, top_k, out)


# ------------------------------------------------------------------------------------- measure (subprocess)
# Each build_* returns a zero-argument step function; the inputs are bound in.

def build_stock(art: Path, features, labels):
    import onnxruntime
    from onnxruntime.training.api import CheckpointState, Module, Optimizer

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level = THREADS, 1, 3
    state = CheckpointState.load_checkpoint(str(art / "checkpoint"))
    # No eval model: the one generate_artifacts writes for train-mode BN does not load (see the ORT notes).
    module = Module(str(art / "training_model.onnx"), state, None, "cpu", options)
    optimizer = Optimizer(str(art / "optimizer_model.onnx"), module)
    optimizer.set_learning_rate(LR)
    module.train()

    def step() -> float:
        loss = module(features, labels)
        optimizer.step()
        module.lazy_reset_grad()
        return float(loss)

    return step


def build_ours(art: Path, features, labels, backend: str):
    """The runner's trainer of `backend` (portable: train_step.onnx; ort-training: Module + Optimizer)."""
    from device_runner.train import trainer_class

    trainer = trainer_class(backend)(art, json.loads((art / "manifest.json").read_text()), None, THREADS)

    def step() -> float:
        loss, _ = trainer.step(features, labels, LR)  # forward, backward and the optimizer update
        return loss

    return step


def build_pytorch(model_name: str, top_k: int, features, labels):
    import torch

    from mobiletl_export.models import create_model
    from mobiletl_export.plan import make_plan
    from mobiletl_export.reference import ReferenceNet, ReferenceTrainer

    model = create_model(model_name, NUM_CLASSES, dropout=0.0, seed=0)
    plan = make_plan(model, "vanilla", top_k)
    backbone = [plan.structure.stem.conv, plan.structure.stem.bn]
    backbone += [model.get_submodule(block.name) for block in plan.frozen_blocks]
    for module in backbone:  # the region never reads them; ORT configs never load them
        module.to("meta")
    trainer = ReferenceTrainer(ReferenceNet(model, plan), optimizer="adamw", lr=LR)
    x, y = torch.from_numpy(features), torch.from_numpy(labels)
    return lambda: trainer.step(x, y)


def _warm_torch() -> None:
    """One AdamW step on a tiny layer: torch imports parts of itself (dynamo, ...) on first optimizer use."""
    import torch
    import torch.nn.functional as F

    layer = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=LR)
    F.cross_entropy(layer(torch.ones(2, 4)), torch.zeros(2, dtype=torch.long)).backward()
    optimizer.step()


def _preload(config: str) -> None:
    if config == "pytorch":
        import torch

        import mobiletl_export.models  # noqa: F401
        import mobiletl_export.plan  # noqa: F401
        import mobiletl_export.reference  # noqa: F401

        torch.set_num_threads(THREADS)
        _warm_torch()
    elif config == "stock-ort":
        import onnxruntime.training.api  # noqa: F401  (imports torch as well)
    else:
        import device_runner.ort  # noqa: F401  (keeps torch out)


def measure(config: str, model_name: str, top_k: int, batch: int, steps: int, shape: list[int],
            art: Path | None) -> dict:
    """Inputs -> memory window -> build -> warm-up -> timed steps; returns times, peak and losses."""
    _preload(config)  # imports allocate too: keep them out of the memory window
    import numpy as np

    rng = np.random.default_rng(0)
    features = rng.standard_normal((batch, *shape), dtype=np.float32)
    labels = rng.integers(0, NUM_CLASSES, batch).astype(np.int64)
    baseline = start_memory_window()
    if config == "pytorch":
        step = build_pytorch(model_name, top_k, features, labels)
    elif config == "stock-ort":
        step = build_stock(art, features, labels)
    else:
        step = build_ours(art, features, labels, "portable" if config.startswith("portable-") else "ort-training")
    setup = _status_mb("VmRSS") - baseline["rss"] - (_status_mb("RssFile") - baseline["file"])  # before step 1
    losses = [step() for _ in range(WARMUP)]
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        losses.append(step())
        times.append((time.perf_counter() - start) * 1000)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "step_ms": times,
            "peak_mb": peak_above(baseline), "peak_rss_mb": _status_mb("VmHWM") - baseline["rss"],
            "setup_mb": setup, "baseline_rss_mb": baseline["rss"], "hwm_reset": baseline["hwm_reset"],
            "loss_first": losses[0], "loss_last": losses[-1], "onnxruntime": _ort_version(config)}


def _ort_version(config: str) -> str | None:
    if config == "pytorch":
        return None
    import onnxruntime

    return onnxruntime.__version__


def worker_main(args) -> None:
    """Entry point of the subprocesses: prints RESULT {json} as its last line."""
    out = Path(args.dir)
    if args.worker == "prepare":
        result = prepare(args.config, args.model, args.top_k, out)
    else:
        prep = json.loads((out / "prep.json").read_text())
        art = Path(prep["dir"]) if "dir" in prep else None
        result = measure(args.config, args.model, args.top_k, args.batch, args.steps, prep["features"], art)
    print(RESULT_TAG + json.dumps(result), flush=True)


# ------------------------------------------------------------------------------------------------- parent

def _one_line(exc: BaseException | str) -> str:
    """The informative line of an error message (ORT's put the reason after the C++ signature)."""
    text = str(exc).strip()
    lines = [s.strip() for s in text.splitlines() if s.strip()] or [type(exc).__name__]
    line = lines[-1]
    for marker in ("was false. ", "] "):
        if marker in line:
            line = line.split(marker)[-1]
    return line[:200]


def run_worker(kind: str, config: str, model: str, top_k: int, folder: Path, batch: int = 0,
               steps: int = 0) -> dict:
    """Run this file as a worker subprocess; a crash or missing result becomes {"error": last stderr line}."""
    python = RUNNER_PYTHON if kind == "measure" and config.startswith("portable-") else sys.executable
    cmd = [str(python), __file__, "--worker", kind, "--configs", config, "--models", model,
           "--top-k", str(top_k), "--dir", str(folder), "--batch", str(batch), "--steps", str(steps),
           "--target", OPTIONS["target"]]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        return {"error": f"{kind} timed out after 600 s"}
    results = [s for s in proc.stdout.splitlines() if s.startswith(RESULT_TAG)]
    if proc.returncode or not results:
        err = [s for s in proc.stderr.splitlines() if s.strip() and " [I:" not in s]
        return {"error": _one_line(err[-1] if err else f"{kind} exited with {proc.returncode}")}
    return json.loads(results[-1][len(RESULT_TAG):])


def prepare_all(model: str, configs, top_k: int, tmp: Path) -> dict[str, tuple[Path, dict]]:
    """One prepare process per configuration: {config: (folder, prep result)}."""
    prepared = {}
    for config in configs:
        folder = tmp / f"{model}-{config}"
        folder.mkdir()
        start = time.perf_counter()
        prep = run_worker("prepare", config, model, top_k, folder)
        (folder / "prep.json").write_text(json.dumps(prep))
        print(f"  prepared {model} {config} in {time.perf_counter() - start:.1f} s"
              + (f": FAILED ({prep['error']})" if "error" in prep else ""), flush=True)
        prepared[config] = folder, prep
    return prepared


def summarize(row: dict, runs: list[dict]) -> dict:
    """Medians over measure processes (and their ranges) from the per-process results."""
    errors = [r["error"] for r in runs if "error" in r]
    if errors:
        return {**row, "error": errors[0]}
    times, peaks = [r["median_ms"] for r in runs], [r["peak_mb"] for r in runs]
    return {**row, "median_ms": statistics.median(times), "process_ms_range": [min(times), max(times)],
            "peak_mb": statistics.median(peaks), "process_peak_mb_range": [min(peaks), max(peaks)], "runs": runs}


def run_all(models, batches, configs, steps, top_k, repeats) -> list[dict]:
    """Per (model, batch): `repeats` rounds, each measuring every configuration once (interleaved, so a slow
    period of the host hits all configurations alike), then the medians over rounds."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="train_step_") as tmp:
        for model in models:
            prepared = prepare_all(model, configs, top_k, Path(tmp))
            for batch in batches:
                runs: dict[str, list[dict]] = {c: [] for c in configs}
                for _ in range(repeats):
                    for config, (folder, prep) in prepared.items():
                        if "error" not in prep:
                            runs[config].append(run_worker("measure", config, model, top_k, folder, batch, steps))
                for config, (_, prep) in prepared.items():
                    row = {"model": model, "batch": batch, "config": config, "steps": steps}
                    row = {**row, "error": prep["error"]} if "error" in prep else summarize(row, runs[config])
                    print(f"  measured {model} b{batch} {config}: " + (
                        f"FAILED ({row['error']})" if "error" in row else
                        f"{row['median_ms']:.1f} ms (processes {_span(row['process_ms_range'])}), "
                        f"{row['peak_mb']:.1f} MB (processes {_span(row['process_peak_mb_range'])})"), flush=True)
                    rows.append(row)
    return rows


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has been busy since boot (/proc/stat, all states but idle/iowait)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU seconds of this process and its finished children."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _span(pair: list[float]) -> str:
    return f"{pair[0]:.1f}-{pair[1]:.1f}"


def _ratio(rows: dict, num: str, den: str, key: str) -> float | None:
    a, b = rows.get(num, {}), rows.get(den, {})
    return a[key] / b[key] if key in a and key in b else None


def compare(rows: list[dict], models, batches) -> list[dict]:
    """Per (model, batch): mobiletl / stock and mobiletl / pytorch ratios, and the targets."""
    out = []
    for model in models:
        for batch in batches:
            by = {r["config"]: r for r in rows if r["model"] == model and r["batch"] == batch}
            c = {"model": model, "batch": batch,
                 "time_vs_stock": _ratio(by, "ours-mobiletl", "stock-ort", "median_ms"),
                 "mem_vs_stock": _ratio(by, "ours-mobiletl", "stock-ort", "peak_mb"),
                 "time_vs_pytorch": _ratio(by, "ours-mobiletl", "pytorch", "median_ms"),
                 "mem_vs_pytorch": _ratio(by, "ours-mobiletl", "pytorch", "peak_mb")}
            c.update({"portable_time_vs_ort_training": _ratio(by, "portable-mobiletl", "ours-mobiletl", "median_ms"),
                      "portable_mem_vs_ort_training": _ratio(by, "portable-mobiletl", "ours-mobiletl", "peak_mb"),
                      "portable_time_vs_pytorch": _ratio(by, "portable-mobiletl", "pytorch", "median_ms")})
            c["targets"] = {"mem <= 0.5x stock": _met(c["mem_vs_stock"], 0.5),
                            "time <= 0.8x stock": _met(c["time_vs_stock"], 0.8),
                            "time <= pytorch": _met(c["time_vs_pytorch"], 1.0),
                            "portable time <= 1.1x ort-training": _met(c["portable_time_vs_ort_training"], 1.1),
                            "portable mem <= 1.05x ort-training": _met(c["portable_mem_vs_ort_training"], 1.05),
                            "portable time <= pytorch": _met(c["portable_time_vs_pytorch"], 1.0)}
            out.append(c)
    return out


def _met(ratio: float | None, limit: float) -> str:
    if ratio is None:
        return "n/a"
    return f"{'met' if ratio <= limit else 'MISSED'} ({ratio:.2f}x)"


def print_table(rows: list[dict], comparisons: list[dict], configs) -> None:
    def cell(r):
        if r is None:
            return "-"
        return "FAILED" if "error" in r else f"{r['median_ms']:.1f} / {r['peak_mb']:.1f}"

    def fmt(x):
        return "-" if x is None else f"{x:.2f}x"

    head = f"{'model':<11} {'batch':>5} " + " ".join(f"{c:>16}" for c in configs)
    head += (f" | {'mtl/stock t':>11} {'mem':>6} | {'mtl/torch t':>11} {'mem':>6}"
             f" | {'port/ort-tr t':>13} {'mem':>6} | {'port/torch t':>12}")
    print("\nmedian step ms / peak MB above baseline (MiB); ratios = ours-mobiletl / other, portable-mobiletl / other")
    print(head)
    print("-" * len(head))
    for c in comparisons:
        by = {r["config"]: r for r in rows if r["model"] == c["model"] and r["batch"] == c["batch"]}
        line = f"{c['model']:<11} {c['batch']:>5} " + " ".join(f"{cell(by.get(k)):>16}" for k in configs)
        line += (f" | {fmt(c['time_vs_stock']):>11} {fmt(c['mem_vs_stock']):>6}"
                 f" | {fmt(c['time_vs_pytorch']):>11} {fmt(c['mem_vs_pytorch']):>6}"
                 f" | {fmt(c['portable_time_vs_ort_training']):>13} {fmt(c['portable_mem_vs_ort_training']):>6}"
                 f" | {fmt(c['portable_time_vs_pytorch']):>12}")
        print(line)
    print(f"\ntargets ({TARGETS}):")
    for c in comparisons:
        print(f"  {c['model']:<11} b{c['batch']:<3} " + "; ".join(f"{k}: {v}" for k, v in c["targets"].items()))
    failures = {(r["model"], r["config"]): r["error"] for r in rows if "error" in r}
    if failures:
        print("\nfailed:")
        for (model, config), error in failures.items():
            print(f"  {model} {config}: {error}")
    if any(r.get("hwm_reset") is False for r in rows):
        print("\nwarning: /proc/self/clear_refs refused; peaks include the process's earlier high-water mark")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="mbv2,mbv3-large", help="comma-separated model names")
    p.add_argument("--batches", default="8,32", help="comma-separated batch sizes")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated subset of {','.join(CONFIGS)}")
    p.add_argument("--steps", type=int, default=20, help=f"timed steps per measurement (after {WARMUP} warm-up)")
    p.add_argument("--repeats", type=int, default=3, help="measure processes per cell (medians are reported)")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--target", default="host", choices=("generic", "x86-avx2", "x86-avx512", "host"),
                   help="mobiletl-export --target of the ours-* configurations")
    p.add_argument("--json", help="write all results to this JSON file")
    p.add_argument("--worker", choices=("prepare", "measure"), help=argparse.SUPPRESS)
    p.add_argument("--dir", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.models = args.models.split(",")
    args.batches = [int(b) for b in args.batches.split(",")]
    args.configs = args.configs.split(",")
    unknown = set(args.configs) - set(CONFIGS)
    if unknown:
        p.error(f"unknown config(s) {', '.join(sorted(unknown))}; choose from {', '.join(CONFIGS)}")
    return args


def main(argv=None) -> dict | None:
    args = parse_args(argv)
    OPTIONS["target"] = args.target
    if args.worker:
        args.model, args.config = args.models[0], args.configs[0]
        return worker_main(args)
    configs = [c for c in CONFIGS if c in args.configs]  # fixed column order
    start, busy, own = time.perf_counter(), busy_cpu_seconds(), own_cpu_seconds()
    print(f"top-{args.top_k} region, {RESOLUTION} px, {THREADS} threads, ours with --target {args.target}, "
          f"{WARMUP} warm-up + {args.steps} timed "
          f"steps, {args.repeats} processes per cell; models {args.models}, batches {args.batches}", flush=True)
    rows = run_all(args.models, args.batches, configs, args.steps, args.top_k, args.repeats)
    comparisons = compare(rows, args.models, args.batches)
    print_table(rows, comparisons, configs)
    wall = time.perf_counter() - start
    foreign = max(0.0, (busy_cpu_seconds() - busy) - (own_cpu_seconds() - own))
    share = foreign / (wall * (os.cpu_count() or 1))
    print(f"\ntotal {wall:.0f} s; other processes used {foreign:.1f} CPU-s ({share:.0%} of the machine)"
          + ("  WARNING: the machine was not idle, times are unreliable" if share > 0.05 else ""))
    settings = {"top_k": args.top_k, "target": args.target, "resolution": RESOLUTION, "threads": THREADS, "warmup": WARMUP,
                "steps": args.steps, "repeats": args.repeats, "num_classes": NUM_CLASSES, "lr": LR,
                "cpu_count": os.cpu_count(), "wall_s": wall, "foreign_cpu_s": foreign}
    result = {"settings": settings,
              "results": rows, "comparisons": comparisons}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
