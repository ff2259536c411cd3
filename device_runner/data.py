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

# Largest image decoded (pixels): Pillow's own guard (DecompressionBombError above 2 x 89 MP) would refuse a
# 16000 x 12000 camera panorama; above this limit the file is reported, not decoded.
MAX_PIXELS = 400_000_000
# JPEGs above this many pixels are decoded at a reduced DCT scale (Pillow's draft: 1/2, 1/4 or 1/8, keeping at
# least DRAFT_SIDE_FACTOR x the model's resolution on the short side), so a huge photo costs a few MB, not GBs.
# Below it the full image is decoded (12 MP: 36 MB, one image at a time), as the JavaScript runner does.
DRAFT_PIXELS = 16_000_000
# Formats without reduced-scale decoding (PNG, TIFF, ...) are decoded whole: about 14 bytes per pixel at the
# peak (decode + conversion + resize), so 100 MP costs ~1.4 GB; above it the file is reported, not decoded.
MAX_PIXELS_UNDRAFTED = 100_000_000
DRAFT_SIDE_FACTOR = 4


def image_suffixes() -> set[str]:
    """File extensions Pillow can open (png, jpg/jpeg, webp, bmp, tif/tiff, gif, ...): what a folder dataset reads."""
    from PIL import Image

    return {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


@dataclass
class Dataset:
    images: list  # uint8 arrays (H, W, C), or image paths decoded on demand
    labels: np.ndarray
    source: str
    classes: list[str] | None = None  # class names in label order (class-per-folder data)
    skipped: dict | None = None  # class -> {"not images": n, "unreadable": [file, ...]} (folder data)
    resolution: int | None = None  # decode hint: huge JPEGs are drafted to >= DRAFT_SIDE_FACTOR x this

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int) -> np.ndarray:
        item = self.images[i]
        return decode(item, self.resolution) if isinstance(item, Path) else item

    def subset(self, index: np.ndarray) -> "Dataset":
        return Dataset([self.images[i] for i in index], self.labels[index], self.source, self.classes, self.skipped,
                       self.resolution)


