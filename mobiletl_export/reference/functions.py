"""Autograd functions whose saved state is exactly what MobileTL stores for the backward pass.

Masked activations save one packed bit per element (uint8, 8 elements per byte, element i in bit i % 8,
i.e. numpy's packbits with bitorder='little'); the frozen-scale BatchNorm saves no tensor at all.
"""

from __future__ import annotations

import torch

_SHIFTS = torch.arange(8, dtype=torch.uint8)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """bool tensor -> uint8 [ceil(numel / 8)], little-endian bit order within each byte."""
    flat = mask.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return (flat.view(-1, 8) << _SHIFTS).sum(1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Inverse of `pack_bits`: bool tensor of `shape`."""
    bits = (packed.unsqueeze(1) >> _SHIFTS) & 1
    return bits.reshape(-1)[: shape.numel()].view(shape).bool()


def mask_and_value(kind: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(y, mask, factor) with backward dx = dy * mask * factor. Only Hard-Swish's mask is approximate."""
    if kind == "relu":
        return x.clamp_min(0), x > 0, 1.0
    if kind == "relu6":
        return x.clamp(0, 6), (x > 0) & (x < 6), 1.0
    if kind == "hardswish":
        return x * (x + 3).clamp(0, 6) / 6, x >= 0, 1.0
    if kind == "hardsigmoid":
        return (x + 3).clamp(0, 6) / 6, (x > -3) & (x < 3), 1.0 / 6.0
    raise ValueError(f"no mask rule for activation {kind!r}")


class MaskedActivation(torch.autograd.Function):
    """Activation whose backward reads only a 1-bit mask of its input."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, kind: str) -> torch.Tensor:
        y, mask, factor = mask_and_value(kind, x)
        ctx.shape, ctx.factor = x.shape, factor
        ctx.save_for_backward(pack_bits(mask))
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        (packed,) = ctx.saved_tensors
        dx = dy * unpack_bits(packed, ctx.shape).to(dy.dtype)
        if ctx.factor != 1.0:
            dx = dx * ctx.factor
        return dx, None


def masked_activation(kind: str, x: torch.Tensor) -> torch.Tensor:
    return MaskedActivation.apply(x, kind)


class FrozenScaleBatchNorm(torch.autograd.Function):
    """Eval-mode BatchNorm with frozen gamma and statistics: y = x * s + t, s = gamma / sqrt(var + eps).

    It is an affine map, so the backward needs no activation: dx = dy * s, dbeta = sum(dy) over (N, H, W).
    `s` is a per-channel constant of frozen parameters, kept on ctx (not an activation).
    """

    @staticmethod
    def forward(ctx, x, gamma, beta, mean, var, eps: float):
        if gamma.requires_grad:
            raise ValueError("FrozenScaleBatchNorm needs a frozen gamma; use batch_norm for gamma training")
        scale = gamma / torch.sqrt(var + eps)
        ctx.scale = scale.detach().view(1, -1, 1, 1)
        return x * ctx.scale + (beta - mean * scale).view(1, -1, 1, 1)

    @staticmethod
    def backward(ctx, dy):
        dx = dy * ctx.scale if ctx.needs_input_grad[0] else None
        dbeta = dy.sum((0, 2, 3)) if ctx.needs_input_grad[2] else None
        return dx, None, dbeta, None, None, None
