"""The rule table: layer kind -> forward + backward rule (one module per kind)."""

from __future__ import annotations

from .activation import Activation
from .add import Add
from .base import Op, Rule, Step
from .batchnorm import BatchNorm
from .conv import Conv
from .dropout import Dropout
from .linear import Linear
from .loss import SoftmaxCrossEntropy
from .pool import GlobalPool
from .scale import Scale

RULES: dict[str, Rule] = {}
for _rule in (Conv(), BatchNorm(), Activation(), Add(), GlobalPool(), Scale(), Linear(), Dropout(),
              SoftmaxCrossEntropy()):
    for _kind in _rule.kinds:
        RULES[_kind] = _rule

__all__ = ["RULES", "Op", "Rule", "Step"]
