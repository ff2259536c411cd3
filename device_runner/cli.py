"""`mobiletl-train`: train the exported top-k region on a dataset with ONNX Runtime only."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from . import RunnerError

EXIT_USAGE = 2


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mobiletl-train", description=__doc__)
    p.add_argument("--artifacts", required=True, help="folder written by mobiletl-export")
    p.add_argument("--data", required=True,
                   help="class-per-folder image directory, .npz with x/y, or an idx3 images file (Fashion-MNIST)")
    p.add_argument("--val", help="validation data (same formats); default: --val-split of --data")
    p.add_argument("--val-split", type=float, default=0.1)
    p.add_argument("--max-samples", type=int, help="use a seeded random subset of at most this many samples "
                                                   "(of --data, and of --val)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, help="peak learning rate (default: the export's --lr)")
    p.add_argument("--schedule", choices=("cosine", "linear", "constant"), default="cosine")
    p.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--force", action="store_true", help="replace an existing run folder")
    p.add_argument("--out", default="runs/latest", help="run folder (metrics, checkpoints, model)")
    p.add_argument("--export", help="write the joined image -> logits model here (default: RUN/model.onnx)")
    p.add_argument("--cache-mb", type=float, default=1024, help="memory budget of the feature cache; beyond it "
                                                               "features are cached on disk")
    p.add_argument("--no-cache", action="store_true", help="recompute backbone features every epoch "
                                                            "(for augmentation)")
    p.add_argument("--threads", type=int, help="intra-op threads for ONNX Runtime")
    p.add_argument("--backend", choices=("portable", "ort-training"), default="portable",
                   help="portable (default): the export's standard-ONNX train step on any onnxruntime >= 1.17; "
                        "ort-training: the ORT-training artifacts through onnxruntime-training's API")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="leave out image files that cannot be decoded (reported) instead of stopping")
    p.add_argument("--allow-unused-outputs", action="store_true",
                   help="train with fewer class folders than the export has outputs (the rest stay untrained)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-steps", type=int, help=argparse.SUPPRESS)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _check_args(a) -> None:
    for name in ("epochs", "batch_size", "checkpoint_every"):
        if getattr(a, name) < 1:
            raise RunnerError(f"--{name.replace('_', '-')} must be >= 1")
    if a.lr is not None and not a.lr > 0:
        raise RunnerError("--lr must be positive")


# options that decide what a run computes: --resume must see the same ones (run.json records them)
RESUME_FIXED = ("backend", "artifacts", "data", "val", "val_split", "max_samples", "epochs", "batch_size", "lr",
                "schedule", "seed", "no_cache", "skip_bad_images")


def _check_resume(out: Path, args) -> dict:
    """The run's run.json, after checking that `args` repeat its RESUME_FIXED options."""
    try:
        earlier = json.loads((out / "run.json").read_text())
    except (OSError, json.JSONDecodeError):
        raise RunnerError(f"{out} is not a run folder of mobiletl-train (no readable run.json); nothing to "
                          "resume") from None
    earlier.setdefault("backend", "ort-training")  # runs written before the portable backend
    def same(name, a, b):
        if name in ("artifacts", "data", "val") and a and b:
            return Path(a).resolve() == Path(b).resolve()
        return a == b

    for name in RESUME_FIXED:
        if name in earlier and not same(name, earlier[name], getattr(args, name)):
            flag = "--" + name.replace("_", "-")
            if name == "backend":
                raise RunnerError(f"run {out} was trained with --backend {earlier[name]}; resume it with the same "
                                  "backend")
            raise RunnerError(f"run {out} was started with {flag} {earlier[name]!r}, not {getattr(args, name)!r}; "
                              "resume with the same options, or start a new run")
    return earlier


