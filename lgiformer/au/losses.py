"""AU losses: functional forms, then the ``AULoss`` modules the training code builds by name.

docs/AU_METHODS.md#shared-rules-u1-u6 (U1-U4) and its sections on MDWA / WDI, online KD and the MONET loss; the
weights live in :mod:`lgiformer.au.weights`, label smoothing in :mod:`lgiformer.au.label_targets`, attention
guidance in :mod:`lgiformer.au.attention_guidance`.

Functional forms first (pure tensor functions, easy to test), then the ``AULoss`` modules used by the training code::

    loss_fn = build_au_loss("wbce", rates=train_rates, au_weighting="inverse_freq", dice_weight=0.5)
    parts = loss_fn(head_out, y, valid)          # {"loss": scalar with grad, "bce": detached, "dice": detached}

Conventions: ``logits``/``target``/``valid`` have the same shape, ``[B, A]`` (clip mode) or ``[B, T', A]`` (dense
mode); per-AU vectors (``weight``, ``rates``, ``gamma``) broadcast over the last axis. ``valid`` is a {0, 1} mask
(bool or float); where it is 0 the loss and its gradient are exactly 0 (U3).
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lgiformer.au.attention_guidance import H2PLoss, PAtteLLoss
from lgiformer.au.label_targets import build_target_transform
from lgiformer.au.weights import _au_weight, _buffer, _valid, _weighted

Tensor = torch.Tensor

__all__ = ["masked_weighted_bce", "weighted_dice", "mdwa_gamma", "mdwa_loss", "bernoulli_kd", "WeightedBCELoss",
           "DiceLoss", "MDWALoss", "BernoulliKDLoss", "OKDLoss", "MonetLoss", "register_au_loss", "build_au_loss",
           "list_au_losses"]


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
# AULoss modules: forward(out, y, valid, **extra) -> {"loss": scalar, <part>: detached scalar}
# ------------------------------------------------------------------------------------------------------------------
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
    [FT]. Reads ``out["aux"]`` = {"o2o", "o2m", "teacher"} from :class:`lgiformer.heads.FanTransOKDHead`."""

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


# ------------------------------------------------------------------------------------------------------------------
# Registries
# ------------------------------------------------------------------------------------------------------------------
_LOSSES: Dict[str, Callable[..., nn.Module]] = {}


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
