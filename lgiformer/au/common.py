"""Encoder adapter (docs/AU_METHODS.md#prediction-modes): special tokens and a (t, h, w) grid out of encoder tokens."""
from __future__ import annotations

from typing import Sequence, Tuple

import torch

Tensor = torch.Tensor

PREDICTION_MODES = ("clip", "dense", "image")


def split_tokens(tokens: Tensor, n_special: int, t: int, h: int, w: int) -> Tuple[Tensor, Tensor]:
    """``[B, n_special + t*h*w, C]`` (special tokens first, local tokens in raster (t, h, w) order) ->
    ``(special [B, n_special, C], grid [B, t, h, w, C])``. Special tokens (CLS, registers, LGI-Former
    representative tokens) are removed before any reshape."""
    if tokens.dim() != 3:
        raise ValueError(f"expected tokens [B, N, C], got shape {list(tokens.shape)}")
    b, n, c = tokens.shape
    if n != n_special + t * h * w:
        raise ValueError(f"got {n} tokens, expected n_special + T'*h*w = {n_special} + {t}*{h}*{w} = "
                         f"{n_special + t * h * w}; check grid=(T', h, w) and n_special")
    return tokens[:, :n_special], tokens[:, n_special:].reshape(b, t, h, w, c)


def check_grid(grid: Sequence[int]) -> Tuple[int, int, int]:
    if grid is None or len(grid) != 3:
        raise ValueError(f"grid must be (T', h, w), got {grid!r}")
    return tuple(int(g) for g in grid)  # type: ignore[return-value]


def check_mode(mode: str) -> str:
    if mode not in PREDICTION_MODES:
        raise ValueError(f"prediction mode must be one of {PREDICTION_MODES}, got {mode!r}")
    return mode


def frame_to_tubelet(frames: Tensor, tubelet: int) -> Tensor:
    """Image mode: single frames ``[B, C, H, W]`` repeated to a clip ``[B, C, tubelet, H, W]`` (so T' = 1)."""
    return frames.unsqueeze(2).expand(-1, -1, tubelet, -1, -1).contiguous()
