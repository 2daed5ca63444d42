"""Helpers of the tool tests: tiny releases, and raw footage made from a real photograph of a face.

The face is scikit-image's ``data.astronaut()`` (a 512 x 512 portrait that the package ships). By eye, the centre of
the face (the nose bridge, between the eyes and the mouth) is at x = 224, y = 118 of that image; the tests check the
detector against this, not against itself.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import lgiformer  # noqa: F401
from lgiformer.models import create_model
from lgiformer.models.release import write_release

ASTRONAUT_FACE_CENTRE = (224.0, 118.0)         # (x, y) in the 512 x 512 image, read off the image by eye
CLASSES = [f"class_{i}" for i in range(5)]
# 8 frames of 64 x 64: a 4 x 4 x 4 token grid, 8 regions of 2 x 2 x 2 for the LGI-Former
TINY = dict(img_size=64, num_frames=8, embed_dim=32, depth=2, num_heads=2)


def tiny_model(name: str = "lgiformer_tiny_patch16_160", num_classes: int = len(CLASSES), seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    if name.startswith("lgiformer"):
        kwargs.setdefault("region_size", (2, 2, 2))
    model = create_model(name, num_classes=num_classes, **{**TINY, **kwargs})
    if num_classes:
        with torch.no_grad():  # a head far from the near-zero init, so probabilities differ between inputs
            for p in model.head.parameters():
                p.add_(torch.randn_like(p))
    return model.eval()


def tiny_release(out: str | Path, name: str = "lgiformer_tiny_patch16_160", num_classes: int = len(CLASSES),
                 clips: int = 2, crops: int = 2, **kwargs) -> Path:
    """A release as finetune/run.py writes one (class names, the test protocol in ``data``), or an encoder release
    (``num_classes=0``, ``global_pool=''``: as from pretraining)."""
    if not num_classes:
        kwargs.setdefault("global_pool", "")
    model = tiny_model(name, num_classes, **kwargs)
    extra = {}
    if num_classes:
        extra = dict(class_names=CLASSES[:num_classes],
                     data=dict(num_frames=TINY["num_frames"], sampling_rate=2, img_size=TINY["img_size"],
                               test_num_clips=clips, test_num_crops=crops))
    return write_release(model, out, task="dfer" if num_classes else "pretrain", source=dict(format="test"), **extra)


def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


def face_video(num_frames: int = 24, size: tuple[int, int] = (360, 480), scale: float = 0.5,
               start: tuple[int, int] = (20, 40), step: tuple[int, int] = (6, 2), seed: int = 0,
               second_face: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Raw footage: the astronaut photograph, downscaled by ``scale``, pasted on a noisy background at an offset
    moving by ``step`` px per frame. Returns ``(frames [T, H, W, 3] uint8, true face centres [T, 2] (x, y))``.
    ``second_face``: also a smaller copy (this scale) of the photograph, still, in the bottom-right corner."""
    from PIL import Image

    photo = astronaut()
    side = round(512 * scale)
    face = np.asarray(Image.fromarray(photo).resize((side, side), Image.BILINEAR))
    h, w = size
    rng = np.random.default_rng(seed)
    background = rng.integers(70, 130, (h // 8, w // 8, 3)).astype(np.uint8).repeat(8, 0).repeat(8, 1)
    small = None
    if second_face:
        s2 = round(512 * second_face)
        small = np.asarray(Image.fromarray(photo).resize((s2, s2), Image.BILINEAR))
    frames, centres = [], []
    for t in range(num_frames):
        x, y = start[0] + step[0] * t, start[1] + step[1] * t
        frame = background.copy()
        frame[y:y + side, x:x + side] = face
        if small is not None:
            frame[h - len(small):, w - len(small):] = small
        frames.append(frame)
        centres.append((x + ASTRONAUT_FACE_CENTRE[0] * scale, y + ASTRONAUT_FACE_CENTRE[1] * scale))
    return np.stack(frames), np.array(centres)
