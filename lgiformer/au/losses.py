"""AU losses, occurrence-based weights and target transforms.

docs/AU_METHODS.md#shared-rules-u1-u6 (U1-U4) and its sections on MDWA / WDI, online KD, the MONET loss, attention
guidance and label smoothing.

Functional forms first (pure tensor functions, easy to test), then the ``AULoss`` modules used by the training code::

    loss_fn = build_au_loss("wbce", rates=train_rates, au_weighting="inverse_freq", dice_weight=0.5)
    parts = loss_fn(head_out, y, valid)          # {"loss": scalar with grad, "bce": detached, "dice": detached}

Conventions: ``logits``/``target``/``valid`` have the same shape, ``[B, A]`` (clip mode) or ``[B, T', A]`` (dense
mode); per-AU vectors (``weight``, ``rates``, ``gamma``) broadcast over the last axis. ``valid`` is a {0, 1} mask
(bool or float); where it is 0 the loss and its gradient are exactly 0 (U3).
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor

__all__ = [
    "occurrence_rates", "inverse_frequency_weights", "prior_bias", "masked_weighted_bce", "weighted_dice",
    "mdwa_gamma", "mdwa_loss", "bernoulli_kd", "vls_targets", "vals_targets", "rhls_alphas", "rhls_targets",
    "slot_targets", "prior_heatmaps", "pattel_loss", "h2p_loss", "default_h2p_assignment",
    "VLS", "VALS", "RHLS", "WeightedBCELoss", "DiceLoss", "MDWALoss", "BernoulliKDLoss", "OKDLoss", "MonetLoss",
    "PAtteLLoss", "H2PLoss", "register_au_loss", "build_au_loss", "build_target_transform", "list_au_losses",
]

_RATE_EPS = 1e-6


# ------------------------------------------------------------------------------------------------------------------
# U1 / U2: occurrence rates, inverse-frequency weights, prior bias
# ------------------------------------------------------------------------------------------------------------------
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


# ------------------------------------------------------------------------------------------------------------------
# U3 / U4: masked weighted BCE and weighted Dice
# ------------------------------------------------------------------------------------------------------------------
def masked_weighted_bce(logits: Tensor, target: Tensor, valid: Optional[Tensor] = None,
                        weight: Optional[Tensor] = None) -> Tensor:
    """U3: ``sum(v w BCEwithLogits(z, y)) / max(1, sum v)``. Accepts soft targets."""
    v = _valid(valid, logits)
    per = F.binary_cross_entropy_with_logits(logits, target.to(logits), reduction="none")
    return (_weighted(per, weight) * v).sum() / v.sum().clamp_min(1.0)


def weighted_dice(logits: Tensor, target: Tensor, valid: Optional[Tensor] = None, weight: Optional[Tensor] = None,
                  eps: float = 1.0, reduction: str = "per_sample") -> Tensor:
    """U4: ``1/|B| sum_b sum_i v w (1 - (2yp + eps) / (y^2 + p^2 + eps))``.

    ``reduction="batch"`` [ENG] sums over the samples inside the ratio (one ratio per AU). ``|B|`` counts every
    leading position (B, or B*T' in dense mode)."""
    v = _valid(valid, logits)
    p = torch.sigmoid(logits)
    y = target.to(p)
    if reduction == "per_sample":
        per = 1.0 - (2.0 * y * p + eps) / (y * y + p * p + eps)
        n = max(1, logits.numel() // logits.shape[-1])
        return (_weighted(per, weight) * v).sum() / n
    if reduction == "batch":
        dims = tuple(range(logits.dim() - 1))
        num = 2.0 * (v * y * p).sum(dims) + eps
        den = (v * (y * y + p * p)).sum(dims) + eps
        per_au = 1.0 - num / den
        return _weighted(per_au, weight).sum()
    raise ValueError(f"dice reduction must be 'per_sample' or 'batch', got {reduction!r}")


# ------------------------------------------------------------------------------------------------------------------
# MDWA (AUFormer, docs/AU_METHODS.md#mdwa-and-wdi)
# ------------------------------------------------------------------------------------------------------------------
def mdwa_gamma(rates: Optional[Tensor], b_l: float = 1.0, b_r: float = 2.0, num_aus: Optional[int] = None) -> Tensor:
    """Per-AU focusing exponent ``gamma_i = B_L + (B_R - B_L)(r_max - r_i)/(r_max - r_min)`` [ENG form]: the rarest AU
    gets B_R, the most frequent B_L. Equal rates (or no rates) give B_L everywhere."""
    if rates is None:
        if num_aus is None:
            raise ValueError("mdwa_gamma needs rates or num_aus")
        return torch.full((num_aus,), float(b_l))
    r = torch.as_tensor(rates, dtype=torch.float32)
    spread = r.max() - r.min()
    if float(spread) <= 0:
        return torch.full_like(r, float(b_l))
    return b_l + (b_r - b_l) * (r.max() - r) / spread


def mdwa_loss(logits: Tensor, target: Tensor, valid: Optional[Tensor] = None, weight: Optional[Tensor] = None,
              gamma: float | Tensor = 1.0, margin: float = 0.05, detach_focus: bool = False) -> Tensor:
    """MDWA: ``-w [y log p + (1 - y) p_m^gamma log(1 - p_m)]``, ``p_m = max(p - m, 0)``, masked mean as in U3.

    The focusing factor stays in the graph unless ``detach_focus`` (the ME-GraphAU convention). Where ``p <= m`` the
    negative term and its gradient are exactly 0, with no ``0 * inf`` for ``gamma < 1``."""
    v = _valid(valid, logits)
    y = target.to(logits)
    p = torch.sigmoid(logits)
    gamma = torch.as_tensor(gamma, dtype=logits.dtype, device=logits.device)
    pos = y * F.logsigmoid(logits)
    if margin == 0:
        above = p > 0
        pm = p
        log1m = F.logsigmoid(-logits)  # log(1 - p), stable
    else:
        above = p > margin
        pm = torch.where(above, p - margin, torch.full_like(p, 0.5))  # safe value where the branch is unused
        log1m = torch.log1p(-pm)
    pm_safe = torch.where(above, pm, torch.full_like(p, 0.5))
    focus = pm_safe.pow(gamma)
    if detach_focus:
        focus = focus.detach()
    neg_term = torch.where(above, focus * log1m, torch.zeros_like(p))
    per = -(pos + (1.0 - y) * neg_term)
    return (_weighted(per, weight) * v).sum() / v.sum().clamp_min(1.0)


# ------------------------------------------------------------------------------------------------------------------
# Online KD (FAN-Trans, docs/AU_METHODS.md#online-kd)
# ------------------------------------------------------------------------------------------------------------------
def bernoulli_kd(student_logits: Tensor, teacher_logits: Tensor, valid: Optional[Tensor] = None,
                 detach_teacher: bool = True) -> Tensor:
    """Per-AU ``KL(Ber(sigma(t)) || Ber(sigma(s)))``, masked mean over entries (temperature 1)."""
    t = teacher_logits.detach() if detach_teacher else teacher_logits
    v = _valid(valid, student_logits)
    pt = torch.sigmoid(t)
    kl = pt * (F.logsigmoid(t) - F.logsigmoid(student_logits)) + \
        (1.0 - pt) * (F.logsigmoid(-t) - F.logsigmoid(-student_logits))
    return (kl * v).sum() / v.sum().clamp_min(1.0)


# ------------------------------------------------------------------------------------------------------------------
# Label smoothing targets (VLS, VALS, RHLS; docs/AU_METHODS.md#label-smoothing) and dense slot targets
# ------------------------------------------------------------------------------------------------------------------
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


# ------------------------------------------------------------------------------------------------------------------
# Attention guidance (docs/AU_METHODS.md#attention-guidance): landmark prior heatmaps, PAtteL and H2P
# ------------------------------------------------------------------------------------------------------------------
def prior_heatmaps(centres: Tensor, grid: Sequence[int], image_size: Sequence[int], sigma: float = 1.0,
                   centre_mask: Optional[Tensor] = None, cell_offset: float = 0.5) -> Tensor:
    """docs/AU_METHODS.md#landmark-priors. ``centres``: ``[..., P, K, 2]`` pixels (row, col) of the K centres of each
    prior (mono-prior: one prior with every landmark; multi-prior: one prior per AU centre). Returns
    ``[..., P, h * w]`` heatmaps summing to 1: ``h_ij ∝ sum_k exp(-|c~_k - (i, j)|^2 / sigma^2)`` with
    ``c~ = c * [h/H, w/W]``. Grid cell (i, j) sits at ``(i + cell_offset, j + cell_offset)`` in grid units [ENG]
    (0.5 = the cell centre, so a centre peaks in the cell that contains it; 0 = the formula's integer lattice).
    ``centre_mask`` (``[..., P, K]``, True = use) drops padded centres. Video: average per-frame heatmaps over the
    tubelet before calling a loss."""
    h, w = int(grid[0]), int(grid[1])
    big_h, big_w = float(image_size[0]), float(image_size[1])
    c = centres.float() * centres.new_tensor([h / big_h, w / big_w]).float()
    ii = torch.arange(h, dtype=torch.float32, device=c.device) + cell_offset
    jj = torch.arange(w, dtype=torch.float32, device=c.device) + cell_offset
    pos = torch.stack(torch.meshgrid(ii, jj, indexing="ij"), -1).view(h * w, 2)  # [hw, 2]
    d2 = ((c.unsqueeze(-2) - pos) ** 2).sum(-1)  # [..., P, K, hw]
    logits = -d2 / (sigma ** 2)
    if centre_mask is not None:
        logits = logits.masked_fill(~centre_mask.bool().unsqueeze(-1), float("-inf"))
    # log-sum over centres then normalise over positions: stable for small sigma (tends to one-hot).
    return torch.softmax(torch.logsumexp(logits, dim=-2), dim=-1)


def pattel_loss(attn: Tensor, prior: Tensor, f: float = 0.25, valid: Optional[Tensor] = None,
                eps: float = 1e-12) -> Tensor:
    """PAtteL (docs/AU_METHODS.md#pattel): cross-entropy between the prior ``h^t`` (``[B, A, n]`` or ``[B, 1, n]`` for a
    mono-prior) and the mean attention of the first ``floor(f * H)`` heads (``attn``: probabilities ``[B, H, A, n]``
    with flattened positions, or ``[B, L, H, A, n]`` for several layers, then the loss is averaged over layers
    [ENG]). Summed over AUs and positions, averaged over the batch; ``valid`` (``[B, A]``) drops AUs."""
    if attn.dim() == 5:
        return torch.stack([pattel_loss(attn[:, l], prior, f, valid, eps) for l in range(attn.shape[1])]).mean()
    n_fh = int(math.floor(f * attn.shape[1]))
    if n_fh == 0:
        return attn.sum() * 0.0
    a_bar = attn[:, :n_fh].mean(1)  # [B, A, n]
    ce = -(prior.expand_as(a_bar) * torch.log(a_bar.clamp_min(eps))).sum(-1)  # [B, A]
    if valid is not None:
        ce = ce * valid.to(ce)
    return ce.sum() / attn.shape[0]


def default_h2p_assignment(num_heads: int, num_priors: int) -> Tensor:
    """BP4D setting: head p is tied to prior p for the first ``min(H, P)`` heads; the rest are free."""
    m = torch.zeros(num_heads, num_priors)
    k = min(num_heads, num_priors)
    m[torch.arange(k), torch.arange(k)] = 1.0
    return m


def h2p_loss(attn: Tensor, priors: Tensor, assignment: Optional[Tensor] = None, valid: Optional[Tensor] = None,
             eps: float = 1e-12) -> Tensor:
    """H2P (docs/AU_METHODS.md#h2p). ``attn``: probabilities ``[B, H, A, n]`` (or ``[B, L, H, A, n]``, averaged over
    layers); ``priors``: ``[B, P, n]``; ``assignment``: ``M in {0,1}^{H x P}``. Per AU token t:
    ``(1/H) sum_h sum_p M_hp / sum_p' M_hp' CE(h_p, A^t_h)``; summed over t, averaged over the batch. Heads with an
    empty row of M contribute 0 (and receive no gradient)."""
    if attn.dim() == 5:
        return torch.stack([h2p_loss(attn[:, l], priors, assignment, valid, eps) for l in range(attn.shape[1])]).mean()
    b, n_h, a, n = attn.shape
    m = default_h2p_assignment(n_h, priors.shape[1]) if assignment is None else assignment.float()
    m = m.to(attn.device)
    row = m.sum(1, keepdim=True)
    m_norm = torch.where(row > 0, m / row.clamp_min(1.0), torch.zeros_like(m))  # [H, P]
    heads = (m.sum(1) > 0).nonzero().flatten()
    if heads.numel() == 0:
        return attn.sum() * 0.0
    log_a = torch.log(attn[:, heads].clamp_min(eps))  # [B, H', A, n]; unassigned heads never enter the graph
    ce = -torch.einsum("bpn,bhan->bhap", priors.float(), log_a)  # [B, H', A, P]
    per = (ce * m_norm[heads].view(1, -1, 1, priors.shape[1])).sum(-1).sum(1) / n_h  # [B, A]
    if valid is not None:
        per = per * valid.to(per)
    return per.sum() / b


# ------------------------------------------------------------------------------------------------------------------
# AULoss modules: forward(out, y, valid, **extra) -> {"loss": scalar, <part>: detached scalar}
# ------------------------------------------------------------------------------------------------------------------
def _buffer(module: nn.Module, name: str, value: Optional[Tensor]) -> None:
    module.register_buffer(name, None if value is None else torch.as_tensor(value, dtype=torch.float32),
                           persistent=False)


class _AULoss(nn.Module):
    """Shared plumbing: target transform (AU_METHODS.md#label-smoothing; before the loss) and per-AU weights (U1)."""

    def __init__(self, rates: Optional[Tensor] = None, au_weighting: str = "none", max_weight: Optional[float] = None,
                 target_transform: Optional[Callable[[Tensor], Tensor]] = None) -> None:
        super().__init__()
        _buffer(self, "weight", _au_weight(rates, au_weighting, max_weight))
        _buffer(self, "rates", rates)
        self.target_transform = target_transform

    def targets(self, y: Tensor) -> Tensor:
        y = y.float()
        return self.target_transform(y) if self.target_transform is not None else y


class WeightedBCELoss(_AULoss):
    """U3 masked, weighted BCE on ``out["logits"]`` plus ``dice_weight`` x U4 Dice (0 = off; 0.5 in TH/MLT)."""

    def __init__(self, rates: Optional[Tensor] = None, au_weighting: str = "none", max_weight: Optional[float] = None,
                 dice_weight: float = 0.0, dice_eps: float = 1.0, dice_reduction: str = "per_sample",
                 target_transform: Optional[Callable[[Tensor], Tensor]] = None) -> None:
        super().__init__(rates, au_weighting, max_weight, target_transform)
        self.dice_weight, self.dice_eps, self.dice_reduction = dice_weight, dice_eps, dice_reduction

    def forward(self, out: Dict, y: Tensor, valid: Optional[Tensor] = None, **_: object) -> Dict[str, Tensor]:
        z = out["logits"]
        t = self.targets(y)
        bce = masked_weighted_bce(z, t, valid, self.weight)
        parts = {"bce": bce}
        loss = bce
        if self.dice_weight:
            dice = weighted_dice(z, t, valid, self.weight, self.dice_eps, self.dice_reduction)
            parts["dice"] = dice
            loss = loss + self.dice_weight * dice
        return {"loss": loss, **{k: v.detach() for k, v in parts.items()}}


class DiceLoss(_AULoss):
    """U4 weighted Dice alone (AUFormer's WDI, AU_METHODS.md#mdwa-and-wdi, with ``au_weighting="inverse_freq"``)."""

    def __init__(self, rates: Optional[Tensor] = None, au_weighting: str = "none", max_weight: Optional[float] = None,
                 eps: float = 1.0, reduction: str = "per_sample",
                 target_transform: Optional[Callable[[Tensor], Tensor]] = None) -> None:
        super().__init__(rates, au_weighting, max_weight, target_transform)
        self.eps, self.reduction = eps, reduction

    def forward(self, out: Dict, y: Tensor, valid: Optional[Tensor] = None, **_: object) -> Dict[str, Tensor]:
        dice = weighted_dice(out["logits"], self.targets(y), valid, self.weight, self.eps, self.reduction)
        return {"loss": dice, "dice": dice.detach()}


class MDWALoss(_AULoss):
    """AUFormer loss: ``MDWA(main) + wdi_weight * WDI(main) + expert_weight * mean_i MDWA'(expert i)``.

    Expert logits come from ``out["aux"]["experts"]``: ``[B, A]`` (expert i predicts AU i, ``expert_head="own_au"``)
    or ``[B, A, A]`` (``all_aus``: expert i predicts every AU). Without experts in ``out`` the expert term is skipped.
    Without ``rates``, ``w = 1`` and ``gamma = B_L``."""

    def __init__(self, rates: Optional[Tensor] = None, num_aus: Optional[int] = None, margin: float = 0.05,
                 b_l: float = 1.0, b_r: float = 2.0, au_weighting: str = "inverse_freq",
                 max_weight: Optional[float] = None, detach_focus: bool = False, wdi_weight: float = 1.0,
                 dice_eps: float = 1.0, expert_weight: float = 1.0,
                 target_transform: Optional[Callable[[Tensor], Tensor]] = None) -> None:
        if rates is None and au_weighting == "inverse_freq":
            au_weighting = "none"
        super().__init__(rates, au_weighting, max_weight, target_transform)
        _buffer(self, "gamma", mdwa_gamma(rates, b_l, b_r, num_aus) if (rates is not None or num_aus) else None)
        self.b_l, self.margin, self.detach_focus = b_l, margin, detach_focus
        self.wdi_weight, self.dice_eps, self.expert_weight = wdi_weight, dice_eps, expert_weight

    def _mdwa(self, z: Tensor, t: Tensor, valid: Optional[Tensor]) -> Tensor:
        gamma = self.gamma if self.gamma is not None else self.b_l
        return mdwa_loss(z, t, valid, self.weight, gamma, self.margin, self.detach_focus)

    def forward(self, out: Dict, y: Tensor, valid: Optional[Tensor] = None, **_: object) -> Dict[str, Tensor]:
        z = out["logits"]
        t = self.targets(y)
        main = self._mdwa(z, t, valid)
        parts = {"mdwa": main}
        loss = main
        if self.wdi_weight:
            wdi = weighted_dice(z, t, valid, self.weight, self.dice_eps)
            parts["wdi"] = wdi
            loss = loss + self.wdi_weight * wdi
        experts = (out.get("aux") or {}).get("experts")
        if experts is not None and self.expert_weight:
            if experts.dim() == z.dim():  # own_au: expert i -> AU i; the masked mean over AUs is mean_i L'(i)
                ex = self._mdwa(experts, t, valid)
            else:  # all_aus: [B, E, A], every expert against every AU
                e = experts.shape[1]
                ex = self._mdwa(experts, t.unsqueeze(1).expand(-1, e, -1),
                                None if valid is None else valid.unsqueeze(1).expand(-1, e, -1))
            parts["experts"] = ex
            loss = loss + self.expert_weight * ex
        return {"loss": loss, **{k: v.detach() for k, v in parts.items()}}


class BernoulliKDLoss(nn.Module):
    """KD from ``out["aux"][teacher]`` (detached) to each student in ``students``, summed over students."""

    def __init__(self, teacher: str = "teacher", students: Sequence[str] = ("o2o", "o2m"),
                 detach_teacher: bool = True) -> None:
        super().__init__()
        self.teacher, self.students, self.detach_teacher = teacher, tuple(students), detach_teacher

    def forward(self, out: Dict, y: Optional[Tensor] = None, valid: Optional[Tensor] = None,
                **_: object) -> Dict[str, Tensor]:
        aux = out["aux"]
        kd = sum(bernoulli_kd(aux[s], aux[self.teacher], valid, self.detach_teacher) for s in self.students)
        return {"loss": kd, "kd": kd.detach()}


class OKDLoss(_AULoss):
    """OKD loss (AU_METHODS.md#online-kd): ``sum_{o,m,t} WBCE(P_s) + kd_weight sum_{o,m} KL(P_t || P_s)``, kd_weight 0.2
    [FT]. Reads ``out["aux"]`` = {"o2o", "o2m", "teacher"} from :class:`lgiformer.au.heads.FanTransOKDHead`."""

    def __init__(self, rates: Optional[Tensor] = None, au_weighting: str = "inverse_freq",
                 max_weight: Optional[float] = None, kd_weight: float = 0.2, detach_teacher: bool = True,
                 target_transform: Optional[Callable[[Tensor], Tensor]] = None) -> None:
        if rates is None and au_weighting == "inverse_freq":
            au_weighting = "none"
        super().__init__(rates, au_weighting, max_weight, target_transform)
        self.kd_weight, self.detach_teacher = kd_weight, detach_teacher

    def forward(self, out: Dict, y: Tensor, valid: Optional[Tensor] = None, **_: object) -> Dict[str, Tensor]:
        aux = out["aux"]
        t = self.targets(y)
        parts = {f"bce_{k}": masked_weighted_bce(aux[k], t, valid, self.weight) for k in ("o2o", "o2m", "teacher")}
        loss = sum(parts.values())
        if self.kd_weight:
            kd = sum(bernoulli_kd(aux[s], aux["teacher"], valid, self.detach_teacher) for s in ("o2o", "o2m"))
            parts["kd"] = kd
            loss = loss + self.kd_weight * kd
        return {"loss": loss, **{k: v.detach() for k, v in parts.items()}}


class MonetLoss(_AULoss):
    """MONET mixture NLL (docs/AU_METHODS.md#monet-loss), computed with logsumexp.

    Reads ``out["aux"]["order_logits"]`` (``[B, K, A]``, teacher-forced logits of the K unrolled orders, AU-indexed)
    and ``out["aux"]["order_log_weights"]`` (``[K]`` or ``[B, K]``, ``log pi~``; ``-inf`` = dropped). Per order:
    ``sum_i v w BCE + dice_weight sum_i v w (1 - (2yp + eps)/(y^2 + p^2 + eps))`` (Dice inside the order [ENG]).
    Returns the batch mean of ``-logsumexp_m(log pi_m - L^m)``. Dense mode: ``y``/``valid`` ``[B, T', A]`` are
    flattened to the ``B*T'`` rows of ``order_logits``."""

    def __init__(self, rates: Optional[Tensor] = None, au_weighting: str = "none", max_weight: Optional[float] = None,
                 dice_weight: float = 0.5, dice_eps: float = 1.0,
                 target_transform: Optional[Callable[[Tensor], Tensor]] = None) -> None:
        super().__init__(rates, au_weighting, max_weight, target_transform)
        self.dice_weight, self.dice_eps = dice_weight, dice_eps

    def per_order(self, order_logits: Tensor, y: Tensor, valid: Optional[Tensor] = None) -> Tensor:
        """``L^{sigma_m}_b``: ``[B, K]``."""
        rows, a = order_logits.shape[0], order_logits.shape[-1]
        t = self.targets(y).reshape(rows, a).unsqueeze(1).expand_as(order_logits)
        v = torch.ones_like(order_logits) if valid is None else valid.to(order_logits).reshape(rows, a).unsqueeze(
            1).expand_as(order_logits)
        per = F.binary_cross_entropy_with_logits(order_logits, t, reduction="none")
        if self.dice_weight:
            p = torch.sigmoid(order_logits)
            per = per + self.dice_weight * (1.0 - (2 * t * p + self.dice_eps) / (t * t + p * p + self.dice_eps))
        return (_weighted(per, self.weight) * v).sum(-1)

    def forward(self, out: Dict, y: Tensor, valid: Optional[Tensor] = None, **_: object) -> Dict[str, Tensor]:
        aux = out["aux"]
        per = self.per_order(aux["order_logits"], y, valid)
        logw = aux["order_log_weights"]
        logw = logw.expand_as(per) if logw.dim() == 2 else logw.unsqueeze(0).expand_as(per)
        nll = -torch.logsumexp(logw - per, dim=1)
        loss = nll.mean()
        return {"loss": loss, "monet_nll": loss.detach()}


class PAtteLLoss(nn.Module):
    """PAtteL on ``out["attn_all"]`` (every cross-attention layer, averaged) or ``out["attn"]``; ``priors`` passed
    as a keyword (``[B, A, n]`` multi-prior or ``[B, 1, n]`` mono-prior)."""

    def __init__(self, f: float = 0.25, weight: float = 1.0) -> None:
        super().__init__()
        self.f, self.weight = f, weight

    def forward(self, out: Dict, y: Optional[Tensor] = None, valid: Optional[Tensor] = None, *, priors: Tensor,
                **_: object) -> Dict[str, Tensor]:
        attn = out.get("attn_all", out.get("attn"))
        loss = self.weight * pattel_loss(attn, priors, self.f, valid)
        return {"loss": loss, "pattel": loss.detach()}


class H2PLoss(nn.Module):
    """H2P on the head's cross-attention; ``priors`` ``[B, P, n]`` passed as a keyword (training only)."""

    def __init__(self, assignment: Optional[Tensor] = None, weight: float = 1.0) -> None:
        super().__init__()
        _buffer(self, "assignment", assignment)
        self.weight = weight

    def forward(self, out: Dict, y: Optional[Tensor] = None, valid: Optional[Tensor] = None, *, priors: Tensor,
                **_: object) -> Dict[str, Tensor]:
        attn = out.get("attn_all", out.get("attn"))
        loss = self.weight * h2p_loss(attn, priors, self.assignment, valid)
        return {"loss": loss, "h2p": loss.detach()}


# ------------------------------------------------------------------------------------------------------------------
# Registries
# ------------------------------------------------------------------------------------------------------------------
_LOSSES: Dict[str, Callable[..., nn.Module]] = {}
_TRANSFORMS: Dict[str, Callable[..., object]] = {"vls": VLS, "vals": VALS, "rhls": RHLS}


def register_au_loss(name: str, cls: Callable[..., nn.Module]) -> None:
    _LOSSES[name] = cls


for _name, _cls in (("wbce", WeightedBCELoss), ("dice", DiceLoss), ("mdwa", MDWALoss),
                    ("kd_bernoulli", BernoulliKDLoss), ("okd", OKDLoss), ("monet", MonetLoss),
                    ("pattel", PAtteLLoss), ("h2p", H2PLoss)):
    register_au_loss(_name, _cls)


def list_au_losses() -> list[str]:
    return sorted(_LOSSES)


def build_au_loss(name: str, **cfg) -> nn.Module:
    """Build an AU loss by name. ``target_transform`` may be a callable or a dict ``{"name": "vals", ...}``."""
    if name not in _LOSSES:
        raise ValueError(f"unknown AU loss {name!r}; choose from {list_au_losses()}")
    tt = cfg.get("target_transform")
    if isinstance(tt, (dict, str)):
        tt = dict(name=tt) if isinstance(tt, str) else dict(tt)
        tname = tt.pop("name")
        if tname == "rhls" and "rates" not in tt:
            tt["rates"] = cfg.get("rates")
        cfg["target_transform"] = build_target_transform(tname, **tt)
    return _LOSSES[name](**cfg)


def build_target_transform(name: str, **cfg):
    """``"vls"``, ``"vals"`` or ``"rhls"`` (training-only, AU_METHODS.md#label-smoothing); ``"none"`` returns None."""
    if name == "none":
        return None
    if name not in _TRANSFORMS:
        raise ValueError(f"unknown target transform {name!r}; choose from {sorted(_TRANSFORMS)} or 'none'")
    return _TRANSFORMS[name](**cfg)
