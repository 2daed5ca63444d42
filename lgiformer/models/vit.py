"""VideoMAE ViT: joint space-time attention over all tubelet tokens, on the shared Attention and Block."""
from __future__ import annotations

from typing import Any

import torch
from timm.layers import trunc_normal_
from timm.models import generate_default_cfgs, register_model
from torch import nn
from torch.utils.checkpoint import checkpoint

from lgiformer.layers import Block, PatchEmbed3d
from lgiformer.models.base import TIMM_FACTORY_KWARGS, VideoEncoder, init_weights, pretrained_cfg_for
from lgiformer.tokens import TokenLayout, sinusoid_table


class VideoViT(VideoEncoder):
    """ViT over tubelet tokens. ``forward_features(x, mask=None)`` returns [B, N, C] (no prefix tokens), raster
    order; with a mask ([B, N], True = masked) only the visible tokens, in order. ``global_pool``: "avg" (mean of
    tokens, then ``fc_norm``, as VideoMAE finetunes), or the shared "spatial", "label_token" and "" (tokens through
    ``norm``, as its pretraining encoder; see :mod:`lgiformer.models.base`)."""

    family = "vit"
    poolings = ("avg",)
    stem = r"^(?:patch_embed|pos_embed)"

    def __init__(self, img_size: int = 160, patch_size: int = 16, num_frames: int = 16, tubelet_size: int = 2,
                 in_chans: int = 3, num_classes: int = 0, embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, global_pool: str = "avg", drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0, fc_drop_rate: float = 0.0,
                 head_init_scale: float = 0.001, norm_eps: float = 1e-6, head_args: dict | None = None,
                 pretrained_cfg: Any = None) -> None:
        super().__init__()
        if global_pool in ("region", "local", "all"):
            raise ValueError(f"the ViT's global_pool must be 'avg', 'spatial', 'label_token' or '', got "
                             f"{global_pool!r} ('region', 'local' and 'all' are LGI-Former poolings)")
        self._check_pool(global_pool)
        self._record(dict(img_size=img_size, patch_size=patch_size, num_frames=num_frames, tubelet_size=tubelet_size,
                          in_chans=in_chans, num_classes=num_classes, embed_dim=embed_dim, depth=depth,
                          num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, global_pool=global_pool,
                          norm_eps=norm_eps), pretrained_cfg)
        layout = TokenLayout.for_input(num_frames, img_size, tubelet_size, patch_size)  # one region
        self.num_prefix_tokens = 0
        self.grad_checkpointing = False

        self.patch_embed = PatchEmbed3d(img_size, patch_size, num_frames, tubelet_size, in_chans, embed_dim)
        self.register_buffer("pos_embed", sinusoid_table(layout.num_tokens, embed_dim), persistent=False)
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, dpr[i], norm_eps)
            for i in range(depth))
        self._init_classifier(layout, embed_dim, num_classes, global_pool, head_args, fc_drop_rate, norm_eps)
        self.apply(init_weights)
        if isinstance(self.head, nn.Linear):
            trunc_normal_(self.head.weight, std=0.02)
        self._scale_head_init(head_init_scale)

    def forward_features(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.patch_embed(x) + self.pos_embed.to(x.dtype)
        if mask is not None:
            x = x[~mask].view(x.shape[0], -1, x.shape[-1])
        x = self.pos_drop(x)
        for blk in self.blocks:
            x = checkpoint(blk, x, use_reentrant=False) if self.grad_checkpointing and self.training else blk(x)
        return self.norm(x)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(1)


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map VideoMAE-style names onto ours: split fused ``attn.qkv.weight`` into ``attn.q`` and ``attn.kv``."""
    out = {}
    for key, value in state_dict.items():
        if key.endswith("attn.qkv.weight"):
            dim = value.shape[0] // 3
            out[key.replace("qkv.weight", "q.weight")] = value[:dim]
            out[key.replace("qkv.weight", "kv.weight")] = value[dim:]
        else:
            out[key] = value
    return out


def _create_vit(variant: str, pretrained: bool = False, **kwargs) -> VideoViT:
    for key in TIMM_FACTORY_KWARGS:
        kwargs.pop(key, None)
    if pretrained:
        raise ValueError(f"{variant}: no hub weights; convert VideoMAE weights with `python -m lgiformer.convert`")
    cfg = pretrained_cfg_for(variant, kwargs.pop("pretrained_cfg", None))
    return VideoViT(**kwargs, pretrained_cfg=cfg)


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return dict(url="", num_classes=0, input_size=(3, 16, 160, 160), mean=(0.485, 0.456, 0.406),
                std=(0.229, 0.224, 0.225), first_conv="patch_embed.proj", classifier="head", license="cc-by-nc-4.0",
                **kwargs)


default_cfgs = generate_default_cfgs({
    "vit_tiny_patch16_160": _cfg(),
    "vit_small_patch16_160": _cfg(),
    "vit_base_patch16_160": _cfg(paper_ids="VideoMAE (NeurIPS 2022)"),
})


@register_model
def vit_tiny_patch16_160(pretrained: bool = False, **kwargs) -> VideoViT:
    return _create_vit("vit_tiny_patch16_160", pretrained, **{**dict(embed_dim=192, depth=12, num_heads=3), **kwargs})


@register_model
def vit_small_patch16_160(pretrained: bool = False, **kwargs) -> VideoViT:
    return _create_vit("vit_small_patch16_160", pretrained, **{**dict(embed_dim=384, depth=12, num_heads=6), **kwargs})


@register_model
def vit_base_patch16_160(pretrained: bool = False, **kwargs) -> VideoViT:
    """VideoMAE ViT-B at the MAE-DFER input size (86 M parameters, about 81 GMAC per 16 x 160 x 160 view)."""
    return _create_vit("vit_base_patch16_160", pretrained, **{**dict(embed_dim=768, depth=12, num_heads=12), **kwargs})
