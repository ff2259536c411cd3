"""--memory-budget: the largest top-k whose analysed training memory fits a byte budget."""

from __future__ import annotations

import dataclasses
import re
import tempfile
from pathlib import Path

UNITS = {"": 1, "B": 1, "KB": 2**10, "KIB": 2**10, "MB": 2**20, "MIB": 2**20, "GB": 2**30, "GIB": 2**30}


def parse_bytes(text: str) -> int:
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).upper() not in UNITS:
        raise ValueError(f"cannot read memory budget {text!r}; write e.g. 20MB, 512KB or 1.5GB")
    return int(float(m.group(1)) * UNITS[m.group(2).upper()])


def choose_top_k(cfg, budget: int, batch: int) -> tuple[int, str]:
    """(k, a sentence saying why). Tries k from the largest down; memory grows with k."""
    from .analyze.report import analyze_folder, mib
    from .export import export
    from .models import create_model

    n = len(create_model(cfg.model, cfg.num_classes).structure().blocks)
    needs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(n, -1, -1):
            trial = dataclasses.replace(cfg, top_k=k, out=str(Path(tmp) / str(k)), force=False)
            needs[k] = analyze_folder(export(trial).out, batch).training_bytes
            if needs[k] <= budget:
                more = f"; k={k + 1} needs {mib(needs[k + 1])} MiB" if k < n else " (every IRB fits)"
                return k, (f"memory budget {mib(budget)} MiB at batch {batch}, {cfg.resolution} px: chose top-k {k}, "
                           f"which needs {mib(needs[k])} MiB{more}")
    raise ValueError(f"memory budget {mib(budget)} MiB is too small: even k=0 (tail and head only) needs "
                     f"{mib(needs[0])} MiB at batch {batch}, {cfg.resolution} px")
