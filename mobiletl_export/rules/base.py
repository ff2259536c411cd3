"""The rule interface: one forward + backward rule per layer kind, registered in `RULES` (rules/__init__.py).

An `Op` is one layer of a lowered network (see lower.py): its kind, the value names it reads and writes,
the state_dict keys of its parameters by role, and static attributes (shapes, pads, ...).

`forward` emits the op's forward nodes and returns what its backward will read (the *saved* tensors — the
memory the method costs). `backward` emits nodes that turn the output gradients into input gradients
(None where an input needs none) and writes each trained parameter's gradient to `<key>_grad`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..emit.builder import GraphBuilder


@dataclass
class Op:
    kind: str
    layer: str  # human name for nodes, e.g. "features.14.conv.0.1"
    inputs: list[str]
    outputs: list[str]
    params: dict[str, str] = field(default_factory=dict)  # role -> state_dict key
    attrs: dict = field(default_factory=dict)


@dataclass
class Step:
    """How one op is emitted: mode ('train', 'eval', 'infer'), what needs gradients."""

    op: Op
    mode: str
    masked: bool = False  # MobileTL 1-bit activation backward (for this op's kind: TrainingPlan.masked_activations)
    trained: frozenset = frozenset()  # roles of `op.params` that train
    input_grads: tuple = ()  # per input: does it need a gradient?

    @property
    def needs_backward(self) -> bool:
        return self.mode == "train" and (bool(self.trained) or any(self.input_grads))

    def trains(self, role: str) -> bool:
        return role in self.trained

    def param(self, role: str) -> str:
        return self.op.params[role]

    def grad_name(self, role: str) -> str:
        """ORT's Module finds a parameter's gradient by this name."""
        return f"{self.op.params[role]}_grad"


class Rule:
    kinds: tuple[str, ...] = ()

    def forward(self, b: GraphBuilder, s: Step) -> dict:
        raise NotImplementedError

    def backward(self, b: GraphBuilder, s: Step, saved: dict, dys: list[str | None]) -> list[str | None]:
        raise NotImplementedError


def channel_view(b: GraphBuilder, vec: str, layer: str) -> str:
    """[C] -> [1, C, 1, 1] for broadcasting against NCHW."""
    return b.op("Reshape", vec, b.const([1, -1, 1, 1], "int64"), layer=layer)


def reduce_sum(b: GraphBuilder, x: str, axes: list[int], layer: str, keepdims: int = 0,
               out: str | None = None) -> str:
    outputs = [out] if out else 1
    return b.node("ReduceSum", [x, b.const(axes, "int64")], outputs, layer=layer, keepdims=keepdims)[0]
