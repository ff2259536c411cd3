"""The pipeline in one function: model -> plan -> lower -> emit -> package.

    export(ExportConfig(model="mbv2", top_k=5)) writes
      backbone.onnx          image -> features (frozen stem + lower IRBs, plain inference)
      training_model.onnx    ORT on-device training graph of the top-k region (hand-derived backward)
      eval_model.onnx        features, labels -> loss, logits
      optimizer_model.onnx   AdamW or SGD (onnxblock)
      checkpoint             trainable + frozen region tensors, by state_dict key
    and the portable contract (package/portable.py; standard ONNX ops, plain onnxruntime >= 1.17):
      train_step.onnx        one model per training step: forward, backward, optimizer
      eval_step.onnx         features, labels, params -> loss, logits
      inference.onnx         image -> logits with the initial weights, completed by runners with trained ones
      parameters.safetensors trainable tensors by state_dict key
      manifest.json          what all of this is, with sha256 of every file (schema: docs/MANIFEST.md)
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from device_runner.manifest import FORMAT, sha256_file

from . import __version__
from .emit.graphs import build_backbone, build_eval, build_training
from .emit.nchwc import TARGETS, target_block
from .lower import lower_backbone, lower_region
from .models import create_model, imagenet_weights_path
from .package.folder import atomic_folder, check_writable
from .package import portable
from .package.optimizer import build_optimizer
from .plan import make_plan, resolve_hardswish_backward

FILES = {
    "backbone": "backbone.onnx",
    "training_model": "training_model.onnx",
    "eval_model": "eval_model.onnx",
    "optimizer_model": "optimizer_model.onnx",
    "checkpoint": "checkpoint",
    **portable.FILES,
}


CROP_FRACTION = 0.875  # torchvision's ImageNet evaluation: Resize(256) + CenterCrop(224); timm's crop_pct


def preprocess_spec(name: str) -> dict:
    """The manifest's `preprocess`: how runners turn an image of any shape into R x R (docs/MANIFEST.md)."""
    if name == "crop":
        return {"resize": "shorter-side", "crop_fraction": CROP_FRACTION}
    if name == "squash":
        return {"resize": "squash"}
    raise ValueError(f"unknown --preprocess {name!r}; choose crop or squash")


@dataclass
class ExportConfig:
    model: str
    top_k: int
    method: str = "mobiletl"
    num_classes: int = 10
    weights: str | None = "default"  # "default": ImageNet where available offline, else seeded random init
    resolution: int = 224
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.01
    dropout: float = 0.0
    seed: int = 0
    width_mult: float | None = None
    out: str | None = None
    force: bool = False
    target: str = "generic"  # generic (any ORT) | x86-avx2 | x86-avx512 | host (emit/nchwc.py)
    ort_format: bool = False  # also write .ort files of the ORT-training models (ORT's minimal/mobile builds)
    preprocess: str = "crop"  # crop: shorter side to R / 0.875, centre crop R (torchvision eval) | squash: R x R
    hardswish_backward: str | None = None  # None: the method's own; "sign" (mobiletl) | "exact" (plan.py)

    def out_dir(self) -> Path:
        exact = self.method == "mobiletl" and self.hardswish_backward == "exact"
        return Path(self.out or f"artifacts/{self.model}-top{self.top_k}-{self.method}"
                                f"{'-hardswish-exact' if exact else ''}")


@dataclass
class ExportResult:
    out: Path
    manifest: dict
    seconds: float = 0.0
    files: dict = field(default_factory=dict)


def _versions() -> dict:
    import onnxruntime
    import torch

    return {"mobiletl_export": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__}


def _validate(cfg: ExportConfig) -> None:
    if isinstance(cfg.num_classes, bool) or not isinstance(cfg.num_classes, int) or cfg.num_classes < 2:
        raise ValueError(f"--num-classes must be an integer >= 2, got {cfg.num_classes!r}")
    if not 32 <= cfg.resolution <= 1024:
        raise ValueError(f"--resolution must be between 32 and 1024, got {cfg.resolution}")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ValueError(f"--dropout must be in [0, 1), got {cfg.dropout}")
    if not cfg.lr > 0:
        raise ValueError(f"--lr must be positive, got {cfg.lr}")
    target_block(cfg.target)
    resolve_hardswish_backward(cfg.method, cfg.hardswish_backward)


def _target_name(block: int) -> str:
    return {b: name for name, b in TARGETS.items()}.get(block, f"nchwc{block}")


ORT_FORMAT_ROLES = ("training_model", "eval_model", "optimizer_model")


def _write_ort_format(folder: Path) -> dict:
    """training/eval/optimizer models as .ort files (what onnxruntime.training.artifacts.generate_artifacts
    writes with ort_format=True: convert_onnx_models_to_ort, 'Fixed' optimization style), plus ORT's
    `<name>.required_operators.config` for a reduced-operator build. Returns the manifest's new `files` roles."""
    import contextlib
    import io
    import logging

    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    logging.getLogger("ort_format_model.utils").setLevel(logging.WARNING)
    files = {}
    for role in ORT_FORMAT_ROLES:
        model = folder / FILES[role]
        with contextlib.redirect_stdout(io.StringIO()):  # the converter prints progress
            convert_onnx_models_to_ort(model, output_dir=folder, optimization_styles=[OptimizationStyle.Fixed])
        files[f"{role}_ort"] = model.with_suffix(".ort").name
        files[f"{role}_operators"] = model.with_suffix(".required_operators.config").name
    return files


