"""Datasets: a folder of images (one sub-folder per class), an .npz with x/y, or Fashion-MNIST idx files.

Every source becomes a `Dataset` of uint8 images (H x W x C, C in {1, 3}) and int64 labels; `preprocess`
resizes to the model's resolution, turns grey into RGB and normalises as the manifest says.
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import RunnerError
from .order import SPLIT, SUBSET, permutation

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


@dataclass
class Dataset:
    images: list  # uint8 arrays (H, W, C), or image paths decoded on demand
    labels: np.ndarray
    source: str
    classes: list[str] | None = None  # class names in label order (class-per-folder data)

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int) -> np.ndarray:
        item = self.images[i]
        return _decode(item) if isinstance(item, Path) else item

    def subset(self, index: np.ndarray) -> "Dataset":
        return Dataset([self.images[i] for i in index], self.labels[index], self.source, self.classes)


def _decode(path: Path) -> np.ndarray:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)  # phone photos: apply the EXIF orientation, as viewers (and browsers) do
            if im.mode not in ("L", "RGB"):
                im = im.convert("RGB")
            return _as_hwc(np.asarray(im), str(path))
    except (UnidentifiedImageError, OSError) as exc:
        raise RunnerError(f"cannot decode image {path}: {exc}") from None


def _as_hwc(a: np.ndarray, where: str) -> np.ndarray:
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3):
        raise RunnerError(f"{where}: expected a grey or RGB image (H x W, H x W x 1 or H x W x 3), got shape "
                          f"{tuple(a.shape)}")
    if min(a.shape[:2]) < 8:
        raise RunnerError(f"{where}: image of {a.shape[0]} x {a.shape[1]} px is too small (at least 8 x 8)")
    return a


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
        zero, dtype, ndim = struct.unpack(">HBB", data[:4])
        if zero != 0 or dtype != 0x08:
            raise ValueError("not an unsigned-byte idx file")
        shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
        return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)
    except (OSError, ValueError, struct.error, EOFError) as exc:
        raise RunnerError(f"cannot read idx file {path}: {exc}") from None


def _load_idx(path: Path) -> Dataset:
    labels_path = Path(str(path).replace("images-idx3", "labels-idx1"))
    if labels_path == path or not labels_path.exists():
        raise RunnerError(f"no labels file next to {path} (expected {labels_path.name})")
    images, labels = _read_idx(path), _read_idx(labels_path)
    if images.ndim != 3 or len(images) != len(labels):
        raise RunnerError(f"{path}: {len(images)} images but {len(labels)} labels")
    return Dataset([_as_hwc(im, str(path)) for im in images], labels.astype(np.int64), str(path))


def _load_npz(path: Path) -> Dataset:
    try:
        with np.load(path) as z:
            x, y = z["x"], z["y"]
    except KeyError:
        raise RunnerError(f"{path} must hold arrays 'x' (images) and 'y' (labels)") from None
    except (OSError, ValueError) as exc:
        raise RunnerError(f"cannot read {path}: {exc}") from None
    if len(x) != len(y) or y.ndim != 1:
        raise RunnerError(f"{path}: x has {len(x)} images, y has shape {tuple(y.shape)}")
    if not np.issubdtype(y.dtype, np.integer):
        raise RunnerError(f"{path}: labels y must be integers, got {y.dtype}")
    if np.issubdtype(x.dtype, np.floating):
        if not np.isfinite(x).all():
            raise RunnerError(f"{path}: x contains NaN or infinite values")
        x = np.clip(np.rint(x), 0, 255).astype(np.uint8) if x.max(initial=0) > 1.0 else \
            np.rint(np.clip(x, 0, 1) * 255).astype(np.uint8)
    elif x.dtype != np.uint8:
        raise RunnerError(f"{path}: x must be uint8 (0-255) or float, got {x.dtype}")
    if x.ndim == 4 and x.shape[1] in (1, 3) and x.shape[3] not in (1, 3):
        x = x.transpose(0, 2, 3, 1)  # NCHW -> NHWC
    return Dataset([_as_hwc(im, f"{path}[{i}]") for i, im in enumerate(x)], y.astype(np.int64), str(path))


def _load_folder(path: Path) -> Dataset:
    classes = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise RunnerError(f"{path} has no class sub-folders (expected one folder of images per class)")
    images, labels = [], []
    for label, name in enumerate(classes):
        for file in sorted((path / name).iterdir()):
            if file.suffix.lower() in IMAGE_SUFFIXES and not file.name.startswith("."):
                images.append(file)
                labels.append(label)
    return Dataset(images, np.asarray(labels, np.int64), str(path), classes)


def load_dataset(spec: str, num_classes: int, max_samples: int | None = None, seed: int = 0) -> Dataset:
    path = Path(spec)
    if not path.exists():
        raise RunnerError(f"data not found: {spec}")
    if path.is_dir():
        data = _load_folder(path)
    elif path.suffix == ".npz":
        data = _load_npz(path)
    elif "idx3" in path.name:
        data = _load_idx(path)
    else:
        raise RunnerError(f"unknown data format: {spec} (a class-per-folder directory, an .npz, or an "
                          "idx3 images file)")
    if len(data) == 0:
        raise RunnerError(f"dataset {spec} is empty")
    bad = (data.labels < 0) | (data.labels >= num_classes)
    if bad.any():
        raise RunnerError(f"{spec}: label {int(data.labels[bad][0])} is outside [0, {num_classes}) of the exported "
                          "model")
    if max_samples and len(data) > max_samples:  # a seeded random subset keeps every class represented
        data = data.subset(np.sort(permutation(len(data), seed, SUBSET)[:max_samples]))
    return data


def class_names(data: Dataset, num_classes: int) -> list[str]:
    """Names of the model's `num_classes` outputs in label order: the data's class folders, else "0", "1", ..."""
    names = list(data.classes or [])
    return names + [str(i) for i in range(len(names), num_classes)]


def split(data: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """(train, validation): a seeded random `fraction` of the samples goes to validation."""
    if not 0.0 < fraction < 1.0:
        raise RunnerError(f"--val-split must be in (0, 1), got {fraction}")
    order = permutation(len(data), seed, SPLIT)
    n_val = max(1, int(round(len(data) * fraction)))
    if n_val >= len(data):
        raise RunnerError(f"dataset of {len(data)} samples is too small to split off {fraction:.0%} for validation")
    return data.subset(np.sort(order[n_val:])), data.subset(np.sort(order[:n_val]))


def preprocess(images: list[np.ndarray], resolution: int, mean, std) -> np.ndarray:
    """uint8 H x W x C images (C 1 or 3) -> float32 [N, 3, R, R]: resized to R x R (resize.py: Pillow's
    BILINEAR, bit-exact in every runner), grey broadcast to RGB, then (x / 255 - mean) / std in float32."""
    from .resize import resize_bilinear

    out = np.empty((len(images), 3, resolution, resolution), np.float32)
    for i, im in enumerate(images):
        im = resize_bilinear(im, resolution, resolution)
        out[i] = np.broadcast_to(im, (resolution, resolution, 3)).transpose(2, 0, 1)
    out /= 255.0
    out -= np.asarray(mean, np.float32).reshape(1, 3, 1, 1)
    out /= np.asarray(std, np.float32).reshape(1, 3, 1, 1)
    return out
