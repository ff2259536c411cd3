"""Export time: `mobiletl-export --model M --top-k K` as a user runs it (fresh process, imports included).

usage: python benchmarks/export_time.py [--model mbv2] [--top-k 5] [--repeats 5]
Prints the median wall time of the whole command and of the export itself (as the CLI reports it).
Target (compiler issue): mbv2 top-5 under 15 s on a 2-core machine.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="mbv2")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--method", default="mobiletl")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    walls, exports = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            cmd = [sys.executable, "-m", "mobiletl_export", "--model", args.model, "--top-k", str(args.top_k),
                   "--method", args.method, "--out", f"{tmp}/{i}"]
            start = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
            walls.append(time.perf_counter() - start)
            exports.append(float(re.search(r"in ([\d.]+) s", proc.stdout).group(1)))
    print(f"{args.model} top-{args.top_k} {args.method}, {args.repeats} runs")
    print(f"  whole command (fresh process): median {statistics.median(walls):.2f} s "
          f"(min {min(walls):.2f}, max {max(walls):.2f})")
    print(f"  export itself:                 median {statistics.median(exports):.2f} s")
    print(f"  target < 15 s: {'met' if statistics.median(walls) < 15 else 'MISSED'}")


if __name__ == "__main__":
    main()
