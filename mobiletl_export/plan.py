"""What trains under each method: the one place that decides, read by the reference and the compiler.

Region = the top-k IRBs + tail + head. Everything below it (stem, lower IRBs) is the frozen backbone.
All BatchNorms keep their running statistics frozen (eval-mode normalisation) under every method.

| method     | conv / linear weights | internal BN (expand, depthwise) | last BN, tail BN | activation backward |
|------------|-----------------------|---------------------------------|------------------|---------------------|
| mobiletl   | train                 | beta only                       | gamma, beta      | 1-bit masks         |
| vanilla    | train                 | gamma, beta                     | gamma, beta      | exact               |
| bias-only  | final linear only     | beta only                       | beta only        | exact               |
| last-layer | final linear only     | frozen                          | frozen           | exact               |

bias-only trains every bias of the region - BN betas, squeeze-excitation and head linear biases - plus the final
linear, as TinyTL's "FT-Bias" baseline (Cai et al., NeurIPS 2020, Sec. 4).

Masks (mobiletl): ReLU6 1{0<x<6} and ReLU 1{x>0} (exact), Hard-Sigmoid (1/6)*1{-3<x<3} (exact),
Hard-Swish 1{x>=0} (the paper's approximation; `hardswish_backward="sign"`, the default).

`hardswish_backward="exact"` (mobiletl only; `mobiletl-export --hardswish-backward exact`) keeps everything of
mobiletl - trainable set, 1-bit masks for ReLU/ReLU6/Hard-Sigmoid - but gives Hard-Swish PyTorch's exact
backward, which stores its float32 input as vanilla does: what the sign approximation saves, and what it costs
in accuracy (benchmarks/hardswish.py). The other methods' backward is exact already, so for them "exact" is
the (only) value and "sign" is an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from torch import nn

from .models.spec import IRB, ConvBN, ModelStructure

METHODS = ("mobiletl", "vanilla", "bias-only", "last-layer")
HARDSWISH_BACKWARDS = ("sign", "exact")
MASKABLE = ("relu", "relu6", "hardswish", "hardsigmoid")  # activation kinds with a 1-bit mask rule


def resolve_hardswish_backward(method: str, hardswish_backward: str | None) -> str:
    """The Hard-Swish backward a method uses: None = the method's own (mobiletl: "sign", others: "exact")."""
    if hardswish_backward is None:
        return "sign" if method == "mobiletl" else "exact"
    if hardswish_backward not in HARDSWISH_BACKWARDS:
        raise ValueError(f"unknown --hardswish-backward {hardswish_backward!r}; choose one of "
                         f"{', '.join(HARDSWISH_BACKWARDS)}")
    if hardswish_backward == "sign" and method != "mobiletl":
        raise ValueError(f"--hardswish-backward sign applies to --method mobiletl only; {method}'s activation "
                         "backward is exact")
    return hardswish_backward


def variant_note(method: str, hardswish_backward: str) -> str:
    """" (exact Hard-Swish backward)" for mobiletl with the exact Hard-Swish backward, else "" (summaries)."""
    return " (exact Hard-Swish backward)" if method == "mobiletl" and hardswish_backward == "exact" else ""


def masked_kinds(method: str, hardswish_backward: str) -> frozenset[str]:
    """Activation kinds whose backward reads a 1-bit mask instead of the float input."""
    if method != "mobiletl":
        return frozenset()
    return frozenset(k for k in MASKABLE if k != "hardswish" or hardswish_backward == "sign")


@dataclass(frozen=True)
class TrainingPlan:
    method: str
    top_k: int
    structure: ModelStructure
    frozen_blocks: tuple[IRB, ...]
    trained_blocks: tuple[IRB, ...]
    trainable: tuple[str, ...]  # state_dict keys, in state_dict order
    region_keys: tuple[str, ...]  # every state_dict key of the region (trainable, frozen params, BN statistics)
    # activation kinds ("relu", "relu6", "hardswish", "hardsigmoid") whose backward reads a packed 1-bit mask;
    # empty = every activation backward is exact (reads the float32 input)
    masked_activations: frozenset[str] = frozenset()

    @property
    def hardswish_backward(self) -> str:
        """"sign" (MobileTL's 1{x >= 0} mask) or "exact"."""
        return "sign" if "hardswish" in self.masked_activations else "exact"

    def trains(self, key: str) -> bool:
        return key in self._trainable_set

    @cached_property
    def _trainable_set(self) -> frozenset[str]:
        return frozenset(self.trainable)

    @property
    def frozen_region_keys(self) -> tuple[str, ...]:
        """Region tensors that do not train (frozen gamma, statistics, frozen weights)."""
        return tuple(k for k in self.region_keys if k not in self._trainable_set)


def _region_prefixes(structure: ModelStructure, trained: tuple[IRB, ...]) -> list[str]:
    names = [b.name for b in trained] + [structure.tail.conv_name, structure.tail.bn_name]
    return names + [layer.name for layer in structure.head.linears]


def _trainable_keys(method: str, structure: ModelStructure, trained: tuple[IRB, ...]) -> set[str]:
    keys: set[str] = set()
    classifier = structure.head.classifier.name
    keys |= {f"{classifier}.weight", f"{classifier}.bias"}
    if method == "last-layer":
        return keys
    internal: list[ConvBN] = []  # BNs after expand / depthwise
    outer: list[ConvBN] = [structure.tail]  # BNs after project, and the tail's
    for block in trained:
        internal += [c for c in (block.expand, block.depthwise) if c is not None]
        outer.append(block.project)
    for cb in internal + outer:
        keys.add(f"{cb.bn_name}.bias")
    if method == "bias-only":  # every bias in the region (TinyTL's FT-Bias), final linear included
        for block in trained:
            if block.se is not None:
                keys |= {f"{block.se.fc1_name}.bias", f"{block.se.fc2_name}.bias"}
        return keys | {f"{layer.name}.bias" for layer in structure.head.linears}
    for cb in internal + outer:
        keys.add(f"{cb.conv_name}.weight")
    for cb in outer:
        keys.add(f"{cb.bn_name}.weight")
    if method == "vanilla":
        keys |= {f"{cb.bn_name}.weight" for cb in internal}
    for block in trained:
        if block.se is not None:
            for name in (block.se.fc1_name, block.se.fc2_name):
                keys |= {f"{name}.weight", f"{name}.bias"}
    for layer in structure.head.linears:
        keys |= {f"{layer.name}.weight", f"{layer.name}.bias"}
    return keys


def make_plan(model: nn.Module, method: str, top_k: int, hardswish_backward: str | None = None) -> TrainingPlan:
    """`hardswish_backward`: None (the method's own), "sign" (mobiletl only) or "exact" (see module docstring)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    masked = masked_kinds(method, resolve_hardswish_backward(method, hardswish_backward))
    structure: ModelStructure = model.structure()
    frozen, trained = structure.split(top_k)
    prefixes = tuple(p + "." for p in _region_prefixes(structure, trained))
    region = tuple(k for k in model.state_dict() if k.startswith(prefixes) and not k.endswith("num_batches_tracked"))
    wanted = _trainable_keys(method, structure, trained)
    trainable = tuple(k for k in region if k in wanted)
    missing = wanted - set(trainable)
    assert not missing, f"plan names keys the model does not have: {sorted(missing)}"
    return TrainingPlan(method, top_k, structure, frozen, trained, trainable, region, masked)
