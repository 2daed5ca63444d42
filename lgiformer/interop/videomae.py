"""Importer for official VideoMAE ViT checkpoints (pretraining and finetuned ``.pth``), including the VideoMAE
ViT-B weights the MAE-DFER authors released (same layout, 160 x 160 input: the file's args say so)."""
from __future__ import annotations

import os

import torch

from lgiformer.interop.hf_videomae import hf_to_ours
from lgiformer.interop.infer import VIDEOMAE_DEFAULTS
from lgiformer.interop.reference import Imported, import_reference

__all__ = ["VIDEOMAE_DEFAULTS", "convert_hf_state_dict", "import_videomae"]


def import_videomae(path: str | os.PathLike, *, num_heads: int | None = None, img_size: int | None = None,
                    num_frames: int | None = None, global_pool: str | None = None,
                    checkpoint_key: str | None = None) -> Imported:
    """VideoViT from a VideoMAE ``.pth``: fused ``qkv`` is split into ``q``/``kv``; a finetuned file must use mean
    pooling (``fc_norm``); a pretraining file gives the encoder (final norm dropped, fresh ``fc_norm``, or with
    ``global_pool=""`` the normed tokens)."""
    return import_reference(path, "videomae", expect="vit", defaults=VIDEOMAE_DEFAULTS, num_heads=num_heads,
                            img_size=img_size, num_frames=num_frames, global_pool=global_pool,
                            checkpoint_key=checkpoint_key)


def convert_hf_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers VideoMAE state dict in VideoViT names (pretraining decoder entries are left out)."""
    return hf_to_ours(sd)[0]
