"""Portable training step on the JavaScript runtimes against native onnxruntime, at equal thread counts.

usage: python benchmarks/js_step.py [--quick] [--models mbv2:5,efficientnet-lite0:2] [--threads 1,2] [--batch 8]
           [--resolution 224] [--steps 20] [--warmup 3] [--repeats 3] [--runtimes node,python,wasm,chromium]
           [--exports DIR] [--json results.json]

Times one step of train_step.onnx (forward, MobileTL backward, AdamW update) of each export at batch 8 on
    node      onnxruntime-node (device_runner/web's PortableTrainer, intraOpNumThreads = T)
    python    the Python runner (device_runner.portable.PortableTrainer on plain onnxruntime, `.venv-runner`)
    wasm      onnxruntime-web's WASM backend in Node (the same PortableTrainer, env.wasm.numThreads = T)
    chromium  onnxruntime-web's WASM backend in headless Chromium (benchmarks/js_step.html, served from 127.0.0.1
              with COOP/COEP headers so the page is crossOriginIsolated and WASM threads work)
for T in --threads. Every runtime trains on the same batch: the backbone (backbone.onnx, plain onnxruntime) run
once on random images, labels random (files features.f32 and inputs.json in the export folder). The exports
(`mobiletl-export --target generic`, the graphs every runtime runs; mbv2 with its seeded random init,
EfficientNet-Lite0 with its ImageNet weights, 10 classes) go to a temporary folder unless --exports DIR names a
cache (reused when present). The worker is benchmarks/js_step.mjs (Node) or this file (--worker, .venv-runner).

Per cell: --warmup steps, then --steps timed ones, median; each cell runs --repeats processes, interleaved in
rounds over all cells (a slow period of the VM then hits every runtime alike), and reports the median of the
per-process medians. Before each process the driver waits (up to --idle-wait s) until the machine is idle, and
a process during which other processes took more than 5 % of the machine's CPU is run again (up to --retries
times; the quietest run is kept and flagged). The 3x target: WASM (in Node and in Chromium) within 3x of native
(onnxruntime-node and the Python runner) at equal threads.

Memory ("peak MiB"): node, wasm, python: the process's peak resident set (getrusage ru_maxrss, whole process:
runtime, modules, sessions, state). chromium: the sum of VmRSS over Chromium's renderer processes (the page's
renderer holds its JS heap, the WASM heap and the pthread workers; the other renderers are Chromium's spare and
initial ones, about 100 MiB each), sampled every 100 ms from /proc while the trainer is created and during the
warm-up steps, and once after the timed steps (not during them: a sampler on the 2 cores slowed 2-thread steps up
to 3x); RSS counts shared pages once per process, so the summed Pss is given too, and the page's own renderer
(the largest). Inside the page: the WASM heap (WebAssembly.Memory size at the end = its peak, it never shrinks),
performance.memory.usedJSHeapSize (peak over steps, --enable-precise-memory-info) and
performance.measureUserAgentSpecificMemory() (when it answers within 5 s; with WASM worker threads it does not).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from train_step import busy_cpu_seconds, own_cpu_seconds  # noqa: E402 - benchmarks/ is on sys.path

REPO = Path(__file__).resolve().parents[1]
RUNNER_PYTHON = REPO / ".venv-runner" / "bin" / "python"
EXPORTER = REPO / ".venv" / "bin" / "mobiletl-export"
NODE_WORKER = Path(__file__).resolve().with_suffix(".mjs")
RUNTIMES = {"node": "onnxruntime-node", "python": "Python runner", "wasm": "WASM in Node",
            "chromium": "WASM in Chromium"}
NATIVE, WASM = ("node", "python"), ("wasm", "chromium")
TARGET_RATIO = 3.0
NUM_CLASSES, SEED = 10, 0
RESULT_TAG = "RESULT "
FOREIGN_LIMIT = 0.05  # share of the machine's CPU other processes may take during a measurement
CHROMIUM_CPU_S = [0.0]  # CPU seconds of Chromium's processes so far (not reaped into this process's rusage)


# -------------------------------------------------------------------------------- workers (.venv-runner)

def worker_features(folder: Path, batch: int) -> dict:
    """features.f32 = backbone(random images), inputs.json = {batch, feature_shape, labels}."""
    import numpy as np
    import onnxruntime

    manifest = json.loads((folder / "manifest.json").read_text())
    rng = np.random.default_rng(SEED)
    r = manifest["resolution"]
    norm = manifest["normalization"]
    images = rng.integers(0, 256, (batch, 3, r, r)).astype(np.float32) / 255.0
    mean, std = (np.asarray(norm[k], np.float32)[:, None, None] for k in ("mean", "std"))
    images = (images - mean) / std
    session = onnxruntime.InferenceSession(str(folder / manifest["files"]["backbone"]),
                                           providers=["CPUExecutionProvider"])
    (features,) = session.run(None, {session.get_inputs()[0].name: images.astype(np.float32)})
    labels = rng.integers(0, manifest["num_classes"], batch).tolist()
    np.ascontiguousarray(features, "<f4").tofile(folder / "features.f32")
    info = {"batch": batch, "feature_shape": list(features.shape[1:]), "labels": labels,
            "source": "backbone.onnx on uniform random images"}
    (folder / "inputs.json").write_text(json.dumps(info))
    return info


def worker_python(folder: Path, threads: int, warmup: int, steps: int) -> dict:
    """The Python runner's PortableTrainer on the shared batch."""
    import resource

    import numpy as np

    sys.path.insert(0, str(REPO))
    from device_runner.ort import onnxruntime
    from device_runner.portable import PortableTrainer

    manifest = json.loads((folder / "manifest.json").read_text())
    info = json.loads((folder / "inputs.json").read_text())
    features = np.fromfile(folder / "features.f32", "<f4").reshape(info["batch"], *info["feature_shape"])
    labels = np.asarray(info["labels"], np.int64)
    start = time.perf_counter()
    trainer = PortableTrainer(folder, manifest, threads=threads)
    create_ms = (time.perf_counter() - start) * 1000
    lr = manifest["optimizer"]["lr"]
    losses = [trainer.step(features, labels, lr)[0] for _ in range(warmup)]
    times = []
    for _ in range(steps):
        s = time.perf_counter()
        losses.append(trainer.step(features, labels, lr)[0])
        times.append((time.perf_counter() - s) * 1000)
    return {"runtime": "python", "threads": threads, "ort_version": onnxruntime.__version__,
            "python": platform.python_version(), "median_ms": statistics.median(times), "min_ms": min(times),
            "step_ms": times, "create_ms": create_ms, "loss_first": losses[0], "loss_last": losses[-1],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


# ------------------------------------------------------------------------------------------------- driver

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni") if f in have]
    except OSError:
        pass
    return []


def wait_idle(limit_s: float, window_s: float = 1.0, threshold: float = 0.05) -> float:
    """Wait until other processes use < threshold of the machine over `window_s`, at most `limit_s`; returns
    the seconds waited."""
    start = time.perf_counter()
    ncpu = os.cpu_count() or 1
    while True:
        busy, own = busy_cpu_seconds(), own_cpu_seconds()
        time.sleep(window_s)
        foreign = (busy_cpu_seconds() - busy) - (own_cpu_seconds() - own)
        waited = time.perf_counter() - start
        if foreign / (window_s * ncpu) < threshold or waited >= limit_s:
            return waited


def run_process(cmd: list[str], timeout: float) -> dict:
    """Run a worker; its last `RESULT {json}` stdout line, or {"error": ...}. Adds wall time and foreign CPU."""
    busy, own, start = busy_cpu_seconds(), own_cpu_seconds(), time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    wall = time.perf_counter() - start
    foreign = max(0.0, (busy_cpu_seconds() - busy) - (own_cpu_seconds() - own))
    lines = [s for s in proc.stdout.splitlines() if s.startswith(RESULT_TAG)]
    if proc.returncode or not lines:
        err = [s.strip() for s in proc.stderr.splitlines() if s.strip()]
        return {"error": (err[-1] if err else f"exit code {proc.returncode}")[:300], "wall_s": wall}
    result = json.loads(lines[-1][len(RESULT_TAG):])
    CHROMIUM_CPU_S[0] += result.get("chromium_cpu_s", 0.0)
    foreign = max(0.0, foreign - result.get("chromium_cpu_s", 0.0))  # not reaped into our rusage
    result.update(wall_s=wall, foreign_cpu_s=foreign, foreign_share=foreign / (wall * (os.cpu_count() or 1)))
    return result


def measure(runtime: str, folder: Path, threads: int, args) -> dict:
    if runtime == "python":
        cmd = [str(RUNNER_PYTHON), __file__, "--worker", "python", "--dir", str(folder), "--threads", str(threads),
               "--warmup", str(args.warmup), "--steps", str(args.steps)]
    else:
        cmd = [args.node, str(NODE_WORKER), "--runtime", runtime, "--artifacts", str(folder), "--threads", str(threads),
               "--warmup", str(args.warmup), "--steps", str(args.steps), "--chromium", args.chromium]
    attempts = []
    for _ in range(args.retries + 1):
        waited = wait_idle(args.idle_wait)
        r = run_process(cmd, args.timeout)
        r["idle_wait_s"] = waited
        attempts.append(r)
        if "error" in r or r["foreign_share"] <= FOREIGN_LIMIT:
            break
    best = min(attempts, key=lambda r: r.get("foreign_share", 0.0))
    best["attempts"] = len(attempts)
    best["busy_machine"] = best.get("foreign_share", 0.0) > FOREIGN_LIMIT
    return best


def export(model: str, top_k: int, resolution: int, root: Path) -> Path:
    """An export folder (reused when it exists with the same settings) with features.f32 and inputs.json."""
    folder = root / f"{model}-top{top_k}-r{resolution}"
    manifest = folder / "manifest.json"
    if manifest.exists():
        m = json.loads(manifest.read_text())
        if (m["model"], m["top_k"], m["resolution"], m["target"]["name"]) != (model, top_k, resolution, "generic"):
            raise SystemExit(f"{folder} holds another export; remove it or choose another --exports folder")
    else:
        cmd = [str(EXPORTER), "--model", model, "--top-k", str(top_k), "--resolution", str(resolution),
               "--num-classes", str(NUM_CLASSES), "--target", "generic", "--seed", str(SEED), "--out", str(folder)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        if proc.returncode:
            raise SystemExit(f"export failed: {' '.join(cmd)}\n{proc.stderr.strip()}")
    return folder


def prepare_inputs(folder: Path, batch: int) -> dict:
    path = folder / "inputs.json"
    if path.exists():
        info = json.loads(path.read_text())
        if info["batch"] == batch:
            return info
    r = run_process([str(RUNNER_PYTHON), __file__, "--worker", "features", "--dir", str(folder), "--batch", str(batch)],
                    600)
    if "error" in r:
        raise SystemExit(f"backbone features for {folder.name} failed: {r['error']}")
    return json.loads(path.read_text())


def summarize(runs: list[dict]) -> dict:
    errors = [r["error"] for r in runs if "error" in r]
    if errors:
        return {"error": errors[0], "runs": runs}
    out = {"median_ms": statistics.median(r["median_ms"] for r in runs),
           "process_ms": [r["median_ms"] for r in runs], "runs": runs,
           "busy_machine": any(r["busy_machine"] for r in runs)}
    for key in ("peak_rss_mb", "renderer_rss_peak_mb", "renderer_pss_peak_mb", "renderer_rss_max_peak_mb",
                "renderer_rss_baseline_mb", "chromium_rss_peak_mb", "wasm_heap_mb", "js_heap_used_peak_mb",
                "create_ms"):
        values = [r[key] for r in runs if r.get(key) is not None]
        if values:
            out[key] = statistics.median(values)
    for key in ("cross_origin_isolated", "num_threads", "ort_version", "chromium_version", "ua_memory"):
        if key in runs[-1]:
            out[key] = runs[-1][key]
    return out


def ratios(cells: dict) -> dict:
    """wasm / native for every (wasm runtime, native runtime) pair with both times."""
    out = {}
    for w in WASM:
        for n in NATIVE:
            a, b = cells.get(w, {}), cells.get(n, {})
            if "median_ms" in a and "median_ms" in b:
                out[f"{w}/{n}"] = a["median_ms"] / b["median_ms"]
    return out


def fmt(x, spec=".1f", none="-"):
    return none if x is None else format(x, spec)


def print_report(rows: list[dict], runtimes: list[str], info: dict) -> None:
    print(f"\nCPU: {info['cpu']} ({info['cpus']} logical CPUs; {', '.join(info['cpu_flags']) or 'no AVX2'}); "
          f"batch {info['batch']}, {info['resolution']} px, {info['warmup']} warm-up + {info['steps']} timed steps, "
          f"median of {info['repeats']} processes per cell")
    print(f"versions: {info['versions']}\n")
    head = ["model", "threads"] + [f"{RUNTIMES[r]} ms" for r in runtimes]
    pairs = [f"{w}/{n}" for w in WASM for n in NATIVE if w in runtimes and n in runtimes]
    names = {"wasm": "WASM-Node", "chromium": "Chromium", "node": "node", "python": "Python"}
    head += [f"{names[p.split('/')[0]]} / {names[p.split('/')[1]]}" for p in pairs] + ["within 3x"]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|")
    for row in rows:
        cells = [row["model"], str(row["threads"])]
        for r in runtimes:
            c = row["cells"].get(r, {})
            cells.append("FAILED" if "error" in c else fmt(c.get("median_ms")) + ("*" if c.get("busy_machine") else ""))
        cells += [fmt(row["ratios"].get(p), ".2f") + "x" if p in row["ratios"] else "-" for p in pairs]
        cells.append(row["target"])
        print("| " + " | ".join(cells) + " |")
    print("\nms: median step time; ratios: WASM time / native time at equal threads; * = other processes took > 5 % "
          "of the CPU during a run of this cell")

    mem_runtimes = [r for r in runtimes if r != "chromium"]
    head = ["model", "threads"] + [f"{RUNTIMES[r]} peak RSS" for r in mem_runtimes]
    if "chromium" in runtimes:
        head += ["Chromium renderers RSS peak (sum)", "renderers PSS peak (sum)", "page renderer RSS peak",
                 "renderers RSS before ORT", "WASM heap", "JS heap used peak", "crossOriginIsolated"]
    print("\nmemory, MiB:\n")
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|")
    for row in rows:
        cells = [row["model"], str(row["threads"])]
        cells += [fmt(row["cells"].get(r, {}).get("peak_rss_mb"), ".0f") for r in mem_runtimes]
        if "chromium" in runtimes:
            c = row["cells"].get("chromium", {})
            cells += [fmt(c.get(k), ".0f") for k in ("renderer_rss_peak_mb", "renderer_pss_peak_mb",
                                                        "renderer_rss_max_peak_mb", "renderer_rss_baseline_mb",
                                                        "wasm_heap_mb", "js_heap_used_peak_mb")]
            cells.append(str(c.get("cross_origin_isolated", "-")).lower())
        print("| " + " | ".join(cells) + " |")
    print("\npeak RSS: the process's ru_maxrss; Chromium: VmRSS of its renderer processes summed, sampled every 100 ms "
          "from /proc during trainer creation and warm-up (and after the timed steps); PSS: the same with shared pages "
          "split; page renderer: the largest renderer; WASM heap: onnxruntime-web's WebAssembly.Memory (its peak); "
          "JS heap: performance.memory.usedJSHeapSize, peak over the steps")
    ua = [(row["model"], row["threads"], row["cells"].get("chromium", {}).get("ua_memory")) for row in rows]
    if any(u for *_, u in ua):
        print("performance.measureUserAgentSpecificMemory(): " + "; ".join(
            f"{m} {t}T: " + (f"{u['total_mb']:.0f} MiB" if u and "total_mb" in u else "no answer within 5 s")
            for m, t, u in ua))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="smoke run: mbv2 top-5 only, 96 px, 1 warm-up + 5 timed steps, 1 process per cell")
    p.add_argument("--models", default="mbv2:5,efficientnet-lite0:2", help="comma-separated MODEL:TOP_K")
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    p.add_argument("--runtimes", default=",".join(RUNTIMES), help=f"subset of {','.join(RUNTIMES)}")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--steps", type=int, default=20, help="timed steps per process")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3, help="processes per cell (median reported)")
    p.add_argument("--retries", type=int, default=2, help="re-runs of a process the machine was busy during")
    p.add_argument("--idle-wait", type=float, default=120, help="seconds to wait for an idle machine before a run")
    p.add_argument("--timeout", type=float, default=900, help="seconds per worker process")
    p.add_argument("--exports", help="folder to keep (and reuse) the exports in; default: a temporary folder")
    p.add_argument("--node", default=shutil.which("node") or "node")
    p.add_argument("--chromium", default="/usr/bin/chromium")
    p.add_argument("--json", help="write all results to this file")
    p.add_argument("--worker", choices=("features", "python"), help=argparse.SUPPRESS)
    p.add_argument("--dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.resolution, args.warmup, args.steps, args.repeats = "mbv2:5", 96, 1, 5, 1
    args.models = [(m.split(":")[0], int(m.split(":")[1])) for m in args.models.split(",")]
    args.threads = [int(t) for t in args.threads.split(",")]
    asked = set(args.runtimes.split(","))
    if not asked or asked - set(RUNTIMES):
        p.error(f"--runtimes: choose from {', '.join(RUNTIMES)}")
    args.runtimes = [r for r in RUNTIMES if r in asked]  # fixed column order
    return args


def run(args) -> dict:
    start, busy, own, chromium = time.perf_counter(), busy_cpu_seconds(), own_cpu_seconds(), CHROMIUM_CPU_S[0]
    info = {"cpu": cpu_model(), "cpus": os.cpu_count(), "cpu_flags": cpu_flags(), "batch": args.batch,
            "resolution": args.resolution, "warmup": args.warmup, "steps": args.steps, "repeats": args.repeats,
            "threads": args.threads, "runtimes": args.runtimes, "num_classes": NUM_CLASSES, "target": "generic"}
    print(f"CPU {info['cpu']} ({info['cpus']} logical CPUs); models {args.models}, threads {args.threads}, "
          f"batch {args.batch}, {args.resolution} px, runtimes {args.runtimes}", flush=True)
    with tempfile.TemporaryDirectory(prefix="js_step_") as tmp:
        root = Path(args.exports) if args.exports else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        folders = {}
        for model, top_k in args.models:
            folders[model] = folder = export(model, top_k, args.resolution, root)
            shape = prepare_inputs(folder, args.batch)["feature_shape"]
            print(f"  export {folder.name}: features {shape}", flush=True)
        cells = [(model, top_k, t, r) for model, top_k in args.models for t in args.threads for r in args.runtimes]
        runs: dict[tuple, list[dict]] = {c: [] for c in cells}
        for round_ in range(args.repeats):
            for cell in cells:
                model, top_k, threads, runtime = cell
                r = measure(runtime, folders[model], threads, args)
                runs[cell].append(r)
                print(f"  round {round_ + 1}/{args.repeats} {model} {threads}T {runtime:<8}: " + (
                    f"FAILED ({r['error']})" if "error" in r else
                    f"{r['median_ms']:.1f} ms (loss {r['loss_first']:.4f} -> {r['loss_last']:.4f}"
                    + (f", other processes {r['foreign_share']:.0%} of the CPU" if r["foreign_share"] > 0.01 else "")
                    + (f", {r['attempts']} attempts" if r["attempts"] > 1 else "") + ")"), flush=True)
    rows = []
    for model, top_k in args.models:
        for threads in args.threads:
            row = {"model": f"{model} top-{top_k}", "threads": threads,
                   "cells": {r: summarize(runs[(model, top_k, threads, r)]) for r in args.runtimes}}
            row["ratios"] = ratios(row["cells"])
            worst = max(row["ratios"].values(), default=None)
            row["worst_ratio"] = worst
            row["target_met"] = None if worst is None else worst <= TARGET_RATIO
            row["target"] = "n/a" if worst is None else f"{'met' if worst <= TARGET_RATIO else 'MISSED'} ({worst:.2f}x)"
            rows.append(row)
    versions = {}
    for row in rows:
        for r, c in row["cells"].items():
            if c.get("ort_version"):
                versions[RUNTIMES[r]] = c["ort_version"]
            if c.get("chromium_version"):
                versions["Chromium"] = c["chromium_version"]
    versions["Node"] = subprocess.run([args.node, "--version"], capture_output=True, text=True).stdout.strip()
    info["versions"] = ", ".join(f"{k} {v}" for k, v in versions.items())
    print_report(rows, args.runtimes, info)
    spreads = []
    for model, top_k in args.models:
        last = [r["loss_last"] for (m, _, _, _), rs in runs.items() if m == model for r in rs if "loss_last" in r]
        if last:
            spreads.append(f"{model} {min(last):.6f}-{max(last):.6f}")
    if spreads:
        print(f"\nloss after {args.warmup + args.steps} steps, all runtimes and threads (same batch and start): "
              + "; ".join(spreads))
    verdicts = [r for r in rows if r["target_met"] is not None]
    if verdicts:
        met = sum(r["target_met"] for r in verdicts)
        print(f"\ntarget (WASM within {TARGET_RATIO:.0f}x of native at equal threads, both WASM runtimes against both "
              f"natives): {'met' if met == len(verdicts) else 'MISSED'}: met in {met} of {len(verdicts)} rows; worst "
              f"{max(r['worst_ratio'] for r in verdicts):.2f}x")
    wall = time.perf_counter() - start
    foreign = max(0.0, (busy_cpu_seconds() - busy) - (own_cpu_seconds() - own) - (CHROMIUM_CPU_S[0] - chromium))
    share = foreign / (wall * (os.cpu_count() or 1))
    print(f"\ntotal {wall:.0f} s; other processes used {foreign:.0f} CPU-s ({share:.0%} of the machine; the driver "
          f"waits for an idle machine before each run and repeats runs it disturbed)")
    info.update(wall_s=wall, foreign_cpu_s=foreign)
    result = {"settings": info, "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return result


def main(argv=None):
    args = parse_args(argv)
    if args.worker == "features":
        result = worker_features(Path(args.dir), args.batch)
    elif args.worker == "python":
        result = worker_python(Path(args.dir), args.threads[0], args.warmup, args.steps)
    else:
        return run(args)
    print(RESULT_TAG + json.dumps(result), flush=True)
    return None


if __name__ == "__main__":
    main()
