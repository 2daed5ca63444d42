"""The one source of token order.

Every part of the pipeline that touches tokens (patch embedding, position tables, masking, the LGI-Former's regions,
the decoder and the pixel targets) goes through :class:`TokenLayout`. The canonical order inside the models is
*region-major*: tokens are grouped region by region (regions enumerated t-major, then h, then w), and inside a region
in raster order. Raster order (t, h, w), the order of ``Conv3d(...).flatten(2)``, is only used at the boundary
(patch embedding in, pixels out, features returned to the user), converted with :meth:`TokenLayout.to_region_major`
and :meth:`TokenLayout.to_raster`. The reference mixed the two orders (docs/REFERENCE.md#defect-1); here a
token's index always means the same thing.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Sequence, Tuple

import numpy as np
import torch
from einops import rearrange

Int3 = Tuple[int, int, int]


def _as3(value: int | Sequence[int], name: str) -> Int3:
    if isinstance(value, int):
        return (value, value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 3:
        raise ValueError(f"{name} must have 3 entries (t, h, w), got {value}")
    return value  # type: ignore[return-value]


@dataclass(frozen=True)
class TokenLayout:
    """Token grid of a clip and its partition into regions.

    grid: tokens along (t, h, w), e.g. (8, 10, 10) for 16 x 160 x 160 input, tubelet 2, patch 16.
    region: tokens per region along (t, h, w), e.g. (2, 5, 10). ``region == grid`` means one region (plain ViT).
    """

    grid: Int3
    region: Int3

    def __post_init__(self) -> None:
        object.__setattr__(self, "grid", _as3(self.grid, "grid"))
        object.__setattr__(self, "region", _as3(self.region, "region"))
        bad = [f"{n}: {g} tokens not divisible by region size {r}" for n, g, r in zip("thw", self.grid, self.region)
               if r <= 0 or g % r]
        if bad:
            raise ValueError(f"token grid {self.grid} cannot be split into regions {self.region}: " + "; ".join(bad))

    @classmethod
    def for_input(cls, num_frames: int, img_size: int | Sequence[int], tubelet_size: int, patch_size: int,
                  region: Sequence[int] | None = None) -> "TokenLayout":
        h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        for what, size, step in (("num_frames", num_frames, tubelet_size), ("height", h, patch_size),
                                 ("width", w, patch_size)):
            if size % step:
                raise ValueError(f"{what}={size} is not divisible by {'tubelet' if what == 'num_frames' else 'patch'} "
                                 f"size {step}")
        grid = (num_frames // tubelet_size, h // patch_size, w // patch_size)
        return cls(grid, tuple(region) if region is not None else grid)

    # ---- sizes -------------------------------------------------------------------------------------------------
    @property
    def num_tokens(self) -> int:
        return int(np.prod(self.grid))

    @property
    def regions_per_axis(self) -> Int3:
        return tuple(g // r for g, r in zip(self.grid, self.region))  # type: ignore[return-value]

    @property
    def num_regions(self) -> int:
        return int(np.prod(self.regions_per_axis))

    @property
    def tokens_per_region(self) -> int:
        return int(np.prod(self.region))

    # ---- permutations ------------------------------------------------------------------------------------------
    @cached_property
    def region_major_to_raster(self) -> torch.Tensor:
        """``perm[i]`` is the raster index of the token at region-major position i."""
        raster = torch.arange(self.num_tokens).view(*self.grid)
        (nt, nh, nw), (rt, rh, rw) = self.regions_per_axis, self.region
        return rearrange(raster, "(nt rt) (nh rh) (nw rw) -> (nt nh nw rt rh rw)", nt=nt, nh=nh, nw=nw,
                         rt=rt, rh=rh, rw=rw).contiguous()

    @cached_property
    def raster_to_region_major(self) -> torch.Tensor:
        return torch.argsort(self.region_major_to_raster)

    def to_region_major(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """Reorder raster-ordered tokens (along ``dim``) into region-major order."""
        return x.index_select(dim, self.region_major_to_raster.to(x.device))

    def to_raster(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """Inverse of :meth:`to_region_major`."""
        return x.index_select(dim, self.raster_to_region_major.to(x.device))

    def time_average(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, C] raster-ordered tokens -> [B, H * W, C]: each spatial position's mean over the temporal slots."""
        b, n, c = x.shape
        if n != self.num_tokens:
            raise ValueError(f"expected all {self.num_tokens} tokens in raster order, got {n}")
        return x.view(b, self.grid[0], -1, c).mean(1)

    def split_regions(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, C] region-major -> [B, R, N / R, C]. Works for any N that is a multiple of R (visible tokens)."""
        b, n, c = x.shape
        if n % self.num_regions:
            raise ValueError(f"{n} tokens cannot be split evenly over {self.num_regions} regions")
        return x.view(b, self.num_regions, n // self.num_regions, c)


# ---- pixels <-> tokens -----------------------------------------------------------------------------------------
def patchify(video: torch.Tensor, tubelet_size: int, patch_size: int) -> torch.Tensor:
    """[B, C, T, H, W] -> [B, N, tubelet, patch, patch, C] in raster token order."""
    return rearrange(video, "b c (t p0) (h p1) (w p2) -> b (t h w) p0 p1 p2 c", p0=tubelet_size, p1=patch_size,
                     p2=patch_size)


def unpatchify(tokens: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`patchify`: [B, N, tubelet, patch, patch, C] (raster order) -> [B, C, T, H, W]."""
    t, h, w = grid
    return rearrange(tokens, "b (t h w) p0 p1 p2 c -> b c (t p0) (h p1) (w p2)", t=t, h=h, w=w)


def sinusoid_table(num_positions: int, dim: int) -> torch.Tensor:
    """Fixed 1-D sine/cosine position table [num_positions, dim] (the VideoMAE / MAE-DFER definition): even
    channels carry sin(pos / 10000^(2i/dim)), odd channels the cosine of the same angle."""
    exponent = 2 * (np.arange(dim) // 2) / dim
    angles = np.arange(num_positions)[:, None] / np.power(10000, exponent)[None, :]
    table = np.where(np.arange(dim)[None, :] % 2 == 0, np.sin(angles), np.cos(angles))
    return torch.from_numpy(table).float()
