"""Training targets of the AU losses: label smoothing (VLS, VALS, RHLS; docs/AU_METHODS.md#label-smoothing) and
the per-slot targets of dense prediction."""
from __future__ import annotations

from typing import Callable, Dict, Optional

import torch

from lgiformer.au.weights import _RATE_EPS

Tensor = torch.Tensor


_CONVENTIONS = ("halved", "literal")


def vls_targets(y: Tensor, alpha: float = 0.1) -> Tensor:
    """VLS: ``(1 - alpha) y + alpha / 2``."""
    return (1.0 - alpha) * y + alpha / 2.0


def vals_targets(y: Tensor, alpha_pos: float | Tensor = 0.0, alpha_neg: float | Tensor = 0.5,
                 convention: str = "halved") -> Tensor:
    """VALS. ``halved`` (default, consistent with the derivation and with VLS): ``y(1 - a+/2) + (1 - y) a-/2``;
    ``literal`` (as TH printed it, docs/AU_METHODS.md#smoothing-convention): ``y(1 - a+) + (1 - y) a-``."""
    if convention not in _CONVENTIONS:
        raise ValueError(f"ls_convention must be one of {_CONVENTIONS}, got {convention!r}")
    s = 0.5 if convention == "halved" else 1.0
    ap = torch.as_tensor(alpha_pos, dtype=y.dtype if y.is_floating_point() else torch.float32, device=y.device)
    an = torch.as_tensor(alpha_neg, dtype=ap.dtype, device=y.device)
    y = y.to(ap.dtype)
    return y * (1.0 - s * ap) + (1.0 - y) * (s * an)


def rhls_alphas(rates: Tensor, beta: float = 0.25) -> tuple[Tensor, Tensor]:
    """RHLS (docs/AU_METHODS.md#label-smoothing): ``(alpha_+, alpha_-)`` per AU; only the majority class is smoothed."""
    f = torch.as_tensor(rates, dtype=torch.float32).clamp(_RATE_EPS, 1.0 - _RATE_EPS)
    a_neg = beta * torch.clamp((1.0 - 2.0 * f) / (1.0 - f), min=0.0)
    a_pos = beta * torch.clamp((2.0 * f - 1.0) / f, min=0.0)
    return a_pos, a_neg


def rhls_targets(y: Tensor, rates: Tensor, beta: float = 0.25, convention: str = "halved") -> Tensor:
    a_pos, a_neg = rhls_alphas(rates, beta)
    return vals_targets(y, a_pos.to(y.device), a_neg.to(y.device), convention)


class VLS:
    """Target transform (training only): uniform label smoothing."""

    def __init__(self, alpha: float = 0.1) -> None:
        self.alpha = alpha

    def __call__(self, y: Tensor) -> Tensor:
        return vls_targets(y.float(), self.alpha)


class VALS:
    """Asymmetric smoothing (AU_METHODS.md#label-smoothing), TH's defaults: alpha_+ = 0, alpha_- = 0.5, halved."""

    def __init__(self, alpha_pos: float = 0.0, alpha_neg: float = 0.5, ls_convention: str = "halved") -> None:
        if ls_convention not in _CONVENTIONS:
            raise ValueError(f"ls_convention must be one of {_CONVENTIONS}, got {ls_convention!r}")
        self.alpha_pos, self.alpha_neg, self.ls_convention = alpha_pos, alpha_neg, ls_convention

    def __call__(self, y: Tensor) -> Tensor:
        return vals_targets(y, self.alpha_pos, self.alpha_neg, self.ls_convention)


class RHLS:
    """Target transform: rate-driven smoothing of the majority class, defaults beta = 0.25, halved."""

    def __init__(self, rates: Tensor, beta: float = 0.25, ls_convention: str = "halved") -> None:
        if ls_convention not in _CONVENTIONS:
            raise ValueError(f"ls_convention must be one of {_CONVENTIONS}, got {ls_convention!r}")
        self.alpha_pos, self.alpha_neg = rhls_alphas(rates, beta)
        self.ls_convention = ls_convention

    def __call__(self, y: Tensor) -> Tensor:
        return vals_targets(y, self.alpha_pos.to(y.device), self.alpha_neg.to(y.device), self.ls_convention)


def slot_targets(frame_labels: Tensor, tubelet: int, rule: str = "first",
                 frame_valid: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """Dense-mode targets (AU_METHODS.md#prediction-modes): labels ``[B, T, A]`` -> ``[B, T // tubelet, A]``, validity.

    ``first``: the slot's first frame; ``any``: positive if any frame is; ``majority``: positive if more than half
    of the slot's valid frames are. A slot is valid if its first frame is (``first``) or any of its frames is."""
    if rule not in ("first", "any", "majority"):
        raise ValueError(f"slot target rule must be 'first', 'any' or 'majority', got {rule!r}")
    b, t, a = frame_labels.shape
    if t % tubelet:
        raise ValueError(f"{t} frames are not divisible by the tubelet length {tubelet}")
    y = frame_labels.float().view(b, t // tubelet, tubelet, a)
    v = torch.ones_like(y) if frame_valid is None else frame_valid.float().view_as(y)
    if rule == "first":
        return y[:, :, 0], v[:, :, 0]
    slot_valid = (v.sum(2) > 0).float()
    if rule == "any":
        return ((y * v).amax(2) > 0).float(), slot_valid
    return ((y * v).sum(2) * 2 > v.sum(2)).float(), slot_valid



_TRANSFORMS: Dict[str, Callable[..., object]] = {"vls": VLS, "vals": VALS, "rhls": RHLS}


def build_target_transform(name: str, **cfg):
    """``"vls"``, ``"vals"`` or ``"rhls"`` (training-only, AU_METHODS.md#label-smoothing); ``"none"`` returns None."""
    if name == "none":
        return None
    if name not in _TRANSFORMS:
        raise ValueError(f"unknown target transform {name!r}; choose from {sorted(_TRANSFORMS)} or 'none'")
    return _TRANSFORMS[name](**cfg)
