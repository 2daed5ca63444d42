"""Model registry: encoders are registered with timm under timm-style names; ``create_model`` builds them."""
from __future__ import annotations

import inspect
from typing import Sequence

import timm
from torch import nn

from lgiformer.models.lgiformer import LGIBlock, LGIFormer
from lgiformer.models.mae import MaskedVideoAutoencoder
from lgiformer.models.vit import VideoViT

ENCODER_NAMES = (
    "lgiformer_tiny_patch16_160", "lgiformer_small_patch16_160", "lgiformer_base_patch16_160",
    "lgiformer_large_patch16_160", "vit_tiny_patch16_160", "vit_small_patch16_160", "vit_base_patch16_160",
)


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered encoder (``lgiformer_*`` or ``vit_*``); kwargs override the variant's arguments."""
    if name not in ENCODER_NAMES:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(ENCODER_NAMES)}")
    return timm.create_model(name, **kwargs)


def model_arguments(name: str) -> frozenset[str]:
    """The constructor arguments of a registered encoder: what a saved ``model_args`` may contain."""
    if name not in ENCODER_NAMES:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(ENCODER_NAMES)}")
    cls = LGIFormer if name.startswith("lgiformer") else VideoViT
    return frozenset(p for p in inspect.signature(cls.__init__).parameters if p != "self")


def build_pretrain_model(encoder: str, *, decoder_embed_dim: int = 384, decoder_depth: int = 4,
                         decoder_num_heads: int = 6, mask_type: str = "region_balanced", mask_ratio: float = 0.9,
                         targets: Sequence[str] = ("appearance", "motion"), motion_weight: float = 0.5,
                         **encoder_kwargs) -> MaskedVideoAutoencoder:
    """The masked autoencoder around an encoder built with no head and no pooling. Accepts ``norm_mean`` and
    ``norm_std`` (ImageNet by default) for un-normalising the targets."""
    mae_kwargs = {k: encoder_kwargs.pop(k) for k in ("norm_mean", "norm_std") if k in encoder_kwargs}
    enc = create_model(encoder, num_classes=0, global_pool="", **encoder_kwargs)
    return MaskedVideoAutoencoder(enc, decoder_embed_dim, decoder_depth, decoder_num_heads, mask_type, mask_ratio,
                                  targets, motion_weight, **mae_kwargs)


__all__ = ["ENCODER_NAMES", "LGIBlock", "LGIFormer", "MaskedVideoAutoencoder", "VideoViT", "build_pretrain_model",
           "create_model", "model_arguments"]