def resolve_weights(cfg: ExportConfig) -> tuple[str | None, str]:
    """(weights argument for create_model, a sentence saying what was used)."""
    if cfg.weights == "default":
        path = imagenet_weights_path(cfg.model)
        if path:
            return path, f"ImageNet weights ({path})"
        return None, f"seeded random init (seed {cfg.seed}; no offline ImageNet weights for {cfg.model})"
    if cfg.weights in (None, "random"):
        return None, f"seeded random init (seed {cfg.seed})"
    return cfg.weights, f"weights file {cfg.weights}"


def export(cfg: ExportConfig, model=None) -> ExportResult:
    """Export `cfg`; pass `model` to export an already-built nn.Module (tests do) instead of creating one."""
    start = time.perf_counter()
    _validate(cfg)
    out = cfg.out_dir()
    check_writable(out, cfg.force)  # fail before any work
    weights, weights_note = resolve_weights(cfg)
    if model is None:
        options = {"dropout": cfg.dropout}
        if cfg.width_mult is not None:
            options["width_mult"] = cfg.width_mult
        model = create_model(cfg.model, cfg.num_classes, weights=weights, seed=cfg.seed, **options)
    else:
        weights_note = "model object passed to export()"
    plan = make_plan(model, cfg.method, cfg.top_k, cfg.hardswish_backward)
    state = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in model.state_dict().items()
             if v.is_floating_point()}

    block = target_block(cfg.target)
    backbone_tape = lower_backbone(plan.structure, plan.frozen_blocks, cfg.resolution)
    features_shape = backbone_tape.shapes["features"]
    region = lower_region(plan.structure, plan.trained_blocks, features_shape)
    models = {
        "backbone": build_backbone(backbone_tape, state),
        "training_model": build_training(region, state, plan.trainable, plan.masked_activations, block),
        "eval_model": build_eval(region, state, block),
    }
    masked = plan.masked_activations
    models["train_step"] = portable.build_train_step(region, state, plan.trainable, masked, cfg.optimizer,
                                                     cfg.weight_decay, block)
    models["eval_step"] = portable.build_eval_step(region, state, plan.trainable, block)
    inference, inference_offset = portable.build_inference(backbone_tape, region, state, plan.trainable)
    trainable = [numpy_helper.from_array(state[k], k) for k in plan.trainable]
    frozen = [numpy_helper.from_array(state[k], k) for k in plan.frozen_region_keys]
    models["optimizer_model"] = build_optimizer(cfg.optimizer, trainable, cfg.weight_decay)

    norm = plan.structure.normalization
    manifest = {
        "format": FORMAT,
        "model": cfg.model,
        "method": cfg.method,
        "hardswish_backward": plan.hardswish_backward,
        "masked_activations": sorted(plan.masked_activations),
        "top_k": cfg.top_k,
        "num_blocks": len(plan.structure.blocks),
        "trained_blocks": [b.name for b in plan.trained_blocks],
        "tail_layers": [plan.structure.tail.conv_name, plan.structure.tail.bn_name],
        "head_layers": [layer.name for layer in plan.structure.head.linears],
        "num_classes": cfg.num_classes,
        "resolution": cfg.resolution,
        "normalization": {"mean": list(norm.mean), "std": list(norm.std), "scale": "rgb / 255, channels RGB"},
        "preprocess": preprocess_spec(cfg.preprocess),
        "weights": weights_note,
        "optimizer": {"name": cfg.optimizer, "lr": cfg.lr,
                      "weight_decay": cfg.weight_decay if cfg.optimizer == "adamw" else 0.0},
        "dropout": max([op.attrs["p"] for op in region.ops if op.kind == "dropout"], default=0.0),
        "seed": cfg.seed,
        "target": {"name": cfg.target if cfg.target != "host" else _target_name(block), "nchwc_block": block},
        "files": dict(FILES),
        "inputs": {
            "backbone": {"image": ["N", 3, cfg.resolution, cfg.resolution]},
            "training": {"features": ["N", *features_shape], "labels": ["N"]},
        },
        "outputs": {"backbone": {"features": ["N", *features_shape]},
                    "training": {"loss": [], "logits": ["N", cfg.num_classes]}},
        "trainable": list(plan.trainable),
        "frozen": list(plan.frozen_region_keys),
        "trainable_parameter_count": int(sum(state[k].size for k in plan.trainable)),
        "versions": _versions(),
        "portable": portable.manifest_section(portable.layout(state, plan.trainable), cfg.optimizer,
                                              cfg.weight_decay if cfg.optimizer == "adamw" else 0.0,
                                              inference_offset),
    }
    with atomic_folder(out, cfg.force) as tmp:
        for key, proto in models.items():
            onnx.save(proto, tmp / FILES[key])
        from onnxruntime.training import onnxblock

        onnxblock.save_checkpoint((trainable, frozen), str(tmp / FILES["checkpoint"]))
        if cfg.ort_format:
            manifest["files"].update(_write_ort_format(tmp))
        (tmp / FILES["inference"]).write_bytes(inference)
        portable.write_parameters(tmp / FILES["parameters"], state, plan.trainable, cfg.optimizer)
        manifest["sha256"] = {name: sha256_file(tmp / name) for name in manifest["files"].values()}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return ExportResult(out, manifest, time.perf_counter() - start, {k: out / v for k, v in FILES.items()})
