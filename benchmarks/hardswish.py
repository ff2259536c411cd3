"""What MobileTL's Hard-Swish sign approximation costs: accuracy on a real transfer task, and training memory.

MobileTL (AAAI 2023) back-propagates Hard-Swish through the 1-bit mask 1{x >= 0} instead of its derivative
(mobiletl_export/plan.py). This benchmark compares, on the same backbone, data and recipe:
  mobiletl (sign)          `mobiletl-export --method mobiletl` (the paper)
  mobiletl (exact hswish)  `mobiletl-export --method mobiletl --hardswish-backward exact`: same trainable set and
                           ReLU/ReLU6/Hard-Sigmoid masks, Hard-Swish's exact backward (stores its float input)
  vanilla                  `--method vanilla`: every BN gamma trains too, every activation backward exact

Task (no ImageNet MobileNetV3 weights exist offline, so the backbone is pretrained here):
  1. source: MobileNetV3 trained from scratch in PyTorch on Fashion-MNIST classes 0-4 (T-shirt, trouser,
     pullover, dress, coat; the 30,000 training images), at --resolution px, the images fitted exactly as the
     runner fits them (manifest `preprocess` crop: shorter side to R / 0.875, centre R x R, device_runner/data.py),
     grey replicated to RGB and normalised with the model's ImageNet mean/std, so the frozen BN statistics match
     the features the runner computes at fine-tune time. Cached (state_dict) in --cache-dir, keyed by every
     setting; reused when present.
  2. target: Fashion-MNIST classes 5-9 (sandal, shirt, sneaker, bag, ankle boot) relabelled 0-4: disjoint
     classes of the same image domain, with an official test set (the 5,000 test images of those classes).
     (scikit-learn's digits would be 8 x 8 px images upsampled ~6x, a domain the backbone never saw, 1,797
     images without an official split.) Training: a seeded subset of --train-samples training images, of which
     --val-samples are held out for the learning-rate sweep.
  3. fine-tuning with the device runner's Python API (device_runner.portable.PortableTrainer: train_step.onnx on
     plain onnxruntime, no torch in the step; AdamW, cosine schedule, batch --batch-size, --epochs epochs, the
     runner's PCG32 shuffle). The classifier is re-initialised per seed (create_model's seeded init); backbone
     features are computed once per k with backbone.onnx (identical for the three variants). The learning rate
     is chosen per variant and k from --lrs on the validation split (seed 0); then --seeds runs at that rate
     report accuracy on the test set (mean, and spread = max - min over seeds).
  4. memory: each variant and k exported at --memory-resolution px and analysed at batch --memory-batch as
     `mobiletl-report` does (mobiletl_export/analyze/report.py): stored activations, and training memory =
     parameters + gradient buffers + AdamW state + peak live tensors, in MiB (2^20 bytes).

usage: .venv/bin/python benchmarks/hardswish.py [--quick] [--out results.json] [--threads 1]
Prints a markdown table and writes JSON (--out). --quick (tiny pretraining and data, k=2, one seed, one rate)
checks the pipeline end to end in well under a minute (tests/test_hardswish_benchmark.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import accuracy as study  # noqa: E402  the runner's loop on precomputed features, test accuracy, CPU name
from device_runner.data import normalize  # noqa: E402  the runner's float32 normalisation of fitted images

DATA = Path("/usr/share/datasets/fashion-mnist")
CACHE = Path("/var/cache/mobiletl/hardswish")
SOURCE_CLASSES, TARGET_CLASSES = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)
# label -> (method, hardswish_backward)
VARIANTS = {"mobiletl (sign)": ("mobiletl", None), "mobiletl (exact hswish)": ("mobiletl", "exact"),
            "vanilla": ("vanilla", None)}


class BenchmarkError(Exception):
    """A one-line reason the benchmark cannot run."""


# ---- data ----------------------------------------------------------------------------------------------------

def load_fmnist(split: str, classes: tuple[int, ...], limit: int | None = None, seed: int = 0):
    """Fashion-MNIST `split` ("train" | "t10k") restricted to `classes`, relabelled 0.. in that order.
    Returns (uint8 [N, 28, 28, 1], int64 [N]); `limit`: a seeded subset of that many, in file order."""
    from device_runner import RunnerError
    from device_runner.data import load_dataset

    path = DATA / f"{split}-images-idx3-ubyte.gz"
    if not path.exists():
        raise BenchmarkError(f"{path} not found: install Debian's dataset-fashion-mnist (scripts/setup.sh does)")
    try:
        data = load_dataset(str(path), 10)
    except RunnerError as exc:
        raise BenchmarkError(str(exc)) from None
    keep = np.flatnonzero(np.isin(data.labels, classes))
    if limit is not None and limit < len(keep):
        keep = np.sort(np.random.default_rng(seed).choice(keep, limit, replace=False))
    relabel = {c: i for i, c in enumerate(classes)}
    images = np.stack([data.images[i] for i in keep])
    return images, np.array([relabel[int(data.labels[i])] for i in keep], np.int64)


def fit_all(images: np.ndarray, resolution: int, spec: dict) -> np.ndarray:
    """uint8 [N, H, W, 1] -> uint8 [N, R, R, 1], each image fitted as the runner fits it (device_runner.data.fit)."""
    from device_runner.data import fit

    return np.stack([fit(im, resolution, spec) for im in images])


# ---- 1. source pretraining (PyTorch) ---------------------------------------------------------------------------

def pretrain(args, spec: dict, log) -> tuple[Path, dict]:
    """Train args.model from scratch on Fashion-MNIST 0-4; returns (state_dict file, its record). Cached."""
    import torch
    import torch.nn.functional as F

    from mobiletl_export.models import create_model

    setting = {"model": args.model, "resolution": args.resolution, "preprocess": spec, "classes": SOURCE_CLASSES,
               "samples": args.pretrain_samples, "epochs": args.pretrain_epochs, "batch": args.pretrain_batch,
               "lr": args.pretrain_lr, "weight_decay": 0.05, "optimizer": "adamw+onecycle", "augment": "flip+shift2",
               "label_smoothing": 0.1, "seed": 0, "torch": torch.__version__.split("+")[0]}
    key = hashlib.sha256(json.dumps(setting, sort_keys=True).encode()).hexdigest()[:10]
    path = Path(args.cache_dir) / f"{args.model}-fmnist04-{args.resolution}px-seed0-{key}.pt"
    record_path = path.with_suffix(".json")
    if path.exists() and record_path.exists():
        record = json.loads(record_path.read_text())
        log(f"source weights: reusing {path} (source test accuracy {record['source_test_acc']:.4f})")
        return path, record
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=len(SOURCE_CLASSES), seed=0, dropout=0.2)
    norm = model.structure().normalization
    x_train, y_train = load_fmnist("train", SOURCE_CLASSES, args.pretrain_samples)
    x_test, y_test = load_fmnist("t10k", SOURCE_CLASSES)
    x_train, x_test = fit_all(x_train, args.resolution, spec), fit_all(x_test, args.resolution, spec)
    opt = torch.optim.AdamW(model.parameters(), lr=args.pretrain_lr, weight_decay=0.05)
    steps = args.pretrain_epochs * math.ceil(len(x_train) / args.pretrain_batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.pretrain_lr, total_steps=steps, pct_start=0.15)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for epoch in range(args.pretrain_epochs):
        model.train()
        order = rng.permutation(len(x_train))
        total, correct, loss_sum = 0, 0, 0.0
        for i in range(0, len(order), args.pretrain_batch):
            idx = order[i:i + args.pretrain_batch]
            if len(idx) < 2:  # BatchNorm in train mode needs two samples
                continue
            batch = x_train[idx]
            flip = rng.random(len(idx)) < 0.5
            batch = np.where(flip[:, None, None, None], batch[:, :, ::-1], batch)
            dy, dx = rng.integers(-2, 3, size=2)  # the same small shift for the whole batch
            batch = np.roll(batch, (int(dy), int(dx)), axis=(1, 2))
            x = torch.from_numpy(normalize(batch, norm.mean, norm.std))
            y = torch.from_numpy(y_train[idx])
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += len(idx)
            correct += int((logits.argmax(1) == y).sum())
            loss_sum += loss.item() * len(idx)
        log(f"  pretrain epoch {epoch + 1}/{args.pretrain_epochs}: loss {loss_sum / total:.4f}, train acc "
            f"{correct / total:.4f}, {time.perf_counter() - start:.0f} s")
    model.eval()
    acc = _torch_accuracy(model, x_test, y_test, norm)
    record = {"source_test_acc": acc, "source_test_images": int(len(x_test)), "pretrain_seconds":
              round(time.perf_counter() - start, 1), "setting": setting}
    log(f"source task (Fashion-MNIST 0-4, {len(x_test)} test images): accuracy {acc:.4f}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(path)
    record_path.write_text(json.dumps(record, indent=1) + "\n")
    return path, record


def _torch_accuracy(model, x: np.ndarray, y: np.ndarray, norm) -> float:
    import torch

    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), 500):
            logits = model(torch.from_numpy(normalize(x[i:i + 500], norm.mean, norm.std)))
            correct += int((logits.argmax(1).numpy() == y[i:i + 500]).sum())
    return correct / len(x)


# ---- 2./3. export and fine-tune with the runner ---------------------------------------------------------------

def target_weights(source: Path, model_name: str, seed: int, out: Path) -> Path:
    """The source state_dict with a fresh classifier (create_model's seeded init for `seed`): a new head for the
    target classes, as transfer learning starts."""
    import torch

    from mobiletl_export.models import create_model

    state = torch.load(source, map_location="cpu", weights_only=True)
    fresh = create_model(model_name, num_classes=len(TARGET_CLASSES), seed=seed)
    classifier = fresh.structure().head.classifier.name
    own = fresh.state_dict()
    for suffix in ("weight", "bias"):
        state[f"{classifier}.{suffix}"] = own[f"{classifier}.{suffix}"]
    torch.save(state, out)
    return out


def export_variant(model_name: str, k: int, variant: str, resolution: int, weights: str, seed: int, out: Path,
                   preprocess: str = "crop"):
    from mobiletl_export.export import ExportConfig, export

    method, hardswish = VARIANTS[variant]
    return export(ExportConfig(model=model_name, top_k=k, method=method, hardswish_backward=hardswish,
                               num_classes=len(TARGET_CLASSES), resolution=resolution, weights=weights, seed=seed,
                               preprocess=preprocess, out=str(out)))


def mask_calls(folder: Path) -> dict:
    """{graph file: {mobiletl function: calls}} of the two training graphs of an export."""
    import onnx

    calls = {}
    for name in ("training_model.onnx", "train_step.onnx"):
        counts: dict[str, int] = {}
        for node in onnx.load(str(folder / name)).graph.node:
            if node.domain == "mobiletl":
                counts[node.op_type] = counts.get(node.op_type, 0) + 1
        calls[name] = dict(sorted(counts.items()))
    return calls


def backbone_features(folder: Path, manifest: dict, fitted: np.ndarray, threads: int) -> np.ndarray:
    """float32 [N, C, H, W]: backbone.onnx on the normalised images, as the runner computes them."""
    from device_runner.ort import Inference

    backbone = Inference(folder / manifest["files"]["backbone"], threads)
    norm = manifest["normalization"]
    return np.concatenate([backbone(normalize(fitted[i:i + 256], norm["mean"], norm["std"]))
                           for i in range(0, len(fitted), 256)])


def finetune(folder: Path, manifest: dict, train: tuple, evals: dict, lr: float, epochs: int, batch: int,
             seed: int, threads: int) -> dict:
    """Train the export's portable step on cached features with the runner's loop (device_runner.train.Run via
    benchmarks/accuracy.py's train_run: PCG32 shuffle, cosine schedule); returns {eval name: accuracy} after the
    last epoch and the last epoch's training loss (NaN, accuracies 0, when the rate diverges).
    `train` = (features float32 [N, ...], labels int64 [N]); `evals` = {name: (features, labels)}."""
    from device_runner import RunnerError
    from device_runner.data import Dataset

    x, y = train
    settings = argparse.Namespace(epochs=epochs, batch_size=batch, threads=threads)
    with tempfile.TemporaryDirectory(prefix="finetune-") as work:
        try:
            trainer, curve, _ = study.train_run(folder, manifest, {"train": Dataset([None] * len(y), y, "features"),
                                                                   "val": None}, {"train": x}, lr, seed, settings,
                                                Path(work))
        except RunnerError:  # the loss stopped being finite: this rate loses the sweep
            return {"train_loss": float("nan"), **{name: 0.0 for name in evals}}
    return {"train_loss": curve[-1]["train_loss"],
            **{name: study.accuracy(trainer, ex, ey) for name, (ex, ey) in evals.items()}}


# ---- 4. memory --------------------------------------------------------------------------------------------------

def memory(model_name: str, k: int, variant: str, resolution: int, batch: int, tmp: Path) -> dict:
    """Analysed training memory of a variant at `resolution` px, `batch` samples (mobiletl-report's numbers)."""
    from mobiletl_export.analyze.report import analyze_folder

    out = tmp / f"mem-{k}-{variant.replace(' ', '_')}"
    export_variant(model_name, k, variant, resolution, "random", 0, out)
    r = analyze_folder(out, batch)
    return {"stored_bytes": r.stored_bytes, "training_bytes": r.training_bytes, "peak_live_bytes": r.peak_live_bytes,
            "portable_stored_bytes": r.portable_stored_bytes, "trainable_params": r.trainable_params}


# ---- main ---------------------------------------------------------------------------------------------------------

def mean_spread(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.max(values) - np.min(values))


def format_table(results: dict) -> str:
    s = results["settings"]
    mem = f"{s['memory_batch']} x {s['memory_resolution']} px"
    lines = [f"| variant | k | test accuracy, mean (min–max, {len(s['seeds'])} seeds) | lr | stored MiB ({mem}) | "
             f"training MiB ({mem}) |", "|---|---:|---:|---:|---:|---:|"]
    for row in results["rows"]:
        accs = [100 * a for a in row["test_acc_by_seed"].values()]
        lines.append(f"| {row['variant']} | {row['k']} | {np.mean(accs):.2f} % ({min(accs):.2f}–{max(accs):.2f}) | "
                     f"{row['lr']:g} | "
                     f"{row['memory']['stored_bytes'] / 2**20:.2f} | {row['memory']['training_bytes'] / 2**20:.2f} |")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny pretraining and data, k=2, one seed and rate (< 1 min): "
                   "checks the pipeline, its accuracies mean nothing; writes no JSON unless --out")
    p.add_argument("--model", default="mbv3-small", choices=("mbv3-small", "mbv3-large"))
    p.add_argument("--resolution", type=int, default=48, help="pretraining and fine-tuning resolution (px)")
    p.add_argument("--ks", type=int, nargs="+", default=[2, 5], help="top-k values")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2], help="AdamW learning rates swept")
    p.add_argument("--epochs", type=int, default=6, help="fine-tuning epochs")
    p.add_argument("--batch-size", type=int, default=32, help="fine-tuning batch")
    p.add_argument("--train-samples", type=int, default=2500, help="target training images (incl. validation)")
    p.add_argument("--val-samples", type=int, default=500, help="held out of --train-samples for the lr sweep")
    p.add_argument("--test-samples", type=int, default=None, help="default: the whole official test set (5,000)")
    p.add_argument("--pretrain-samples", type=int, default=None, help="default: all 30,000 source images")
    p.add_argument("--pretrain-epochs", type=int, default=4)
    p.add_argument("--pretrain-batch", type=int, default=64)
    p.add_argument("--pretrain-lr", type=float, default=3e-3)
    p.add_argument("--memory-resolution", type=int, default=224)
    p.add_argument("--memory-batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=1, help="PyTorch and onnxruntime threads")
    p.add_argument("--cache-dir", default=str(CACHE), help="where the pretrained source weights are cached")
    p.add_argument("--out", default=str(ROOT / "docs" / "accuracy" / "hardswish.json"),
                   help="write the results as JSON here")
    if "--quick" in (sys.argv[1:] if argv is None else argv):  # options given on the command line still win;
        p.set_defaults(ks=[2], seeds=[0], lrs=[1e-3], epochs=2, train_samples=240, val_samples=80,  # no JSON
                       test_samples=200, pretrain_samples=600, pretrain_epochs=1, resolution=32, out=None)
    args = p.parse_args(argv)
    for name in ("epochs", "batch_size", "train_samples", "val_samples", "pretrain_epochs", "pretrain_batch",
                 "threads", "memory_batch"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.val_samples >= args.train_samples:
        p.error("--val-samples must be smaller than --train-samples")
    if any(k < 0 for k in args.ks):
        p.error("--ks must be >= 0")
    return args


def run(args, log=print) -> dict:
    import torch

    from mobiletl_export.export import preprocess_spec
    from mobiletl_export.models import create_model

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    n_blocks = len(create_model(args.model, num_classes=2).structure().blocks)
    if max(args.ks) > n_blocks:
        raise BenchmarkError(f"--ks: {args.model} has {n_blocks} IRBs")
    spec = preprocess_spec("crop")
    source, source_record = pretrain(args, spec, log)

    x_all, y_all = load_fmnist("train", TARGET_CLASSES, args.train_samples, seed=1)
    x_test, y_test = load_fmnist("t10k", TARGET_CLASSES, args.test_samples, seed=2)
    x_all, x_test = fit_all(x_all, args.resolution, spec), fit_all(x_test, args.resolution, spec)
    perm = np.random.default_rng(3).permutation(len(y_all))  # the held-out validation split
    val_idx, train_idx = np.sort(perm[:args.val_samples]), np.sort(perm[args.val_samples:])
    log(f"target task: Fashion-MNIST 5-9, {len(train_idx)} training + {len(val_idx)} validation images, "
        f"{len(y_test)} test images")

    rows, exports = [], {}
    with tempfile.TemporaryDirectory(prefix="hardswish-") as tmp:
        tmp = Path(tmp)
        weights = {seed: target_weights(source, args.model, seed, tmp / f"target-seed{seed}.pt") for seed in args.seeds}
        for k in args.ks:
            features = None
            for variant in VARIANTS:
                folders = {}
                for seed in args.seeds:
                    out = tmp / f"k{k}-{variant.replace(' ', '_')}-seed{seed}"
                    folders[seed] = export_variant(args.model, k, variant, args.resolution, str(weights[seed]),
                                                   seed, out).out
                manifest = json.loads((folders[args.seeds[0]] / "manifest.json").read_text())
                exports[f"{variant}, k={k}"] = {"hardswish_backward": manifest["hardswish_backward"],
                                                "masked_activations": manifest["masked_activations"],
                                                "mask_calls": mask_calls(folders[args.seeds[0]])}
                if features is None:  # the frozen backbone is the same for every variant and seed at this k
                    f_all = backbone_features(folders[args.seeds[0]], manifest, x_all, args.threads)
                    f_test = backbone_features(folders[args.seeds[0]], manifest, x_test, args.threads)
                    features = {"train": (f_all[train_idx], y_all[train_idx]), "val": (f_all[val_idx], y_all[val_idx]),
                                "test": (f_test, y_test)}
                sweep = {}
                for lr in args.lrs:  # seed 0, train split, scored on validation
                    r = finetune(folders[args.seeds[0]], manifest, features["train"], {"val": features["val"]}, lr,
                                 args.epochs, args.batch_size, args.seeds[0], args.threads)
                    sweep[lr] = r["val"]
                    log(f"  k={k} {variant}: lr {lr:g} -> validation accuracy {r['val']:.4f}")
                best = max(args.lrs, key=lambda lr: (sweep[lr], -lr))
                per_seed = {}
                for seed in args.seeds:  # the chosen rate, the same training split, scored on the test set
                    m = json.loads((folders[seed] / "manifest.json").read_text())
                    r = finetune(folders[seed], m, features["train"], {"test": features["test"]}, best,
                                 args.epochs, args.batch_size, seed, args.threads)
                    per_seed[seed] = r["test"]
                acc, spread = mean_spread(list(per_seed.values()))
                accs = [100 * a for a in per_seed.values()]
                log(f"k={k} {variant}: lr {best:g}, test accuracy {acc * 100:.2f} % ({min(accs):.2f}–{max(accs):.2f}"
                    f" over {len(accs)} seed{'s' if len(accs) > 1 else ''})")
                rows.append({"variant": variant, "k": k, "lr": best, "val_acc_by_lr": {str(lr): v for lr, v in
                                                                                       sweep.items()},
                             "test_acc_by_seed": {str(s): v for s, v in per_seed.items()}, "test_acc_mean": acc,
                             "test_acc_spread": spread})
        for row in rows:
            row["memory"] = memory(args.model, row["k"], row["variant"], args.memory_resolution, args.memory_batch,
                                   tmp)
    wall = time.perf_counter() - start
    settings = {k: v for k, v in vars(args).items() if k not in ("out",)}
    results = {"settings": settings, "source": source_record, "source_weights": str(source), "rows": rows,
               "exports": exports, "wall_seconds": round(wall, 1), "cpu": study.cpu_name(),
               "versions": _versions(), "command": " ".join([".venv/bin/python", "benchmarks/hardswish.py",
                                                             *sys.argv[1:]])}
    return results


def _versions() -> dict:
    import onnxruntime
    import torch

    return {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "python": platform.python_version()}


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    try:
        results = run(args, log=lambda m: print(m, file=sys.stderr, flush=True))
    except BenchmarkError as exc:
        print(f"hardswish.py: error: {exc}", file=sys.stderr)
        return 2
    s = results["settings"]
    print(f"{s['model']} pretrained on Fashion-MNIST 0-4 ({s['resolution']} px): source test accuracy "
          f"{results['source']['source_test_acc']:.4f}; fine-tuned on Fashion-MNIST 5-9, {s['epochs']} epochs, "
          f"batch {s['batch_size']}, AdamW + cosine; wall {results['wall_seconds']:.0f} s on {results['cpu']}, "
          f"{s['threads']} thread(s)\n")
    print(format_table(results))
    if args.quick:
        print("\n(--quick: a one-epoch source model and a few hundred images check the pipeline; these accuracies "
              "mean nothing)")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
