"""Feature-cache speed-up of the runner: images/s of the first epoch (backbone + training) vs later epochs
(cached features + training), mbv2 top-5, batch 8, 224 px, one run.

usage: python benchmarks/runner_cache.py [--model mbv2] [--top-k 5] [--images 256] [--epochs 3] [--source npz|jpeg]
                                        [--target generic|host|x86-avx2|x86-avx512]
--source npz: images already decoded at the model's resolution (the first epoch pays only the backbone);
--source jpeg: a class-per-folder set of 400x300 JPEG files (the first epoch also decodes and resizes, as
on a phone's photo folder). Target (runner issue): later epochs at least 3x faster than the first.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def main(argv=None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="mbv2")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--method", default="mobiletl")
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--source", choices=("npz", "jpeg"), default="npz")
    p.add_argument("--target", default="generic", help="mobiletl-export --target")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subprocess.run([sys.executable, "-m", "mobiletl_export", "--model", args.model, "--top-k", str(args.top_k),
                        "--method", args.method, "--resolution", str(args.resolution), "--out", str(tmp / "art"),
                        "--target", args.target],
                       check=True, capture_output=True)
        rng = np.random.default_rng(0)
        if args.source == "npz":
            data = tmp / "d.npz"
            np.savez(data, x=rng.integers(0, 256, (args.images, args.resolution, args.resolution, 3), np.uint8),
                     y=rng.integers(0, 10, args.images))
        else:
            from PIL import Image

            data = tmp / "images"
            for i in range(args.images):
                folder = data / f"class{i % 10}"
                folder.mkdir(parents=True, exist_ok=True)
                smooth = rng.integers(0, 256, (30, 40, 3), np.uint8)  # photo-like: low-frequency content
                Image.fromarray(smooth).resize((400, 300), Image.BICUBIC).save(folder / f"{i}.jpg", quality=90)
        subprocess.run([sys.executable, "-m", "device_runner", "--artifacts", str(tmp / "art"), "--data",
                        str(data), "--val-split", "0.05", "--epochs", str(args.epochs), "--batch-size",
                        str(args.batch_size), "--threads", str(args.threads), "--out", str(tmp / "run"),
                        "--no-progress"], check=True, capture_output=True)
        epochs = [json.loads(s) for s in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
    rates = [e["samples_per_s"] for e in epochs if e["event"] == "epoch"]
    later = statistics.median(rates[1:])
    result = {"first_epoch_img_s": round(rates[0], 1), "later_epochs_img_s_median": round(later, 1),
              "speedup": round(later / rates[0], 2), **vars(args)}
    print(f"{args.model} top-{args.top_k} {args.method}, batch {args.batch_size}, {args.resolution} px, {args.source}: "
          f"first epoch {rates[0]:.1f} img/s, later epochs {later:.1f} img/s (median), "
          f"speed-up {later / rates[0]:.2f}x (target >= 3x: {'met' if later / rates[0] >= 3 else 'MISSED'})")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
