"""Softmax cross-entropy, mean over the batch: dlogits = (softmax - onehot) / N from the saved log-probs.

ORT-training contract: `SoftmaxCrossEntropyLossGrad` (com.microsoft). Portable: the same formula from standard
ops, (Exp(log_prob) - OneHot(labels)) * dloss / N with N read from the labels' shape (any batch size).
"""

from __future__ import annotations

from .base import Rule, Step


def _standard_grad(b, dloss: str, log_prob: str, labels: str, L: str) -> str:
    """[N, K] float32 gradient of the batch-mean loss; log_prob [N, K] float32, labels [N] int64."""
    classes = b.op("Slice", b.op("Shape", log_prob, layer=L), b.const([1], "int64"), b.const([2], "int64"), layer=L)
    onehot = b.op("OneHot", labels, classes, b.const([0.0, 1.0]), layer=L, axis=-1)
    n = b.op("Cast", b.op("Shape", labels, layer=L), layer=L, to=1)  # [1] float: the batch size
    scale = b.op("Div", dloss, n, layer=L)
    return b.op("Mul", b.op("Sub", b.op("Exp", log_prob, layer=L), onehot, layer=L), scale, layer=L)


class SoftmaxCrossEntropy(Rule):
    kinds = ("loss",)

    def forward(self, b, s: Step) -> dict:
        op = s.op
        log_prob = b.fresh(f"{op.layer}/log_prob")
        b.node("SoftmaxCrossEntropyLoss", op.inputs, [op.outputs[0], log_prob], layer=op.layer, reduction="mean")
        return {"log_prob": log_prob, "labels": op.inputs[1]} if s.needs_backward else {}

    def backward(self, b, s: Step, saved, dys):
        op, (dloss,) = s.op, dys
        if b.portable:
            return [_standard_grad(b, dloss, saved["log_prob"], saved["labels"], op.layer), None]
        dlogits = b.node("SoftmaxCrossEntropyLossGrad", [dloss, saved["log_prob"], saved["labels"]], 1,
                         layer=op.layer, domain="com.microsoft", reduction="mean")[0]
        return [dlogits, None]
