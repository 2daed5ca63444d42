"""Landmark-based AU centres and prior layouts for attention guidance (docs/AU_METHODS.md#landmark-priors).

:func:`au_centres_68` turns 68-point (iBUG / 300-W order) landmarks into the AU centres of that section's table (after
JAA-Net): two centres per AU, one per face side, in (row, col) pixel coordinates ready for
:func:`lgiformer.au.losses.prior_heatmaps`. "scale" is the distance between the inner eye corners; "above" / "below"
are along the image rows, so faces should be roughly upright (aligned crops). The landmark indices chosen for each
named facial point are an [ENG] reading of the table. :func:`unique_centres` de-duplicates AUs that share a location
(lip corners, lip centre), giving TH's 10 distinct priors on BP4D.
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import torch

Tensor = torch.Tensor

__all__ = ["AU_CENTRE_RULES", "au_centres_68", "unique_centres", "slot_priors", "clip_priors"]

# AU -> ((landmark indices averaged for side 1), (for side 2), vertical offset in units of scale; + = down)
AU_CENTRE_RULES: Dict[int, Tuple[Tuple[int, ...], Tuple[int, ...], float]] = {
    1: ((21,), (22,), -1 / 2),                # 1/2 scale above the inner brow
    2: ((17,), (26,), -1 / 3),                # 1/3 scale above the outer brow
    4: ((19,), (24,), 1 / 3),                 # 1/3 scale below the brow centre
    6: ((40, 41), (46, 47), 1.0),             # 1 scale below the lower eyelid
    7: (tuple(range(36, 42)), tuple(range(42, 48)), 0.0),  # eye
    9: ((31,), (35,), -1 / 2),                # 1/2 scale above the bottom of the nose
    10: ((50,), (52,), 0.0),                  # centre of the upper lip
    12: ((48,), (54,), 0.0),                  # lip corner
    14: ((48,), (54,), 0.0),
    15: ((48,), (54,), 0.0),
    17: ((57,), (57,), 1 / 2),                # 1/2 scale below the lip
    23: ((62, 66), (62, 66), 0.0),            # lip centre
    24: ((62, 66), (62, 66), 0.0),
    25: ((62, 66), (62, 66), 0.0),
    26: ((57,), (57,), 1 / 2),                # 1/2 scale below the lip
}


def au_centres_68(landmarks: Tensor, aus: Sequence[int]) -> Tensor:
    """``landmarks``: ``[..., 68, 2]`` as (x, y) pixels -> centres ``[..., len(aus), 2, 2]`` as (row, col) pixels
    (AU, side, coordinate). Unknown AUs raise a ValueError."""
    if landmarks.shape[-2:] != (68, 2):
        raise ValueError(f"expected 68 (x, y) landmarks [..., 68, 2], got {list(landmarks.shape)}")
    bad = [a for a in aus if a not in AU_CENTRE_RULES]
    if bad:
        raise ValueError(f"no centre rule for AU(s) {bad}; known: {sorted(AU_CENTRE_RULES)}")
    lm = landmarks.float()
    scale = (lm[..., 42, :] - lm[..., 39, :]).norm(dim=-1, keepdim=True)  # inner eye corners
    out = []
    for au in aus:
        s1, s2, dy = AU_CENTRE_RULES[au]
        sides = []
        for idx in (s1, s2):
            p = lm[..., list(idx), :].mean(-2)  # (x, y)
            sides.append(torch.stack((p[..., 1] + dy * scale[..., 0], p[..., 0]), -1))  # (row, col)
        out.append(torch.stack(sides, -2))
    return torch.stack(out, -3)


def unique_centres(aus: Sequence[int]) -> Tuple[list, list]:
    """Group AUs that share a centre rule: returns (distinct rule keys as lists of AUs, AU -> prior index)."""
    groups: list = []
    index: list = []
    seen: Dict[tuple, int] = {}
    for au in aus:
        key = AU_CENTRE_RULES[au]
        if key not in seen:
            seen[key] = len(groups)
            groups.append([])
        groups[seen[key]].append(au)
        index.append(seen[key])
    return groups, index


def slot_priors(frame_priors: Tensor, tubelet: int) -> Tensor:
    """Per-frame heatmaps ``[B, T, P, n]`` -> per-slot ``[B, T // tubelet, P, n]`` (mean over each tubelet)."""
    b, t, p, n = frame_priors.shape
    if t % tubelet:
        raise ValueError(f"{t} frames are not divisible by the tubelet length {tubelet}")
    return frame_priors.view(b, t // tubelet, tubelet, p, n).mean(2)


def clip_priors(slot_priors_: Tensor) -> Tensor:
    """Per-slot heatmaps ``[B, T', P, h*w]`` -> clip-mode priors over the ``T'*h*w`` keys in raster (t, h, w)
    order, ``[B, P, T'*h*w]``, still summing to 1 (each slot gets mass 1/T')."""
    b, t, p, n = slot_priors_.shape
    return slot_priors_.permute(0, 2, 1, 3).reshape(b, p, t * n) / t
