"""Dropout (inverted, like PyTorch): active only in the training graph; saves its bool keep-mask.

dx = dy * mask / (1 - p). With p = 0, or outside training, it is an Identity.
"""

from __future__ import annotations

import numpy as np

from .base import Rule, Step


class Dropout(Rule):
    kinds = ("dropout",)

    def forward(self, b, s: Step) -> dict:
        op = s.op
        p = op.attrs["p"]
        if s.mode != "train" or p == 0.0:
            b.node("Identity", op.inputs, op.outputs, layer=op.layer)
            return {}
        mask = b.fresh(f"{op.layer}/keep")
        b.node("Dropout", [op.inputs[0], b.const(p), b.const(True, np.bool_)], [op.outputs[0], mask],
               layer=op.layer)
        return {"keep": mask} if s.needs_backward else {}

    def backward(self, b, s: Step, saved, dys):
        op, (dy,) = s.op, dys
        if "keep" not in saved:
            return [dy]
        scaled = b.op("Mul", dy, b.const(1.0 / (1.0 - op.attrs["p"])), layer=op.layer)
        return [b.op("Where", saved["keep"], scaled, b.const(0.0), layer=op.layer)]
