"""The label-token head (docs/AU_METHODS.md#label-token-head): one learned query per label cross-attends over the
encoder tokens, with an optional face-parsing attention bias (docs/AU_METHODS.md#parsing-bias). The AU heads use it
per AU; the DFER classifier uses it per expression class."""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import torch
from timm.layers import Mlp, trunc_normal_
from torch import nn

from lgiformer.au.weights import prior_bias
from lgiformer.heads.common import (check_grid, check_mode, keys_from_grid, sincos_2d,
                                    unflatten_lead)

Tensor = torch.Tensor


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
        x, lead = keys_from_grid(tokens, grid, n_special, self.mode, self.keys)
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
        return {"logits": unflatten_lead(logits, lead), "aux": {}, "attn": maps[-1], "attn_all": attn_all}
