"""Attention guidance (docs/AU_METHODS.md#attention-guidance): landmark prior heatmaps, and the PAtteL and H2P
losses that pull a head's attention towards them."""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import torch
from torch import nn

from lgiformer.au.weights import _buffer

Tensor = torch.Tensor


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
