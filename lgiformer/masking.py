"""Tube masks for masked video pretraining, returned in the canonical (region-major) token order.

* ``region_balanced`` (MAE-DFER): inside every region's spatial window the same number of positions stay visible,
  and the spatial mask is repeated over time (a tube), so every region keeps exactly the same number of visible
  tokens -- which the LGI-Former's batched regions need.
* ``tube`` (VideoMAE): one random spatial mask over the whole frame, repeated over time.
* ``random``: independent per token, a fixed count per clip.

How many positions of a group (a window, a frame or the clip) are masked: ``rounding="floor"`` masks
``int(mask_ratio x positions)``, as the reference's generators do (docs/REFERENCE.md#departure-3);
``"round"`` keeps ``round((1 - mask_ratio) x positions)`` visible (at least one). They differ only where
``mask_ratio x positions`` has a fractional part: at 0.75 on 3 x 6 windows floor keeps 5 of 18 visible, round 4.
"""
from __future__ import annotations

import torch

from lgiformer.tokens import TokenLayout

MASK_TYPES = ("region_balanced", "tube", "random")
MASK_ROUNDINGS = ("floor", "round")


def visible_count(positions: int, mask_ratio: float, rounding: str = "floor") -> int:
    """Visible positions of a group of ``positions`` at ``mask_ratio``: ``positions - int(mask_ratio x positions)``
    (``floor``, the reference) or ``round((1 - mask_ratio) x positions)``, at least 1 (``round``)."""
    if rounding == "floor":
        return positions - int(mask_ratio * positions)
    if rounding == "round":
        return max(1, int(round(positions * (1.0 - mask_ratio))))
    raise ValueError(f"rounding must be one of {MASK_ROUNDINGS}, got {rounding!r}")


class MaskGenerator:
    def __init__(self, layout: TokenLayout, mask_type: str = "region_balanced", mask_ratio: float = 0.9,
                 rounding: str = "floor") -> None:
        if mask_type not in MASK_TYPES:
            raise ValueError(f"mask_type must be one of {MASK_TYPES}, got {mask_type!r}")
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        self.layout, self.mask_type, self.mask_ratio, self.rounding = layout, mask_type, mask_ratio, rounding
        t, h, w = layout.grid
        _, rh, rw = layout.region
        positions = {"region_balanced": rh * rw, "tube": h * w, "random": t * h * w}[mask_type]
        self.num_visible_per_group = visible_count(positions, mask_ratio, rounding)
        if self.num_visible_per_group >= positions:
            raise ValueError(f"mask_ratio {mask_ratio} leaves nothing masked among {positions} positions")

    @property
    def num_visible(self) -> int:
        """Visible tokens per clip."""
        t, h, w = self.layout.grid
        _, rh, rw = self.layout.region
        k = self.num_visible_per_group
        return {"region_balanced": k * t * (h // rh) * (w // rw), "tube": k * t, "random": k}[self.mask_type]

    def _keep_lowest(self, noise: torch.Tensor) -> torch.Tensor:
        """True (masked) everywhere but at the k lowest noise values of the last dimension."""
        rank = noise.argsort(-1).argsort(-1)
        return rank >= self.num_visible_per_group

    def __call__(self, batch_size: int, device: torch.device | str = "cpu",
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Bool mask [B, N] in region-major order; True = masked."""
        t, h, w = self.layout.grid
        (_, nh, nw), (_, rh, rw) = self.layout.regions_per_axis, self.layout.region
        if self.mask_type == "random":
            noise = torch.rand(batch_size, t * h * w, device=device, generator=generator)
            return self.layout.to_region_major(self._keep_lowest(noise))
        if self.mask_type == "tube":
            spatial = self._keep_lowest(torch.rand(batch_size, h * w, device=device, generator=generator))
            spatial = spatial.view(batch_size, h, w)
        else:
            windows = self._keep_lowest(torch.rand(batch_size, nh, nw, rh * rw, device=device, generator=generator))
            spatial = windows.view(batch_size, nh, nw, rh, rw).permute(0, 1, 3, 2, 4).reshape(batch_size, h, w)
        raster = spatial.unsqueeze(1).expand(batch_size, t, h, w).reshape(batch_size, -1)
        return self.layout.to_region_major(raster)
