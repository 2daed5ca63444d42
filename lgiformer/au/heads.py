"""AU heads on encoder token features (docs/AU_METHODS.md#head-and-loss-interface and the heads' sections).

Every head is a pure module on encoder tokens::

    out = head(tokens, *, grid=(T', h, w), n_special=R)     # tokens: [B, R + T'*h*w, C] from forward_features
    out["logits"]    # [B, A] (mode "clip"/"image") or [B, T', A] (mode "dense")
    out["aux"]       # training-only outputs, e.g. FAN-Trans P_o / P_m / P_t, MONET per-order logits
    out["attn"]      # optional cross-attention probabilities [B', heads, A, n_keys] (label-token head)

Heads: ``linear`` (:class:`LinearAUHead`, pooled baseline), ``label_token`` (:class:`LabelTokenHead`, MLT / MTTS),
``fantrans_okd`` (:class:`FanTransOKDHead`, with :meth:`FanTransOKDHead.export_for_inference`), ``monet``
(:class:`MonetHead`). Build by name with :func:`build_au_head`. Every [ENG] choice is a keyword argument
with its documented default.
"""
from __future__ import annotations

import copy
import itertools
import math
from typing import Callable, Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from timm.layers import Mlp, trunc_normal_
from torch import nn

from lgiformer.au.common import check_grid, check_mode, split_tokens
from lgiformer.au.losses import prior_bias
from lgiformer.layers.attention import Attention

Tensor = torch.Tensor

__all__ = ["LinearAUHead", "LabelTokenHead", "CrossAttention", "AttentionDropBlock", "topk_column_sum",
           "FanTransOKDHead", "FanTransInference", "MonetHead", "register_au_head", "build_au_head",
           "list_au_heads", "sincos_2d", "HEAD_NO_DECAY", "head_no_weight_decay"]


# Head parameters that get no weight decay (tokens, positional terms, order logits, learned thresholds): several are
# 2-D, so the optimiser's 1-D rule does not exempt them.
HEAD_NO_DECAY = ("label_tokens", "pos_embed", "au_pos", "order_logits", "cls_bias", "theta")


def head_no_weight_decay(head: nn.Module, prefix: str) -> set[str]:
    """``prefix + name`` of every parameter of ``head`` that :data:`HEAD_NO_DECAY` exempts."""
    return {f"{prefix}{name}" for name, _ in head.named_parameters() if name.endswith(HEAD_NO_DECAY)}


def _keys_from_grid(tokens: Tensor, grid: Sequence[int], n_special: int, mode: str, keys: str = "local"):
    """Reshape encoder tokens for a head. Returns ``(x [B', n, C], lead)`` where ``lead`` is ``(B,)`` for clip/image
    mode and ``(B, T')`` for dense mode (one row per temporal slot)."""
    t, h, w = check_grid(grid)
    if mode == "image" and t != 1:
        raise ValueError(f"image mode expects one temporal slot (T' = 1, frames repeated to the tubelet), got {t}")
    special, g = split_tokens(tokens, n_special, t, h, w)
    b, c = tokens.shape[0], tokens.shape[-1]
    if mode == "dense":
        x = g.reshape(b * t, h * w, c)
        if keys == "all" and n_special:
            x = torch.cat((special.repeat_interleave(t, dim=0), x), dim=1)
        return x, (b, t)
    x = g.reshape(b, t * h * w, c)
    if keys == "all" and n_special:
        x = torch.cat((special, x), dim=1)
    return x, (b,)


def _unflatten_lead(x: Tensor, lead: Sequence[int]) -> Tensor:
    return x.reshape(*lead, *x.shape[1:])


