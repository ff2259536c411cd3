"""Optimizer model via onnxruntime.training.onnxblock, adjusted to PyTorch's semantics.

onnxblock's AdamW emits AdamWOptimizer with adam_mode=1 (the HuggingFace variant: bias-corrected step
size, eps added to the uncorrected sqrt(v)) and eps 1e-6; adam_mode=0 with eps 1e-8 is torch.optim.AdamW.
"""

from __future__ import annotations

import onnx

from ..emit.builder import IR_VERSION, OPSET

ADAMW_EPS = 1e-8


def build_optimizer(name: str, trainable: list[onnx.TensorProto], weight_decay: float) -> onnx.ModelProto:
    from onnxruntime.training import onnxblock

    with onnxblock.empty_base(opset_version=OPSET) as accessor:
        if name == "adamw":
            onnxblock.optim.AdamW(betas=(0.9, 0.999), eps=ADAMW_EPS, weight_decay=weight_decay)((trainable, []))
        elif name == "sgd":
            onnxblock.optim.SGD()((trainable, []))
        else:
            raise ValueError(f"unknown optimizer {name!r}; choose adamw or sgd")
        model = accessor.model
    for node in model.graph.node:
        if node.op_type == "AdamWOptimizer":
            for attr in node.attribute:
                if attr.name == "adam_mode":
                    attr.i = 0
                elif attr.name == "epsilon":
                    attr.f = ADAMW_EPS
    if name == "sgd":
        # onnxblock declares SGDOptimizerV2's `update_completed` output as [1]; the op's schema infers a scalar.
        # Native ORT only warns ("lenient merge"); onnxruntime-web 1.18's TrainingSession aborts on the mismatch.
        for output in model.graph.output:
            output.type.tensor_type.shape.ClearField("dim")
    model.ir_version = IR_VERSION
    return model
