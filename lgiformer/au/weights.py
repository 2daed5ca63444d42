"""Occurrence rates and what they set (docs/AU_METHODS.md#shared-rules-u1-u6): per-AU loss weights (U1), the heads'
bias initialisation (U2), and the validity masking every AU loss shares (U3)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

Tensor = torch.Tensor

_RATE_EPS = 1e-6


def occurrence_rates(labels: Tensor, valid: Optional[Tensor] = None) -> Tensor:
    """Per-AU positive rate ``r_i`` over every leading axis, counting only valid labels (compute it per fold on the
    training split). AUs with no valid label get rate 0."""
    labels = torch.as_tensor(labels, dtype=torch.float64)
    v = torch.ones_like(labels) if valid is None else torch.as_tensor(valid, dtype=torch.float64)
    dims = tuple(range(labels.dim() - 1))
    return ((labels * v).sum(dims) / v.sum(dims).clamp_min(1.0)).float()


def inverse_frequency_weights(rates: Tensor, max_weight: Optional[float] = None, eps: float = _RATE_EPS) -> Tensor:
    """U1: ``w_i = A (1/r_i) / sum_j (1/r_j)``, mean 1 over AUs. ``max_weight`` [ENG] clips the weights afterwards
    (no renormalisation), for AUs that almost never occur."""
    r = torch.as_tensor(rates, dtype=torch.float64).clamp_min(eps)
    inv = 1.0 / r
    w = inv.numel() * inv / inv.sum()
    if max_weight is not None:
        w = w.clamp_max(max_weight)
    return w.float()


def prior_bias(rates: Tensor, eps: float = _RATE_EPS) -> Tensor:
    """U2: ``b_i = log(r_i / (1 - r_i))`` so that ``sigmoid(b_i) == r_i`` at step 0."""
    r = torch.as_tensor(rates, dtype=torch.float64).clamp(eps, 1.0 - eps)
    return torch.log(r / (1.0 - r)).float()


def _au_weight(rates: Optional[Tensor], au_weighting: str, max_weight: Optional[float]) -> Optional[Tensor]:
    if au_weighting not in ("none", "inverse_freq"):
        raise ValueError(f"au_weighting must be 'none' or 'inverse_freq', got {au_weighting!r}")
    if au_weighting == "none":
        return None
    if rates is None:
        raise ValueError("au_weighting='inverse_freq' needs the training occurrence rates (rates=...)")
    return inverse_frequency_weights(rates, max_weight)


def _valid(valid: Optional[Tensor], like: Tensor) -> Tensor:
    if valid is None:
        return torch.ones_like(like)
    if valid.shape != like.shape:
        valid = valid.expand_as(like)
    return valid.to(like.dtype)


def _weighted(x: Tensor, weight: Optional[Tensor]) -> Tensor:
    return x if weight is None else x * weight.to(x)


def _buffer(module: nn.Module, name: str, value: Optional[Tensor]) -> None:
    module.register_buffer(name, None if value is None else torch.as_tensor(value, dtype=torch.float32),
                           persistent=False)
