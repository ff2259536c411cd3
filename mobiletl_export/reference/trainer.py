"""A small PyTorch trainer for the four methods: the reference the exported training is compared with.

Optimizers use the semantics the exported optimizer model reproduces: torch's AdamW (betas 0.9/0.999,
eps 1e-8, decoupled weight decay) and plain SGD (no momentum).
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F

from .executor import ReferenceNet

OPTIMIZERS = ("adamw", "sgd")


def make_optimizer(params, name: str, lr: float, weight_decay: float = 0.01) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


class ReferenceTrainer:
    """Trains `net.top` on backbone features; `step` returns the loss of the batch before the update."""

    def __init__(self, net: ReferenceNet, optimizer: str = "adamw", lr: float = 1e-3, weight_decay: float = 0.01):
        self.net = net
        self.params = net.trainable_parameters()
        self.optimizer = make_optimizer(list(self.params.values()), optimizer, lr, weight_decay)

    def loss(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.net.top(features)
        return F.cross_entropy(logits, labels), logits

    def gradients(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[float, dict[str, torch.Tensor]]:
        """Loss and the gradient of every trainable parameter for one batch (no update)."""
        self.optimizer.zero_grad(set_to_none=True)
        loss, _ = self.loss(features, labels)
        loss.backward()
        return loss.item(), {k: p.grad.detach().clone() for k, p in self.params.items()}

    def step(self, features: torch.Tensor, labels: torch.Tensor) -> float:
        self.net.train()
        try:
            loss, _ = self.gradients(features, labels)
        finally:
            self.net.eval()
        self.optimizer.step()
        return loss

    def fit(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], epochs: int = 1) -> list[float]:
        """Train on (images, labels) batches; returns the loss of every step."""
        losses = []
        for _ in range(epochs):
            for images, labels in batches:
                losses.append(self.step(self.net.backbone(images), labels))
        return losses