def sincos_2d(h: int, w: int, dim: int, temperature: float = 10000.0) -> Tensor:
    """2-D sine table ``concat(PE_i, PE_j)``, frequencies ``1 / 10000^{4k/d}`` (docs/AU_METHODS.md#label-token-head)."""
    if dim % 4:
        raise ValueError(f"sincos_2d needs dim divisible by 4, got {dim}")
    k = torch.arange(dim // 4, dtype=torch.float32)
    freq = 1.0 / temperature ** (4.0 * k / dim)
    ii, jj = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    ai, aj = ii.reshape(-1, 1) * freq, jj.reshape(-1, 1) * freq
    return torch.cat((ai.sin(), ai.cos(), aj.sin(), aj.cos()), dim=1)


# ==================================================================================================================
# Linear baseline
# ==================================================================================================================
class LinearAUHead(nn.Module):
    """Baseline: pooled features -> LayerNorm -> dropout -> Linear(C, A).

    ``pool``: "local" (mean of the local tokens; per slot in dense mode), "special" (mean of the special tokens,
    clip mode only) or "all" (mean of all tokens, clip mode only). A ``pooled`` vector passed to ``forward`` is used
    as is (clip mode)."""

    def __init__(self, embed_dim: int, num_aus: int, pool: str = "local", mode: str = "clip", norm: bool = True,
                 dropout: float = 0.0, rates: Optional[Tensor] = None) -> None:
        super().__init__()
        if pool not in ("local", "special", "all"):
            raise ValueError(f"pool must be 'local', 'special' or 'all', got {pool!r}")
        self.mode = check_mode(mode)
        if mode == "dense" and pool != "local":
            raise ValueError("dense mode pools the local tokens of each slot; use pool='local'")
        self.pool = pool
        self.norm = nn.LayerNorm(embed_dim) if norm else nn.Identity()
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(embed_dim, num_aus)
        trunc_normal_(self.fc.weight, std=0.02)
        nn.init.zeros_(self.fc.bias)
        if rates is not None:
            self.init_prior_bias(rates)

    def init_prior_bias(self, rates: Tensor) -> None:
        """U2: ``sigmoid(bias) == r`` at step 0."""
        with torch.no_grad():
            self.fc.bias.copy_(prior_bias(rates))

    def forward(self, tokens: Tensor, pooled: Optional[Tensor] = None, *, grid: Sequence[int], n_special: int = 0,
                **_: object) -> Dict:
        if pooled is None:
            t, h, w = check_grid(grid)
            special, g = split_tokens(tokens, n_special, t, h, w)
            if self.mode == "dense":
                pooled = g.mean(dim=(2, 3))  # [B, T', C]
            elif self.pool == "local":
                pooled = g.mean(dim=(1, 2, 3))
            elif self.pool == "special":
                if n_special == 0:
                    raise ValueError("pool='special' needs special tokens (n_special > 0)")
                pooled = special.mean(1)
            else:
                pooled = tokens.mean(1)
        return {"logits": self.fc(self.drop(self.norm(pooled))), "aux": {}}


# ==================================================================================================================
# Label-token head with optional face-parsing attention bias (docs/AU_METHODS.md#parsing-bias)
# ==================================================================================================================
class CrossAttention(nn.Module):
    """Label tokens query patches; returns the output and the attention probabilities ``[B, H, A, n]``.

    With ``parsing_classes = F > 0`` it adds the soft face-parsing bias of docs/AU_METHODS.md#parsing-bias: class tokens
    ``theta_S [F, d]``, patch embedding ``S_ij = theta_S^T f_ij / |f_ij|``, head tokens ``M theta_S`` (``M [H, F]``,
    at most one class per head; default diagonal over the first ``min(H, F)`` heads) and logits
    ``(q k + lambda_S S_ij . theta_Sh) / sqrt((lambda_S^2 + 1) d / H)`` (every head rescaled)."""

    def __init__(self, dim: int, num_heads: int = 8, attn_drop: float = 0.0, parsing_classes: int = 0,
                 parsing_lambda: float = 0.1, parsing_assignment: Optional[Tensor] = None) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q, self.k, self.v, self.proj = (nn.Linear(dim, dim) for _ in range(4))
        self.attn_drop = nn.Dropout(attn_drop)
        self.parsing_classes, self.parsing_lambda = parsing_classes, parsing_lambda
        if parsing_classes:
            self.parsing_tokens = nn.Parameter(torch.zeros(parsing_classes, dim))
            trunc_normal_(self.parsing_tokens, std=0.02)
            if parsing_assignment is None:
                parsing_assignment = torch.zeros(num_heads, parsing_classes)
                k = min(num_heads, parsing_classes)
                parsing_assignment[torch.arange(k), torch.arange(k)] = 1.0
            parsing_assignment = torch.as_tensor(parsing_assignment, dtype=torch.float32)
            if parsing_assignment.shape != (num_heads, parsing_classes) or bool((parsing_assignment.sum(1) > 1).any()):
                raise ValueError("parsing_assignment must be [num_heads, parsing_classes] with at most one class per "
                                 "head")
            self.register_buffer("parsing_assignment", parsing_assignment)

    def parsing_bias(self, parsing: Tensor) -> Tensor:
        """``parsing``: class fractions ``[B, n, F]`` -> bias ``[B, H, n]`` (same for every AU token)."""
        f = parsing.float()
        s = (f / f.norm(dim=-1, keepdim=True).clamp_min(1e-12)) @ self.parsing_tokens  # [B, n, d]
        head_tok = self.parsing_assignment @ self.parsing_tokens  # [H, d]
        s = s.unflatten(-1, (self.num_heads, self.head_dim))  # [B, n, H, dh]
        head_tok = head_tok.unflatten(-1, (self.num_heads, self.head_dim)).diagonal(dim1=0, dim2=1).T  # [H, dh]
        return torch.einsum("bnhd,hd->bhn", s, head_tok)

    def forward(self, t: Tensor, x: Tensor, key_padding_mask: Optional[Tensor] = None,
                parsing: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        b, a, d = t.shape
        n = x.shape[1]
        q = self.q(t).view(b, a, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.v(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        logits = q @ k.transpose(-2, -1)  # [B, H, A, n]
        lam = self.parsing_lambda if (self.parsing_classes and parsing is not None) else 0.0
        if lam:
            logits = logits + lam * self.parsing_bias(parsing).unsqueeze(2)
        logits = logits / math.sqrt((lam * lam + 1.0) * self.head_dim)
        if key_padding_mask is not None:
            logits = logits.masked_fill(key_padding_mask.bool()[:, None, None, :], float("-inf"))
        probs = logits.softmax(dim=-1)
        out = (self.attn_drop(probs) @ v).transpose(1, 2).reshape(b, a, d)
        return self.proj(out), probs


class _LabelDecoderLayer(nn.Module):
    """Decoder layer (post-LN by default): optional token self-attention, cross-attention to patches, MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, dropout: float, token_self_attn: bool,
                 norm_style: str, **ca_kwargs) -> None:
        super().__init__()
        self.norm_style = norm_style
        self.self_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True) \
            if token_self_attn else None
        self.norm0 = nn.LayerNorm(dim) if token_self_attn else None
        self.cross_attn = CrossAttention(dim, num_heads, attn_drop=dropout, **ca_kwargs)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, t: Tensor, x: Tensor, key_padding_mask: Optional[Tensor], parsing: Optional[Tensor]):
        if self.norm_style == "post":
            if self.self_attn is not None:
                t = self.norm0(t + self.drop(self.self_attn(t, t, t, need_weights=False)[0]))
            ca, probs = self.cross_attn(t, x, key_padding_mask, parsing)
            t = self.norm1(t + self.drop(ca))
            return self.norm2(t + self.drop(self.mlp(t))), probs
        if self.self_attn is not None:
            u = self.norm0(t)
            t = t + self.drop(self.self_attn(u, u, u, need_weights=False)[0])
        ca, probs = self.cross_attn(self.norm1(t), x, key_padding_mask, parsing)
        t = t + self.drop(ca)
        return t + self.drop(self.mlp(self.norm2(t))), probs


class LabelTokenHead(nn.Module):
    """One learned query token per AU that cross-attends to the encoder's patch tokens (MLT; TH MTTS / MTTC).

    Defaults (docs/AU_METHODS.md#label-token-defaults), the starting point for a video encoder: ``dim=256``, ``depth=2``
    decoder layers, 8 heads, dropout 0.1, token self-attention off, no patch self-attention layer (N_SA = 0), a
    per-AU classifier (MTTS; ``per_label_classifier=False`` is MLT's shared ``w_p``), no extra position embedding
    (``pos_embed``: "none" | "sincos2d" (TH) | "learned" (MLT; needs ``num_keys``)).

    ``mode``: "clip"/"image" -> ``[B, A]`` over all T'*h*w tokens; "dense" -> ``[B, T', A]``, one query set per slot
    on its h*w tokens. ``keys``: "local" (default) or "all" (special tokens are keys too). ``variant="mttc"`` uses a
    single task token and ``Linear(d, A)``. Returns ``attn`` (last layer) and ``attn_all`` (``[B', L, H, A, n]``,
    ``B' = B`` or ``B*T'``) for the guidance losses (docs/AU_METHODS.md#attention-guidance)."""

    def __init__(self, embed_dim: int, num_aus: int, dim: int = 256, depth: int = 2, num_heads: int = 8,
                 mlp_ratio: float = 4.0, dropout: float = 0.1, token_self_attn: bool = False,
                 patch_self_attn: int = 0, per_label_classifier: bool = True, variant: str = "mtts",
                 mode: str = "clip", keys: str = "local", pos_embed: str = "none", num_keys: Optional[int] = None,
                 norm_style: str = "post", parsing_classes: int = 0, parsing_lambda: float = 0.1,
                 parsing_assignment: Optional[Tensor] = None, rates: Optional[Tensor] = None) -> None:
        super().__init__()
        if variant not in ("mtts", "mttc"):
            raise ValueError(f"variant must be 'mtts' or 'mttc', got {variant!r}")
        if keys not in ("local", "all"):
            raise ValueError(f"keys must be 'local' or 'all', got {keys!r}")
        if pos_embed not in ("none", "sincos2d", "learned"):
            raise ValueError(f"pos_embed must be 'none', 'sincos2d' or 'learned', got {pos_embed!r}")
        if norm_style not in ("post", "pre"):
            raise ValueError(f"norm_style must be 'post' or 'pre', got {norm_style!r}")
        if pos_embed == "learned" and not num_keys:
            raise ValueError("pos_embed='learned' needs num_keys (number of key tokens per query set)")
        self.mode, self.keys, self.variant, self.num_aus = check_mode(mode), keys, variant, num_aus
        self.pos_embed_kind = pos_embed
        self.input_proj = nn.Linear(embed_dim, dim)
        self.input_norm = nn.LayerNorm(dim)
        self.pos_embed = nn.Parameter(torch.zeros(num_keys, dim)) if pos_embed == "learned" else None
        if self.pos_embed is not None:
            trunc_normal_(self.pos_embed, std=0.02)
        self.patch_layers = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, num_heads, int(dim * mlp_ratio), dropout, activation="gelu",
                                       batch_first=True, norm_first=(norm_style == "pre"))
            for _ in range(patch_self_attn))
        n_queries = 1 if variant == "mttc" else num_aus
        self.label_tokens = nn.Parameter(torch.zeros(n_queries, dim))
        trunc_normal_(self.label_tokens, std=0.02)
        ca = dict(parsing_classes=parsing_classes, parsing_lambda=parsing_lambda,
                  parsing_assignment=parsing_assignment)
        self.layers = nn.ModuleList(
            _LabelDecoderLayer(dim, num_heads, mlp_ratio, dropout, token_self_attn, norm_style, **ca)
            for _ in range(depth))
        self.out_norm = nn.LayerNorm(dim) if norm_style == "pre" else nn.Identity()
        self.per_label = per_label_classifier and variant == "mtts"
        if variant == "mttc":
            self.classifier = nn.Linear(dim, num_aus, bias=False)
            trunc_normal_(self.classifier.weight, std=0.02)
        elif self.per_label:
            self.cls_weight = nn.Parameter(torch.zeros(num_aus, dim))
            trunc_normal_(self.cls_weight, std=0.02)
        else:
            self.classifier = nn.Linear(dim, 1, bias=False)
            trunc_normal_(self.classifier.weight, std=0.02)
        self.cls_bias = nn.Parameter(torch.zeros(num_aus))
        if rates is not None:
            self.init_prior_bias(rates)

    def init_prior_bias(self, rates: Tensor) -> None:
        """U2: the final per-AU bias is ``logit(r_i)``."""
        with torch.no_grad():
            self.cls_bias.copy_(prior_bias(rates))

    def _classify(self, t: Tensor) -> Tensor:
        if self.variant == "mttc":
            return self.classifier(t[:, 0]) + self.cls_bias
        if self.per_label:
            return (t * self.cls_weight).sum(-1) + self.cls_bias
        return self.classifier(t).squeeze(-1) + self.cls_bias

    def forward(self, tokens: Tensor, pooled: Optional[Tensor] = None, *, grid: Sequence[int], n_special: int = 0,
                key_padding_mask: Optional[Tensor] = None, parsing: Optional[Tensor] = None, **_: object) -> Dict:
        """``key_padding_mask``: ``[B', n]`` (True = ignore) over the keys; ``parsing``: ``[B', n, F]`` class
        fractions per key token (docs/AU_METHODS.md#parsing-bias), ``B' = B`` (clip) or ``B*T'`` (dense)."""
        x, lead = _keys_from_grid(tokens, grid, n_special, self.mode, self.keys)
        x = self.input_norm(self.input_proj(x))
        if self.pos_embed_kind == "learned":
            x = x + self.pos_embed
        elif self.pos_embed_kind == "sincos2d":
            t, h, w = check_grid(grid)
            pe = sincos_2d(h, w, x.shape[-1]).to(x)
            pe = pe if self.mode == "dense" else pe.repeat(t, 1)
            n_extra = x.shape[1] - pe.shape[0]
            x = x + torch.cat((pe.new_zeros(n_extra, pe.shape[1]), pe), 0)
        for layer in self.patch_layers:
            x = layer(x, src_key_padding_mask=key_padding_mask)
        t = self.label_tokens.unsqueeze(0).expand(x.shape[0], -1, -1)
        maps = []
        for layer in self.layers:
            t, probs = layer(t, x, key_padding_mask, parsing)
            maps.append(probs)
        logits = self._classify(self.out_norm(t))
        attn_all = torch.stack(maps, 1)
        return {"logits": _unflatten_lead(logits, lead), "aux": {}, "attn": maps[-1], "attn_all": attn_all}


# ==================================================================================================================
# FAN-Trans (docs/AU_METHODS.md#fan-trans): attention drop, o2o / o2m classifiers, online KD
# ==================================================================================================================
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
        x, lead = _keys_from_grid(tokens, grid, n_special, self.mode)
        f, au = self.trunk(x)
        p_o, p_m = self.t1(au), self.t2(au)
        t, h, w = check_grid(grid)
        gate = self.gate(f, 1 if self.mode == "dense" else t, h, w)
        p_t = gate[:, 0] * p_o + gate[:, 1] * p_m
        aux = {"o2o": p_o, "o2m": p_m, "teacher": p_t, "gate": gate}
        return {"logits": _unflatten_lead(p_m, lead), "aux": {k: _unflatten_lead(v, lead) for k, v in aux.items()}}

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
        x, lead = _keys_from_grid(tokens, grid, n_special, self.mode)
        _, au = self.trunk(x)
        return {"logits": _unflatten_lead(self.t2(au), lead), "aux": {}}


# ==================================================================================================================
# MONET (docs/AU_METHODS.md#monet): a softmax mixture over M fixed task orders of a chain of per-AU GRU cells
# ==================================================================================================================
class MonetHead(nn.Module):
    """Multi-order network head (docs/AU_METHODS.md#monet). ``mode="dense"`` runs the chain per slot on the slot's mean
    token (``aux`` then has ``B*T'`` rows; :class:`lgiformer.au.losses.MonetLoss` flattens ``y`` to match).

    ``h0 = Linear(C, H)(pooled)``; task cell i is a GRU cell (input = previous task's label, ``y^0 = 0``) plus
    ``Linear(H, 1)``; all T = A cells are stacked as ``[T, ...]`` tensors and each step runs one einsum over the
    unrolled orders. ``orders``: ``[M, T]`` buffer of permutations (all T! if ``num_orders >= T!``, else sampled
    uniformly with ``seed``); ``order_logits`` ``u [M]``, ``pi = softmax(u)``.

    Training (``self.training`` and ``y`` given): teacher forcing; order dropout keeps ``keep_orders = k`` orders
    (one subset for the batch, or per example with ``per_example_dropout``), ``pi~`` renormalised over them. Returns
    ``aux = {"order_logits": [B, K, A] (AU-indexed), "order_log_weights": [K] or [B, K]}`` for
    :class:`lgiformer.au.losses.MonetLoss`, and ``logits`` = logit of the ``pi~``-mixture of teacher-forced
    probabilities. Inference: sample ``num_sampled_orders = R`` orders from ``pi``, ``num_rollouts = L``
    Bernoulli trajectories each, average the probabilities; ``mean_field=True`` [ENG] takes the argmax order and feeds
    ``p`` instead of samples. ``label_embedding="three_way"`` [ENG] feeds a one-hot {start, 0, 1} input.
    Order warm-up: :meth:`set_order_warmup` freezes ``u``; :meth:`param_groups` gives it its own lr."""

    def __init__(self, embed_dim: int, num_aus: int, hidden: int = 64, num_orders: int = 512, keep_orders: int = 128,
                 pool: str = "local", per_example_dropout: bool = False, label_embedding: str = "scalar",
                 num_rollouts: int = 20, num_sampled_orders: int = 4, mean_field: bool = False,
                 orders: Optional[Tensor] = None, seed: int = 0, mode: str = "clip",
                 rates: Optional[Tensor] = None) -> None:
        super().__init__()
        self.mode = check_mode(mode)
        if mode == "dense" and pool != "local":
            raise ValueError("dense mode pools the local tokens of each slot; use pool='local'")
        if pool not in ("local", "special", "all"):
            raise ValueError(f"pool must be 'local', 'special' or 'all', got {pool!r}")
        if label_embedding not in ("scalar", "three_way"):
            raise ValueError(f"label_embedding must be 'scalar' or 'three_way', got {label_embedding!r}")
        t = num_aus
        if orders is None:
            orders = self._make_orders(t, num_orders, seed)
        orders = torch.as_tensor(orders, dtype=torch.long)
        if orders.dim() != 2 or orders.shape[1] != t or not bool(
                (orders.sort(1).values == torch.arange(t)).all()):
            raise ValueError(f"orders must be [M, {t}] permutations of 0..{t - 1}")
        self.register_buffer("orders", orders)
        self.num_aus, self.hidden, self.pool = t, hidden, pool
        self.keep_orders, self.per_example_dropout = keep_orders, per_example_dropout
        self.label_embedding = label_embedding
        self.num_rollouts, self.num_sampled_orders, self.mean_field = num_rollouts, num_sampled_orders, mean_field
        self.proj = nn.Linear(embed_dim, hidden)
        self.order_logits = nn.Parameter(torch.zeros(orders.shape[0]))
        n_in = 1 if label_embedding == "scalar" else 3
        bound = 1.0 / math.sqrt(hidden)
        self.w_ih = nn.Parameter(torch.empty(t, 3 * hidden, n_in).uniform_(-bound, bound))
        self.w_hh = nn.Parameter(torch.empty(t, 3 * hidden, hidden).uniform_(-bound, bound))
        self.b_ih = nn.Parameter(torch.empty(t, 3 * hidden).uniform_(-bound, bound))
        self.b_hh = nn.Parameter(torch.empty(t, 3 * hidden).uniform_(-bound, bound))
        self.out_w = nn.Parameter(torch.empty(t, hidden).uniform_(-bound, bound))
        self.out_b = nn.Parameter(torch.zeros(t))
        if rates is not None:
            self.init_prior_bias(rates)

    @staticmethod
    def _make_orders(t: int, m: int, seed: int) -> Tensor:
        if math.factorial(t) <= m:
            return torch.tensor(list(itertools.permutations(range(t))), dtype=torch.long)
        gen = torch.Generator().manual_seed(seed)
        return torch.stack([torch.randperm(t, generator=gen) for _ in range(m)])

    @property
    def num_orders(self) -> int:
        return self.orders.shape[0]

    def init_prior_bias(self, rates: Tensor) -> None:
        """U2 on each task's output bias."""
        with torch.no_grad():
            self.out_b.copy_(prior_bias(rates))

    def set_order_warmup(self, active: bool) -> None:
        """Order warm-up (AU_METHODS.md#monet-training): while active, ``u`` gets no gradient and stays unchanged."""
        self.order_logits.requires_grad_(not active)
        if active:
            self.order_logits.grad = None

    def param_groups(self, lr: float = 1e-4, weight_decay: float = 1e-4, order_lr: float = 5e-3) -> list[dict]:
        """Two groups (AU_METHODS.md#monet-training): order selector ``u`` (Adam, constant lr, no decay), the rest."""
        rest = [p for n, p in self.named_parameters() if n != "order_logits"]
        return [dict(params=rest, lr=lr, weight_decay=weight_decay),
                dict(params=[self.order_logits], lr=order_lr, weight_decay=0.0, name="monet_orders")]

    # ---- core unroll --------------------------------------------------------------------------------------------
    def _input(self, prev: Optional[Tensor], shape) -> Tensor:
        if self.label_embedding == "scalar":
            return (torch.zeros(shape, device=self.w_ih.device) if prev is None else prev).unsqueeze(-1)
        if prev is None:
            return F.one_hot(torch.zeros(shape, dtype=torch.long, device=self.w_ih.device), 3).float()
        return torch.stack((torch.zeros_like(prev), 1.0 - prev, prev), -1)  # soft for mean field

    def _step(self, h: Tensor, x: Tensor, task: Tensor) -> tuple[Tensor, Tensor]:
        """One GRU step for every unrolled order. ``h [B, K, H]``, ``x [B, K, in]``, ``task [K]`` -> (h', logit)."""
        gi = torch.einsum("bki,kgi->bkg", x, self.w_ih[task]) + self.b_ih[task]
        gh = torch.einsum("bkh,kgh->bkg", h, self.w_hh[task]) + self.b_hh[task]
        i_r, i_z, i_n = gi.chunk(3, -1)
        h_r, h_z, h_n = gh.chunk(3, -1)
        r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        h = (1.0 - z) * n + z * h
        return h, (h * self.out_w[task]).sum(-1) + self.out_b[task]

    def unroll(self, h0: Tensor, perms: Tensor, y: Optional[Tensor] = None, feed: str = "teacher",
               generator: Optional[torch.Generator] = None) -> Tensor:
        """Run the chain along ``perms [K, T]`` from ``h0 [B, H]``; returns AU-indexed logits ``[B, K, A]``.
        ``feed``: "teacher" (previous ground-truth label, needs ``y [B, A]``), "sample" (Bernoulli) or "mean"."""
        b, k = h0.shape[0], perms.shape[0]
        h = h0.unsqueeze(1).expand(b, k, -1)
        prev: Optional[Tensor] = None
        steps = []
        for s in range(perms.shape[1]):
            task = perms[:, s]
            h, o = self._step(h, self._input(prev, (b, k)), task)
            steps.append(o)
            if feed == "teacher":
                prev = y.float()[:, task]
            elif feed == "sample":
                prev = torch.bernoulli(torch.sigmoid(o).detach(), generator=generator)
            else:
                prev = torch.sigmoid(o)
        step_logits = torch.stack(steps, -1)  # [B, K, T] in step order
        inv = perms.argsort(dim=1)
        return step_logits.gather(2, inv.unsqueeze(0).expand(b, -1, -1))

    def _pooled(self, tokens: Tensor, pooled: Optional[Tensor], grid, n_special: int) -> Tensor:
        if pooled is not None:
            return pooled
        if self.pool == "all":
            return tokens.mean(1)
        if self.pool == "special":
            if n_special == 0:
                raise ValueError("pool='special' needs n_special > 0")
            return tokens[:, :n_special].mean(1)
        t, h, w = check_grid(grid)
        g = split_tokens(tokens, n_special, t, h, w)[1]
        return g.mean(dim=(2, 3)).flatten(0, 1) if self.mode == "dense" else g.mean(dim=(1, 2, 3))

    def forward(self, tokens: Tensor, pooled: Optional[Tensor] = None, *, grid: Sequence[int] = None,
                n_special: int = 0, y: Optional[Tensor] = None, generator: Optional[torch.Generator] = None,
                **_: object) -> Dict:
        h0 = self.proj(self._pooled(tokens, pooled, grid, n_special))
        lead = (tokens.shape[0], -1) if self.mode == "dense" and pooled is None else (h0.shape[0],)
        if y is not None:
            y = y.reshape(h0.shape[0], -1)  # dense mode: [B, T', A] -> [B*T', A]
        out = self._forward(h0, y, generator)
        out["logits"], out["probs"] = (_unflatten_lead(out[k], lead) for k in ("logits", "probs"))
        return out

    def _forward(self, h0: Tensor, y: Optional[Tensor], generator: Optional[torch.Generator]) -> Dict:
        b, m = h0.shape[0], self.num_orders
        if self.training and y is not None:
            k = min(self.keep_orders, m)
            if k < m and not self.per_example_dropout:
                idx = torch.randperm(m, device=h0.device, generator=generator)[:k].sort().values
                logw = torch.log_softmax(self.order_logits[idx], 0)
                order_logits = self.unroll(h0, self.orders[idx], y)
            else:
                order_logits = self.unroll(h0, self.orders, y)
                if k < m:  # per-example subsets: every order is unrolled, the dropped ones get -inf
                    keep = torch.rand(b, m, device=h0.device, generator=generator).argsort(1) < k
                    logw = torch.log_softmax(self.order_logits.masked_fill(~keep, float("-inf")), 1)
                else:
                    logw = torch.log_softmax(self.order_logits, 0)
            lw = logw if logw.dim() == 2 else logw.unsqueeze(0)
            p_mix = (lw.exp().unsqueeze(-1) * torch.sigmoid(order_logits)).sum(1)
            aux = {"order_logits": order_logits, "order_log_weights": logw}
            return {"logits": torch.logit(p_mix.clamp(1e-6, 1 - 1e-6)), "probs": p_mix, "aux": aux}
        probs = self.predict_proba(h0, generator)
        return {"logits": torch.logit(probs.clamp(1e-6, 1 - 1e-6)), "probs": probs, "aux": {}}

    def predict_proba(self, h0: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """docs/AU_METHODS.md#monet-inference: mean of the per-AU probabilities over ``R * L`` sampled rollouts."""
        if self.mean_field:
            best = self.order_logits.argmax().view(1)
            return torch.sigmoid(self.unroll(h0, self.orders[best], feed="mean")).mean(1)
        pi = torch.softmax(self.order_logits.detach(), 0)
        sel = torch.multinomial(pi, self.num_sampled_orders, replacement=True, generator=generator)
        perms = self.orders[sel].repeat_interleave(self.num_rollouts, dim=0)  # [R*L, T]
        return torch.sigmoid(self.unroll(h0, perms, feed="sample", generator=generator)).mean(1)


# ==================================================================================================================
# Registry
# ==================================================================================================================
_HEADS: Dict[str, Callable[..., nn.Module]] = {}


def register_au_head(name: str, cls: Callable[..., nn.Module]) -> None:
    _HEADS[name] = cls


for _name, _cls in (("linear", LinearAUHead), ("label_token", LabelTokenHead), ("fantrans_okd", FanTransOKDHead),
                    ("monet", MonetHead)):
    register_au_head(_name, _cls)


def list_au_heads() -> list[str]:
    return sorted(_HEADS)


def build_au_head(name: str, **cfg) -> nn.Module:
    """Build an AU head by registry name: ``build_au_head("label_token", embed_dim=512, num_aus=12)``."""
    if name not in _HEADS:
        raise ValueError(f"unknown AU head {name!r}; choose from {list_au_heads()}")
    return _HEADS[name](**cfg)
