"""Multi-head attention (self and cross) on ``F.scaled_dot_product_attention``.

Parameterised as the reference models are, so their checkpoints map one-to-one: a ``q`` Linear and a ``kv`` Linear
without Linear biases, a learned ``q_bias`` and ``v_bias``, and the key bias fixed at zero. A VideoMAE ``qkv`` weight
is split into ``q`` and ``kv`` at load time (see ``lgiformer.models.vit.checkpoint_filter_fn``); self-attention runs
the two projections as one fused GEMM.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

_FUSED_ATTN = os.environ.get("LGIFORMER_FUSED_ATTN", "1") != "0"


def use_fused_attn() -> bool:
    """SDPA by default; ``LGIFORMER_FUSED_ATTN=0`` selects the explicit path (for checks and benchmarks)."""
    return _FUSED_ATTN


class Attention(nn.Module):
    """Multi-head attention. ``forward(x)`` is self-attention; ``forward(x, context)`` lets x attend to context."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, head_dim: int | None = None, context_dim: int | None = None) -> None:
        super().__init__()
        if head_dim is None and dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = head_dim or dim // num_heads
        inner = self.head_dim * num_heads
        self.scale = self.head_dim ** -0.5
        self.q = nn.Linear(dim, inner, bias=False)
        self.kv = nn.Linear(context_dim or dim, 2 * inner, bias=False)
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(inner))
            self.v_bias = nn.Parameter(torch.zeros(inner))
        else:
            self.q_bias = self.v_bias = None
        self.attn_drop = attn_drop
        self.proj = nn.Linear(inner, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.fused_attn = use_fused_attn()

    def _biases(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if self.q_bias is None:
            return None, None
        return self.q_bias, torch.cat((torch.zeros_like(self.v_bias), self.v_bias))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        q_bias, kv_bias = self._biases()
        if context is None:
            # Self-attention: one GEMM for q, k and v.
            bias = None if q_bias is None else torch.cat((q_bias, kv_bias))
            qkv = F.linear(x, torch.cat((self.q.weight, self.kv.weight)), bias)
            q, k, v = qkv.unflatten(-1, (3, self.num_heads, self.head_dim)).movedim(-3, 0).transpose(-3, -2)
        else:
            q = F.linear(x, self.q.weight, q_bias).unflatten(-1, (self.num_heads, self.head_dim)).transpose(-3, -2)
            kv = F.linear(context, self.kv.weight, kv_bias)
            k, v = kv.unflatten(-1, (2, self.num_heads, self.head_dim)).movedim(-3, 0).transpose(-3, -2)
        drop = self.attn_drop if self.training else 0.0
        if self.fused_attn:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            attn = F.dropout(attn.softmax(dim=-1), drop)
            out = attn @ v
        out = out.transpose(-3, -2).flatten(-2)
        return self.proj_drop(self.proj(out))
