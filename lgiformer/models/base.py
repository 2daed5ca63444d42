"""What both encoder families (LGI-Former, VideoMAE ViT) share: the classifier on top of the tokens (pooling,
``fc_norm``, the head), the timm hooks the optimiser and the engine use (``no_weight_decay``, ``group_matcher``,
``set_grad_checkpointing``, ``get_classifier``, ``reset_classifier``, ``forward_head``), weight init, and the
record of what was built (``model_name``, ``model_args``, ``pretrained_cfg``), set by the constructor.

Poolings for the classifier (``global_pool``): each family's means (LGI-Former "region", "local", "all"; ViT
"avg"), "spatial" (every spatial position's local tokens averaged over time and normalised, then concatenated: the
head sees *where* a feature is; docs/RESULTS.md), "label_token" (no pooling: one learned query per class
cross-attends over the normalised local tokens, :class:`lgiformer.heads.LabelTokenHead`, sized by ``head_args``)
or "" (no head: the tokens pass through the final ``norm``, as in pretraining).
"""
from __future__ import annotations

import inspect
from typing import Any, ClassVar

import torch
from timm.layers import trunc_normal_
from timm.models import get_pretrained_cfg
from torch import nn

from lgiformer.heads import LabelTokenHead, head_no_weight_decay
from lgiformer.tokens import TokenLayout

# The label-token head as DFER attention pooling (docs/AU_METHODS.md#label-token-head, "the same cross-attention
# pooling head with K class queries"): its starting point for a video encoder, one query per class, token
# self-attention off.
LABEL_TOKEN_DEFAULTS = dict(dim=256, depth=2, num_heads=8, dropout=0.1, token_self_attn=False)
# Set by the model, not by head_args: the head classifies whole clips over this encoder's tokens.
_LABEL_TOKEN_FIXED = ("embed_dim", "num_aus", "mode", "rates", "num_keys", "parsing_classes", "parsing_lambda",
                      "parsing_assignment")
# Arguments timm.create_model passes to every model function that describe where weights come from; ours have none.
TIMM_FACTORY_KWARGS = ("pretrained_cfg_overlay", "cache_dir")


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


def init_weights(m: nn.Module) -> None:
    """trunc_normal(0.02) Linear weights, zero biases, unit LayerNorms (timm / VideoMAE finetuning init)."""
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def pretrained_cfg_for(variant: str | None, pretrained_cfg: Any = None) -> dict[str, Any]:
    """The timm pretrained cfg of a registered variant (input size, mean / std, first conv, classifier) as a dict,
    or a bare one for a model built directly from its class."""
    if isinstance(pretrained_cfg, dict):
        return dict(pretrained_cfg)
    cfg = get_pretrained_cfg(variant) if variant else None
    return cfg.to_dict() if cfg is not None else dict(architecture=variant)


