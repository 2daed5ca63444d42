"""What every head shares (docs/AU_METHODS.md#prediction-modes): special tokens and a (t, h, w) grid out of encoder
tokens, prediction modes, the 2-D sine table, and which head parameters take no weight decay."""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torch import nn

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


# Head parameters that get no weight decay (tokens, positional terms, order logits, learned thresholds): several are
# 2-D, so the optimiser's 1-D rule does not exempt them.
HEAD_NO_DECAY = ("label_tokens", "pos_embed", "au_pos", "order_logits", "cls_bias", "theta")


def head_no_weight_decay(head: nn.Module, prefix: str) -> set[str]:
    """``prefix + name`` of every parameter of ``head`` that :data:`HEAD_NO_DECAY` exempts."""
    return {f"{prefix}{name}" for name, _ in head.named_parameters() if name.endswith(HEAD_NO_DECAY)}


def keys_from_grid(tokens: Tensor, grid: Sequence[int], n_special: int, mode: str, keys: str = "local"):
    """Reshape encoder tokens for a head. Returns ``(x [B', n, C], lead)`` where ``lead`` is ``(B,)`` for clip/image
    mode and ``(B, T')`` for dense mode (one row per temporal slot)."""
    t, h, w = check_grid(grid)
    if mode == "image" and t != 1:
        raise ValueError(f"image mode expects one temporal slot (T' = 1, frames repeated to the tubelet), got {t}")
    special, g = split_tokens(tokens, n_special, t, h, w)
    b, c = tokens.shape[0], tokens.shape[-1]
    if mode == "dense":
        x = g.reshape(b * t, h * w, c)
        if keys == "all" and n_special:
            x = torch.cat((special.repeat_interleave(t, dim=0), x), dim=1)
        return x, (b, t)
    x = g.reshape(b, t * h * w, c)
    if keys == "all" and n_special:
        x = torch.cat((special, x), dim=1)
    return x, (b,)


def unflatten_lead(x: Tensor, lead: Sequence[int]) -> Tensor:
    return x.reshape(*lead, *x.shape[1:])


def sincos_2d(h: int, w: int, dim: int, temperature: float = 10000.0) -> Tensor:
    """2-D sine table ``concat(PE_i, PE_j)``, frequencies ``1 / 10000^{4k/d}`` (docs/AU_METHODS.md#label-token-head)."""
    if dim % 4:
        raise ValueError(f"sincos_2d needs dim divisible by 4, got {dim}")
    k = torch.arange(dim // 4, dtype=torch.float32)
    freq = 1.0 / temperature ** (4.0 * k / dim)
    ii, jj = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    ai, aj = ii.reshape(-1, 1) * freq, jj.reshape(-1, 1) * freq
    return torch.cat((ai.sin(), ai.cos(), aj.sin(), aj.cos()), dim=1)

