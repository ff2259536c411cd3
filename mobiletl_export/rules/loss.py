"""Softmax cross-entropy, mean over the batch: dlogits = (softmax - onehot) / N from the saved log-probs."""

from __future__ import annotations

from .base import Rule, Step


class SoftmaxCrossEntropy(Rule):
    kinds = ("loss",)

    def forward(self, b, s: Step) -> dict:
        op = s.op
        log_prob = b.fresh(f"{op.layer}/log_prob")
        b.node("SoftmaxCrossEntropyLoss", op.inputs, [op.outputs[0], log_prob], layer=op.layer, reduction="mean")
        return {"log_prob": log_prob, "labels": op.inputs[1]} if s.needs_backward else {}

    def backward(self, b, s: Step, saved, dys):
        op, (dloss,) = s.op, dys
        dlogits = b.node("SoftmaxCrossEntropyLossGrad", [dloss, saved["log_prob"], saved["labels"]], 1,
                         layer=op.layer, domain="com.microsoft", reduction="mean")[0]
        return [dlogits, None]
