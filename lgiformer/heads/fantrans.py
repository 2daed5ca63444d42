"""FAN-Trans (docs/AU_METHODS.md#fan-trans): attention drop, o2o / o2m classifiers and online knowledge
distillation between them; :meth:`FanTransOKDHead.export_for_inference` keeps the o2o path only."""
from __future__ import annotations

import copy
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from timm.layers import Mlp, trunc_normal_
from torch import nn

from lgiformer.au.weights import prior_bias
from lgiformer.heads.common import (check_grid, check_mode, keys_from_grid, unflatten_lead)
from lgiformer.layers.attention import Attention

Tensor = torch.Tensor


class AttentionDropBlock(nn.Module):
    """Pre-LN ViT block, attention columns (keys) scaled by a learned binary mask ``M`` (AU_METHODS.md#attention-drop).

    Parameters are named as :class:`lgiformer.layers.blocks.Block` (``norm1``, ``attn``, ``norm2``, ``mlp``), plus
    ``drop_logits`` (``theta``, ``[1 or H, A]``, init ``theta_init = +3``: every key open). Forward uses
    ``M = 1[sigmoid(theta) > 0.5]``; in training the backward pass uses the straight-through estimator
    ``hard + sigmoid(theta) - sigmoid(theta).detach()``. In eval mode (or with ``hard_only``) M is exactly binary.
    ``renorm_rows`` [ENG] renormalises each row after masking (off: the equation taken literally).

    ``drop_mode`` selects the FT ablation variants: "learned" (default, the mask above), "full" (no drop, variant F),
    "row" / "column" (variants R / C: drop the ``drop_ratio`` lowest attention weights within each row / column;
    FT gives no threshold, so ``drop_ratio`` [ENG] defaults to 0.25)."""

    def __init__(self, dim: int, num_heads: int, num_tokens: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop: float = 0.0, per_head: bool = False, renorm_rows: bool = False, theta_init: float = 3.0,
                 drop_mode: str = "learned", drop_ratio: float = 0.25, norm_eps: float = 1e-6) -> None:
        super().__init__()
        if drop_mode not in ("learned", "full", "row", "column"):
            raise ValueError(f"drop_mode must be 'learned', 'full', 'row' or 'column', got {drop_mode!r}")
        self.drop_mode, self.drop_ratio = drop_mode, drop_ratio
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, proj_drop=drop)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)
        self.drop_logits = nn.Parameter(torch.full((num_heads if per_head else 1, num_tokens), float(theta_init)))
        self.renorm_rows = renorm_rows
        self.hard_only = False

    def key_mask(self) -> Tensor:
        """``M``: ``[1 or H, A]``."""
        s = torch.sigmoid(self.drop_logits)
        hard = (s > 0.5).to(s.dtype)
        if self.training and not self.hard_only:
            return hard + s - s.detach()
        return hard.detach()

    def _masked_attention(self, x: Tensor) -> Tensor:
        at = self.attn
        q_bias, kv_bias = at._biases()
        bias = None if q_bias is None else torch.cat((q_bias, kv_bias))
        qkv = F.linear(x, torch.cat((at.q.weight, at.kv.weight)), bias)
        q, k, v = qkv.unflatten(-1, (3, at.num_heads, at.head_dim)).movedim(-3, 0).transpose(-3, -2)
        probs = ((q * at.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # [B, H, A, A]
        if self.drop_mode == "learned":
            m = self.key_mask()
            probs = probs * m.view(1, m.shape[0], 1, m.shape[1])
        elif self.drop_mode in ("row", "column"):
            probs = probs * self._similarity_mask(probs.detach(), -1 if self.drop_mode == "row" else -2)
        if self.renorm_rows:
            probs = probs / probs.sum(-1, keepdim=True).clamp_min(1e-12)
        out = (probs @ v).transpose(-3, -2).flatten(-2)
        return at.proj_drop(at.proj(out))

    def _similarity_mask(self, probs: Tensor, dim: int) -> Tensor:
        """Keep all but the ``floor(drop_ratio * A)`` lowest entries along ``dim`` (ties broken by index)."""
        n_drop = int(self.drop_ratio * probs.shape[dim])
        if n_drop == 0:
            return torch.ones_like(probs)
        rank = probs.argsort(dim=dim).argsort(dim=dim)  # 0 = lowest
        return (rank >= n_drop).to(probs.dtype)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self._masked_attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def topk_column_sum(scores: Tensor, k: int = 2) -> Tensor:
    """C_o2m (docs/AU_METHODS.md#o2o-and-o2m): ``scores [B, A_tokens, A]`` (row j = token j voting for every AU) ->
    ``[B, A]``, the sum of the k largest entries of each column. k = A gives column sums, k = 1 column maxima."""
    return scores.topk(min(k, scores.shape[1]), dim=1).values.sum(1)


class _FanTransTrunk(nn.Module):
    """Shared per-AU token construction: optional projection C -> D, token-axis mix ``W_au [N_p, A]``
    and a learned ``[A, D]`` AU position embedding."""

    def __init__(self, embed_dim: int, num_aus: int, dim: int, num_patches: int, project: bool) -> None:
        super().__init__()
        self.proj = nn.Linear(embed_dim, dim) if project else nn.Identity()
        self.w_au = nn.Parameter(torch.full((num_patches, num_aus), 1.0 / num_patches)
                                 + 0.02 * torch.randn(num_patches, num_aus))
        self.au_pos = nn.Parameter(torch.zeros(num_aus, dim))
        trunc_normal_(self.au_pos, std=0.02)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.shape[1] != self.w_au.shape[0]:
            raise ValueError(f"FAN-Trans head was built for {self.w_au.shape[0]} patch tokens per query set, got "
                             f"{x.shape[1]}; check grid and mode")
        f = self.proj(x)
        return f, torch.einsum("bnd,na->bad", f, self.w_au) + self.au_pos


class _Branch(nn.Module):
    """A stack of attention-drop blocks plus a classifier: "o2o" (shared ``w_o``, FT) or "o2m" (prototype
    matrix ``W_m [D, A]`` + top-k column sums; a per-AU bias [ENG] is added after the top-k for U2)."""

    def __init__(self, kind: str, dim: int, num_aus: int, depth: int, num_heads: int, mlp_ratio: float, k: int,
                 **block_kwargs) -> None:
        super().__init__()
        self.kind, self.k = kind, k
        self.blocks = nn.Sequential(*(AttentionDropBlock(dim, num_heads, num_aus, mlp_ratio, **block_kwargs)
                                      for _ in range(depth)))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        if kind == "o2o":
            self.head = nn.Linear(dim, 1)
        else:
            self.head = nn.Linear(dim, num_aus, bias=False)
        trunc_normal_(self.head.weight, std=0.02)
        self.bias = nn.Parameter(torch.zeros(num_aus))

    def forward(self, au_tokens: Tensor) -> Tensor:
        f = self.norm(self.blocks(au_tokens))
        if self.kind == "o2o":
            return self.head(f).squeeze(-1) + self.bias
        return topk_column_sum(self.head(f), self.k) + self.bias


class _EnsembleGate(nn.Module):
    """FT gate on F_c (docs/AU_METHODS.md#online-kd): path a = mean tokens -> Linear; path b = depthwise 3x3 conv ->
    mean pool -> Linear [ENG]; concat -> FC -> ``[B, 2, A]`` -> softmax over the 2."""

    def __init__(self, dim: int, num_aus: int, hidden: Optional[int] = None) -> None:
        super().__init__()
        hidden = hidden or dim
        self.path_a = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.path_b = nn.Linear(dim, hidden)
        self.fc = nn.Linear(2 * hidden, 2 * num_aus)
        self.num_aus = num_aus

    def forward(self, f: Tensor, t: int, h: int, w: int) -> Tensor:
        b, n, d = f.shape  # n = t*h*w (clip) or h*w (per slot, t = 1)
        a = self.path_a(f.mean(1))
        g = f.reshape(b * t, h, w, d).permute(0, 3, 1, 2)
        g = self.dwconv(g).mean(dim=(2, 3)).view(b, t, d).mean(1)
        logits = self.fc(F.gelu(torch.cat((a, self.path_b(g)), -1))).view(b, 2, self.num_aus)
        return logits.softmax(dim=1)


class FanTransOKDHead(nn.Module):
    """FAN-Trans heads with online KD (docs/AU_METHODS.md#fan-trans): shared per-AU tokens, T1 (o2o) and T2 (o2m), an
    ensemble gate and teacher ``P_t = W_1 P_o + W_2 P_m`` (logit mixing [ENG]).

    ``forward`` returns ``logits = P_m`` (the deployed branch) and ``aux = {"o2o": P_o, "o2m": P_m, "teacher": P_t,
    "gate": [B, 2, A]}`` for :class:`lgiformer.au.losses.OKDLoss`. :meth:`export_for_inference` returns a module
    with the trunk and T2 only (hard M). ``grid`` (T', h, w) fixes the token-mixing matrix: ``N_p = T'*h*w`` in
    clip/image mode and ``h*w`` in dense mode."""

    def __init__(self, embed_dim: int, num_aus: int, grid: Sequence[int], mode: str = "clip", dim: int = 256,
                 depth: int = 5, num_heads: Optional[int] = None, mlp_ratio: float = 4.0, k: int = 2,
                 per_head_mask: bool = False, renorm_rows: bool = False, theta_init: float = 3.0,
                 drop_mode: str = "learned", drop_ratio: float = 0.25, project: bool = True, drop: float = 0.0,
                 gate_hidden: Optional[int] = None, rates: Optional[Tensor] = None) -> None:
        super().__init__()
        self.mode, self.grid = check_mode(mode), check_grid(grid)
        t, h, w = self.grid
        dim = dim if project else embed_dim
        num_heads = num_heads or max(1, dim // 64)
        num_patches = h * w if mode == "dense" else t * h * w
        block = dict(per_head=per_head_mask, renorm_rows=renorm_rows, theta_init=theta_init, drop=drop,
                     drop_mode=drop_mode, drop_ratio=drop_ratio)
        self.trunk = _FanTransTrunk(embed_dim, num_aus, dim, num_patches, project)
        self.t1 = _Branch("o2o", dim, num_aus, depth, num_heads, mlp_ratio, k, **block)
        self.t2 = _Branch("o2m", dim, num_aus, depth, num_heads, mlp_ratio, k, **block)
        self.gate = _EnsembleGate(dim, num_aus, gate_hidden)
        if rates is not None:
            self.init_prior_bias(rates)

    def init_prior_bias(self, rates: Tensor) -> None:
        with torch.no_grad():
            for br in (self.t1, self.t2):
                br.bias.copy_(prior_bias(rates))

    def forward(self, tokens: Tensor, pooled: Optional[Tensor] = None, *, grid: Sequence[int], n_special: int = 0,
                **_: object) -> Dict:
        x, lead = keys_from_grid(tokens, grid, n_special, self.mode)
        f, au = self.trunk(x)
        p_o, p_m = self.t1(au), self.t2(au)
        t, h, w = check_grid(grid)
        gate = self.gate(f, 1 if self.mode == "dense" else t, h, w)
        p_t = gate[:, 0] * p_o + gate[:, 1] * p_m
        aux = {"o2o": p_o, "o2m": p_m, "teacher": p_t, "gate": gate}
        return {"logits": unflatten_lead(p_m, lead), "aux": {k: unflatten_lead(v, lead) for k, v in aux.items()}}

    def export_for_inference(self) -> "FanTransInference":
        """The trunk and T2 (o2m) only, in eval mode, hard masks (docs/AU_METHODS.md#fan-trans-deployment)."""
        return FanTransInference(copy.deepcopy(self.trunk), copy.deepcopy(self.t2), self.mode).eval()


class FanTransInference(nn.Module):
    """Deployed FAN-Trans: shared trunk + T2 + C_o2m, hard binary M; returns ``{"logits", "aux": {}}``."""

    def __init__(self, trunk: _FanTransTrunk, t2: _Branch, mode: str) -> None:
        super().__init__()
        self.trunk, self.t2, self.mode = trunk, t2, mode
        for blk in self.t2.blocks:
            blk.hard_only = True

    def forward(self, tokens: Tensor, pooled: Optional[Tensor] = None, *, grid: Sequence[int], n_special: int = 0,
                **_: object) -> Dict:
        x, lead = keys_from_grid(tokens, grid, n_special, self.mode)
        _, au = self.trunk(x)
        return {"logits": unflatten_lead(self.t2(au), lead), "aux": {}}