def _to_uint8(im, path) -> np.ndarray:
    """H x W x C uint8 (C 1 or 3) of a decoded Pillow image, each mode by its meaning:
    1 (bilevel) -> 0/255 grey; L -> grey; LA, La -> grey, alpha dropped; P, PA -> their palette colours (RGB),
    alpha dropped; RGB; RGBA, RGBa, RGBX -> RGB, alpha dropped (as Pillow's convert("RGB"): the colour of
    transparent pixels is kept); CMYK, YCbCr, LAB, HSV -> RGB by Pillow's conversion; I;16, I;16B, I;16L, I;16N
    (16-bit grey: PNG, TIFF) -> round(v / 257), i.e. scaled by the bit depth; I (32-bit integer grey, which is
    how 16-bit PNGs decode in some Pillow versions) -> 16-bit scale when the values fit 0..65535, else an error;
    F (float grey) -> 0..1 scaled by 255 when its maximum is <= 1, else taken as 0..255; clipped."""
    mode = im.mode
    if mode in ("L", "RGB"):
        return _as_hwc(np.asarray(im), str(path))
    if mode == "1":
        return _as_hwc(np.asarray(im.convert("L")), str(path))
    if mode in ("LA", "La"):
        return _as_hwc(np.asarray(im.getchannel(0)), str(path))
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(im).astype(np.int64)
        if mode == "I" and a.size and (a.min() < 0 or a.max() > 65535):
            raise RunnerError(f"cannot decode image {path}: 32-bit integer pixels outside 0..65535 (mode I); save it "
                              "as 8- or 16-bit")
        return _as_hwc(((a * 255 + 32767) // 65535).astype(np.uint8), str(path))
    if mode == "F":
        a = np.asarray(im).astype(np.float64)
        if not np.isfinite(a).all():
            raise RunnerError(f"cannot decode image {path}: float pixels include NaN or infinity")
        scale = 255.0 if a.size and a.max() <= 1.0 else 1.0
        return _as_hwc(np.clip(np.rint(a * scale), 0, 255).astype(np.uint8), str(path))
    if mode in ("P", "PA"):
        im = im.convert("RGBA")
    return _as_hwc(np.asarray(im.convert("RGB")), str(path))


def _allow_large_images() -> None:
    """Pillow refuses images above 2 x MAX_IMAGE_PIXELS (89 MP) as decompression bombs; camera panoramas are
    bigger. The runner applies its own limit (MAX_PIXELS) after reading the header, and drafts big JPEGs."""
    import warnings

    from PIL import Image

    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < MAX_PIXELS:
        Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def decode(path: Path, resolution: int | None = None) -> np.ndarray:
    """uint8 H x W x C (C 1 or 3) of an image file: EXIF orientation applied, every Pillow mode converted as
    `_to_uint8` says; JPEGs above DRAFT_PIXELS drafted (reduced DCT scale) when `resolution` is given.
    RunnerError (naming the file) when it cannot be decoded."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    _allow_large_images()
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > MAX_PIXELS:
                raise RunnerError(f"cannot decode image {path}: {w} x {h} px is above the {MAX_PIXELS // 10**6} MP "
                                  "limit; downscale it")
            if im.format != "JPEG" and w * h > MAX_PIXELS_UNDRAFTED:
                raise RunnerError(f"cannot decode image {path}: {w} x {h} px {im.format} is above the "
                                  f"{MAX_PIXELS_UNDRAFTED // 10**6} MP limit for formats decoded whole; downscale it "
                                  "or save it as JPEG")
            if im.format == "JPEG" and resolution and w * h > DRAFT_PIXELS:
                side = DRAFT_SIDE_FACTOR * resolution
                im.draft(im.mode if im.mode in ("L", "RGB") else "RGB", (side, side))
            im = ImageOps.exif_transpose(im)  # phone photos: the orientation viewers (and browsers) apply
            return _to_uint8(im, path)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise RunnerError(f"cannot decode image {path}: {str(exc).splitlines()[0] or type(exc).__name__}") from None


def check_image(path: Path) -> str | None:
    """Why `path` cannot be trained on (one short phrase), or None. Cheap: reads the header and size, and
    decodes JPEGs at 1/8 scale (which finds truncated files); other formats are verified by Pillow."""
    from PIL import Image

    _allow_large_images()
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > MAX_PIXELS:
                return f"{w} x {h} px is above the {MAX_PIXELS // 10**6} MP limit"
            if min(w, h) < 8:
                return f"{w} x {h} px is too small (at least 8 x 8)"
            if im.format == "PNG" and w * h > MAX_PIXELS_UNDRAFTED:
                return f"{w} x {h} px is above the {MAX_PIXELS_UNDRAFTED // 10**6} MP limit for PNG"
            if im.format == "JPEG":
                im.draft("RGB" if im.mode not in ("L", "RGB") else im.mode, (8, 8))
                im.load()
            elif im.format == "PNG":
                im.verify()  # reads every chunk and checks its CRC: finds truncation without inflating pixels
            else:  # BMP, GIF, TIFF, WebP, ...: verify() does not read the pixels; decode them (one at a time)
                if w * h > MAX_PIXELS_UNDRAFTED:
                    return f"{w} x {h} px is above the {MAX_PIXELS_UNDRAFTED // 10**6} MP limit for {im.format}"
                im.load()
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bad files; report, do not crash
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return None


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


def _nfc_name(p: Path) -> str:
    import unicodedata

    return unicodedata.normalize("NFC", p.name)


def _load_folder(path: Path, skip_bad: bool = False) -> Dataset:
    """One sub-folder per class, names sorted (code points), label = position. Every file Pillow can open is
    an image (image_suffixes); names starting with '.' (.ipynb_checkpoints, .DS_Store) are not data. Every
    image is checked once up front (check_image): all bad files are reported at once, or skipped and counted
    with `skip_bad`. A class left without images is an error naming it."""
    # names in Unicode NFC: a folder copied from macOS (NFD) is the same class as one typed elsewhere
    dirs = sorted((p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")), key=_nfc_name)
    if not dirs:
        raise RunnerError(f"{path} has no class sub-folders (expected one folder of images per class)")
    if len(dirs) < 2:
        raise RunnerError(f"{path} has 1 class folder ({dirs[0].name}); a classifier needs at least 2")
    suffixes = image_suffixes()
    images, labels, skipped, bad = [], [], {}, []
    for label, folder in enumerate(dirs):
        entries = sorted((f for f in folder.iterdir() if not f.name.startswith(".")), key=lambda f: f.name)
        files = [f for f in entries if f.is_file() and f.suffix.lower() in suffixes]
        others = len(entries) - len(files)
        unreadable = [(f, why) for f in files if (why := check_image(f))]
        bad += unreadable
        if others or unreadable:
            skipped[_nfc_name(folder)] = {"not images": others, "unreadable": [str(f) for f, _ in unreadable]}
        good = [f for f in files if f not in {u for u, _ in unreadable}]
        if not good and not (unreadable and not skip_bad):
            what = f" ({others} other file{'s' * (others != 1)})" if others else ""
            raise RunnerError(f"class folder {folder} has no images{what}: add images or remove the folder")
        images += good
        labels += [label] * len(good)
    if bad and not skip_bad:
        shown = "; ".join(f"{f} ({why})" for f, why in bad[:3])
        raise RunnerError(f"{len(bad)} image file{'s' * (len(bad) > 1)} in {path} cannot be decoded: {shown}"
                          f"{'; ...' if len(bad) > 3 else ''}; fix or remove them, or pass --skip-bad-images")
    return Dataset(images, np.asarray(labels, np.int64), str(path), [_nfc_name(d) for d in dirs], skipped)


def load_dataset(spec: str, num_classes: int, max_samples: int | None = None, seed: int = 0,
                 skip_bad: bool = False, resolution: int | None = None) -> Dataset:
    path = Path(spec)
    if not path.exists():
        raise RunnerError(f"data not found: {spec}")
    if path.is_dir():
        data = _load_folder(path, skip_bad)
        data.resolution = resolution
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
    if bad.any() and data.classes is None:  # class folders: assign_classes names them
        raise RunnerError(f"{spec}: label {int(data.labels[bad][0])} is outside [0, {num_classes}) of the exported "
                          "model")
    if max_samples and len(data) > max_samples:  # a seeded random subset keeps every class represented
        data = data.subset(np.sort(permutation(len(data), seed, SUBSET)[:max_samples]))
    return data


def fingerprint(spec: str) -> str:
    """sha256 over what the data is: for a folder, every file's relative path, size and modification time
    (changing, adding or removing a file changes it; reading is not needed); for a file, its size, time and
    first MiB. --resume compares it with the run's."""
    import hashlib
    import os

    h = hashlib.sha256()
    path = Path(spec)
    if path.is_dir():  # symlinked class folders are followed (they are read); hidden names are not data
        for root, dirs, files in os.walk(path, followlinks=True):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(f for f in files if not f.startswith(".")):
                file = os.path.join(root, name)
                try:
                    st = os.stat(file)
                except OSError:  # a broken link: not an image either
                    continue
                h.update(f"{os.path.relpath(file, path)}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    else:
        st = path.stat()
        h.update(f"{st.st_size}\t{st.st_mtime_ns}\n".encode())
        with open(path, "rb") as f:
            h.update(f.read(1 << 20))
    return h.hexdigest()


def assign_classes(train: Dataset, val: Dataset | None, num_classes: int, allow_unused: bool,
                   spec: str) -> None:
    """Check the class folders against the export's outputs and label `val` by class name (in place).

    More classes than outputs, or fewer without `allow_unused` (outputs that would never be trained), is an
    error naming the classes. A validation class unknown to training is an error naming it; a subset is fine:
    its labels follow the training set's names, not the validation folder's positions."""
    names = train.classes
    if names is not None:
        listed = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
        if len(names) > num_classes:
            raise RunnerError(f"{spec} has {len(names)} classes ({listed}) but the export has {num_classes} outputs; "
                              f"export with --num-classes {len(names)}")
        if len(names) < num_classes and not allow_unused:
            raise RunnerError(f"{spec} has {len(names)} classes ({listed}) but the export has {num_classes} outputs; "
                              f"export with --num-classes {len(names)}, or pass --allow-unused-outputs to leave "
                              f"{num_classes - len(names)} of them untrained")
    if val is None or val.classes is None:
        return
    if names is None:
        raise RunnerError("--val is a class-per-folder directory but --data has no class names (.npz or idx); use "
                          "the same kind of data for both")
    unknown = [c for c in val.classes if c not in names]
    if unknown:
        raise RunnerError(f"--val has class{'es' * (len(unknown) > 1)} that --data lacks: {', '.join(unknown)}")
    index = {c: i for i, c in enumerate(names)}
    val.labels = np.asarray([index[val.classes[y]] for y in val.labels], np.int64)
    val.classes = list(names)


def skipped_summary(*datasets: Dataset | None) -> dict:
    """{class: {"not images": n, "unreadable": n}} over the datasets, for the run summary."""
    out: dict = {}
    for data in datasets:
        for name, info in ((data.skipped or {}) if data is not None else {}).items():
            entry = out.setdefault(name, {"not images": 0, "unreadable": 0})
            entry["not images"] += info["not images"]
            entry["unreadable"] += len(info["unreadable"])
    return out


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


SQUASH = {"resize": "squash"}  # exports written before `preprocess` was recorded


def fit(im: np.ndarray, resolution: int, spec: dict | None = None) -> np.ndarray:
    """uint8 H x W x C -> R x R x C as the manifest's `preprocess` says (resize.py's bilinear in both cases).

    shorter-side: torchvision's Resize(S) + CenterCrop(R) with S = floor(R / crop_fraction): the shorter side
    becomes S, the longer int(S * long / short); the crop starts at round((size - R) / 2) (Python's round, half to
    even). squash: straight to R x R, the aspect ratio ignored."""
    spec = spec or SQUASH
    from .resize import resize_bilinear

    if spec.get("resize") == "squash":
        return resize_bilinear(im, resolution, resolution)
    if spec.get("resize") != "shorter-side":
        raise RunnerError(f"unknown preprocess {spec!r} in the manifest (this runner knows shorter-side and squash)")
    import math

    size = math.floor(resolution / float(spec["crop_fraction"]))
    h, w = im.shape[:2]
    if w <= h:
        nw, nh = size, int(size * h / w)
    else:
        nw, nh = int(size * w / h), size
    out = resize_bilinear(im, nw, nh)
    top, left = int(round((nh - resolution) / 2.0)), int(round((nw - resolution) / 2.0))
    return out[top:top + resolution, left:left + resolution]


def preprocess(images: list[np.ndarray], resolution: int, mean, std, spec: dict | None = None) -> np.ndarray:
    """uint8 H x W x C images (C 1 or 3) -> float32 [N, 3, R, R]: fitted to R x R (`fit`, the manifest's
    `preprocess`; default squash), then `normalize`d."""
    fitted = np.empty((len(images), resolution, resolution, 3), np.uint8)
    for i, im in enumerate(images):
        fitted[i] = fit(im, resolution, spec)  # grey broadcast to RGB
    return normalize(fitted, mean, std)


def normalize(fitted: np.ndarray, mean, std) -> np.ndarray:
    """uint8 [N, H, W, C] images already fitted (C 1 or 3) -> float32 [N, 3, H, W]: grey broadcast to RGB, then
    (x / 255 - mean) / std, each step in float32 in that order (as every runner does, docs/MANIFEST.md)."""
    n, h, w = fitted.shape[:3]
    out = np.empty((n, 3, h, w), np.float32)
    out[:] = fitted.transpose(0, 3, 1, 2)
    out /= 255.0
    out -= np.asarray(mean, np.float32).reshape(1, 3, 1, 1)
    out /= np.asarray(std, np.float32).reshape(1, 3, 1, 1)
    return out
