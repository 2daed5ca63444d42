"""Mixup and CutMix for clips, with label smoothing (the reference finetuning recipe: mixup 0.8, cutmix 1.0,
switch 0.5, smoothing 0.1).

timm's ``Mixup`` works on [B, C, H, W] images. Here, as in its batch mode, one lambda and one mode per batch pair
each clip with the flipped batch, and the CutMix box is one spatial box on EVERY frame of the clip: a box that moved
between frames would paste a flickering patch that no real video has. Lambda is corrected to the box area actually
pasted (timm's ``correct_lam``), and targets are timm's ``mixup_target`` (smoothed one-hot of both labels).

All draws come from torch's global (CPU) RNG, not numpy as in timm: the training loop reseeds torch before every
step, so a resumed run mixes exactly like the uninterrupted one.
"""
from __future__ import annotations

import math

import torch

from lgiformer import _compat  # noqa: F401  (torchvision compatibility fix, needed before timm)
from timm.data.mixup import mixup_target  # noqa: E402

__all__ = ["VideoMixup", "clip_cutmix_box", "one_hot_smooth"]


def one_hot_smooth(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """``[B]`` labels -> ``[B, num_classes]``: ``1 - smoothing + smoothing / K`` on the label, ``smoothing / K``
    elsewhere (timm's ``mixup_target`` with lambda 1)."""
    return mixup_target(labels.long(), num_classes, 1.0, smoothing)


def clip_cutmix_box(height: int, width: int, lam: float) -> tuple[int, int, int, int]:
    """``(y0, y1, x0, x1)``: a box of sides ``sqrt(1 - lam)`` x the frame, centred uniformly, clipped to the frame
    (timm's ``rand_bbox`` without margin, drawn with torch)."""
    ratio = math.sqrt(1.0 - lam)
    half_h, half_w = int(height * ratio) // 2, int(width * ratio) // 2
    cy, cx = int(torch.randint(0, height, ())), int(torch.randint(0, width, ()))
    return (max(cy - half_h, 0), min(cy + half_h, height), max(cx - half_w, 0), min(cx + half_w, width))


class VideoMixup:
    """``(clips [B, C, T, H, W], labels [B]) -> (mixed clips, soft targets [B, num_classes])``.

    With probability ``prob`` a batch is mixed: CutMix with probability ``switch_prob`` when both alphas are on
    (else the one that is on), lambda ~ Beta(alpha, alpha). Clip ``i`` is mixed with clip ``B - 1 - i``; with an odd
    batch the middle clip pairs with itself and stays unchanged with its own label. The input is never modified in
    place. ``last_lam`` / ``last_box`` keep the draw of the last call (logging, tests)."""

    def __init__(self, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0, prob: float = 1.0,
                 switch_prob: float = 0.5, label_smoothing: float = 0.1, num_classes: int = 7) -> None:
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha
        self.prob, self.switch_prob = prob, switch_prob
        self.label_smoothing, self.num_classes = label_smoothing, num_classes
        self.last_lam: float = 1.0
        self.last_box: tuple[int, int, int, int] | None = None

    @property
    def enabled(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    def draw(self) -> tuple[float, bool]:
        """``(lam, use_cutmix)`` for one batch; ``lam == 1`` means no mixing."""
        if not self.enabled or torch.rand(()).item() >= self.prob:
            return 1.0, False
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha <= 0 or torch.rand(()).item() < self.switch_prob)
        alpha = torch.tensor(self.cutmix_alpha if use_cutmix else self.mixup_alpha, dtype=torch.float64)
        return float(torch.distributions.Beta(alpha, alpha).sample()), use_cutmix

    def __call__(self, clips: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if clips.dim() != 5:
            raise ValueError(f"expected clips [B, C, T, H, W], got shape {tuple(clips.shape)}")
        lam, use_cutmix = self.draw()
        self.last_box = None
        if lam < 1.0:
            partner = clips.flip(0)
            if use_cutmix:
                h, w = clips.shape[-2:]
                y0, y1, x0, x1 = self.last_box = clip_cutmix_box(h, w, lam)
                clips = clips.clone()
                clips[..., y0:y1, x0:x1] = partner[..., y0:y1, x0:x1]  # [..., H, W]: the same box on every frame
                lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)  # the area actually pasted
            else:
                clips = torch.lerp(partner, clips, lam)  # lam * clips + (1 - lam) * partner
        self.last_lam = lam
        return clips, mixup_target(labels.long(), self.num_classes, lam, self.label_smoothing)
