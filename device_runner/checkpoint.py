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

from .manifest import sha256_file

NAME = "checkpoint"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


HASHES = "hashes.json"  # sha256 of every other file of the checkpoint, written last


def save(run: Path, trainer, state: dict, cache_index: np.ndarray) -> None:
    """Write RUN/checkpoint/ as a whole: a temporary folder with the trainer's file, state.json, the cache
    index and hashes.json (their sha256), fsynced, then renamed into place. The previous checkpoint stays as
    RUN/checkpoint.old until the next save, so a checkpoint damaged later (a truncated copy, a full disk) still
    has an intact predecessor to fall back to."""
    tmp = run / f"{NAME}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    trainer.save(tmp / trainer.CHECKPOINT)
    (tmp / "state.json").write_text(json.dumps(state, indent=1))
    np.save(tmp / "cache_index.npy", cache_index)
    (tmp / HASHES).write_text(json.dumps({f.name: sha256_file(f) for f in sorted(tmp.iterdir())}, indent=1))
    for f in tmp.iterdir():
        _fsync(f)
    _fsync(tmp)
    final, old = run / NAME, run / f"{NAME}.old"
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync(run)


def _verify(folder: Path, file: str) -> str | None:
    """Why the checkpoint in `folder` cannot be used, or None."""
    if not (folder / "state.json").is_file() or not (folder / file).is_file():
        return "incomplete"
    hashes = folder / HASHES
    if hashes.is_file():  # checkpoints written before hashes.json are accepted when they parse
        try:
            expected = json.loads(hashes.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return f"{HASHES} is damaged"
        for name, digest in expected.items():
            if not (folder / name).is_file() or sha256_file(folder / name) != digest:
                return f"{name} does not match its hash (truncated or changed)"
    try:
        json.loads((folder / "state.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "state.json is damaged"
    return None


def load(run: Path, file: str) -> tuple[Path | None, dict | None, np.ndarray | None, str | None]:
    """(path of the trainer's checkpoint `file`, state, cache index, note) of the newest intact checkpoint.

    Checkpoints are verified against their hashes.json; a damaged newest one falls back to RUN/checkpoint.old
    (the note says so). Without any intact checkpoint the run starts again from step 0 (path and state None,
    the note says why), so --resume always continues a run folder."""
    problems = []
    for name in (NAME, f"{NAME}.old"):
        folder = run / name
        if not folder.exists():
            continue
        why = _verify(folder, file)
        if why:
            problems.append(f"{name}: {why}")
            continue
        state = json.loads((folder / "state.json").read_text())
        try:
            index = np.load(folder / "cache_index.npy") if (folder / "cache_index.npy").exists() else None
        except (ValueError, OSError):
            index = None  # the disk cache is recomputed
        note = f"{'; '.join(problems)}; resuming from the previous checkpoint (step {state.get('step')})" \
            if problems else None
        return folder / file, state, index, note
    note = f"no intact checkpoint in {run} ({'; '.join(problems)}); starting the run again from step 0" if problems \
        else f"no checkpoint in {run} yet; starting the run again from step 0"
    return None, None, None, note
