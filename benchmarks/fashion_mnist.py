"""Real data, end to end: EfficientNet-Lite0 (ImageNet weights) top-k, trained on Fashion-MNIST by the runner.

usage: python benchmarks/fashion_mnist.py [--top-k 2] [--resolution 64] [--samples 2000] [--epochs 3]
Trains on a seeded subset of --samples training images, validates on as many test-set images.
Exports with mobiletl-export, trains with mobiletl-train (separate processes, as a user would), prints the
validation accuracy, the runner's peak resident memory and its samples/s per epoch, as JSON on the last line.
Needs Debian's dataset-fashion-mnist (scripts/setup.sh installs it).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path("/usr/share/datasets/fashion-mnist")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--method", default="mobiletl")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        art, run = Path(tmp) / "art", Path(tmp) / "run"
        subprocess.run([sys.executable, "-m", "mobiletl_export", "--model", "efficientnet-lite0", "--top-k",
                        str(args.top_k), "--method", args.method, "--resolution", str(args.resolution),
                        "--num-classes", "10", "--out", str(art)], check=True, capture_output=True)
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "device_runner", "--artifacts", str(art),
                               "--data", str(DATA / "train-images-idx3-ubyte.gz"), "--max-samples", str(args.samples),
                               "--val", str(DATA / "t10k-images-idx3-ubyte.gz"), "--epochs", str(args.epochs),
                               "--batch-size", str(args.batch_size), "--threads", str(args.threads),
                               "--out", str(run), "--no-progress"], capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(proc.stderr)
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # largest child: the runner
        epochs = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
        epochs = [e for e in epochs if e["event"] == "epoch"]
    result = {"val_acc": epochs[-1]["val_acc"], "val_acc_per_epoch": [round(e["val_acc"], 4) for e in epochs],
              "samples_per_s_per_epoch": [round(e["samples_per_s"], 1) for e in epochs],
              "peak_rss_mb": round(peak_mb, 1), "wall_s": round(wall, 1), **vars(args)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
