"""AU heads on encoder token features (docs/AU_METHODS.md#head-and-loss-interface and the heads' sections).

Every head is a pure module on encoder tokens::

    out = head(tokens, *, grid=(T', h, w), n_special=R)     # tokens: [B, R + T'*h*w, C] from forward_features
    out["logits"]    # [B, A] (mode "clip"/"image") or [B, T', A] (mode "dense")
    out["aux"]       # training-only outputs, e.g. FAN-Trans P_o / P_m / P_t, MONET per-order logits
    out["attn"]      # optional cross-attention probabilities [B', heads, A, n_keys] (label-token head)

Heads: ``linear`` (:class:`LinearAUHead`, pooled baseline), ``label_token`` (:class:`LabelTokenHead`, MLT / MTTS),
``fantrans_okd`` (:class:`FanTransOKDHead`, with :meth:`FanTransOKDHead.export_for_inference`), ``monet``
(:class:`MonetHead`). Build by name with :func:`build_au_head`; a head that reads the labels while training declares
``wants_labels = True``. Every [ENG] choice is a keyword argument with its documented default.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Dict

from torch import nn

from lgiformer.heads.common import (HEAD_NO_DECAY, PREDICTION_MODES, check_grid, check_mode, frame_to_tubelet,
                                    head_no_weight_decay, sincos_2d, split_tokens)
from lgiformer.heads.fantrans import AttentionDropBlock, FanTransInference, FanTransOKDHead, topk_column_sum
from lgiformer.heads.label_token import CrossAttention, LabelTokenHead
from lgiformer.heads.linear import LinearAUHead
from lgiformer.heads.monet import MonetHead

__all__ = ["AttentionDropBlock", "CrossAttention", "FanTransInference", "FanTransOKDHead", "HEAD_NO_DECAY",
           "LabelTokenHead", "LinearAUHead", "MonetHead", "PREDICTION_MODES", "au_head_arguments", "build_au_head",
           "check_grid", "check_mode", "frame_to_tubelet", "head_no_weight_decay", "list_au_heads",
           "register_au_head", "sincos_2d", "split_tokens", "topk_column_sum"]

_HEADS: Dict[str, Callable[..., nn.Module]] = {}


def register_au_head(name: str, cls: Callable[..., nn.Module]) -> None:
    _HEADS[name] = cls


for _name, _cls in (("linear", LinearAUHead), ("label_token", LabelTokenHead), ("fantrans_okd", FanTransOKDHead),
                    ("monet", MonetHead)):
    register_au_head(_name, _cls)


def list_au_heads() -> list[str]:
    return sorted(_HEADS)


def au_head_arguments(name: str) -> frozenset[str] | None:
    """The keyword arguments the head ``name`` takes, or None when it takes any (``**kwargs``)."""
    if name not in _HEADS:
        raise ValueError(f"unknown AU head {name!r}; choose from {list_au_heads()}")
    params = inspect.signature(_HEADS[name]).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return frozenset(params)


def build_au_head(name: str, **cfg: Any) -> nn.Module:
    """Build an AU head by registry name: ``build_au_head("label_token", embed_dim=512, num_aus=12)``."""
    if name not in _HEADS:
        raise ValueError(f"unknown AU head {name!r}; choose from {list_au_heads()}")
    return _HEADS[name](**cfg)
