"""BENCHMARK ONLY: the LGI-Former block computed "the reference way", as the baseline our implementation is timed
against. Not used by training, not exported by the package.

What makes it the reference way (and what ``lgiformer.models.lgiformer.LGIBlock`` does instead):
  * attention is the explicit ``softmax(q k^T / sqrt(d)) v`` with the score matrix materialised and saved for
    backward (ours: ``F.scaled_dot_product_attention``);
  * ``q`` and ``kv`` are two separate Linear calls with ``q_bias`` / ``(0, v_bias)`` (ours: one fused GEMM for
    self-attention);
  * every region's intra-region attention and every region's local-global cross-attention runs in a Python for-loop
    over the regions, the results concatenated (ours: all B x R regions in one batched call).

Parameter and buffer names are those of ``LGIBlock`` / ``LGIFormer``, so the reference copy loads our state dict
with ``strict=True`` and computes the same function (``tests/test_benchmarks.py`` checks outputs agree to 1e-4).
The model-level code (patch embedding, region split, pooling, head) is inherited unchanged from ``LGIFormer``:
only the blocks differ.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

import lgiformer  # noqa: F401  (first: applies the torchvision import fix before timm is imported)
from lgiformer.layers import Attention
from lgiformer.models.lgiformer import LGIFormer
from timm.layers import DropPath, Mlp  # noqa: E402,I001
from torch import nn

__all__ = ["ReferenceAttention", "ReferenceLGIBlock", "ReferenceLGIFormer", "reference_lgiformer_from",
           "use_explicit_attention"]


class ReferenceAttention(nn.Module):
    """Explicit attention with separate ``q`` and ``kv`` projections; same parameters as ``lgiformer`` Attention."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = self.v_bias = None
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        b, n, c = x.shape
        kv_bias = None if self.v_bias is None else torch.cat((torch.zeros_like(self.v_bias), self.v_bias))
        q = F.linear(x, self.q.weight, self.q_bias).reshape(b, n, self.num_heads, -1).permute(0, 2, 1, 3)
        kv = F.linear(context, self.kv.weight, kv_bias)
        kv = kv.reshape(b, context.shape[1], 2, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        k, v = kv[0], kv[1]
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = self.attn_drop(attn.softmax(dim=-1))
        out = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(out))


class ReferenceLGIBlock(nn.Module):
    """Same parameters and same function as ``LGIBlock``; per-region loops and explicit attention."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True, drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: float = 0.0, norm_eps: float = 1e-6) -> None:
        super().__init__()
        attn = dict(num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop)
        self.first_attn_norm0 = nn.LayerNorm(dim, eps=norm_eps)
        self.first_attn = ReferenceAttention(dim, **attn)
        self.second_attn_norm0 = nn.LayerNorm(dim, eps=norm_eps)
        self.second_attn = ReferenceAttention(dim, **attn)
        self.third_attn_norm0 = nn.LayerNorm(dim, eps=norm_eps)
        self.third_attn_norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.third_attn = ReferenceAttention(dim, **attn)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        """s: [B, R, 1 + M, C], the representative token at index 0 of every region (the layout ``LGIBlock`` uses)."""
        num_regions = s.shape[1]
        # 1. Local intra-region attention, one region at a time.
        regions = []
        for r in range(num_regions):
            x = s[:, r]
            regions.append(x + self.drop_path(self.first_attn(self.first_attn_norm0(x))))
        rep = torch.stack([x[:, 0] for x in regions], dim=1)
        # 2. Global inter-region attention over the representative tokens.
        rep = rep + self.drop_path(self.second_attn(self.second_attn_norm0(rep)))
        # 3. Local-global cross attention, one region's local tokens at a time against all representative tokens.
        rep_normed = self.third_attn_norm1(rep)
        out = []
        for r in range(num_regions):
            local = regions[r][:, 1:]
            local = local + self.drop_path(self.third_attn(self.third_attn_norm0(local), rep_normed))
            out.append(torch.cat((rep[:, r:r + 1], local), dim=1))
        s = torch.stack(out, dim=1)
        # 4. FFN shared by all tokens.
        return s + self.drop_path(self.mlp(self.norm2(s)))


class ReferenceLGIFormer(LGIFormer):
    """``LGIFormer`` with ``ReferenceLGIBlock`` blocks; accepts exactly ``LGIFormer``'s arguments."""

    def __init__(self, *, drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 **kwargs) -> None:
        super().__init__(drop_rate=drop_rate, attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate, **kwargs)
        a = self.model_args
        dpr = torch.linspace(0, drop_path_rate, a["depth"]).tolist()
        self.blocks = nn.ModuleList(
            ReferenceLGIBlock(a["embed_dim"], a["num_heads"], a["mlp_ratio"], a["qkv_bias"], drop_rate,
                              attn_drop_rate, dpr[i], a["norm_eps"]) for i in range(a["depth"]))
        self.model_name = "reference_lgiformer"


def reference_lgiformer_from(model: LGIFormer) -> ReferenceLGIFormer:
    """A reference-mode copy of ``model``: same arguments, same weights (loaded strictly), same dropout and
    drop-path modules, same train/eval mode, grad-checkpointing flag, device and dtype."""
    if not isinstance(model, LGIFormer):
        raise TypeError(f"reference mode exists for LGIFormer only, got {type(model).__name__}")
    param = next(model.parameters())
    ref = ReferenceLGIFormer(**model.model_args)
    ref.model_name = f"{getattr(model, 'model_name', 'lgiformer')}[reference]"
    ref.global_pool = model.global_pool
    ref.pos_drop, ref.fc_dropout = copy.deepcopy(model.pos_drop), copy.deepcopy(model.fc_dropout)
    for ours, theirs in zip(model.blocks, ref.blocks):
        theirs.drop_path = copy.deepcopy(ours.drop_path)
        for name in ("first_attn", "second_attn", "third_attn"):
            src, dst = getattr(ours, name), getattr(theirs, name)
            dst.attn_drop.p = src.attn_drop
            dst.proj_drop = copy.deepcopy(src.proj_drop)
        theirs.mlp = copy.deepcopy(ours.mlp)
    ref.to(device=param.device, dtype=param.dtype)
    ref.load_state_dict(model.state_dict(), strict=True)
    ref.set_grad_checkpointing(model.grad_checkpointing)
    return ref.train(model.training)


def use_explicit_attention(module: nn.Module) -> nn.Module:
    """Switch every shared ``Attention`` inside ``module`` (e.g. the MAE decoder) to the explicit path."""
    for m in module.modules():
        if isinstance(m, Attention):
            m.fused_attn = False
    return module