def _write_json(path: Path, record: dict) -> None:
    """Atomically: a temporary file in the same folder, then rename (a crash leaves the old file or the new)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)


def _check_same_run(out: Path, earlier: dict, identity: dict) -> None:
    """--resume continues only the run that was started: same classes, data, validation data and artifacts."""
    if "class_names" in earlier and earlier["class_names"] != identity["class_names"]:
        gone = [c for c in earlier["class_names"] if c not in identity["class_names"]]
        new = [c for c in identity["class_names"] if c not in earlier["class_names"]]
        detail = "; ".join(p for p in (f"missing now: {', '.join(gone)}" if gone else "",
                                       f"new: {', '.join(new)}" if new else "") if p) or "another order"
        raise RunnerError(f"run {out} was trained on other classes ({detail}); start a new run")
    for key, what in (("data_fingerprint", "--data"), ("val_fingerprint", "--val")):
        if key in earlier and earlier[key] != identity[key]:
            raise RunnerError(f"the files of {what} changed since run {out} started (added, removed or modified); "
                              "restore them or start a new run")
    if any(k in earlier and earlier[k] != identity[k] for k in ("manifest_sha256", "manifest_file_sha256")):
        raise RunnerError(f"the artifacts are not the ones run {out} started with (re-exported?); resume with the "
                          "original export or start a new run")


def _prepare_run_dir(out: Path, args) -> dict | None:
    """A new (empty) run folder, or with --resume the existing run's run.json."""
    if args.resume:
        if not out.is_dir():
            raise RunnerError(f"nothing to resume: run folder {out} does not exist")
        return _check_resume(out, args)
    if out.exists():
        if not args.force:
            raise RunnerError(f"run folder {out} already exists; pass --resume to continue it or --force to "
                              "replace it")
        if not out.is_dir():
            raise RunnerError(f"--out {out} is a file, not a run folder")
        if any(out.iterdir()) and not (out / "run.json").is_file():
            raise RunnerError(f"--force replaces only a run folder of mobiletl-train, and {out} is not one (no "
                              "run.json); choose another --out")
        inputs = [Path(p).resolve() for p in (args.artifacts, args.data, args.val) if p]
        if any(p == out.resolve() or out.resolve() in p.parents for p in inputs):
            raise RunnerError(f"--out {out} holds the artifacts or the data of this run; choose another --out")
        shutil.rmtree(out)
    try:
        out.mkdir(parents=True)
    except OSError as exc:
        raise RunnerError(f"cannot create run folder {out}: {exc.strerror}") from None
    return None


def _terminate(signum, frame):  # SIGTERM (a service manager, `kill`): stop like Ctrl-C, with a message
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    import signal
    import threading

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return _run(args)
    except RunnerError as exc:
        print(f"mobiletl-train: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("mobiletl-train: interrupted; resume with --resume", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(args) -> int:
    from .data import assign_classes, class_names, fingerprint, load_dataset, skipped_summary, split
    from .manifest import load_manifest, sha256_file
    from .train import Run, RunConfig

    import numpy as np

    _check_args(args)
    folder = Path(args.artifacts)
    manifest = load_manifest(folder, args.backend)
    classes = manifest["num_classes"]
    load = dict(max_samples=args.max_samples, seed=args.seed, skip_bad=args.skip_bad_images,
                resolution=manifest["resolution"])
    data = load_dataset(args.data, classes, **load)
    if args.val:
        train, val = data, load_dataset(args.val, classes, **load)
    else:
        train, val = split(data, args.val_split, args.seed)
    assign_classes(train, val, classes, args.allow_unused_outputs, args.data)
    counts = np.bincount(train.labels, minlength=len(train.classes)) if train.classes is not None else None
    if counts is not None:
        empty = [c for c, n in zip(train.classes, counts) if n == 0]
        if empty:
            raise RunnerError(f"no training images left for class{'es' * (len(empty) > 1)} {', '.join(empty)} after "
                              "--max-samples / --val-split; use more images, a larger --max-samples or a --val folder")
    names = class_names(train, classes)
    identity = {"class_names": names, "data_fingerprint": fingerprint(args.data),
                "val_fingerprint": fingerprint(args.val) if args.val else None, "manifest_sha256": manifest["sha256"],
                "manifest_file_sha256": sha256_file(folder / "manifest.json")}
    out = Path(args.out)
    earlier = _prepare_run_dir(out, args)
    if earlier is not None:
        _check_same_run(out, earlier, identity)
    else:
        _write_json(out / "run.json", {**vars(args), **identity})
    cfg = RunConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, schedule=args.schedule,
                    checkpoint_every=args.checkpoint_every, cache_mb=args.cache_mb, cache=not args.no_cache,
                    threads=args.threads, seed=args.seed, progress=not args.no_progress, max_steps=args.max_steps,
                    backend=args.backend)
    run = Run(folder, manifest, out, train, val, cfg, args.resume)
    try:
        from .ort import onnxruntime

        run.check_backbone()

        print(f"training {manifest['model']} top-{manifest['top_k']} ({manifest['method']}) on {len(train)} samples, "
              f"validating on {len(val)}; feature cache: {run.cache.kind}; backend {args.backend} "
              f"(onnxruntime {onnxruntime.__version__})", file=sys.stderr)
        if run.note:
            print(f"mobiletl-train: {run.note}", file=sys.stderr)
        if counts is not None:
            print("classes: " + ", ".join(f"{c} ({n})" for c, n in zip(train.classes, counts)), file=sys.stderr)
        skipped = skipped_summary(data, val if args.val else None)
        for name, info in skipped.items():
            print(f"skipped in {name}: {info['not images']} non-image file(s), {info['unreadable']} unreadable "
                  "image(s)", file=sys.stderr)
        last = run.run()
        model = run.export(Path(args.export) if args.export else out / "model.onnx")
    finally:
        run.close()
    summary = {k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in last.items()}  # 4 significant digits
    print(json.dumps({"run": str(out), "model": str(model), "classes": names, **summary,
                      **({"skipped": skipped} if skipped else {})}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
