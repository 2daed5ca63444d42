"""LGI-Former (Local-Global Interaction transformer), the encoder of MAE-DFER.

The token grid is split into regions (default 2 x 5 x 10 tokens). Every region has one learnable representative
token. Each block runs, pre-norm with residual and DropPath:
  1. local intra-region self-attention over [representative token, local tokens] of every region,
  2. global inter-region self-attention over the representative tokens,
  3. local-global cross-attention: every local token queries all representative tokens,
  4. one FFN shared by all tokens.
All regions of all clips go through each attention step as one batched call. Between blocks the state is one
tensor [B, R, 1 + M, C] (the representative token first in every region), and it is never split and re-joined:
step 3 runs its queries over the whole state (the R representative slots are 1 % extra queries whose answers are
overwritten by step 2's result in place), so no block copies the state to separate or merge the two kinds of token.
State-dict names follow the reference implementation, so its checkpoints load one-to-one.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from timm.layers import DropPath, trunc_normal_
from timm.models import generate_default_cfgs, register_model
from torch import nn
from torch.utils.checkpoint import checkpoint

from lgiformer.layers import Attention, PatchEmbed3d, make_mlp
from lgiformer.models.base import TIMM_FACTORY_KWARGS, VideoEncoder, init_weights, pretrained_cfg_for
from lgiformer.tokens import TokenLayout, sinusoid_table


class LGIBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True, drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: float = 0.0, norm_eps: float = 1e-6) -> None:
        super().__init__()
        attn = dict(num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop)
        self.first_attn_norm0 = nn.LayerNorm(dim, eps=norm_eps)
        self.first_attn = Attention(dim, **attn)
        self.second_attn_norm0 = nn.LayerNorm(dim, eps=norm_eps)
        self.second_attn = Attention(dim, **attn)
        self.third_attn_norm0 = nn.LayerNorm(dim, eps=norm_eps)
        self.third_attn_norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.third_attn = Attention(dim, **attn)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = make_mlp(dim, mlp_ratio, drop)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        """s: [B, R, 1 + M, C], the representative token at index 0 of every region."""
        b, r, n, c = s.shape
        # 1. Local: all B * R regions in one attention call.
        s = s + self.drop_path(self.first_attn(self.first_attn_norm0(s).view(b * r, n, c)).view(b, r, n, c))
        # 2. Global: representative tokens attend to each other (a strided view: R tokens per clip, no copy).
        rep = s[:, :, 0]
        rep = rep + self.drop_path(self.second_attn(self.second_attn_norm0(rep)))
        # 3. Local-global: every token of the clip queries all representative tokens. The representative slots'
        #    own answers are discarded: their residual is step 2's, written over them in place.
        cross = self.third_attn(self.third_attn_norm0(s).view(b, r * n, c), self.third_attn_norm1(rep))
        s = s + self.drop_path(cross.view(b, r, n, c))
        s[:, :, 0] = rep
        # 4. Shared FFN.
        return s + self.drop_path(self.mlp(self.norm2(s).view(-1, c)).view(b, r, n, c))


class LGIFormer(VideoEncoder):
    """LGI-Former video encoder with an optional classification head.

    ``forward_features(x)`` returns [B, R + N, C]: the R representative tokens, then the N local tokens in raster
    (t, h, w) order. With a boolean ``mask`` ([B, N] in region-major order, True = masked) only the visible tokens
    are encoded (pretraining) and returned in region-major order; every region must keep the same number of them.
    ``global_pool`` picks the head's input: "region" (mean of representative tokens, the paper), "local" (mean of
    local tokens), "all" (mean of all tokens), or the shared "spatial", "label_token" and "" (see
    :mod:`lgiformer.models.base`).
    """

    family = "lgiformer"
    poolings = ("region", "local", "all")
    region_tokens = ("lg_region_tokens",)
    no_decay = region_tokens
    stem = r"^(?:patch_embed|lg_region_tokens|pos_embed)"

    def __init__(self, img_size: int = 160, patch_size: int = 16, num_frames: int = 16, tubelet_size: int = 2,
                 in_chans: int = 3, num_classes: int = 0, embed_dim: int = 512, depth: int = 16, num_heads: int = 8,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, region_size: Sequence[int] = (2, 5, 10),
                 global_pool: str = "region", drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, fc_drop_rate: float = 0.0, head_init_scale: float = 0.001,
                 norm_eps: float = 1e-6, head_args: dict | None = None, pretrained_cfg: Any = None) -> None:
        super().__init__()
        self._check_pool(global_pool)
        self._record(dict(img_size=img_size, patch_size=patch_size, num_frames=num_frames, tubelet_size=tubelet_size,
                          in_chans=in_chans, num_classes=num_classes, embed_dim=embed_dim, depth=depth,
                          num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, region_size=list(region_size),
                          global_pool=global_pool, norm_eps=norm_eps), pretrained_cfg)
        layout = TokenLayout.for_input(num_frames, img_size, tubelet_size, patch_size, region_size)
        self.num_prefix_tokens = layout.num_regions
        self.grad_checkpointing = False

        self.patch_embed = PatchEmbed3d(img_size, patch_size, num_frames, tubelet_size, in_chans, embed_dim)
        # Fixed sine table (not in the state dict, as in the reference), stored in region-major order.
        self.register_buffer("pos_embed", layout.to_region_major(
            sinusoid_table(layout.num_tokens, embed_dim), dim=0), persistent=False)
        self.lg_region_tokens = nn.Parameter(torch.zeros(layout.num_regions, embed_dim))
        # Token orders as device buffers, so the forward pass never copies an index from the host (a stream sync).
        self.register_buffer("region_major_index", layout.region_major_to_raster.clone(), persistent=False)
        self.register_buffer("output_index", _output_index(layout.num_regions, layout.tokens_per_region + 1,
                                                           raster=layout.raster_to_region_major), persistent=False)
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(
            LGIBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, dpr[i], norm_eps)
            for i in range(depth))
        self._init_classifier(layout, embed_dim, num_classes, global_pool, head_args, fc_drop_rate, norm_eps)

        trunc_normal_(self.lg_region_tokens, std=0.02)
        self.apply(init_weights)
        self._scale_head_init(head_init_scale)

    # ---- forward ----------------------------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.patch_embed(x).index_select(1, self.region_major_index) + self.pos_embed.to(x.dtype)
        b, n, c = x.shape
        if mask is not None:
            visible = ~mask
            per_region = visible.view(b, self.layout.num_regions, -1).sum(-1)
            balanced = (per_region == per_region[0, 0]).all()
            x = x[visible]  # waits for the device once; the check below then reads an already computed flag
            if not bool(balanced):
                raise ValueError("LGI-Former needs the same number of visible tokens in every region of every clip; "
                                 "use mask_type='region_balanced'")
            x = x.view(b, -1, c)
        x = self.layout.split_regions(self.pos_drop(x))
        s = torch.cat((self.lg_region_tokens.expand(b, -1, -1).unsqueeze(2), x), dim=2)
        for blk in self.blocks:
            s = checkpoint(blk, s, use_reentrant=False) if self.grad_checkpointing and self.training else blk(s)
        # [representative tokens, local tokens] in one gather: raster order for all tokens, region-major for visible.
        order = self.output_index if mask is None else _output_index(s.shape[1], s.shape[2], s.device)
        return self.norm(s.flatten(1, 2).index_select(1, order))

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        r = self.num_prefix_tokens
        if self.global_pool == "region":
            return x[:, :r].mean(1)
        return x[:, r:].mean(1) if self.global_pool == "local" else x.mean(1)


def _output_index(num_regions: int, region_len: int, device: torch.device | str = "cpu",
                  raster: torch.Tensor | None = None) -> torch.Tensor:
    """Where ``forward_features``' outputs sit in the flattened state [B, R * (1 + M), C]: the R representative
    tokens, then the local tokens region-major (``raster``: reordered by this region-major-position-per-raster-index
    table)."""
    slots = torch.arange(num_regions * region_len, device=device).view(num_regions, region_len)
    local = slots[:, 1:].flatten()
    if raster is not None:
        local = local[raster.to(device)]
    return torch.cat((slots[:, 0], local))


def _create_lgiformer(variant: str, pretrained: bool = False, **kwargs) -> LGIFormer:
    for key in TIMM_FACTORY_KWARGS:
        kwargs.pop(key, None)
    if pretrained:
        raise ValueError(f"{variant}: no hub weights; load a release with lgiformer.load_release(DIR) or convert "
                         "reference weights with `python -m lgiformer.convert`")
    cfg = pretrained_cfg_for(variant, kwargs.pop("pretrained_cfg", None))
    return LGIFormer(**kwargs, pretrained_cfg=cfg)


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return dict(url="", num_classes=0, input_size=(3, 16, 160, 160), mean=(0.485, 0.456, 0.406),
                std=(0.229, 0.224, 0.225), first_conv="patch_embed.proj", classifier="head", license="mit", **kwargs)


default_cfgs = generate_default_cfgs({
    "lgiformer_tiny_patch16_160": _cfg(),
    "lgiformer_small_patch16_160": _cfg(),
    "lgiformer_base_patch16_160": _cfg(paper_ids="MAE-DFER (ACM MM 2023)"),
    "lgiformer_large_patch16_160": _cfg(),
})


@register_model
def lgiformer_tiny_patch16_160(pretrained: bool = False, **kwargs) -> LGIFormer:
    """CPU-sized: 192 wide, 12 deep, 3 heads."""
    args = dict(embed_dim=192, depth=12, num_heads=3, region_size=(2, 5, 10))
    return _create_lgiformer("lgiformer_tiny_patch16_160", pretrained, **{**args, **kwargs})


@register_model
def lgiformer_small_patch16_160(pretrained: bool = False, **kwargs) -> LGIFormer:
    """384 wide, 12 deep, 6 heads."""
    args = dict(embed_dim=384, depth=12, num_heads=6, region_size=(2, 5, 10))
    return _create_lgiformer("lgiformer_small_patch16_160", pretrained, **{**args, **kwargs})


@register_model
def lgiformer_base_patch16_160(pretrained: bool = False, **kwargs) -> LGIFormer:
    """The paper's encoder: 512 wide, 16 deep, 8 heads, regions 2 x 5 x 10 (84.9 M parameters with 7 classes)."""
    args = dict(embed_dim=512, depth=16, num_heads=8, region_size=(2, 5, 10))
    return _create_lgiformer("lgiformer_base_patch16_160", pretrained, **{**args, **kwargs})


@register_model
def lgiformer_large_patch16_160(pretrained: bool = False, **kwargs) -> LGIFormer:
    """1024 wide, 24 deep, 16 heads."""
    args = dict(embed_dim=1024, depth=24, num_heads=16, region_size=(2, 5, 10))
    return _create_lgiformer("lgiformer_large_patch16_160", pretrained, **{**args, **kwargs})
