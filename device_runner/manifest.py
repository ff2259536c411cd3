"""Load an artifact folder's manifest and verify every file against it before training on it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from . import RunnerError

FORMAT = "mobiletl-export/2"  # /2: the portable step (manifest["portable"])


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file (the manifest's digests; the exporter writes them with this too)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_manifest(folder: Path, backend: str = "portable") -> dict:
    """The manifest of an artifact folder, after checking every file's sha256 and that this onnxruntime can
    run the `backend`'s graphs. RunnerError (one line) otherwise."""
    path = folder / "manifest.json"
    if not folder.is_dir():
        raise RunnerError(f"artifact folder not found: {folder}")
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise RunnerError(f"{path} is missing: not a mobiletl-export artifact folder") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RunnerError(f"{path} is corrupt (not JSON)") from None
    if manifest.get("format") != FORMAT:
        raise RunnerError(f"{path} has format {manifest.get('format')!r}; this runner reads {FORMAT} "
                           "(export the folder again with this version of mobiletl-export)")
    for name, digest in manifest["sha256"].items():
        file = folder / name
        if not file.is_file():
            raise RunnerError(f"artifact file missing: {file}")
        if sha256_file(file) != digest:
            raise RunnerError(f"artifact file corrupt: {file} does not match the manifest's sha256")
    check_runtime(manifest, backend)
    return manifest


def _version(text: str) -> tuple[int, int]:
    return tuple(int(part) for part in text.split(".")[:2])  # type: ignore[return-value]


def check_runtime(manifest: dict, backend: str) -> None:
    """portable: any onnxruntime >= manifest["portable"]["min_onnxruntime"]; ort-training: the training
    build of the same minor version that wrote the artifacts (its checkpoint and op versions)."""
    from .ort import onnxruntime

    have = onnxruntime.__version__
    if backend == "ort-training":
        wrote = manifest["versions"]["onnxruntime"]
        if _version(wrote) != _version(have):
            raise RunnerError(f"artifacts were written for onnxruntime {wrote}, this runner has {have}; re-export "
                              "or install the matching onnxruntime-training (or use --backend portable)")
    else:
        need = manifest["portable"]["min_onnxruntime"]
        if _version(have) < _version(need):
            raise RunnerError(f"the portable step needs onnxruntime >= {need}, this is {have}")
    check_target(manifest)


def check_target(manifest: dict) -> None:
    """Artifacts exported for ORT's NCHWc kernels carry the block size in their graphs: another block size
    would compute wrong numbers silently, no kernels would fail at load. Refuse both up front."""
    from .ort import nchwc_mismatch

    target = manifest.get("target", {"name": "generic", "nchwc_block": 0})
    why = nchwc_mismatch(target["nchwc_block"])
    if why:
        raise RunnerError(f"artifacts were exported with --target {target['name']}: {why}; re-export with "
                          "--target generic or host")
