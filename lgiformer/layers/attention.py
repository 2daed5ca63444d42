"""Multi-head attention (self and cross) on ``F.scaled_dot_product_attention``.

Parameterised as the reference models are, so their checkpoints map one-to-one: a ``q`` Linear and a ``kv`` Linear
without Linear biases, a learned ``q_bias`` and ``v_bias``, and the key bias fixed at zero. A VideoMAE ``qkv`` weight
is split into ``q`` and ``kv`` at load time (see ``lgiformer.models.vit.checkpoint_filter_fn``).

Self-attention runs the three projections as one GEMM on ``cat(q.weight, kv.weight)``: one weight-sized copy per call
(3 C^2 values, about 0.1 ms on a CPU core at C = 512, next to about 1 s for an LGI block's forward and backward at
batch 2; docs/PERFORMANCE.md), while the parameters and the state dict keep the reference's names. The zero key bias
is a non-persistent buffer, so the fused bias is one ``cat`` and the state dict is unchanged. q, k and v
are strided views of the projection ([B, N, 3, H, d] read as three [B, H, N, d]): SDPA takes them as they are and
returns its output in [B, N, H, d] memory order, so no copy is made on either side of the attention, forward or
backward.
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
            self.register_buffer("k_bias", torch.zeros(inner), persistent=False)  # fixed at zero, not saved
        else:
            self.q_bias = self.v_bias = self.k_bias = None
        self.attn_drop = attn_drop
        self.proj = nn.Linear(inner, dim)
        self.proj_drop = nn.Dropout(proj_drop) if proj_drop > 0 else nn.Identity()
        self.fused_attn = use_fused_attn()

    def _biases(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(q bias, kv bias): the kv bias is [0, v_bias]."""
        if self.q_bias is None:
            return None, None
        return self.q_bias, torch.cat((self.k_bias, self.v_bias))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        h, d = self.num_heads, self.head_dim
        lead = x.shape[:-1]
        # The GEMMs run on [tokens, channels] views: a 2-D linear has no reshapes to record or undo.
        if context is None:
            # Self-attention: one GEMM for q, k and v.
            bias = None if self.q_bias is None else torch.cat((self.q_bias, self.k_bias, self.v_bias))
            qkv = F.linear(x.reshape(-1, x.shape[-1]), torch.cat((self.q.weight, self.kv.weight)), bias)
            q, k, v = _split_heads(qkv.view(*lead, -1), 3, h, d)
        else:
            q_bias, kv_bias = self._biases()
            q = F.linear(x.reshape(-1, x.shape[-1]), self.q.weight, q_bias).view(*lead, h, d).transpose(-3, -2)
            kv = F.linear(context.reshape(-1, context.shape[-1]), self.kv.weight, kv_bias)
            k, v = _split_heads(kv.view(*context.shape[:-1], -1), 2, h, d)
        drop = self.attn_drop if self.training else 0.0
        if self.fused_attn:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            attn = F.dropout(attn.softmax(dim=-1), drop)
            out = attn @ v
        out = self.proj(out.transpose(-3, -2).reshape(-1, h * d))
        return self.proj_drop(out.view(*lead, -1))


def _split_heads(x: torch.Tensor, parts: int, num_heads: int, head_dim: int) -> tuple[torch.Tensor, ...]:
    """[..., N, parts * H * d] -> ``parts`` strided views [..., H, N, d]. Unbinding the ``parts`` axis in place (not
    after moving it to the front) lets backward stack the gradients straight into the projection's layout, with no
    further copy."""
    return tuple(t.transpose(-3, -2) for t in x.view(*x.shape[:-1], parts, num_heads, head_dim).unbind(-3))
