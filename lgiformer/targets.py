"""Reconstruction targets: appearance and motion (frame difference), as MAE-DFER defines them.

Clips are un-normalised back to [0, 1]; each tubelet token's pixels are normalised per channel by their mean and
unbiased std (+1e-6). Appearance is the first frame of the tubelet; motion is the difference of consecutive
normalised frames (for tubelet 2: norm(f1) - norm(f0) = (f1 - f0) / (std + eps)). A "pixel" target (all frames of
the tubelet normalised, as VideoMAE) is also available. Output layout per token: (frame, patch_h, patch_w, channel)
flattened, appearance part first, motion part second (the reference's 1536 = 768 + 768 for tubelet 2, patch 16).
"""
from __future__ import annotations

from typing import Sequence

import torch

from lgiformer.tokens import patchify

TARGET_PARTS = ("appearance", "motion", "pixel")


def normalised_tubelets(clips: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, tubelet_size: int,
                        patch_size: int, eps: float = 1e-6) -> torch.Tensor:
    """[B, 3, T, H, W] normalised clips -> [B, N, tubelet, patch, patch, 3], per-token per-channel normalised."""
    video = clips.float() * std.view(1, -1, 1, 1, 1) + mean.view(1, -1, 1, 1, 1)
    tokens = patchify(video, tubelet_size, patch_size)
    mu = tokens.mean(dim=(2, 3, 4), keepdim=True)
    sd = tokens.var(dim=(2, 3, 4), unbiased=True, keepdim=True).sqrt()
    return (tokens - mu) / (sd + eps)


def part_sizes(parts: Sequence[str], tubelet_size: int, patch_size: int, channels: int = 3) -> dict[str, int]:
    frame = patch_size * patch_size * channels
    sizes = {"appearance": frame, "motion": (tubelet_size - 1) * frame, "pixel": tubelet_size * frame}
    unknown = [p for p in parts if p not in TARGET_PARTS]
    if unknown or not parts:
        raise ValueError(f"targets must be a non-empty subset of {TARGET_PARTS}, got {list(parts)}")
    if "motion" in parts and tubelet_size < 2:
        raise ValueError("the motion target needs tubelet_size >= 2")
    return {p: sizes[p] for p in parts}


def build_targets(clips: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, tubelet_size: int, patch_size: int,
                  parts: Sequence[str] = ("appearance", "motion")) -> torch.Tensor:
    """[B, N, sum of part sizes] in raster token order, parts concatenated in the order given."""
    z = normalised_tubelets(clips, mean, std, tubelet_size, patch_size)
    part_sizes(parts, tubelet_size, patch_size, clips.shape[1])
    pieces = {"appearance": lambda: z[:, :, :1], "motion": lambda: z[:, :, 1:] - z[:, :, :-1], "pixel": lambda: z}
    return torch.cat([pieces[p]().flatten(2) for p in parts], dim=-1)
