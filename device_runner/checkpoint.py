"""Run checkpoints, written atomically: a temporary folder, fsync, rename over the previous one.

RUN/checkpoint/ holds the trainer's own file (portable backend: `parameters.safetensors` with parameters,
optimizer moments and step; ort-training backend: `ort_checkpoint`, ORT's format), `state.json` (step, epoch,
position in the epoch, shuffling seed, metrics so far) and `cache_index.npy`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from . import RunnerError

NAME = "checkpoint"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(run: Path, trainer, state: dict, cache_index: np.ndarray) -> None:
    tmp = run / f"{NAME}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    trainer.save(tmp / trainer.CHECKPOINT)
    (tmp / "state.json").write_text(json.dumps(state, indent=1))
    np.save(tmp / "cache_index.npy", cache_index)
    for f in tmp.iterdir():
        _fsync(f)
    _fsync(tmp)
    final, old = run / NAME, run / f"{NAME}.old"
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync(run)
    shutil.rmtree(old, ignore_errors=True)


def load(run: Path, file: str) -> tuple[Path, dict, np.ndarray | None]:
    """(path of the trainer's checkpoint `file`, state, cache index) of the newest complete checkpoint."""
    for name in (NAME, f"{NAME}.old"):  # .old survives a crash between the two renames
        folder = run / name
        if (folder / "state.json").exists() and (folder / file).exists():
            try:
                state = json.loads((folder / "state.json").read_text())
            except json.JSONDecodeError:
                continue
            index = folder / "cache_index.npy"
            return folder / file, state, np.load(index) if index.exists() else None
    raise RunnerError(f"no checkpoint to resume from in {run}")
