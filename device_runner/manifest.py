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
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise RunnerError(f"{path} has format {found!r}; this runner reads {FORMAT} "
                          "(export the folder again with this version of mobiletl-export)")
    _check_fields(manifest, path)
    needed = BACKEND_FILES[backend]
    for role, name in manifest["files"].items():
        file = folder / name
        if not file.is_file():
            if role in needed:  # a device may delete the other contract's files
                raise RunnerError(f"artifact file missing: {file}")
            continue
        digest = manifest["sha256"].get(name)
        if digest is None or sha256_file(file) != digest:
            raise RunnerError(f"artifact file corrupt: {file} does not match the manifest's sha256")
    check_runtime(manifest, backend)
    return manifest


# the files each backend reads (the rest of an export may be left off a device)
BACKEND_FILES = {
    "portable": ("backbone", "train_step", "eval_step", "inference", "parameters"),
    "ort-training": ("backbone", "training_model", "eval_model", "optimizer_model", "checkpoint", "inference"),
}
REQUIRED = {"model": str, "method": str, "top_k": int, "num_classes": int, "resolution": int,
            "normalization": dict, "optimizer": dict, "files": dict, "sha256": dict, "inputs": dict,
            "trainable": list, "portable": dict, "versions": dict}


def _check_fields(manifest: dict, path: Path) -> None:
    """One line naming the first missing or mistyped field of a hand-edited manifest (not a KeyError later)."""
    for key, kind in REQUIRED.items():
        if not isinstance(manifest.get(key), kind):
            raise RunnerError(f"{path} is malformed: field {key!r} is missing or not a {kind.__name__}")
    lr = manifest["optimizer"].get("lr")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise RunnerError(f"{path} is malformed: optimizer.lr must be a positive number, got {lr!r}")
    norm = manifest["normalization"]
    if not all(isinstance(norm.get(k), list) and len(norm[k]) == 3 for k in ("mean", "std")) or \
            not all(isinstance(v, (int, float)) and v > 0 for v in norm["std"]):
        raise RunnerError(f"{path} is malformed: normalization needs 3 means and 3 positive stds")
    missing = [role for role in ("backbone", "train_step", "eval_step", "inference", "parameters")
               if role not in manifest["files"]]
    if missing:
        raise RunnerError(f"{path} is malformed: files lacks {', '.join(missing)}")


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
