"""Patch embedding and the plain pre-norm transformer block (VideoMAE ViT and the MAE decoder)."""
from __future__ import annotations

import torch
from timm.layers import DropPath, Mlp
from torch import nn

from lgiformer.layers.attention import Attention


class PatchEmbed3d(nn.Module):
    """Clip [B, 3, T, H, W] -> tubelet tokens [B, N, C] in raster (t, h, w) order."""

    def __init__(self, img_size: int = 160, patch_size: int = 16, num_frames: int = 16, tubelet_size: int = 2,
                 in_chans: int = 3, embed_dim: int = 768) -> None:
        super().__init__()
        self.input_shape = (in_chans, num_frames, img_size, img_size)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=(tubelet_size, patch_size, patch_size),
                              stride=(tubelet_size, patch_size, patch_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"expected clips of shape [B, {', '.join(map(str, self.input_shape))}] (B, C, T, H, W), "
                             f"got {list(x.shape)}")
        return self.proj(x).flatten(2).transpose(1, 2)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0, norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = make_mlp(dim, mlp_ratio, drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def make_mlp(dim: int, mlp_ratio: float = 4.0, drop: float = 0.0) -> Mlp:
    """timm's GELU ``Mlp`` (state-dict names ``fc1``, ``fc2``), without its Dropout calls when the rate is zero: a
    zero-rate Dropout is still one operator per call in training."""
    mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)
    if drop == 0:
        mlp.drop1 = mlp.drop2 = nn.Identity()
    return mlp
