"""One clip: a face, an expression and the distractors over time (pose jitter, gaze, blinks, talking, flicker).

``render_clip`` is where the random draws of a clip happen, in a fixed order: the scene, the expression curves,
talking, blinks, the head pose and the per-frame noise. That order is part of the data set's definition (a seed
names a clip), so new draws go after the existing ones. ``save_class_strip`` renders the figure of
docs/SYNTHETIC.md with the same code.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Tuple

import numpy as np
from PIL import Image, ImageDraw

from lgiformer.data.synthetic.expressions import AU_NAMES, CHANNEL_INDEX, CHANNELS, CLASSES, expression_curves
from lgiformer.data.synthetic.faces import Identity, Scene, draw_frame
from lgiformer.data.synthetic.options import STREAMS

__all__ = ["render_clip", "save_class_strip"]


def _smooth_noise(rng: np.random.Generator, num_frames: int, amp: float, freq: Tuple[float, float]) -> np.ndarray:
    """Two random sinusoids (cycles per frame in ``freq``): smooth jitter of amplitude ~``amp``."""
    t = np.arange(num_frames)
    out = np.zeros(num_frames)
    for w in (1.0, 0.5):
        out += w * np.sin(2 * np.pi * rng.uniform(*freq) * t + rng.uniform(0, 2 * np.pi))
    return amp * out / 1.5


def _blinks(num_frames: int, rng: np.random.Generator) -> np.ndarray:
    """Eye closure in [0, 1]: about one blink per 2.5 s at 25 fps, each 4-6 frames long."""
    out = np.zeros(num_frames)
    t = np.arange(num_frames)
    for _ in range(int(rng.poisson(num_frames / 60.0))):
        c, half = rng.uniform(-1, num_frames), rng.uniform(2.0, 3.0)
        out = np.maximum(out, np.clip(1.0 - np.abs(t - c) / half, 0.0, 1.0) * 1.3)
    return np.clip(out, 0.0, 1.0)


def _talking(num_frames: int, rng: np.random.Generator) -> np.ndarray:
    """Mouth opening in [0, ~0.85] from syllable-rate oscillations with a random pause."""
    t = np.arange(num_frames)
    s = np.sin(2 * np.pi * rng.uniform(0.12, 0.22) * t + rng.uniform(0, 6.3))
    s = s + 0.6 * np.sin(2 * np.pi * rng.uniform(0.25, 0.4) * t + rng.uniform(0, 6.3))
    out = np.clip(s, 0.0, None) / 1.6 * rng.uniform(0.45, 0.85)
    if rng.random() < 0.5:
        p0 = rng.uniform(0, num_frames)
        out[(t >= p0) & (t < p0 + rng.uniform(4, 12))] = 0.0
    return out


def render_clip(identity: Identity, expression: Optional[str], num_frames: int, size: int,
                rng: np.random.Generator, talking: bool, *, intensity: Optional[float] = None,
                channels: Optional[np.ndarray] = None, blinks: bool = True, noise: bool = True,
                return_info: bool = False, zoom: float = 1.0) -> Any:
    """Render one clip.

    ``expression`` is a class name (``CLASSES``) or ``None``; ``channels`` (``[T, len(CHANNELS)]``, e.g. from
    :func:`random_au_curves`) replaces the class curves. ``intensity`` fixes the apex scale (default U(0.6, 1)).
    Returns ``(frames uint8 [T, H, W, 3], aus float32 [T, len(AU_NAMES)] in [0, 1])``; the AU intensities are those
    drawn, talking included (it opens the lips: AU25 / AU26). With ``return_info`` a dict of timing and scene
    details is appended. ``zoom`` scales the head about its place in the frame (camera framing, after every random
    draw, so zoom 1 renders exactly what earlier versions did).
    """
    if size < 16 or num_frames < 1:
        raise ValueError(f"render_clip needs size >= 16 and num_frames >= 1, got {size}, {num_frames}")
    scene = Scene.sample(rng, size)
    if not noise:
        scene.noise = 0.0
    curves, pose_x = expression_curves(expression, num_frames, rng, intensity)
    if channels is not None:
        curves = np.asarray(channels, np.float64).reshape(num_frames, len(CHANNELS))
    curves = curves.copy()
    talk = _talking(num_frames, rng) if talking else np.zeros(num_frames)
    curves[:, CHANNEL_INDEX["AU25"]] = np.maximum(curves[:, CHANNEL_INDEX["AU25"]], talk)
    curves[:, CHANNEL_INDEX["AU26"]] = np.maximum(curves[:, CHANNEL_INDEX["AU26"]], 0.5 * talk)
    curves = np.clip(curves, 0.0, 1.0)
    blink = _blinks(num_frames, rng) if blinks else np.zeros(num_frames)
    # Head pose: a per-video placement plus smooth jitter plus the expression's own head motion.
    base = dict(tx=rng.uniform(-0.04, 0.04), ty=rng.uniform(-0.01, 0.04), rot=rng.uniform(-0.08, 0.08),
                scale=rng.uniform(0.86, 1.04), yaw=rng.uniform(-0.4, 0.4))
    base["scale"] *= zoom
    jit = dict(tx=_smooth_noise(rng, num_frames, 0.012, (0.01, 0.06)),
               ty=_smooth_noise(rng, num_frames, 0.008, (0.01, 0.06)),
               rot=_smooth_noise(rng, num_frames, 0.035, (0.01, 0.05)),
               scale=_smooth_noise(rng, num_frames, 0.015, (0.005, 0.04)),
               yaw=_smooth_noise(rng, num_frames, 0.25, (0.005, 0.04)))
    gaze_x = _smooth_noise(rng, num_frames, 0.006, (0.01, 0.08))
    gaze_y = _smooth_noise(rng, num_frames, 0.003, (0.01, 0.08))
    flicker = 1.0 + rng.normal(0.0, 0.008, num_frames)
    frames = np.empty((num_frames, size, size, 3), np.uint8)
    for t in range(num_frames):
        st = {k: float(base[k] + jit[k][t] + pose_x[k][t]) for k in base}
        st["scale"] = base["scale"] * (1.0 + jit["scale"][t] + pose_x["scale"][t])
        st.update(au=curves[t], blink=float(blink[t]), gaze=(float(gaze_x[t]), float(gaze_y[t])),
                  flicker=float(flicker[t]))
        frames[t] = draw_frame(identity, scene, st, rng)
    aus = curves[:, : len(AU_NAMES)].astype(np.float32)
    if return_info:
        return frames, aus, {"talking": bool(talking), "blinks": int((np.diff(blink > 0.5, prepend=0) > 0).sum())}
    return frames, aus


def save_class_strip(path: Any, *, seed: int = 0, size: int = 80, num_frames: int = 32, columns: int = 8) -> Path:
    """PNG with one row per class (DFEW order): ``columns`` evenly spaced frames of one clip at full intensity, class
    name on the left; 256-colour palette to keep the file small (~100 KB at the defaults)."""
    label_w = 64
    sheet = Image.new("RGB", (label_w + columns * size, len(CLASSES) * size), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    picks = np.linspace(0, num_frames - 1, columns).round().astype(int)
    for row, name in enumerate(CLASSES):
        rng = np.random.default_rng([seed, STREAMS["strip"], row])
        ident = Identity.sample(rng)
        frames, _ = render_clip(ident, None if name == "Neutral" else name, num_frames, size, rng, talking=False,
                                intensity=1.0, blinks=False, noise=False)
        for c, t in enumerate(picks):
            sheet.paste(Image.fromarray(frames[t]), (label_w + c * size, row * size))
        draw.text((4, row * size + size // 2 - 6), name, fill=(0, 0, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.quantize(colors=256, dither=Image.Dither.NONE).save(path, optimize=True)
    return path
