"""AU evaluation (docs/AU_METHODS.md#evaluation-protocols, U5, U6): per-AU F1, fold and cross-fold summaries,
slot-to-frame expansion and the temporal moving mean of per-frame probabilities.

Everything works on CPU tensors or numpy arrays (``[N, A]`` probabilities or {0, 1} predictions, ``[N, A]``
labels, optional ``[N, A]`` validity mask) and returns plain Python floats / lists, ready for JSON logs.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch

Tensor = torch.Tensor

__all__ = ["f1_counts", "f1_per_au", "fold_f1", "cross_fold_f1", "auc_per_au", "moving_average",
           "smooth_by_video", "slots_to_frames"]


def _t(x) -> Tensor:
    return torch.as_tensor(x).detach().cpu()


def f1_counts(scores, labels, valid=None, threshold: float = 0.5) -> Tuple[Tensor, Tensor, Tensor]:
    """Per-AU (TP, FP, FN) with ``pred = scores >= threshold`` (U5: 0.5 on the sigmoid), counting valid entries."""
    s, y = _t(scores).float(), _t(labels).float()
    if s.shape != y.shape:
        raise ValueError(f"scores {list(s.shape)} and labels {list(y.shape)} differ in shape")
    s, y = s.reshape(-1, s.shape[-1]), y.reshape(-1, y.shape[-1])
    v = torch.ones_like(y) if valid is None else _t(valid).float().reshape_as(y)
    pred = (s >= threshold).float()
    pos = (y >= 0.5).float()
    tp = (pred * pos * v).sum(0)
    fp = (pred * (1 - pos) * v).sum(0)
    fn = ((1 - pred) * pos * v).sum(0)
    return tp, fp, fn


def _f1(tp: Tensor, fp: Tensor, fn: Tensor) -> Tensor:
    den = 2 * tp + fp + fn
    return torch.where(den > 0, 2 * tp / den.clamp_min(1), torch.zeros_like(tp))  # 0 when undefined


def f1_per_au(scores, labels, valid=None, threshold: float = 0.5) -> List[float]:
    """Binary F1 per AU over all frames (0 where an AU has no positive label and no positive prediction)."""
    return _f1(*f1_counts(scores, labels, valid, threshold)).tolist()


def fold_f1(scores, labels, valid=None, threshold: float = 0.5, au_names: Optional[Sequence[str]] = None) -> Dict:
    """``{"per_au": [...], "mean": float}`` (and ``"by_name"`` when ``au_names`` is given), in [0, 1]."""
    per = f1_per_au(scores, labels, valid, threshold)
    out: Dict = {"per_au": per, "mean": sum(per) / max(1, len(per))}
    if au_names is not None:
        out["by_name"] = dict(zip(au_names, per))
    return out


def auc_per_au(scores, labels, valid=None) -> List[float]:
    """ROC AUC per AU over the valid entries: the chance that a positive frame scores above a negative one, ties
    counted half (the Mann-Whitney statistic, from average ranks). Threshold-free, so it tells heads apart when
    every one stays below the F1 threshold on rare AUs; ``nan`` where an AU has no positive or no negative label."""
    s, y = _t(scores).double(), _t(labels).float()
    s, y = s.reshape(-1, s.shape[-1]), y.reshape(-1, y.shape[-1])
    v = torch.ones_like(y, dtype=torch.bool) if valid is None else _t(valid).bool().reshape_as(y)
    out = []
    for k in range(s.shape[1]):
        sk, pos = s[v[:, k], k], y[v[:, k], k] >= 0.5
        n_pos, n_neg = int(pos.sum()), int((~pos).sum())
        if n_pos == 0 or n_neg == 0:
            out.append(float("nan"))
            continue
        _, inverse, counts = torch.unique(sk, return_inverse=True, return_counts=True)
        end = torch.cumsum(counts, 0).double()
        ranks = ((end - counts + 1 + end) / 2)[inverse]            # 1-based average rank of each entry
        out.append(float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)))
    return out


def cross_fold_f1(folds: Sequence[Tuple], pooling: str = "mean_of_folds", threshold: float = 0.5) -> Dict:
    """U6 over folds. ``folds``: ``(scores, labels)`` or ``(scores, labels, valid)`` per fold.

    ``pooling`` [ENG]: "mean_of_folds" (default: each fold's per-AU F1, then the mean over folds) or "pooled" (pool
    every fold's frames, then one F1 per AU). Returns ``{"folds": [fold_f1...], "per_au": [...], "mean": float,
    "pooling": ...}``."""
    if pooling not in ("mean_of_folds", "pooled"):
        raise ValueError(f"pooling must be 'mean_of_folds' or 'pooled', got {pooling!r}")
    per_fold = [fold_f1(*f, threshold=threshold) if len(f) == 3 else fold_f1(f[0], f[1], threshold=threshold)
                for f in folds]
    if pooling == "mean_of_folds":
        per_au = torch.tensor([f["per_au"] for f in per_fold]).mean(0).tolist()
    else:
        counts = [f1_counts(f[0], f[1], f[2] if len(f) == 3 else None, threshold) for f in folds]
        tp, fp, fn = (torch.stack(c).sum(0) for c in zip(*counts))
        per_au = _f1(tp, fp, fn).tolist()
    return {"folds": per_fold, "per_au": per_au, "mean": sum(per_au) / max(1, len(per_au)), "pooling": pooling}


def moving_average(probs, window: int = 20, mode: str = "centred") -> Tensor:
    """Moving mean (AU_METHODS.md#moving-mean) of per-frame probabilities along the first axis (``[T]`` or ``[T, A]``).

    ``centred`` [ENG]: frame t averages frames ``[t - window//2, t + (window - 1) - window//2]``, shrinking at the
    sequence edges (even windows lean one frame to the past). ``causal``: frames ``[t - window + 1, t]``."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if mode not in ("centred", "causal"):
        raise ValueError(f"mode must be 'centred' or 'causal', got {mode!r}")
    x = _t(probs).double()
    squeeze = x.dim() == 1
    if squeeze:
        x = x.unsqueeze(1)
    n = x.shape[0]
    csum = torch.cat((x.new_zeros(1, x.shape[1]), x.cumsum(0)), 0)
    idx = torch.arange(n)
    if mode == "centred":
        lo, hi = idx - window // 2, idx + (window - 1 - window // 2)
    else:
        lo, hi = idx - window + 1, idx
    lo, hi = lo.clamp(min=0), hi.clamp(max=n - 1)
    out = (csum[hi + 1] - csum[lo]) / (hi - lo + 1).unsqueeze(1).double()
    out = out.float()
    return out.squeeze(1) if squeeze else out


def smooth_by_video(probs, video_ids: Sequence, window: int = 20, mode: str = "centred") -> Tensor:
    """Apply :func:`moving_average` within each video. Frames of a video must be contiguous and in time order
    (the evaluation loader's order); ``video_ids`` has one entry per frame."""
    x = _t(probs).float()
    out = torch.empty_like(x)
    start = 0
    ids = list(video_ids)
    if len(ids) != x.shape[0]:
        raise ValueError(f"{len(ids)} video ids for {x.shape[0]} frames")
    for end in range(1, len(ids) + 1):
        if end == len(ids) or ids[end] != ids[start]:
            out[start:end] = moving_average(x[start:end], window, mode)
            start = end
    return out


def slots_to_frames(slot_probs, tubelet: int, num_frames: Optional[int] = None) -> Tensor:
    """Dense mode at test (AU_METHODS.md#prediction-modes): repeat each slot's ``[..., T', A]`` over its ``tubelet``
    frames -> ``[..., T'*tubelet, A]``, cut to ``num_frames`` if given."""
    x = _t(slot_probs)
    out = x.repeat_interleave(tubelet, dim=-2)
    return out if num_frames is None else out[..., :num_frames, :]
