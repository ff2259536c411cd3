"""PyTorch reference of MobileTL and its baselines (the semantics the ONNX export must reproduce)."""

from .executor import ReferenceNet
from .functions import FrozenScaleBatchNorm, MaskedActivation, masked_activation, pack_bits, unpack_bits
from .trainer import OPTIMIZERS, ReferenceTrainer, make_optimizer

__all__ = ["ReferenceNet", "ReferenceTrainer", "FrozenScaleBatchNorm", "MaskedActivation", "masked_activation",
           "pack_bits", "unpack_bits", "OPTIMIZERS", "make_optimizer"]