class VideoEncoder(nn.Module):
    """Base of the encoders. A subclass builds its trunk, then calls :meth:`_init_classifier`; it defines
    ``_pool(tokens)`` for its own poolings, ``forward_features`` and the class attributes below."""

    family: ClassVar[str] = ""
    poolings: ClassVar[tuple[str, ...]] = ()      # its own mean poolings
    no_decay: ClassVar[tuple[str, ...]] = ()      # parameters without weight decay (besides 1-D ones)
    region_tokens: ClassVar[tuple[str, ...]] = ()  # learned representative tokens (docs/REFERENCE.md#defect-2)
    stem: ClassVar[str] = ""                      # group_matcher regex of what comes before the blocks

    def _record(self, model_args: dict[str, Any], pretrained_cfg: Any) -> None:
        """What was built, for releases and timm: ``model_args`` rebuild the model with its constructor."""
        self.pretrained_cfg = self.default_cfg = pretrained_cfg_for(None, pretrained_cfg)
        self.model_name = self.pretrained_cfg.get("architecture") or self.family
        self.model_args = model_args

    def _check_pool(self, global_pool: str) -> None:
        allowed = (*self.poolings, "spatial", "label_token", "")
        if global_pool not in allowed:
            raise ValueError(f"the {self.family} encoder's global_pool must be one of {allowed}, got {global_pool!r}")

    def _init_classifier(self, layout: TokenLayout, embed_dim: int, num_classes: int, global_pool: str,
                         head_args: dict | None, fc_drop_rate: float, norm_eps: float) -> None:
        pooled = bool(global_pool)
        self.layout, self.grid_size = layout, layout.grid
        self.embed_dim = self.num_features = embed_dim
        self.num_classes, self.global_pool = num_classes, global_pool
        self.norm = nn.Identity() if pooled else nn.LayerNorm(embed_dim, eps=norm_eps)
        self.fc_norm = nn.LayerNorm(embed_dim, eps=norm_eps) if pooled else nn.Identity()
        self.fc_dropout = nn.Dropout(fc_drop_rate)
        self.head_hidden_size = self._head_input_size()
        self.head = self._build_head(num_classes, head_args)

    def _head_input_size(self) -> int:
        """Width of the classifier's input (timm's ``head_hidden_size``): one ``embed_dim`` vector per spatial
        position for "spatial" (``H * W`` of them, each averaged over time), else ``embed_dim``. "spatial" ties the
        head to the input size, as a CNN's flattened feature map does: on small labeled sets an encoder trained from
        scratch did not learn to carry the position in pooled features (docs/RESULTS.md)."""
        if self.global_pool == "spatial":
            _, h, w = self.layout.grid
            return h * w * self.embed_dim
        return self.embed_dim

    def _build_head(self, num_classes: int, head_args: dict | None) -> nn.Module:
        """A Linear on ``head_hidden_size`` features, or for "label_token" the label-token head, whose resolved
        arguments go into ``model_args["head_args"]`` so that releases rebuild it."""
        if self.global_pool != "label_token":
            if head_args:
                raise ValueError(f"head_args are for global_pool='label_token' (got {self.global_pool!r})")
            self.model_args.pop("head_args", None)
            return nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()
        args = label_token_args(head_args)
        self.model_args["head_args"] = args
        if num_classes <= 0:
            return nn.Identity()
        extra = self.num_prefix_tokens if args.get("keys") == "all" else 0
        return LabelTokenHead(self.embed_dim, num_classes, mode="clip", num_keys=self.layout.num_tokens + extra,
                              **args)

    def _scale_head_init(self, scale: float) -> None:
        """The reference's small classifier init (``head_init_scale`` x trunc_normal(0.02))."""
        if isinstance(self.head, nn.Linear):
            self.head.weight.data.mul_(scale)
            self.head.bias.data.mul_(scale)

    # ---- timm-style hooks used by the optimiser and the engine --------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {*self.no_decay, "pos_embed"} | head_no_weight_decay(self.head, "head.")

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=self.stem, blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None and global_pool != self.global_pool:
            if bool(global_pool) != bool(self.global_pool):
                raise ValueError("reset_classifier cannot switch between pooled and unpooled outputs")
            self._check_pool(global_pool)
            self.global_pool = self.model_args["global_pool"] = global_pool
            self.head_hidden_size = self._head_input_size()
        self.num_classes = self.model_args["num_classes"] = num_classes
        head_args = self.model_args.get("head_args") if self.global_pool == "label_token" else None
        self.head = self._build_head(num_classes, head_args)
        self.head.apply(init_weights)

    # ---- forward ----------------------------------------------------------------------------------------------
    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "label_token":  # pre_logits: the normalised tokens the head attends over
            x = self.fc_norm(x)
            if pre_logits or isinstance(self.head, nn.Identity):
                return x
            return self.head(x, grid=self.layout.grid, n_special=self.num_prefix_tokens)["logits"]
        spatial = self.global_pool == "spatial"
        if spatial:
            x = self.layout.time_average(x[:, self.num_prefix_tokens:])
        elif self.global_pool:
            x = self._pool(x)
        x = self.fc_norm(x)  # per position for "spatial", then flattened
        x = self.fc_dropout(x.flatten(1) if spatial else x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
