"""Emission: a lowered tape -> ONNX models (backbone inference, training, eval), one rule per op.

Training graph (ORT on-device training contract, onnxruntime-training 1.19.2 `Module`):
  inputs : features, labels, every region tensor by state_dict key, `<p>_grad.accumulation.buffer` per
           trainable p, lazy_reset_grad
  nodes  : fwd/... (forward rules), bwd/... (backward rules, reverse order), acc/... (InPlaceAccumulatorV2)
  outputs: loss, logits, `<p>_grad.accumulation.out` per trainable p
"""

from __future__ import annotations

import numpy as np
import onnx

from ..lower import Tape
from ..rules import RULES, Op, Step
from .builder import BOOL, FLOAT, INT64, MS_DOMAIN, GraphBuilder
from .functions import mobiletl_functions

BATCH = "batch"


def _param_keys(ops: list[Op]) -> list[str]:
    seen: dict[str, None] = {}
    for op in ops:
        for key in op.params.values():
            seen[key] = None
    return list(seen)


def _steps(ops: list[Op], mode: str, masked: frozenset, trainable: frozenset) -> list[Step]:
    """Decide per op which parameters train, which inputs need gradients (forward propagation), and whether its
    activation backward reads a 1-bit mask (`masked`: activation kinds, TrainingPlan.masked_activations)."""
    requires: set[str] = set()
    steps = []
    for op in ops:
        trained = frozenset(r for r, k in op.params.items() if k in trainable) if mode == "train" else frozenset()
        input_grads = tuple(v in requires for v in op.inputs)
        step = Step(op, mode, op.kind in masked, trained, input_grads)
        if step.needs_backward:
            requires.update(op.outputs)
        steps.append(step)
    return steps


def _forward(b: GraphBuilder, steps: list[Step]) -> list[dict]:
    b.phase = "fwd"
    return [RULES[s.op.kind].forward(b, s) for s in steps]


def _backward(b: GraphBuilder, steps: list[Step], saved: list[dict], seed: dict[str, str]) -> None:
    """Reverse-mode pass: gradients of values fanning out to several ops are summed before use."""
    b.phase = "bwd"
    grads: dict[str, list[str]] = {k: [v] for k, v in seed.items()}

    def grad_of(value: str) -> str | None:
        parts = grads.pop(value, [])
        if len(parts) > 1:
            return b.op("Sum", *parts, layer=f"{value}.fanout")
        return parts[0] if parts else None

    for step, kept in zip(reversed(steps), reversed(saved)):
        if not step.needs_backward:
            continue
        dys = [grad_of(v) for v in step.op.outputs]
        if all(d is None for d in dys):
            continue
        assert all(d is not None for d in dys), f"partial output gradients for {step.op.layer}"
        for value, g in zip(step.op.inputs, RULES[step.op.kind].backward(b, step, kept, dys)):
            if g is not None:
                grads.setdefault(value, []).append(g)


def shape_of(tape: Tape, value: str) -> list:
    """["batch", *per-sample shape] of a tape value (the graph's dynamic batch dimension first)."""
    return [BATCH, *tape.shapes[value]]


def backbone_pass(b: GraphBuilder, tape: Tape) -> None:
    """Inference forward of the frozen backbone (stem + lower IRBs): `image` -> `features`."""
    _forward(b, _steps(tape.ops, "infer", frozenset(), frozenset()))


def param_keys(tape: Tape) -> list[str]:
    """State_dict keys of every parameter the tape's ops read, in first-use order."""
    return _param_keys(tape.ops)


def build_backbone(tape: Tape, state: dict[str, np.ndarray]) -> onnx.ModelProto:
    """image [N, 3, R, R] -> features: plain inference model, parameters as initializers."""
    b = GraphBuilder("mobiletl_backbone")
    b.add_input(tape.input, FLOAT, shape_of(tape, tape.input))
    backbone_pass(b, tape)
    for key in _param_keys(tape.ops):
        b.add_initializer(key, state[key])
    b.add_output(tape.output, FLOAT, shape_of(tape, tape.output))
    return b.model()


def _region_inputs(b: GraphBuilder, tape: Tape, state: dict[str, np.ndarray]) -> list[str]:
    b.add_input(tape.input, FLOAT, shape_of(tape, tape.input))
    b.add_input("labels", INT64, [BATCH])
    keys = _param_keys(tape.ops)
    for key in keys:
        b.add_input(key, FLOAT, list(state[key].shape))
    return keys


def _loss_op(tape: Tape) -> Op:
    return Op("loss", "loss", [tape.output, "labels"], ["loss"])


def build_eval(tape: Tape, state: dict[str, np.ndarray], nchwc_block: int = 0) -> onnx.ModelProto:
    """features, labels, parameters -> loss, logits (exact forward, dropout off)."""
    b = GraphBuilder("mobiletl_eval", nchwc_block=nchwc_block)
    _region_inputs(b, tape, state)
    eval_pass(b, tape)
    b.add_output("loss", FLOAT, [])
    b.add_output(tape.output, FLOAT, shape_of(tape, tape.output))
    return b.model()


def training_pass(b: GraphBuilder, tape: Tape, trainable: tuple[str, ...], masked: frozenset) -> None:
    """Forward + backward of the region into `b`, which must already define `features`, `labels` and every
    parameter by its state_dict key. Writes `loss`, `logits` and `<key>_grad` for each trainable key.
    `masked`: activation kinds whose backward reads a 1-bit mask (TrainingPlan.masked_activations).
    Shared by both artifact contracts (ORT training here, portable in package/portable.py)."""
    keys = _param_keys(tape.ops)
    missing = [k for k in trainable if k not in keys]
    assert not missing, f"trainable tensors outside the region: {missing}"
    steps = _steps(tape.ops + [_loss_op(tape)], "train", masked, frozenset(trainable))
    saved = _forward(b, steps)
    _backward(b, steps, saved, {"loss": b.const(1.0)})


def eval_pass(b: GraphBuilder, tape: Tape, with_loss: bool = True) -> None:
    """Exact forward of the region (dropout off): `logits` (and `loss` when `with_loss`)."""
    _forward(b, _steps(tape.ops + ([_loss_op(tape)] if with_loss else []), "eval", frozenset(), frozenset()))


def build_training(tape: Tape, state: dict[str, np.ndarray], trainable: tuple[str, ...], masked: frozenset,
                   nchwc_block: int = 0) -> onnx.ModelProto:
    """ORT on-device training contract. `masked`: activation kinds with a 1-bit mask backward; `nchwc_block` > 0:
    depthwise convs on ORT's x86 NCHWc kernels with that block size (emit/nchwc.py)."""
    b = GraphBuilder("mobiletl_training", nchwc_block=nchwc_block)
    _region_inputs(b, tape, state)
    training_pass(b, tape, trainable, masked)
    b.phase = "acc"
    for key in trainable:
        buffer = b.add_input(f"{key}_grad.accumulation.buffer", FLOAT, list(state[key].shape))
        out = f"{key}_grad.accumulation.out"
        b.node("InPlaceAccumulatorV2", [buffer, f"{key}_grad", "lazy_reset_grad"], [out], layer=key,
               domain=MS_DOMAIN)
    b.add_input("lazy_reset_grad", BOOL, [1])
    b.add_output("loss", FLOAT, [])
    b.add_output(tape.output, FLOAT, shape_of(tape, tape.output))
    for key in trainable:
        b.add_output(f"{key}_grad.accumulation.out", BOOL, [1])
    return b.model(functions=mobiletl_functions() if masked else ())
