"""Atomic output folders: build everything in a temporary sibling, then rename it into place."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


class OutputError(ValueError):
    """The output folder cannot be written (exists without --force, not writable, ...)."""


def check_writable(out: Path, force: bool) -> None:
    """OutputError unless `out` can be (re)written: --force replaces only an earlier export (a folder with a
    manifest.json) or an empty folder, never another folder a mistyped --out happens to name."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"output path {out} exists and is not a folder")
    if out.exists() and not force:
        raise OutputError(f"output folder {out} already exists; pass --force to replace it")
    if out.exists() and any(out.iterdir()) and not (out / "manifest.json").is_file():
        raise OutputError(f"--force replaces only an export folder, and {out} is not one (no manifest.json); "
                          "choose another --out")
    parent = out.parent
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write to {parent}: permission denied")


@contextlib.contextmanager
def atomic_folder(out: Path, force: bool) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces `out`, on failure it is removed."""
    check_writable(out, force)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as exc:
        raise OutputError(f"cannot write to {out.parent}: {exc.strerror}") from None
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        old = None
        if out.exists():
            if not force:
                raise OutputError(f"output folder {out} appeared while exporting; pass --force to replace it")
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
