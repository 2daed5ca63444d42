"""VideoMAE ViT: joint space-time attention over all tubelet tokens, on the shared Attention and Block."""
from __future__ import annotations

import torch
from timm.layers import trunc_normal_
from timm.models import register_model
from torch import nn
from torch.utils.checkpoint import checkpoint

from lgiformer.layers import Block, PatchEmbed3d
from lgiformer.au.heads import head_no_weight_decay
from lgiformer.models.lgiformer import (_TIMM_FACTORY_KWARGS, _init_weights, build_head, head_input_size,
                                        label_token_logits, reset_head)
from lgiformer.tokens import TokenLayout, sinusoid_table


class VideoViT(nn.Module):
    """ViT over tubelet tokens. ``forward_features(x, mask=None)`` returns [B, N, C] (no prefix tokens), raster
    order; with a mask ([B, N], True = masked) only the visible tokens, in order. ``global_pool``: "avg" (mean of
    tokens, then ``fc_norm``, as VideoMAE finetunes), "spatial" (per position, see :func:`head_input_size`),
    "label_token" (the label-token head over the normalised tokens, see
    :func:`lgiformer.models.lgiformer.build_head`) or "" (tokens through ``norm``, as its pretraining encoder)."""

    def __init__(self, img_size: int = 160, patch_size: int = 16, num_frames: int = 16, tubelet_size: int = 2,
                 in_chans: int = 3, num_classes: int = 0, embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, global_pool: str = "avg", drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0, fc_drop_rate: float = 0.0,
                 head_init_scale: float = 0.001, norm_eps: float = 1e-6, head_args: dict | None = None) -> None:
        super().__init__()
        if global_pool not in ("avg", "spatial", "label_token", ""):
            lgi_pool = global_pool in ("region", "local", "all")
            hint = " ('region', 'local' and 'all' are LGI-Former poolings)" if lgi_pool else ""
            raise ValueError(f"the ViT's global_pool must be 'avg', 'spatial', 'label_token' or '', got "
                             f"{global_pool!r}{hint}")
        self.model_args = dict(img_size=img_size, patch_size=patch_size, num_frames=num_frames,
                               tubelet_size=tubelet_size, in_chans=in_chans, num_classes=num_classes,
                               embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                               qkv_bias=qkv_bias, global_pool=global_pool, norm_eps=norm_eps)
        self.model_name = "vit"
        self.layout = TokenLayout.for_input(num_frames, img_size, tubelet_size, patch_size)  # one region
        self.grid_size = self.layout.grid
        self.num_prefix_tokens = 0
        self.embed_dim = self.num_features = embed_dim
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.grad_checkpointing = False

        self.patch_embed = PatchEmbed3d(img_size, patch_size, num_frames, tubelet_size, in_chans, embed_dim)
        self.register_buffer("pos_embed", sinusoid_table(self.layout.num_tokens, embed_dim), persistent=False)
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, dpr[i], norm_eps)
            for i in range(depth))
        pooled = bool(global_pool)
        self.norm = nn.Identity() if pooled else nn.LayerNorm(embed_dim, eps=norm_eps)
        self.fc_norm = nn.LayerNorm(embed_dim, eps=norm_eps) if pooled else nn.Identity()
        self.fc_dropout = nn.Dropout(fc_drop_rate)
        self.head_hidden_size = head_input_size(global_pool, embed_dim, self.layout)
        self.head = build_head(self, global_pool, num_classes, head_args)
        self.apply(_init_weights)
        if isinstance(self.head, nn.Linear):
            trunc_normal_(self.head.weight, std=0.02)
            self.head.weight.data.mul_(head_init_scale)
            self.head.bias.data.mul_(head_init_scale)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"} | head_no_weight_decay(self.head, "head.")

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^(?:patch_embed|pos_embed)", blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None and global_pool != self.global_pool:
            if bool(global_pool) != bool(self.global_pool):
                raise ValueError("reset_classifier cannot switch between pooled and unpooled outputs")
            self.global_pool = self.model_args["global_pool"] = global_pool
            self.head_hidden_size = head_input_size(global_pool, self.embed_dim, self.layout)
        self.num_classes = num_classes
        self.model_args["num_classes"] = num_classes
        reset_head(self, num_classes)

    def forward_features(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.patch_embed(x) + self.pos_embed.to(x.dtype)
        if mask is not None:
            x = x[~mask].view(x.shape[0], -1, x.shape[-1])
        x = self.pos_drop(x)
        for blk in self.blocks:
            x = checkpoint(blk, x, use_reentrant=False) if self.grad_checkpointing and self.training else blk(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "label_token":  # pre_logits: the normalised tokens the head attends over
            return label_token_logits(self, self.fc_norm(x), pre_logits)
        if self.global_pool == "avg":
            x = x.mean(1)
        elif self.global_pool == "spatial":
            x = self.layout.time_average(x)
        x = self.fc_norm(x)  # per position for "spatial", then flattened
        x = self.fc_dropout(x.flatten(1) if self.global_pool == "spatial" else x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


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
    for key in _TIMM_FACTORY_KWARGS:
        kwargs.pop(key, None)
    if pretrained:
        raise ValueError(f"{variant}: no hub weights; convert VideoMAE weights with `python -m lgiformer.convert`")
    model = VideoViT(**kwargs)
    model.model_name = variant
    return model


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
