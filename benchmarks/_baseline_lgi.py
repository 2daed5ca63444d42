"""BENCHMARK ONLY: a frozen copy of the LGI-Former block and attention as they were before the lean-block change
(``lgiformer`` at commit 9ba085e), the "today" side of ``benchmarks/throughput.py --compare ... impl=baseline`` and
of the equivalence tests (``tests/test_lean_block.py``). Not used by training, not exported by the package.

What the lean block (``lgiformer.models.lgiformer.LGIBlock``) no longer does, and this copy still does:
  * split the state into ``rep = s[:, :, 0]`` and ``local = s[:, :, 1:]`` after the local attention, and re-join them
    with ``torch.cat((rep.unsqueeze(2), local), dim=2)`` before the FFN: full-tensor copies every block (the
    LayerNorm of the strided ``local`` slice makes one more);
  * build the key bias as ``cat(zeros_like(v_bias), v_bias)`` and then ``cat`` it with ``q_bias`` on every call;
  * run the cross-attention over the 8 representative tokens through SDPA's generic path;
  * split the final state into representative and local tokens with two more copies (``forward_features``).

Parameter names are ``LGIBlock``'s, so this copy loads the lean model's state dict with ``strict=True``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import lgiformer  # noqa: F401  (first: applies the torchvision import fix before timm is imported)
from lgiformer.models.lgiformer import LGIFormer
from timm.layers import DropPath, Mlp  # noqa: E402,I001
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["BaselineAttention", "BaselineLGIBlock", "BaselineLGIFormer", "baseline_lgiformer_from"]


class BaselineAttention(nn.Module):
    """``lgiformer.layers.Attention`` as of 9ba085e (SDPA path only)."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = self.v_bias = None
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _biases(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if self.q_bias is None:
            return None, None
        return self.q_bias, torch.cat((torch.zeros_like(self.v_bias), self.v_bias))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        q_bias, kv_bias = self._biases()
        if context is None:
            bias = None if q_bias is None else torch.cat((q_bias, kv_bias))
            qkv = F.linear(x, torch.cat((self.q.weight, self.kv.weight)), bias)
            q, k, v = qkv.unflatten(-1, (3, self.num_heads, self.head_dim)).movedim(-3, 0).transpose(-3, -2)
        else:
            q = F.linear(x, self.q.weight, q_bias).unflatten(-1, (self.num_heads, self.head_dim)).transpose(-3, -2)
            kv = F.linear(context, self.kv.weight, kv_bias)
            k, v = kv.unflatten(-1, (2, self.num_heads, self.head_dim)).movedim(-3, 0).transpose(-3, -2)
        drop = self.attn_drop if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        out = out.transpose(-3, -2).flatten(-2)
        return self.proj_drop(self.proj(out))


class BaselineLGIBlock(nn.Module):
    """``lgiformer.models.lgiformer.LGIBlock`` as of 9ba085e."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True, drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: float = 0.0, norm_eps: float = 1e-6) -> None:
        super().__init__()
        attn = dict(num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop)
        self.first_attn_norm0 = nn.LayerNorm(dim, eps=norm_eps)
        self.first_attn = BaselineAttention(dim, **attn)
        self.second_attn_norm0 = nn.LayerNorm(dim, eps=norm_eps)
        self.second_attn = BaselineAttention(dim, **attn)
        self.third_attn_norm0 = nn.LayerNorm(dim, eps=norm_eps)
        self.third_attn_norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.third_attn = BaselineAttention(dim, **attn)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        """s: [B, R, 1 + M, C], the representative token at index 0 of every region."""
        b, r, n, c = s.shape
        s = s + self.drop_path(self.first_attn(self.first_attn_norm0(s).view(b * r, n, c)).view(b, r, n, c))
        rep, local = s[:, :, 0], s[:, :, 1:]
        rep = rep + self.drop_path(self.second_attn(self.second_attn_norm0(rep)))
        cross = self.third_attn(self.third_attn_norm0(local).reshape(b, r * (n - 1), c), self.third_attn_norm1(rep))
        local = local + self.drop_path(cross.view(b, r, n - 1, c))
        s = torch.cat((rep.unsqueeze(2), local), dim=2)
        return s + self.drop_path(self.mlp(self.norm2(s)))


class BaselineLGIFormer(LGIFormer):
    """``LGIFormer`` with ``BaselineLGIBlock`` blocks and the 9ba085e ``forward_features``."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        a = self.model_args
        drop_path_rate = kwargs.get("drop_path_rate", 0.0)
        dpr = torch.linspace(0, drop_path_rate, a["depth"]).tolist()
        self.blocks = nn.ModuleList(
            BaselineLGIBlock(a["embed_dim"], a["num_heads"], a["mlp_ratio"], a["qkv_bias"], kwargs.get("drop_rate", 0.0),
                             kwargs.get("attn_drop_rate", 0.0), dpr[i], a["norm_eps"]) for i in range(a["depth"]))
        self.model_name = "baseline_lgiformer"

    def forward_features(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.layout.to_region_major(self.patch_embed(x)) + self.pos_embed.to(x.dtype)
        b, n, c = x.shape
        if mask is not None:
            visible = ~mask
            per_region = visible.view(b, self.layout.num_regions, -1).sum(-1)
            if not bool((per_region == per_region[0, 0]).all()):
                raise ValueError("LGI-Former needs the same number of visible tokens in every region of every clip; "
                                 "use mask_type='region_balanced'")
            x = x[visible].view(b, -1, c)
        x = self.layout.split_regions(self.pos_drop(x))
        s = torch.cat((self.lg_region_tokens.expand(b, -1, -1).unsqueeze(2), x), dim=2)
        for blk in self.blocks:
            s = checkpoint(blk, s, use_reentrant=False) if self.grad_checkpointing and self.training else blk(s)
        rep, local = s[:, :, 0], s[:, :, 1:].flatten(1, 2)
        if mask is None:
            local = self.layout.to_raster(local)
        return self.norm(torch.cat((rep, local), dim=1))


def baseline_lgiformer_from(model: LGIFormer) -> BaselineLGIFormer:
    """A baseline copy of ``model``: same arguments, same weights (loaded strictly), same train/eval mode, device,
    dtype and grad-checkpointing flag. Dropout rates are not copied (the comparisons run without dropout)."""
    if not isinstance(model, LGIFormer):
        raise TypeError(f"the baseline exists for LGIFormer only, got {type(model).__name__}")
    param = next(model.parameters())
    base = BaselineLGIFormer(**model.model_args)
    base.model_name = f"{getattr(model, 'model_name', 'lgiformer')}[baseline]"
    base.to(device=param.device, dtype=param.dtype)
    base.load_state_dict(model.state_dict(), strict=True)
    base.set_grad_checkpointing(model.grad_checkpointing)
    return base.train(model.training)
