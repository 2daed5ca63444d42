"""Model registry: encoders are registered with timm under timm-style names (importing this package is enough for
``timm.create_model("lgiformer_base_patch16_160")``); :func:`create_model` builds an encoder, :func:`build_model`
any model a release can hold (an encoder or classifier, or an encoder with AU heads)."""
from __future__ import annotations

import inspect
from typing import Any, Mapping, Sequence

import timm
from torch import nn

from lgiformer.models.au import COMPOSITES, AUModel, ExpressionAUModel
from lgiformer.models.base import VideoEncoder
from lgiformer.models.lgiformer import LGIBlock, LGIFormer
from lgiformer.models.mae import MaskedVideoAutoencoder, init_pretrain_encoder
from lgiformer.models.vit import VideoViT

# Every encoder registered by this package's model files (timm keys its registry by the file's module name).
ENCODER_NAMES = tuple(sorted(timm.list_models(module="lgiformer")) + sorted(timm.list_models(module="vit",
                                                                                         filter="*_patch16_160")))
_FAMILIES = {"lgiformer": LGIFormer, "vit": VideoViT}


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered encoder (``lgiformer_*`` or ``vit_*``); kwargs override the variant's arguments."""
    if name not in ENCODER_NAMES:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(ENCODER_NAMES)}")
    return timm.create_model(name, **kwargs)


def encoder_class(name: str) -> type[VideoEncoder]:
    if name not in ENCODER_NAMES:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(ENCODER_NAMES)}")
    return _FAMILIES[name.split("_")[0]]


def model_arguments(name: str) -> frozenset[str]:
    """The constructor arguments of a registered encoder or a composite: what a saved ``model_args`` may contain."""
    cls = COMPOSITES[name][0] if name in COMPOSITES else encoder_class(name)
    return frozenset(p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "pretrained_cfg", "rates"))


def build_model(name: str, model_args: Mapping[str, Any], where: str = "model_args") -> nn.Module:
    """The model ``name`` (an encoder variant, ``au_model`` or ``expression_au_model``) from its saved arguments,
    refusing any key its constructor does not take: a factory argument such as timm's ``checkpoint_path`` would
    make building the model load (and unpickle) another file."""
    if not isinstance(model_args, Mapping):
        raise ValueError(f"{where}: expected a mapping of the model's arguments, got {model_args!r}")
    try:
        accepted = model_arguments(str(name))
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    unknown = sorted(set(model_args) - accepted)
    if unknown:
        raise ValueError(f"{where}: model_args {unknown} are not arguments of {name}; refusing to build the model "
                         f"(accepted: {', '.join(sorted(accepted))})")
    if name not in COMPOSITES:
        return create_model(name, **model_args)
    cls, key = COMPOSITES[name]
    spec = model_args.get(key) or {}
    inner = build_model(spec.get("model_name", ""), spec.get("model_args", {}), f"{where}.{key}")
    return cls(inner, **{k: v for k, v in model_args.items() if k != key})


def build_pretrain_model(encoder: str, *, decoder_embed_dim: int = 384, decoder_depth: int = 4,
                         decoder_num_heads: int = 6, mask_type: str = "region_balanced", mask_ratio: float = 0.9,
                         targets: Sequence[str] = ("appearance", "motion"), motion_weight: float = 0.5,
                         init: str = "reference", mask_rounding: str = "floor",
                         **encoder_kwargs: Any) -> MaskedVideoAutoencoder:
    """The masked autoencoder around an encoder built with no head and no pooling. Accepts ``norm_mean`` and
    ``norm_std`` (ImageNet by default) for un-normalising the targets. ``init`` and ``mask_rounding`` default to the
    reference's behaviour (:mod:`lgiformer.models.mae`, :mod:`lgiformer.masking`)."""
    mae_kwargs = {k: encoder_kwargs.pop(k) for k in ("norm_mean", "norm_std") if k in encoder_kwargs}
    enc = create_model(encoder, num_classes=0, global_pool="", **encoder_kwargs)
    init_pretrain_encoder(enc, init)
    return MaskedVideoAutoencoder(enc, decoder_embed_dim, decoder_depth, decoder_num_heads, mask_type, mask_ratio,
                                  targets, motion_weight, init=init, mask_rounding=mask_rounding, **mae_kwargs)


def describe_model(model: nn.Module) -> str:
    n = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return f"{n / 1e6:.2f} M parameters ({trainable / 1e6:.2f} M trainable)"


__all__ = ["AUModel", "ENCODER_NAMES", "ExpressionAUModel", "LGIBlock", "LGIFormer", "MaskedVideoAutoencoder",
           "VideoEncoder", "VideoViT", "build_model", "build_pretrain_model", "create_model", "describe_model",
           "encoder_class", "model_arguments"]
