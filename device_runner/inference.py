"""The joined `image -> logits` model of a run, written without an ONNX library.

The export's inference.onnx is the whole model with the initial trainable tensors in a trailing chunk starting
at byte manifest["portable"]["inference"]["trainable_offset"]: one more ModelProto.graph field (protobuf field
7) holding only those initializers. Protobuf merges repeated occurrences of a message field, so readers see one
graph. A trained model is bytes[:offset] + that chunk encoded with the trained values, each tensor an ONNX
TensorProto {dims (1), data_type (2) = FLOAT, name (8), raw_data (9): little-endian float32}, in the order of
manifest["portable"]["parameters"] (the exporter writes the same bytes with onnx's serializer; a test compares).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

FLOAT = 1  # onnx.TensorProto.FLOAT


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


def tensor_proto(name: str, array: np.ndarray) -> bytes:
    """TensorProto bytes of a float32 array: dims, data_type, name, raw_data (onnx's field order)."""
    dims = b"".join(_varint(8) + _varint(d) for d in array.shape)  # field 1, varint, one entry per dim
    data = np.ascontiguousarray(array, dtype="<f4").tobytes()
    return dims + _varint(16) + _varint(FLOAT) + field(8, name.encode()) + field(9, data)


def initializer_chunk(tensors: list[tuple[str, np.ndarray]]) -> bytes:
    """ModelProto field 7 (graph) with GraphProto field 5 (initializer) per tensor."""
    return field(7, b"".join(field(5, tensor_proto(name, a)) for name, a in tensors))


def metadata_chunk(props: dict[str, str]) -> bytes:
    """ModelProto field 14 (metadata_props), one StringStringEntryProto {key (1), value (2)} per item."""
    return b"".join(field(14, field(1, k.encode()) + field(2, v.encode())) for k, v in props.items())


def class_names_metadata(class_names: list[str]) -> dict[str, str]:
    """The joined model's metadata: `class_names`, a compact JSON list of the class names in label order."""
    import json

    return {"class_names": json.dumps(list(class_names), ensure_ascii=False, separators=(",", ":"))}


def write_inference(folder: Path, manifest: dict, parameters: dict[str, np.ndarray], out: Path,
                    class_names: list[str] | None = None) -> Path:
    """Write the export's inference model with `parameters` (state_dict key -> float32 array) to `out`,
    atomically (temporary file in the same folder, then rename). `class_names` (label order) go into the
    model's metadata_props under `class_names` (a JSON list)."""
    spec = manifest["portable"]
    offset = spec["inference"]["trainable_offset"]
    with open(folder / manifest["files"]["inference"], "rb") as f:
        head = f.read(offset)
    chunk = initializer_chunk([(e["name"], parameters[e["name"]]) for e in spec["parameters"]])
    if class_names is not None:
        chunk += metadata_chunk(class_names_metadata(class_names))
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(head)
            f.write(chunk)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        os.unlink(tmp)
        raise
    return out
