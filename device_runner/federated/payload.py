"""What travels between the ServerApp and a ClientApp: the export's trainable tensors, nothing else.

The keys are the manifest's trainable state_dict keys (manifest["portable"]["parameters"]: name, shape,
float32), so a message is checked against the export before anything trains on it or averages it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import RunnerError
from ..manifest import sha256_file

HASH_KEY = "manifest-sha256"  # in the ConfigRecord "export" of every reply, and in the server's config
EXPORT_RECORD = "export"


def export_hash(folder: Path) -> str:
    """Hex sha256 of the artifact folder's manifest.json. The manifest lists every file's sha256, so equal
    hashes mean the same export (graphs, frozen weights, trainable keys) byte for byte."""
    return sha256_file(Path(folder) / "manifest.json")


def payload_bytes(manifest: dict) -> int:
    """Bytes of the trainable tensors (float32): what one message carries each way, before Flower's framing."""
    return 4 * int(manifest["portable"]["parameter_count"])


def to_record(tensors: dict[str, np.ndarray], manifest: dict):
    """ArrayRecord {key: float32 array} of the manifest's trainable keys, in manifest order (copies)."""
    from flwr.app import Array, ArrayRecord

    return ArrayRecord({e["name"]: Array(np.array(tensors[e["name"]], np.float32))
                        for e in manifest["portable"]["parameters"]})


def from_record(record, manifest: dict, where: str) -> dict[str, np.ndarray]:
    """{key: float32 array} from a received ArrayRecord after checking it against the export: exactly the
    trainable keys, each float32 of the manifest's shape and finite. RunnerError naming the first problem
    (`where` says whose message it was)."""
    entries = manifest["portable"]["parameters"]
    expected = [e["name"] for e in entries]
    got = list(record.keys())
    missing, extra = [k for k in expected if k not in record], [k for k in got if k not in set(expected)]
    if missing or extra:
        what = (f"lacks {missing[0]!r}" if missing else f"has {extra[0]!r}") + \
            f" ({len(missing)} missing, {len(extra)} unknown of {len(expected)} trainable tensors)"
        raise RunnerError(f"{where}: the tensors are not this export's: {what}")
    out = {}
    for e in entries:
        a = record[e["name"]].numpy()
        if a.dtype != np.float32 or list(a.shape) != e["shape"]:
            raise RunnerError(f"{where}: {e['name']} is {a.dtype} {list(a.shape)}, the export needs float32 "
                              f"{e['shape']}")
        if not np.isfinite(a).all():
            raise RunnerError(f"{where}: {e['name']} holds NaN or infinite values")
        out[e["name"]] = a
    return out
