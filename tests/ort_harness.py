"""Shared machinery of the parity tests: export a model, drive ORT's training API, draw clean batches."""

from __future__ import annotations

import numpy as np
import torch
from conftest import randomize

from mobiletl_export.export import ExportConfig, export
from mobiletl_export.models import create_model
from mobiletl_export.plan import make_plan
from mobiletl_export.reference import ReferenceNet
from mobiletl_export.reference.executor import observe_activations

# Test label of a variant: mobiletl with the exact Hard-Swish backward (mobiletl-export --hardswish-backward exact)
EXACT_HS = "mobiletl-hsexact"

# Where each activation's derivative jumps. Under mobiletl, Hard-Swish's mask jumps at 0 instead.
KINKS = {"relu": (0.0,), "relu6": (0.0, 6.0), "hardswish": (-3.0, 3.0), "hardsigmoid": (-3.0, 3.0)}


def build(name: str, method: str, k: int, tmp_path, *, res: int = 64, classes: int = 10, optimizer="adamw",
          lr: float = 1e-3, seed: int = 0, target: str = "generic", hardswish_backward: str | None = None):
    """A randomised model (calibrated BN statistics), its reference net and its exported artifact folder.
    `method` EXACT_HS: mobiletl with hardswish_backward "exact"."""
    if method == EXACT_HS:
        method, hardswish_backward = "mobiletl", "exact"
    model = randomize(create_model(name, num_classes=classes, dropout=0.0, seed=seed), seed, res=res)
    hs = f"-hs{hardswish_backward}" if hardswish_backward else ""
    cfg = ExportConfig(model=name, top_k=k, method=method, num_classes=classes, resolution=res,
                       optimizer=optimizer, lr=lr, target=target, hardswish_backward=hardswish_backward,
                       out=str(tmp_path / f"{name}-{method}{hs}-{k}-{optimizer}-{target}"))
    result = export(cfg, model=model)
    net = ReferenceNet(model, make_plan(model, method, k, hardswish_backward))
    return net, result


def clean_batch(net: ReferenceNet, res: int, batch: int, classes: int, tol: float = 1e-5, tries: int = 500,
                steps: int = 0, optimizer: str = "adamw", lr: float = 1e-3):
    """The first seeded batch whose every activation input stays `tol` away from a kink, at the initial
    parameters and along `steps` reference optimizer steps on that batch.

    At a kink the derivative jumps, so float32 noise between two correct implementations can flip one
    mask bit and move a gradient element by a whole dy. Parity is a statement about the differentiable
    points; these batches keep the comparison there (deterministically: the same seeds every run).
    """
    from mobiletl_export.reference import ReferenceTrainer

    sign = net.plan.hardswish_backward == "sign"
    initial = {k: v.detach().clone() for k, v in net.model.state_dict().items()}
    near = [0]

    def count(kind, x):
        kinks = (0.0,) if (sign and kind == "hardswish") else KINKS[kind]
        near[0] += sum(int(((x - k).abs() < tol).sum()) for k in kinks)

    try:
        for seed in range(tries):
            g = torch.Generator().manual_seed(seed)
            images = torch.randn(batch, 3, res, res, generator=g)
            labels = torch.randint(0, classes, (batch,), generator=g)
            features = net.backbone(images)
            near[0] = 0
            trainer = ReferenceTrainer(net, optimizer=optimizer, lr=lr) if steps else None
            with observe_activations(count):
                with torch.no_grad():
                    net.top(features)
                for _ in range(steps):
                    if near[0]:
                        break
                    trainer.step(features, labels)
                    with torch.no_grad():
                        net.top(features)
            net.model.load_state_dict(initial)
            if near[0] == 0:
                return images, labels, features
    finally:
        net.model.load_state_dict(initial)
    raise RuntimeError(f"no batch clear of activation kinks in {tries} seeds")


class OrtTraining:
    """ORT's own Python training API over an artifact folder (what the runner does, with torch allowed)."""

    def __init__(self, folder):
        from onnxruntime.training.api import CheckpointState, Module, Optimizer

        self.folder = folder
        self.state = CheckpointState.load_checkpoint(str(folder / "checkpoint"))
        self.module = Module(str(folder / "training_model.onnx"), self.state, str(folder / "eval_model.onnx"))
        self.optimizer = Optimizer(str(folder / "optimizer_model.onnx"), self.module)

    def gradients(self, features: np.ndarray, labels: np.ndarray, names):
        self.module.train()
        self.module.lazy_reset_grad()
        loss, logits = self.module(features, labels)
        return float(loss), logits, {k: np.array(self.state.parameters[k].grad) for k in names}

    def step(self, features, labels, lr: float) -> float:
        self.module.train()
        self.module.lazy_reset_grad()
        loss, _ = self.module(features, labels)
        self.optimizer.set_learning_rate(lr)
        self.optimizer.step()
        return float(loss)

    def parameter(self, name: str) -> np.ndarray:
        return np.array(self.state.parameters[name].data)

    def eval_logits(self, features, labels) -> np.ndarray:
        self.module.eval()
        return self.module(features, labels)[1]
