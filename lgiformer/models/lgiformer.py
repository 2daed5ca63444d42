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

import inspect
from typing import Sequence

import torch
from timm.layers import DropPath, trunc_normal_
from timm.models import register_model
from torch import nn
from torch.utils.checkpoint import checkpoint

from lgiformer.au.heads import LabelTokenHead, head_no_weight_decay
from lgiformer.layers import Attention, PatchEmbed3d, make_mlp
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


class LGIFormer(nn.Module):
    """LGI-Former video encoder with an optional classification head.

    ``forward_features(x)`` returns [B, R + N, C]: the R representative tokens, then the N local tokens in raster
    (t, h, w) order. With a boolean ``mask`` ([B, N] in region-major order, True = masked) only the visible tokens
    are encoded (pretraining) and returned in region-major order; every region must keep the same number of them.
    ``global_pool`` picks the head's input: "region" (mean of representative tokens, the paper), "local" (mean of
    local tokens), "all" (mean of all tokens), "spatial" (each spatial position's local tokens averaged over time,
    normalised, and concatenated: the head sees *where* a feature is, see :func:`head_input_size`), "label_token"
    (no pooling: the label-token cross-attention head, one query per class over the normalised local tokens, see
    :func:`build_head`; ``head_args`` sets its sizes) or "" (no pooling: tokens pass through the final ``norm``).
    """

    def __init__(self, img_size: int = 160, patch_size: int = 16, num_frames: int = 16, tubelet_size: int = 2,
                 in_chans: int = 3, num_classes: int = 0, embed_dim: int = 512, depth: int = 16, num_heads: int = 8,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, region_size: Sequence[int] = (2, 5, 10),
                 global_pool: str = "region", drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, fc_drop_rate: float = 0.0, head_init_scale: float = 0.001,
                 norm_eps: float = 1e-6, head_args: dict | None = None) -> None:
        super().__init__()
        if global_pool not in ("region", "local", "all", "spatial", "label_token", ""):
            raise ValueError("global_pool must be 'region', 'local', 'all', 'spatial', 'label_token' or '', got "
                             f"{global_pool!r}")
        self.model_args = dict(img_size=img_size, patch_size=patch_size, num_frames=num_frames,
                               tubelet_size=tubelet_size, in_chans=in_chans, num_classes=num_classes,
                               embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                               qkv_bias=qkv_bias, region_size=list(region_size), global_pool=global_pool,
                               norm_eps=norm_eps)
        self.model_name = "lgiformer"
        self.layout = TokenLayout.for_input(num_frames, img_size, tubelet_size, patch_size, region_size)
        self.grid_size = self.layout.grid
        self.num_prefix_tokens = self.layout.num_regions
        self.embed_dim = self.num_features = embed_dim
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.grad_checkpointing = False

        self.patch_embed = PatchEmbed3d(img_size, patch_size, num_frames, tubelet_size, in_chans, embed_dim)
        # Fixed sine table (not in the state dict, as in the reference), stored in region-major order.
        self.register_buffer("pos_embed", self.layout.to_region_major(
            sinusoid_table(self.layout.num_tokens, embed_dim), dim=0), persistent=False)
        self.lg_region_tokens = nn.Parameter(torch.zeros(self.layout.num_regions, embed_dim))
        # Token orders as device buffers, so the forward pass never copies an index from the host (a stream sync).
        self.register_buffer("region_major_index", self.layout.region_major_to_raster.clone(), persistent=False)
        self.register_buffer("output_index", _output_index(self.layout.num_regions, self.layout.tokens_per_region + 1,
                                                           raster=self.layout.raster_to_region_major),
                             persistent=False)
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(
            LGIBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, dpr[i], norm_eps)
            for i in range(depth))
        pooled = bool(global_pool)
        self.norm = nn.Identity() if pooled else nn.LayerNorm(embed_dim, eps=norm_eps)
        self.fc_norm = nn.LayerNorm(embed_dim, eps=norm_eps) if pooled else nn.Identity()
        self.fc_dropout = nn.Dropout(fc_drop_rate)
        self.head_hidden_size = head_input_size(global_pool, embed_dim, self.layout)
        self.head = build_head(self, global_pool, num_classes, head_args)

        trunc_normal_(self.lg_region_tokens, std=0.02)
        self.apply(_init_weights)
        if isinstance(self.head, nn.Linear):
            self.head.weight.data.mul_(head_init_scale)
            self.head.bias.data.mul_(head_init_scale)

    # ---- timm-style hooks used by the optimiser and the engine --------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"lg_region_tokens", "pos_embed"} | head_no_weight_decay(self.head, "head.")

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^(?:patch_embed|lg_region_tokens|pos_embed)", blocks=[(r"^blocks\.(\d+)", None),
                                                                             (r"^norm", (99999,))])

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

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        r = self.num_prefix_tokens
        if self.global_pool == "label_token":  # pre_logits: the normalised tokens the head attends over
            return label_token_logits(self, self.fc_norm(x), pre_logits)
        if self.global_pool == "region":
            x = x[:, :r].mean(1)
        elif self.global_pool == "local":
            x = x[:, r:].mean(1)
        elif self.global_pool == "all":
            x = x.mean(1)
        elif self.global_pool == "spatial":
            x = self.layout.time_average(x[:, r:])
        x = self.fc_norm(x)  # per position for "spatial", then flattened
        x = self.fc_dropout(x.flatten(1) if self.global_pool == "spatial" else x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


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


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def head_input_size(global_pool: str, embed_dim: int, layout: TokenLayout) -> int:
    """Width of the classifier's input (timm's ``head_hidden_size``) for a pooling.

    "spatial" keeps one ``embed_dim`` vector per spatial position (``H * W`` of them, each averaged over time), so the
    linear head learns a weight per position and feature. A mean over all tokens tells the head *what* the encoder
    saw but not *where*; on small labeled sets an encoder trained from scratch did not learn to carry the position
    in its features (docs/RESULTS.md: 10.7 -> 26.8 % test UAR on one synthetic fold). It ties the head to the input
    size, as a CNN's flattened feature map does."""
    if global_pool == "spatial":
        _, h, w = layout.grid
        return h * w * embed_dim
    return embed_dim


# The label-token head as DFER attention pooling (specs/AU_HEADS.md §9: "the same cross-attention pooling head with
# K class queries"): its §5.5 starting point for a video encoder, one query per class, token self-attention off.
LABEL_TOKEN_DEFAULTS = dict(dim=256, depth=2, num_heads=8, dropout=0.1, token_self_attn=False)
# Set by the model, not by head_args: the head classifies whole clips over this encoder's tokens.
_LABEL_TOKEN_FIXED = ("embed_dim", "num_aus", "mode", "rates", "num_keys", "parsing_classes", "parsing_lambda",
                      "parsing_assignment")


def label_token_args(head_args: dict | None) -> dict:
    """Every argument of the DFER label-token head: the defaults above, then ``head_args``. A key the head does not
    take, or one the model sets itself, is a ValueError naming it and the keys that are accepted."""
    accepted = [k for k in inspect.signature(LabelTokenHead).parameters if k not in _LABEL_TOKEN_FIXED]
    args = {**LABEL_TOKEN_DEFAULTS, **(head_args or {})}
    unknown = sorted(set(args) - set(accepted))
    if unknown:
        raise ValueError(f"head_args {unknown} are not settable arguments of the label-token head; accepted: "
                         f"{', '.join(accepted)}")
    return args


def build_head(model: nn.Module, global_pool: str, num_classes: int, head_args: dict | None = None) -> nn.Module:
    """The classifier on ``model.head_hidden_size`` features (a Linear), or for ``global_pool="label_token"`` the
    library's label-token head (:class:`lgiformer.au.heads.LabelTokenHead`): one learned query per class
    cross-attends over the local tokens and is classified by its own weight vector, so each class can look where
    its expression shows. Its resolved arguments go into ``model_args["head_args"]``, so releases rebuild it."""
    if global_pool != "label_token":
        if head_args:
            raise ValueError(f"head_args are for global_pool='label_token' (got global_pool={global_pool!r})")
        model.model_args.pop("head_args", None)
        return nn.Linear(model.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()
    args = label_token_args(head_args)
    model.model_args["head_args"] = args
    if num_classes <= 0:
        return nn.Identity()
    extra = model.num_prefix_tokens if args.get("keys") == "all" else 0
    return LabelTokenHead(model.embed_dim, num_classes, mode="clip", num_keys=model.layout.num_tokens + extra, **args)


def reset_head(model: nn.Module, num_classes: int) -> None:
    """``reset_classifier``'s new head, initialised as the constructor initialises one (both encoders)."""
    head_args = model.model_args.get("head_args") if model.global_pool == "label_token" else None
    model.head = build_head(model, model.global_pool, num_classes, head_args)
    model.head.apply(_init_weights)


def label_token_logits(model: nn.Module, tokens: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
    if pre_logits or isinstance(model.head, nn.Identity):
        return tokens
    return model.head(tokens, grid=model.layout.grid, n_special=model.num_prefix_tokens)["logits"]


# Arguments timm.create_model passes to every model function; ours take none of them.
_TIMM_FACTORY_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


def _create_lgiformer(variant: str, pretrained: bool = False, **kwargs) -> LGIFormer:
    for key in _TIMM_FACTORY_KWARGS:
        kwargs.pop(key, None)
    if pretrained:
        raise ValueError(f"{variant}: no hub weights; load a release with lgiformer.load_release(DIR) or convert "
                         "reference weights with `python -m lgiformer.convert`")
    model = LGIFormer(**kwargs)
    model.model_name = variant
    return model


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
