"""Where a training step's time goes: ORT's per-node profile of the portable step, grouped by role and op.

usage: python benchmarks/step_profile.py ARTIFACTS [--batch 8] [--steps 10] [--threads 2]

Runs in any runner environment (e.g. .venv-runner/bin/python, plain onnxruntime): trains --steps steps on
random features with ORT's profiler on, drops the first (warm-up) step, and prints the median per step of
the kernel time of each group: phase (fwd, bwd, opt, param) x op type, and of each layer, largest first,
with the share of the step. Node names are
`<phase>/<layer>/<op>` (emit/builder.py); nodes inlined from the `mobiletl` functions are `_inlfunc_<name>_*`.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def group_of(name: str, op: str) -> str:
    """'<phase> <op>' (phase fwd, bwd, opt, param), or the mask function a node was inlined from."""
    if name.startswith("_inlfunc_"):
        return f"mask fn {name.split('_')[2]} {op}"
    parts = name.split("/")
    return f"{parts[0] if len(parts) > 1 else '?'} {op}"


def layer_of(name: str) -> str:
    parts = name.split("/")
    return f"{parts[0]} {parts[1]}" if len(parts) > 2 else name


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("artifacts")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    from device_runner.portable import PortableTrainer

    folder = Path(args.artifacts)
    manifest = json.loads((folder / "manifest.json").read_text())
    trainer = PortableTrainer(folder, manifest, None, args.threads, profile=f"{tempfile.mkdtemp()}/step")
    rng = np.random.default_rng(0)
    shape = manifest["inputs"]["training"]["features"][1:]
    features = rng.standard_normal((args.batch, *shape)).astype(np.float32)
    labels = rng.integers(0, manifest["num_classes"], args.batch).astype(np.int64)
    for _ in range(args.steps):
        trainer.step(features, labels, 1e-4)
    events = trainer.profile_events()
    runs = [e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"]
    per_step: dict[str, list[collections.Counter]] = {"op": [], "layer": []}
    for run in runs[1:]:  # drop the warm-up step
        start, end = run["ts"], run["ts"] + run["dur"]
        ops, layers = collections.Counter(), collections.Counter()
        for e in events:
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and start <= e["ts"] <= end:
                name = e["name"][:-len("_kernel_time")]
                ops[group_of(name, e["args"]["op_name"])] += e["dur"]
                layers[layer_of(name)] += e["dur"]
        per_step["op"].append(ops)
        per_step["layer"].append(layers)
    step_ms = statistics.median(r["dur"] for r in runs[1:]) / 1000
    print(f"{folder}: batch {args.batch}, {args.threads} threads, median step {step_ms:.1f} ms")
    for kind, counters in per_step.items():
        groups = {g: statistics.median(c[g] for c in counters) / 1000 for g in set().union(*counters)}
        print(f"by {kind} (kernel time {sum(groups.values()):.1f} ms):")
        for g, ms in sorted(groups.items(), key=lambda kv: -kv[1])[:12]:
            print(f"  {ms:8.2f} ms {ms / step_ms:6.1%}  {g}")


if __name__ == "__main__":
    main()
