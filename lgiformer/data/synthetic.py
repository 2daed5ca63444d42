"""Deterministic procedural face videos: the project's embedded default data set.

Faces are drawn with numpy as soft implicit shapes in a head-centred coordinate frame, so that per-frame head pose
(translation, rotation, scale, pseudo-yaw) is one inverse transform of the pixel grid. Expressions are action-unit
(AU) trajectories with onset / apex / offset dynamics; the seven DFEW classes are AU combinations that also differ in
their timing and head motion. Blinks, talking and pose jitter are distractors. See ``docs/SYNTHETIC.md``.

Python API::

    generate(out_dir, seed=0, unlabeled_clips=160, ...) -> meta dict      # always (re)generates
    ensure_synthetic(out_dir, **options) -> meta dict                      # generates only if absent / different
    render_clip(identity, "Happy", 32, 112, rng, talking=False) -> (frames uint8 [T,H,W,3], aus float32 [T,9])

CLI::

    python -m lgiformer.data.synthetic --out data/synthetic [--seed 0] [--parts unlabeled,labeled,au] ...

Every item (video, clip, identity) draws from its own generator ``np.random.default_rng([seed, part, index])``, so the
output is byte-for-byte reproducible and independent of generation order and of the number of worker processes.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

__all__ = ["GENERATOR_VERSION", "CLASSES", "AU_NAMES", "SyntheticOptions", "Identity", "ExpressionSpec",
           "EXPRESSIONS", "render_clip", "generate", "ensure_synthetic", "auto_workers", "find_existing",
           "save_class_strip", "main"]

GENERATOR_VERSION = 2                  # 2: labeled/au_labels.csv; mp4 frames converted to YUV in numpy
CLASSES: Tuple[str, ...] = ("Happy", "Sad", "Neutral", "Angry", "Surprise", "Disgust", "Fear")   # DFEW order
AU_NAMES: Tuple[str, ...] = ("AU1", "AU2", "AU4", "AU6", "AU9", "AU12", "AU15", "AU25", "AU26")
# Internal control channels after the labelled AUs: lip pressor (Angry), lip stretcher (Fear), upper-lid raiser
# (Surprise / Fear), upper-lip raiser (Disgust). They move the face but are not part of the AU labels.
_EXTRA = ("press", "stretch", "lid", "lipraise")
CHANNELS: Tuple[str, ...] = AU_NAMES + _EXTRA
_CH = {name: i for i, name in enumerate(CHANNELS)}
AU_INVALID = 9                     # label code of an unannotated AU entry in au/labels.csv
PARTS = ("unlabeled", "labeled", "au")
# Sub-streams of the seed: one integer per (part, kind of item). Never renumber: outputs depend on them.
_STREAM = {"unlabeled": 1, "unlabeled_id": 2, "labeled": 3, "labeled_id": 4, "au": 5, "au_id": 6, "au_mask": 7,
           "folds": 8, "strip": 9}


# ---------------------------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class SyntheticOptions:
    """Every knob of the generator; all of them are recorded in ``meta.json`` and decide whether to regenerate."""

    seed: int = 0
    size: int = 112                          # frame height = width (even, for yuv420p)
    fps: int = 25
    num_frames: int = 32                     # frames per unlabeled video
    labeled_frames: int = 32                 # frames per labeled (DFEW-like) clip
    au_frames: int = 32                      # frames per AU clip
    unlabeled_clips: int = 160
    clips_per_identity: int = 2              # unlabeled videos per identity ("many identities")
    subjects: int = 10                       # labeled subjects (>= 5: five subject-disjoint folds)
    clips_per_class_per_subject: int = 2
    au_subjects: int = 6                     # AU-set subjects (>= 3: three subject-exclusive folds)
    au_clips: int = 48
    jpeg_quality: int = 90
    crf: int = 20                            # H.264 quality of the unlabeled videos
    face_zoom: float = 1.0                   # camera framing: 1 = loose (head ~45 % of the width), 1.6 = face crop
    parts: Tuple[str, ...] = PARTS

    def __post_init__(self) -> None:
        if isinstance(self.parts, str):
            self.parts = tuple(p.strip() for p in self.parts.split(",") if p.strip())
        bad = [p for p in self.parts if p not in PARTS]
        self.parts = tuple(p for p in PARTS if p in set(self.parts))   # canonical order
        for name in ("seed", "size", "fps", "num_frames", "labeled_frames", "au_frames", "unlabeled_clips",
                     "clips_per_identity", "subjects", "clips_per_class_per_subject", "au_subjects", "au_clips",
                     "jpeg_quality", "crf"):
            setattr(self, name, int(getattr(self, name)))
        self.face_zoom = float(self.face_zoom)
        problems = []
        if bad or not self.parts:
            problems.append(f"parts must be a non-empty subset of {PARTS}")
        if self.size < 32 or self.size % 2:
            problems.append(f"size must be an even number >= 32, got {self.size}")
        for name in ("num_frames", "labeled_frames", "au_frames"):
            if getattr(self, name) < 2:
                problems.append(f"{name} must be >= 2")
        if self.unlabeled_clips < 1 or self.clips_per_identity < 1 or self.clips_per_class_per_subject < 1:
            problems.append("unlabeled_clips, clips_per_identity and clips_per_class_per_subject must be >= 1")
        if self.subjects < 5:
            problems.append(f"subjects must be >= 5 (five subject-disjoint folds), got {self.subjects}")
        if self.au_subjects < 3 or self.au_clips < self.au_subjects:
            problems.append(f"au_subjects must be >= 3 and au_clips >= au_subjects, got {self.au_subjects}, "
                            f"{self.au_clips}")
        if not 1 <= self.jpeg_quality <= 100 or not 0 <= self.crf <= 51 or self.seed < 0 or self.fps < 1:
            problems.append("jpeg_quality must be in 1..100, crf in 0..51, seed >= 0, fps >= 1")
        if not 0.5 <= self.face_zoom <= 3.0:
            problems.append(f"face_zoom must be in [0.5, 3], got {self.face_zoom}")
        if problems:
            raise ValueError("invalid synthetic data options: " + "; ".join(problems))

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["parts"] = list(self.parts)
        return d


def check_options(options: Mapping[str, Any]) -> SyntheticOptions:
    """The options of a recipe's ``data.synthetic``, checked before anything runs: a ValueError names unknown keys
    (with the valid ones) and bad values."""
    valid = [f.name for f in dataclasses.fields(SyntheticOptions)]
    unknown = [str(k) for k in options if k not in valid]
    if unknown:
        hint = (" (a YAML mapping needs a space after each colon: {subjects: 40})"
                if any(":" in k for k in unknown) else "")
        raise ValueError(f"unknown synthetic data option(s) {unknown}{hint}; valid: {', '.join(valid)}")
    return SyntheticOptions(**options)


# ---------------------------------------------------------------------------------------------------------------
# Identities and expressions
# ---------------------------------------------------------------------------------------------------------------
_SKIN_LIGHT, _SKIN_DARK = np.array([0.97, 0.82, 0.71]), np.array([0.33, 0.20, 0.13])
_HAIR = np.array([[0.07, 0.05, 0.04], [0.30, 0.19, 0.10], [0.55, 0.38, 0.20], [0.86, 0.72, 0.45],
                  [0.58, 0.24, 0.10], [0.62, 0.61, 0.60]])
_EYES = np.array([[0.30, 0.18, 0.08], [0.15, 0.09, 0.05], [0.25, 0.45, 0.65], [0.30, 0.45, 0.25],
                  [0.45, 0.35, 0.20]])


@dataclasses.dataclass(frozen=True)
class Identity:
    """Appearance of one person (lengths in image-width units at head scale 1; colours RGB in [0, 1])."""

    skin: Tuple[float, float, float]
    hair: Tuple[float, float, float]
    hair_style: int                  # 0 short, 1 long, 2 buzz cut, 3 voluminous
    hair_part: float
    eye_color: Tuple[float, float, float]
    lip_color: Tuple[float, float, float]
    brow_color: Tuple[float, float, float]
    head_a: float
    head_b: float
    eye_x: float
    eye_y: float
    eye_w: float
    eye_h: float
    brow_gap: float
    brow_w: float
    brow_th: float
    brow_arch: float
    nose_y: float
    nose_w: float
    mouth_y: float
    mouth_w: float
    lip_th: float
    beard: float                     # 0: none, else opacity
    glasses: bool
    glasses_color: Tuple[float, float, float]

    @classmethod
    def sample(cls, rng: np.random.Generator) -> "Identity":
        t = rng.random()
        skin = np.clip((1 - t) * _SKIN_LIGHT + t * _SKIN_DARK + rng.normal(0, 0.025, 3), 0, 1)
        hair = np.clip(_HAIR[rng.integers(len(_HAIR))] * rng.uniform(0.85, 1.15) + rng.normal(0, 0.02, 3), 0, 1)
        brow = np.clip(0.55 * hair + 0.45 * skin * 0.35 if hair.mean() > 0.4 else hair * 1.05, 0, 1)
        lip = np.clip(skin * np.array([0.88, 0.58, 0.58]) + np.array([0.06, 0.0, 0.01]), 0, 1)
        head_b = rng.uniform(0.36, 0.41)
        eye_y = rng.uniform(-0.06, -0.03)
        nose_y = eye_y + rng.uniform(0.11, 0.14)
        return cls(
            skin=tuple(skin), hair=tuple(hair), hair_style=int(rng.choice(4, p=[0.4, 0.3, 0.1, 0.2])),
            hair_part=float(rng.uniform(-1, 1)),
            eye_color=tuple(np.clip(_EYES[rng.integers(len(_EYES))] + rng.normal(0, 0.03, 3), 0, 1)),
            lip_color=tuple(lip), brow_color=tuple(brow),
            head_a=float(rng.uniform(0.27, 0.32)), head_b=float(head_b),
            eye_x=float(rng.uniform(0.1, 0.125)), eye_y=float(eye_y), eye_w=float(rng.uniform(0.05, 0.063)),
            eye_h=float(rng.uniform(0.021, 0.028)), brow_gap=float(rng.uniform(0.042, 0.056)),
            brow_w=float(rng.uniform(0.058, 0.072)), brow_th=float(rng.uniform(0.015, 0.023)),
            brow_arch=float(rng.uniform(0.0, 0.012)), nose_y=float(nose_y), nose_w=float(rng.uniform(0.026, 0.036)),
            mouth_y=float(nose_y + rng.uniform(0.075, 0.095)), mouth_w=float(rng.uniform(0.07, 0.088)),
            lip_th=float(rng.uniform(0.011, 0.016)),
            beard=float(rng.uniform(0.55, 0.9)) if rng.random() < 0.12 else 0.0,
            glasses=bool(rng.random() < 0.2),
            glasses_color=tuple(rng.choice([[0.08, 0.08, 0.08], [0.45, 0.3, 0.15], [0.7, 0.7, 0.72]])),
        )


@dataclasses.dataclass(frozen=True)
class ExpressionSpec:
    """One class: apex weights of the channels, timing ranges (fractions of the clip), head motion at apex."""

    channels: Dict[str, float]
    start: Tuple[float, float] = (0.05, 0.25)      # when the onset begins
    onset: Tuple[float, float] = (0.15, 0.3)       # rise time
    apex: Tuple[float, float] = (0.3, 0.6)         # hold time
    offset: Tuple[float, float] = (0.25, 0.4)      # decay time
    lag: Dict[str, float] = dataclasses.field(default_factory=dict)        # extra delay per channel
    optional: Dict[str, Tuple[float, float]] = dataclasses.field(default_factory=dict)   # ch -> (prob, weight)
    pose: Dict[str, float] = dataclasses.field(default_factory=dict)       # tx ty rot scale yaw at apex
    tremor: float = 0.0                            # relative intensity tremor (Fear)


EXPRESSIONS: Dict[str, ExpressionSpec] = {
    # Smile: lip corners up and out, cheeks raise slightly later; medium onset, long apex; head tilts a little.
    "Happy": ExpressionSpec({"AU6": 0.85, "AU12": 1.0}, onset=(0.15, 0.3), lag={"AU6": 0.06},
                            optional={"AU25": (0.4, 0.7)}, pose={"rot": 0.05, "ty": -0.01}),
    # Inner brows up and together, lip corners down; slow onset that never fully decays; head droops.
    "Sad": ExpressionSpec({"AU1": 0.9, "AU4": 0.6, "AU15": 1.0}, start=(0.0, 0.12), onset=(0.4, 0.55),
                          apex=(0.5, 0.8), offset=(0.4, 0.6), lag={"AU15": 0.05}, pose={"ty": 0.03, "rot": 0.02}),
    "Neutral": ExpressionSpec({}),
    # Brows lowered and drawn together, lips pressed; fairly quick onset, sustained; head pushes forward.
    "Angry": ExpressionSpec({"AU4": 1.0, "press": 1.0}, onset=(0.1, 0.18), apex=(0.45, 0.7), offset=(0.3, 0.5),
                            pose={"scale": 0.045, "ty": 0.012}),
    # Brows up, eyes wide, jaw drops: very fast onset, short apex, quick release; head pulls back.
    "Surprise": ExpressionSpec({"AU1": 1.0, "AU2": 1.0, "AU25": 1.0, "AU26": 1.0, "lid": 1.0}, start=(0.05, 0.35),
                               onset=(0.03, 0.08), apex=(0.15, 0.3), offset=(0.2, 0.35), lag={"AU26": 0.02},
                               pose={"scale": -0.04, "ty": -0.015}),
    # Nose wrinkles, upper lip up, corners down, brows a bit lowered; medium onset; head turns away.
    "Disgust": ExpressionSpec({"AU9": 1.0, "AU15": 0.7, "AU4": 0.5, "lipraise": 1.0}, onset=(0.15, 0.25),
                              apex=(0.3, 0.55), pose={"yaw": 0.7, "rot": -0.05}),
    # Brows raised yet drawn together, eyes wide, lips part and stretch; fast onset with tremor; head recoils.
    "Fear": ExpressionSpec({"AU1": 0.9, "AU2": 0.8, "AU4": 0.8, "AU25": 0.9, "stretch": 1.0, "lid": 0.8},
                           start=(0.05, 0.3), onset=(0.07, 0.14), apex=(0.35, 0.6), offset=(0.3, 0.5), tremor=0.12,
                           pose={"scale": -0.03, "ty": -0.01}),
}


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _profile(num_frames: int, start: float, onset: float, apex: float, offset: float) -> np.ndarray:
    """Onset-apex-offset curve in [0, 1] over the clip; times are fractions of the clip length."""
    tau = (np.arange(num_frames) + 0.5) / num_frames
    rise = _smoothstep((tau - start) / max(onset, 1e-3))
    fall = 1.0 - _smoothstep((tau - start - onset - apex) / max(offset, 1e-3))
    return rise * fall


def _uniform(rng: np.random.Generator, lo_hi: Tuple[float, float]) -> float:
    return float(rng.uniform(*lo_hi))


def expression_curves(expression: Optional[str], num_frames: int, rng: np.random.Generator,
                      intensity: Optional[float] = None) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    """Channel intensities ``[T, len(CHANNELS)]`` and head-pose offsets (``tx ty rot scale yaw`` -> ``[T]``)."""
    curves = np.zeros((num_frames, len(CHANNELS)), np.float64)
    pose = {k: np.zeros(num_frames) for k in ("tx", "ty", "rot", "scale", "yaw")}
    if expression is None:
        return curves, pose
    if expression not in EXPRESSIONS:
        raise ValueError(f"unknown expression {expression!r}; expected one of {CLASSES} or None")
    spec = EXPRESSIONS[expression]
    amp = float(rng.uniform(0.6, 1.0)) if intensity is None else float(intensity)
    start, onset = _uniform(rng, spec.start), _uniform(rng, spec.onset)
    apex, offset = _uniform(rng, spec.apex), _uniform(rng, spec.offset)
    channels = dict(spec.channels)
    for ch, (prob, weight) in spec.optional.items():
        if rng.random() < prob:
            channels[ch] = weight
    base = _profile(num_frames, start, onset, apex, offset)
    tremor = np.ones(num_frames)
    if spec.tremor:
        t = np.arange(num_frames)
        tremor = 1.0 + spec.tremor * np.sin(2 * np.pi * rng.uniform(0.22, 0.32) * t + rng.uniform(0, 2 * np.pi))
    for ch, weight in channels.items():
        lag = spec.lag.get(ch, 0.0) * rng.uniform(0.5, 1.5) + rng.uniform(0.0, 0.02)
        curves[:, _CH[ch]] = weight * amp * _profile(num_frames, start + lag, onset, apex, offset) * tremor
    sign = 1.0 if rng.random() < 0.5 else -1.0        # which way the head turns / tilts
    for k, v in spec.pose.items():
        pose[k] = base * amp * v * (sign if k in ("yaw", "rot") else 1.0)
    if spec.tremor:
        pose["tx"] = pose["tx"] + base * 0.006 * np.sin(np.arange(num_frames) * 2.1 + rng.uniform(0, 6.3))
    return np.clip(curves, 0.0, 1.0), pose


def random_au_curves(num_frames: int, rng: np.random.Generator, p_active: float = 0.3) -> np.ndarray:
    """Independent AU events (for the AU set): each AU is active with ``p_active`` and has its own timing."""
    curves = np.zeros((num_frames, len(CHANNELS)), np.float64)
    for i in range(len(AU_NAMES)):
        if rng.random() < p_active:
            prof = _profile(num_frames, rng.uniform(0.0, 0.5), rng.uniform(0.05, 0.35), rng.uniform(0.15, 0.5),
                            rng.uniform(0.1, 0.4))
            curves[:, i] = rng.uniform(0.3, 1.0) * prof
    return curves


# ---------------------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------------------
def _smooth_noise(rng: np.random.Generator, num_frames: int, amp: float, freq: Tuple[float, float]) -> np.ndarray:
    """Two random sinusoids (cycles per frame in ``freq``): smooth jitter of amplitude ~``amp``."""
    t = np.arange(num_frames)
    out = np.zeros(num_frames)
    for w in (1.0, 0.5):
        out += w * np.sin(2 * np.pi * rng.uniform(*freq) * t + rng.uniform(0, 2 * np.pi))
    return amp * out / 1.5


def _background(rng: np.random.Generator, size: int, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Per-video background: two colours mixed by a gradient, a smooth texture, stripes or a two-tone wall."""
    c1, c2 = rng.uniform(0.05, 0.95, 3), rng.uniform(0.05, 0.95, 3)
    ang = rng.uniform(0, 2 * np.pi)
    g = 0.5 + (np.cos(ang) * xs + np.sin(ang) * ys)             # gradient in [0, 1]-ish
    kind = int(rng.integers(4))
    if kind == 1:       # smooth blobs
        tex = np.zeros_like(xs)
        for _ in range(4):
            f, a = rng.uniform(2, 7), rng.uniform(0, 2 * np.pi)
            tex += np.sin(f * (np.cos(a) * xs + np.sin(a) * ys) * 2 * np.pi + rng.uniform(0, 2 * np.pi))
        g = 0.5 * g + 0.5 * (0.5 + tex / 8)
    elif kind == 2:     # stripes / tiles
        f, a = rng.uniform(4, 14), rng.uniform(0, np.pi)
        g = 0.6 * g + 0.4 * (np.sin(f * (np.cos(a) * xs + np.sin(a) * ys) * 2 * np.pi) > 0)
    elif kind == 3:     # two-tone wall with a vertical edge
        g = 0.3 * g + 0.7 * (xs > rng.uniform(-0.45, 0.45))
    g = np.clip(g, 0, 1)[..., None]
    return ((1 - g) * c1 + g * c2).astype(np.float32)


@dataclasses.dataclass
class _Scene:
    """Per-video rendering context: pixel grid, background, lighting, clothes, noise level."""

    size: int
    xs: np.ndarray
    ys: np.ndarray
    bg: np.ndarray
    light: np.ndarray         # [H, W, 3] multiplicative lighting field (with colour tint)
    light_dir: Tuple[float, float]
    shirt: np.ndarray
    noise: float

    @classmethod
    def sample(cls, rng: np.random.Generator, size: int) -> "_Scene":
        c = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
        ys, xs = np.meshgrid(c, c, indexing="ij")
        bg = _background(rng, size, xs, ys)
        ang = rng.uniform(0, 2 * np.pi)
        strength, gain = rng.uniform(0.0, 0.45), rng.uniform(0.78, 1.12)
        tint = 1.0 + rng.uniform(-0.06, 0.06, 3)
        field = gain * (1.0 + strength * (np.cos(ang) * xs + np.sin(ang) * ys))
        light = (field[..., None] * tint).astype(np.float32)
        return cls(size, xs, ys, bg, light, (float(np.cos(ang)), float(np.sin(ang))),
                   rng.uniform(0.05, 0.9, 3).astype(np.float32), float(rng.uniform(0.0, 0.014)))


def _soft(sd: np.ndarray, inv_px: float, width: float = 1.0) -> np.ndarray:
    """Anti-aliased coverage of a shape from an approximate signed distance (negative inside)."""
    return np.clip(0.5 - sd * (inv_px / width), 0.0, 1.0)


def _over(img: np.ndarray, alpha: np.ndarray, color: Any) -> None:
    """In-place ``img = img * (1 - alpha) + color * alpha``, restricted to the bounding box where ``alpha > 0``."""
    rows = np.flatnonzero(alpha.any(axis=1))
    if rows.size == 0:
        return
    cols = np.flatnonzero(alpha.any(axis=0))
    r, c = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
    color = np.asarray(color, np.float32)
    if color.ndim == 3:
        color = color[r, c]
    sub = img[r, c]
    sub += alpha[r, c, None].astype(np.float32, copy=False) * (color - sub)


def _ellipse_sd(u: np.ndarray, v: np.ndarray, cu: float, cv: float, a: float, b: Any) -> np.ndarray:
    return (np.sqrt(((u - cu) / a) ** 2 + ((v - cv) / b) ** 2) - 1.0) * np.minimum(a, b)


class _Frame:
    """Head-centred coordinates of one frame, evaluated lazily on pixel windows that bound a face-space box."""

    def __init__(self, scene: "_Scene", tx: float, ty: float, rot: float, scale: float, yaw: float,
                 img: np.ndarray) -> None:
        self.scene, self.tx, self.ty, self.s = scene, tx, ty, scale
        self.cr, self.sr = math.cos(rot), math.sin(rot)
        self.shift = 0.045 * yaw                    # pseudo-yaw: inner features slide sideways
        self.inv_px = scene.size * scale            # 1 / (pixel size in face units)
        self.img = img

    def window(self, u0: float, u1: float, v0: float, v1: float, features: bool = True):
        """``(img view, u, v)`` on the pixels covering face box ``[u0, u1] x [v0, v1]`` (``u`` is feature-relative
        when ``features``); ``None`` when the box is off the frame."""
        shift = self.shift if features else 0.0
        us = np.array([u0, u1, u0, u1]) + shift
        vs = np.array([v0, v0, v1, v1])
        x = self.tx + self.s * (self.cr * us - self.sr * vs)
        y = self.ty + self.s * (self.sr * us + self.cr * vs)
        n = self.scene.size
        c0, c1 = max(0, int(math.floor((x.min() + 0.5) * n)) - 1), min(n, int(math.ceil((x.max() + 0.5) * n)) + 1)
        r0, r1 = max(0, int(math.floor((y.min() + 0.5) * n)) - 1), min(n, int(math.ceil((y.max() + 0.5) * n)) + 1)
        if c1 <= c0 or r1 <= r0:
            return None
        dx = self.scene.xs[r0:r1, c0:c1] - self.tx
        dy = self.scene.ys[r0:r1, c0:c1] - self.ty
        u = (self.cr * dx + self.sr * dy) * (1.0 / self.s) - shift
        v = (self.cr * dy - self.sr * dx) * (1.0 / self.s)
        return self.img[r0:r1, c0:c1], u, v


def _draw_frame(idt: Identity, scene: _Scene, st: Dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    """One RGB uint8 frame; ``st`` holds this frame's pose, channel intensities, blink and gaze."""
    au = st["au"]
    AU1, AU2, AU4, AU6, AU9, AU12, AU15, AU25, AU26 = (float(au[_CH[n]]) for n in AU_NAMES)
    press, stretch, lid, lipraise = (float(au[_CH[n]]) for n in _EXTRA)
    img = scene.bg.copy()
    fr = _Frame(scene, st["tx"], st["ty"], st["rot"], st["scale"], st["yaw"], img)
    inv_px = fr.inv_px
    a, b = idt.head_a, idt.head_b
    skin = np.asarray(idt.skin, np.float32)
    hair = np.asarray(idt.hair, np.float32)
    b_low = b + 0.05 * AU26                          # the jaw drops with AU26
    lu, lv = scene.light_dir

    def head_sd(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return (np.sqrt((u / a) ** 2 + (v / np.where(v > 0, b_low, b)) ** 2) - 1.0) * a

    def hair_tex(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return (1.0 + 0.12 * np.sin(70 * u + 6 * np.sin(25 * v)))[..., None] * hair

    # Clothes and neck.
    w = fr.window(-a * 2.0, a * 2.0, 0.1, b + 0.6, features=False)
    if w is not None:
        im, u, v = w
        _over(im, _soft(_ellipse_sd(u, v, 0.0, b + 0.3, a * 1.9, 0.26), inv_px), scene.shirt)
        _over(im, _soft(np.maximum(np.abs(u) - a * 0.45, 0.15 - v), inv_px), skin * 0.78)
    # Hair behind the head, ears, head with shading.
    w = fr.window(-a * 1.35, a * 1.35, -b * 1.35, b + 0.1, features=False)
    if w is not None:
        im, u, v = w
        if idt.hair_style == 1:
            back = np.maximum(_ellipse_sd(u, v, 0.0, 0.04, a * 1.28, b * 1.18), v - 0.3)
            _over(im, _soft(back, inv_px), hair_tex(u, v) * 0.85)
        elif idt.hair_style == 3:
            _over(im, _soft(_ellipse_sd(u, v, 0.0, -0.08, a * 1.25, b * 1.02), inv_px), hair_tex(u, v) * 0.9)
        elif idt.hair_style == 0:
            _over(im, _soft(_ellipse_sd(u, v, 0.0, -0.03, a * 1.07, b * 1.03), inv_px), hair_tex(u, v) * 0.9)
        _over(im, _soft(_ellipse_sd(np.abs(u), v, a - 0.012, idt.eye_y + 0.035, 0.03, 0.055), inv_px), skin * 0.88)
        r2 = (u / a) ** 2 + (v / np.where(v > 0, b_low, b)) ** 2
        shade = 1.0 - 0.2 * r2 * r2 + 0.12 * (lu * u / a + lv * v / b)
        _over(im, _soft((np.sqrt(r2) - 1.0) * a, inv_px), shade[..., None] * skin)

    ex, ey, ew = idt.eye_x, idt.eye_y, idt.eye_w
    ny = idt.nose_y
    brow_base = ey - idt.brow_gap
    # Mouth geometry (the nasolabial folds need it too).
    mw = idt.mouth_w * (1.0 + 0.2 * AU12 + 0.25 * stretch - 0.12 * press - 0.05 * AU15)
    cdy = -0.036 * AU12 + 0.032 * AU15 + 0.005 * stretch
    my = idt.mouth_y - 0.007 * lipraise - 0.003 * AU9

    # Mid face: cheeks (AU6), nasolabial folds (AU12 / AU9 / AU6), nose (AU9 flares, lifts and wrinkles it).
    w = fr.window(-0.2, 0.2, ey - 0.02, my + 0.06)
    if w is not None:
        im, u, v = w
        au_abs = np.abs(u)
        cheek_sd = _ellipse_sd(au_abs, v, ex + 0.01, ey + 0.085 - 0.022 * AU6, 0.05, 0.03)
        _over(im, _soft(cheek_sd, inv_px, 4.0) * (0.12 + 0.5 * AU6), np.clip(skin * 1.1 + [0.05, -0.02, -0.02], 0, 1))
        y0, y1 = ny + 0.004, my + cdy + 0.012
        u0, u1 = idt.nose_w * 1.35, mw + 0.01
        frac = (v - y0) / (y1 - y0)
        fold_sd = np.maximum(np.abs(au_abs - (u0 + (u1 - u0) * frac)) - 0.0028, (np.abs(frac - 0.5) - 0.5) * (y1 - y0))
        _over(im, _soft(fold_sd, inv_px) * (0.1 + 0.6 * max(AU12, AU9, 0.6 * AU6)), skin * 0.62)
        side = -0.012 if lu > 0 else 0.012
        bridge_sd = np.maximum(np.abs(u - side) - 0.004, np.maximum(v - ny, ey + 0.01 - v))
        _over(im, _soft(bridge_sd, inv_px, 2.0) * 0.25, skin * 0.7)
        _over(im, _soft(_ellipse_sd(u, v, 0.0, ny - 0.004 * AU9, idt.nose_w, 0.016), inv_px, 2.5) * 0.7, skin * 0.9)
        nos_sd = _ellipse_sd(au_abs, v, idt.nose_w * 0.55 * (1 + 0.25 * AU9), ny + 0.012 - 0.008 * AU9,
                             0.011 * (1 + 0.3 * AU9), 0.0065)
        _over(im, _soft(nos_sd, inv_px) * 0.9, skin * 0.35)
        if AU9 > 0.1:
            ph = (v - (ey + 0.012)) / 0.011
            d = np.abs(ph - np.round(ph)) * 0.011
            nw_sd = np.maximum(np.maximum(d - 0.002, au_abs - 0.026), np.maximum(-ph - 0.3, ph - 2.3) * 0.011)
            _over(im, _soft(nw_sd, inv_px) * (0.75 * AU9), skin * 0.6)

    # Upper face: forehead wrinkles (AU1 / AU2), glabellar lines (AU4), eyes, brows.
    w = fr.window(-0.21, 0.21, brow_base - 0.1, ey + 0.035)
    if w is not None:
        im, u, v = w
        au_abs = np.abs(u)
        raise_ = max(AU1, AU2)
        if raise_ > 0.15:
            ph = (v - (brow_base - 0.035) - 1.2 * u ** 2) / 0.017
            d = np.abs(ph - np.round(ph)) * 0.017
            wr_sd = np.maximum(np.maximum(d - 0.0022, au_abs - 0.11), np.maximum(ph - 0.5, -2.5 - ph) * 0.017)
            _over(im, _soft(wr_sd, inv_px) * (0.55 * (raise_ - 0.15) / 0.85), skin * 0.68)
        if AU4 > 0.1:
            gl_sd = np.maximum(np.abs(au_abs - 0.012) - 0.0022, np.abs(v - brow_base) - 0.018)
            _over(im, _soft(gl_sd, inv_px) * (0.65 * AU4), skin * 0.62)
        # Eyes: almond between the lids; AU6 narrows from below, the lid raiser widens, blinks close both lids.
        blink = st["blink"]
        x = (au_abs - ex) / ew
        bulge = np.clip(1.0 - x * x, 0.0, 1.0)
        eh = idt.eye_h * (1.0 - blink)
        vt = ey - eh * (1.0 - 0.35 * AU6 - 0.15 * AU4 + 0.55 * lid) * bulge
        vb = ey + eh * 0.55 * (1.0 - 0.5 * AU6) * bulge
        eye_sd = np.maximum(np.maximum(vt - v, v - vb), (np.abs(x) - 1.0) * ew)
        eye_a = _soft(eye_sd, inv_px) * np.clip((vb - vt) * inv_px, 0.0, 1.0)
        _over(im, eye_a, [0.93, 0.92, 0.89])
        gx, gy = st["gaze"]
        ir = idt.eye_h * 0.95
        iris_d = np.sqrt((u - (np.where(u >= 0, ex, -ex) + gx)) ** 2 + (v - (ey + gy)) ** 2)
        _over(im, _soft(iris_d - ir, inv_px) * eye_a, idt.eye_color)
        _over(im, _soft(iris_d - ir * 0.45, inv_px) * eye_a, [0.03, 0.03, 0.03])
        lash_sd = np.maximum(np.abs(v - vt) - 0.0032, (np.abs(x) - 1.08) * ew)
        _over(im, _soft(lash_sd, inv_px) * 0.85, np.asarray(idt.brow_color) * 0.6)
        # Brows: AU1 raises the inner end, AU2 the outer end, AU4 lowers and pulls the inner ends together.
        bw = idt.brow_w
        inner = ex - 0.85 * bw - 0.014 * AU4
        xb = (au_abs - inner) / (2 * bw)
        v_in = brow_base - 0.04 * AU1 - 0.01 * AU2 + 0.028 * AU4
        v_out = brow_base - 0.04 * AU2 - 0.006 * AU1 + 0.01 * AU4
        arch = idt.brow_arch * (1.0 + 0.8 * min(AU1, AU2)) + 0.005 * AU2
        vc = v_in + (v_out - v_in) * xb - arch * 4 * xb * (1 - xb)
        brow_sd = np.maximum(np.abs(v - vc) - idt.brow_th * (0.6 - 0.25 * xb), (np.abs(xb - 0.5) - 0.5) * 2 * bw)
        _over(im, _soft(brow_sd, inv_px) * 0.95, idt.brow_color)

    # Lower face: beard, lips, mouth cavity, teeth.
    w = fr.window(-a * 1.02, a * 1.02, ny + 0.01, b_low + 0.01)
    if w is not None:
        im, u, v = w
        if idt.beard > 0:
            line = np.maximum(my - 0.03 - 0.06 * (u / a) ** 2, ny + 0.025)
            clear = -_ellipse_sd(u, v, 0.0, my + 0.01, mw * 1.3, 0.032 + 0.05 * AU26)    # shaved round the lips
            beard_sd = np.maximum(np.maximum(head_sd(u + fr.shift, v), line - v), clear)
            _over(im, _soft(beard_sd, inv_px, 2.0) * idt.beard, hair_tex(u, v) * 0.8)
        xm = u / mw
        mb = np.clip(1.0 - xm * xm, 0.0, 1.0)
        vcm = my + cdy * xm * xm
        op = 0.022 * AU25 + 0.06 * AU26
        vu = vcm - (op * 0.3 + 0.007 * lipraise) * mb
        vl = vcm + op * 0.7 * mb
        thick = idt.lip_th * (1.0 - 0.75 * press) * (0.3 + 0.7 * np.sqrt(mb))
        side_sd = (np.abs(xm) - 1.0) * mw
        lips_sd = np.maximum(np.maximum(vu - thick - v, v - vl - 1.25 * thick), side_sd)
        _over(im, _soft(lips_sd, inv_px) * 0.9, idt.lip_color)
        cav_sd = np.maximum(np.maximum(vu - v, v - vl), side_sd)
        _over(im, _soft(cav_sd, inv_px), [0.22, 0.06, 0.07])
        teeth_sd = np.maximum(cav_sd, v - (vu + np.minimum(0.009, 0.4 * (vl - vu))))
        _over(im, _soft(teeth_sd, inv_px) * np.clip((vl - vu) * inv_px - 1.0, 0, 1), [0.9, 0.88, 0.82])

    # Hairline / fringe, glasses.
    w = fr.window(-a * 1.05, a * 1.05, -b * 1.05, 0.05, features=False)
    if w is not None:
        im, u, v = w
        if idt.hair_style != 2:
            hl = -0.55 * b + 0.38 * b * (u / a) ** 2 + 0.04 * idt.hair_part * u / a
            _over(im, _soft(np.maximum(head_sd(u, v) - 0.004, v - hl), inv_px), hair_tex(u, v))
        else:
            buzz_sd = np.maximum(head_sd(u, v), v - (-0.6 * b + 0.3 * b * (u / a) ** 2))
            _over(im, _soft(buzz_sd, inv_px) * 0.55, hair_tex(u, v))
    if idt.glasses:
        R = ew * 1.3
        w = fr.window(-(ex + R + 0.01), ex + R + 0.01, ey - R - 0.01, ey + R + 0.01)
        if w is not None:
            im, u, v = w
            au_abs = np.abs(u)
            ring = np.abs(np.sqrt((au_abs - ex) ** 2 + (v - ey) ** 2) - R) - 0.004
            bridge = np.maximum(au_abs - (ex - R), np.abs(v - (ey - 0.006)) - 0.003)
            _over(im, _soft(np.minimum(ring, bridge), inv_px), idt.glasses_color)

    img *= scene.light * st["flicker"]
    if scene.noise > 0:
        img += rng.normal(0.0, scene.noise, img.shape).astype(np.float32)
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


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
    scene = _Scene.sample(rng, size)
    if not noise:
        scene.noise = 0.0
    curves, pose_x = expression_curves(expression, num_frames, rng, intensity)
    if channels is not None:
        curves = np.asarray(channels, np.float64).reshape(num_frames, len(CHANNELS))
    curves = curves.copy()
    talk = _talking(num_frames, rng) if talking else np.zeros(num_frames)
    curves[:, _CH["AU25"]] = np.maximum(curves[:, _CH["AU25"]], talk)
    curves[:, _CH["AU26"]] = np.maximum(curves[:, _CH["AU26"]], 0.5 * talk)
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
        frames[t] = _draw_frame(identity, scene, st, rng)
    aus = curves[:, : len(AU_NAMES)].astype(np.float32)
    if return_info:
        return frames, aus, {"talking": bool(talking), "blinks": int((np.diff(blink > 0.5, prepend=0) > 0).sum())}
    return frames, aus


# ---------------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------------
_CODEC: Optional[str] = None


def _video_codec() -> str:
    global _CODEC
    if _CODEC is None:
        import av

        _CODEC = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        if _CODEC != "libx264":
            log.warning("libx264 is not available in PyAV; writing mpeg4 videos instead")
    return _CODEC


def _rgb_to_yuv420p(rgb: np.ndarray) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB -> ``[3H/2, W]`` planar YUV 4:2:0, BT.601 limited range (what decoders assume), chroma
    averaged over 2 x 2 pixels. Done here rather than by swscale, whose conversion made a second generation in the
    same process give other mp4 bytes. (libx264 itself can still encode the odd frame differently in a process that
    has done other work first, e.g. trained a model; a fresh process always gives the same bytes.)"""
    x = rgb.astype(np.float32)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    y = 16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0
    u = 128.0 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255.0
    v = 128.0 + (112.0 * r - 93.786 * g - 18.214 * b) / 255.0
    h, w = y.shape

    def pool(c: np.ndarray) -> np.ndarray:  # 2 x 2 mean, laid out as PyAV's [3H/2, W] planar array expects
        return c.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3)).reshape(h // 4, w)

    planes = np.concatenate([y, pool(u), pool(v)])
    return np.clip(np.rint(planes), 0, 255).astype(np.uint8)


def _write_mp4(path: Path, frames: np.ndarray, fps: int, crf: int) -> None:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".part.mp4")
    codec = _video_codec()
    with av.open(str(tmp), "w", format="mp4") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1
        if codec == "libx264":
            stream.options = {"crf": str(crf), "preset": "veryfast", "threads": "1"}
        else:
            stream.options = {"qscale": "3", "threads": "1"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(_rgb_to_yuv420p(f), format="yuv420p")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)


def _write_frames(folder: Path, frames: np.ndarray, quality: int) -> None:
    """``folder/1.jpg ... folder/T.jpg`` (not zero padded, like DFEW); stale extra frames are removed."""
    folder.mkdir(parents=True, exist_ok=True)
    names = set()
    for k, f in enumerate(frames, start=1):
        buf = io.BytesIO()
        Image.fromarray(f).save(buf, format="JPEG", quality=quality, subsampling=2, optimize=False)
        (folder / f"{k}.jpg").write_bytes(buf.getvalue())
        names.add(f"{k}.jpg")
    for p in folder.iterdir():
        if p.suffix == ".jpg" and p.name not in names:
            p.unlink()


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text, encoding="utf-8", newline="\n")
    os.replace(tmp, path)


def _rng(opts: SyntheticOptions, stream: str, index: int) -> np.random.Generator:
    return np.random.default_rng([opts.seed, _STREAM[stream], index])


def _identity(opts: SyntheticOptions, stream: str, index: int) -> Identity:
    return Identity.sample(_rng(opts, stream, index))


def _unlabeled_item(out: Path, opts: SyntheticOptions, i: int) -> Dict[str, Any]:
    rng = _rng(opts, "unlabeled", i)
    ident = _identity(opts, "unlabeled_id", i // opts.clips_per_identity)
    expression = None if rng.random() < 0.3 else CLASSES[int(rng.integers(len(CLASSES)))]
    talking = bool(rng.random() < 0.7)
    frames, _ = render_clip(ident, expression, opts.num_frames, opts.size, rng, talking,
                            intensity=float(rng.uniform(0.3, 1.0)), zoom=opts.face_zoom)
    _write_mp4(out / "unlabeled" / "videos" / f"{i:05d}.mp4", frames, opts.fps, opts.crf)
    return {}


def _labeled_item(out: Path, opts: SyntheticOptions, i: int) -> Dict[str, Any]:
    reps = opts.clips_per_class_per_subject
    subject, label, rep = i // (len(CLASSES) * reps), (i // reps) % len(CLASSES), i % reps
    rng = _rng(opts, "labeled", i)
    ident = _identity(opts, "labeled_id", subject)
    talking = bool(rng.random() < 0.25)
    frames, aus = render_clip(ident, None if CLASSES[label] == "Neutral" else CLASSES[label], opts.labeled_frames,
                              opts.size, rng, talking, zoom=opts.face_zoom)
    _write_frames(out / "labeled" / "frames" / f"{i:05d}", frames, opts.jpeg_quality)
    peak = int(np.argmax(aus.max(axis=1))) if aus.max() > 0 else -1
    return {"subject": subject, "label": label, "rep": rep, "talking": talking, "peak_frame": peak,
            "peak": float(aus.max()), "aus": (aus >= 0.5).astype(np.int64).tolist()}


def _au_item(out: Path, opts: SyntheticOptions, i: int) -> Dict[str, Any]:
    rng = _rng(opts, "au", i)
    subject = i % opts.au_subjects
    ident = _identity(opts, "au_id", subject)
    talking = bool(rng.random() < 0.3)
    if rng.random() < 0.5:
        expr = CLASSES[int(rng.integers(len(CLASSES)))]
        frames, aus = render_clip(ident, None if expr == "Neutral" else expr, opts.au_frames, opts.size, rng,
                                  talking, intensity=float(rng.uniform(0.3, 1.0)), zoom=opts.face_zoom)
    else:
        frames, aus = render_clip(ident, None, opts.au_frames, opts.size, rng, talking,
                                  channels=random_au_curves(opts.au_frames, rng), zoom=opts.face_zoom)
    _write_frames(out / "au" / "frames" / f"{i:05d}", frames, opts.jpeg_quality)
    labels = (aus >= 0.5).astype(np.int64)
    mrng = _rng(opts, "au_mask", i)
    labels[mrng.random(labels.shape) < 0.01] = AU_INVALID           # single unannotated entries
    labels[mrng.random(labels.shape[0]) < 0.01] = AU_INVALID        # whole unannotated frames
    return {"subject": subject, "labels": labels.tolist()}


_ITEM_FN = {"unlabeled": _unlabeled_item, "labeled": _labeled_item, "au": _au_item}


def _run_chunk(part: str, out: str, opts_dict: Dict[str, Any], indices: Sequence[int]) -> List[Dict[str, Any]]:
    opts = SyntheticOptions(**opts_dict)
    return [_ITEM_FN[part](Path(out), opts, i) for i in indices]


def _run_part(part: str, out: Path, opts: SyntheticOptions, count: int, pool: Optional[ProcessPoolExecutor],
              workers: int, progress: bool) -> List[Dict[str, Any]]:
    from tqdm.auto import tqdm

    bar = tqdm(total=count, desc=f"synthetic {part}", unit="clip", disable=not progress, leave=False)
    results: List[Dict[str, Any]] = []
    try:
        if pool is None:
            for i in range(count):
                results.append(_ITEM_FN[part](out, opts, i))
                bar.update(1)
        else:
            chunk = max(1, min(16, count // (workers * 4)))
            chunks = [list(range(s, min(count, s + chunk))) for s in range(0, count, chunk)]
            futures = [pool.submit(_run_chunk, part, str(out), opts.to_dict(), c) for c in chunks]
            for fut in futures:                             # in order: results stay index-aligned
                res = fut.result()
                results.extend(res)
                bar.update(len(res))
    finally:
        bar.close()
    return results


def _folds(subjects: int, num_folds: int, rng: np.random.Generator) -> List[List[int]]:
    order = rng.permutation(subjects)
    return [sorted(int(s) for s in order[f::num_folds]) for f in range(num_folds)]


def _write_labeled_lists(out: Path, opts: SyntheticOptions, results: List[Dict[str, Any]]) -> Dict[str, Any]:
    folds = _folds(opts.subjects, 5, _rng(opts, "folds", 0))
    rows = [(f"labeled/frames/{i:05d}", r["label"], r["subject"]) for i, r in enumerate(results)]
    for f, test_subjects in enumerate(folds, start=1):
        test = set(test_subjects)
        _write_text(out / "labeled" / "lists" / f"train_fold{f}.txt",
                    "".join(f"{p} {y}\n" for p, y, s in rows if s not in test))
        _write_text(out / "labeled" / "lists" / f"test_fold{f}.txt",
                    "".join(f"{p} {y}\n" for p, y, s in rows if s in test))
    _write_text(out / "labeled" / "classes.txt", "".join(c + "\n" for c in CLASSES))
    lines = ["path,subject,label,class,rep,talking,peak_frame,peak"]
    for i, r in enumerate(results):
        lines.append(f"labeled/frames/{i:05d},{_subject_id('L', r['subject'])},{r['label']},{CLASSES[r['label']]},"
                     f"{r['rep']},{int(r['talking'])},{r['peak_frame']},{r['peak']:.3f}")
    _write_text(out / "labeled" / "clips.csv", "\n".join(lines) + "\n")
    # The clips' per-frame AUs (the AU part's CSV format, every entry annotated): multi-task DFER + AU training.
    au_rows = [f"labeled/frames/{i:05d},{t},{_subject_id('L', r['subject'])}," + ",".join(map(str, lab)) + "\n"
               for i, r in enumerate(results) for t, lab in enumerate(r["aus"])]
    header = "path,frame,subject," + ",".join(AU_NAMES) + "\n"
    _write_text(out / "labeled" / "au_labels.csv", header + "".join(au_rows))
    return {str(f): [_subject_id("L", s) for s in subs] for f, subs in enumerate(folds, start=1)}


def _subject_id(prefix: str, index: int) -> str:
    return f"{prefix}{index:03d}"


def _write_au_lists(out: Path, opts: SyntheticOptions, results: List[Dict[str, Any]]) -> Dict[str, Any]:
    header = "path,frame,subject," + ",".join(AU_NAMES) + "\n"
    rows: List[Tuple[int, str]] = []
    for i, r in enumerate(results):
        sid = _subject_id("A", r["subject"])
        for t, lab in enumerate(r["labels"]):
            rows.append((r["subject"], f"au/frames/{i:05d},{t},{sid}," + ",".join(str(x) for x in lab) + "\n"))
    _write_text(out / "au" / "labels.csv", header + "".join(line for _, line in rows))
    folds = _folds(opts.au_subjects, 3, _rng(opts, "folds", 1))
    for f, test_subjects in enumerate(folds, start=1):
        test = set(test_subjects)
        _write_text(out / "au" / "lists" / f"train_fold{f}.csv",
                    header + "".join(line for s, line in rows if s not in test))
        _write_text(out / "au" / "lists" / f"test_fold{f}.csv",
                    header + "".join(line for s, line in rows if s in test))
    return {str(f): [_subject_id("A", s) for s in subs] for f, subs in enumerate(folds, start=1)}


def _counts(opts: SyntheticOptions) -> Dict[str, int]:
    return {"unlabeled": opts.unlabeled_clips, "labeled": opts.subjects * len(CLASSES) *
            opts.clips_per_class_per_subject, "au": opts.au_clips}


def generate(out_dir: Any, *, seed: int = 0, workers: int = 1, progress: bool = True, **sizes: Any) -> Dict[str, Any]:
    """Generate the data set under ``out_dir`` (always regenerates) and return the ``meta.json`` dict.

    ``sizes`` are the fields of :class:`SyntheticOptions` (``size``, ``num_frames``, ``unlabeled_clips``, ``subjects``,
    ``clips_per_class_per_subject``, ``au_clips``, ``jpeg_quality``, ``parts``, ...). ``workers`` > 1 renders in
    that many processes; the output does not depend on it.
    """
    opts = SyntheticOptions(seed=seed, **sizes)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / "meta.json"
    if meta_path.exists():
        meta_path.unlink()                       # meta.json marks a complete set; it is written last
    t0 = time.perf_counter()
    counts = _counts(opts)
    meta: Dict[str, Any] = {"generator": "lgiformer.data.synthetic", "version": GENERATOR_VERSION, "seed": opts.seed,
                            "options": opts.to_dict(), "counts": {}, "classes": list(CLASSES),
                            "aus": list(AU_NAMES), "au_invalid_code": AU_INVALID, "folds": {}, "files": {}}
    pool = None
    if workers > 1:
        import multiprocessing as mp

        pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"))
    try:
        _generate_parts(out, opts, counts, meta, pool, workers, progress)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    _write_text(meta_path, json.dumps(meta, indent=1) + "\n")
    log.info("synthetic data set written to %s in %.1f s (%s)", out, time.perf_counter() - t0,
             ", ".join(f"{k}={v}" for k, v in meta["counts"].items() if not isinstance(v, dict)))
    return meta


def _generate_parts(out: Path, opts: SyntheticOptions, counts: Dict[str, int], meta: Dict[str, Any],
                    pool: Optional[ProcessPoolExecutor], workers: int, progress: bool) -> None:
    if "unlabeled" in opts.parts:
        _run_part("unlabeled", out, opts, counts["unlabeled"], pool, workers, progress)
        _write_text(out / "unlabeled" / "pretrain.txt", "".join(
            f"unlabeled/videos/{i:05d}.mp4 0 {opts.num_frames}\n" for i in range(counts["unlabeled"])))
        meta["counts"]["unlabeled_videos"] = counts["unlabeled"]
        meta["counts"]["unlabeled_identities"] = -(-counts["unlabeled"] // opts.clips_per_identity)
        meta["files"]["pretrain_list"] = "unlabeled/pretrain.txt"
        meta["video_codec"] = _video_codec()
    if "labeled" in opts.parts:
        res = _run_part("labeled", out, opts, counts["labeled"], pool, workers, progress)
        meta["folds"]["labeled"] = _write_labeled_lists(out, opts, res)
        meta["counts"]["labeled_clips"] = counts["labeled"]
        meta["counts"]["labeled_subjects"] = opts.subjects
        meta["files"]["labeled_lists"] = "labeled/lists/{split}_fold{fold}.txt"
        meta["files"]["labeled_au_labels"] = "labeled/au_labels.csv"
    if "au" in opts.parts:
        res = _run_part("au", out, opts, counts["au"], pool, workers, progress)
        meta["folds"]["au"] = _write_au_lists(out, opts, res)
        labels = np.array([lab for r in res for lab in r["labels"]])
        meta["counts"]["au_clips"] = counts["au"]
        meta["counts"]["au_frames"] = int(labels.shape[0])
        meta["counts"]["au_subjects"] = opts.au_subjects
        meta["counts"]["au_positive_rate"] = {n: round(float((labels[:, k] == 1).mean()), 4)
                                              for k, n in enumerate(AU_NAMES)}
        meta["files"]["au_labels"] = "au/labels.csv"
        meta["files"]["au_lists"] = "au/lists/{split}_fold{fold}.csv"


def _matches(meta: Dict[str, Any], opts: SyntheticOptions) -> bool:
    if meta.get("generator") != "lgiformer.data.synthetic" or meta.get("version") != GENERATOR_VERSION:
        return False
    have = dict(meta.get("options", {}))
    want = opts.to_dict()
    if not set(want.pop("parts")) <= set(have.pop("parts", [])):
        return False
    return have == want


def _marker_files(opts: SyntheticOptions) -> List[str]:
    """One file per generated part, written after its items: a quick completeness check."""
    files = {"unlabeled": "unlabeled/pretrain.txt", "labeled": "labeled/au_labels.csv",
             "au": "au/lists/test_fold3.csv"}
    return [files[p] for p in opts.parts]


def find_existing(out_dir: Any, **options: Any) -> Optional[Dict[str, Any]]:
    """The meta dict of a complete set under ``out_dir`` made with these options (a superset of the requested parts
    is fine), else ``None``."""
    opts = SyntheticOptions(**options)
    meta_path = Path(out_dir) / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if _matches(meta, opts) and all((Path(out_dir) / rel).is_file() for rel in _marker_files(opts)):
        return meta
    return None


# Below this many frames, starting worker processes (each imports the package) costs more than it saves.
_FRAMES_PER_WORKER = 10_000


def auto_workers(opts: SyntheticOptions) -> int:
    """Processes for ``workers="auto"``: one for small sets, else one per usable CPU (at most 4), so that a run's
    large demo set (40k frames) does not render on one core while the others wait."""
    frames = {"unlabeled": opts.num_frames, "labeled": opts.labeled_frames, "au": opts.au_frames}
    total = sum(n * frames[part] for part, n in _counts(opts).items() if part in opts.parts)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(4, cpus, total // _FRAMES_PER_WORKER))


def ensure_synthetic(out_dir: Any, *, workers: int | str = 1, progress: bool = True,
                     **options: Any) -> Dict[str, Any]:
    """Generate under ``out_dir`` unless a complete set with the same options (and at least the requested parts)
    is already there; returns the meta dict either way. ``workers="auto"``: see :func:`auto_workers`."""
    opts = SyntheticOptions(**options)
    meta = find_existing(out_dir, **options)
    if meta is not None:
        log.info("synthetic data set at %s is up to date (seed %d); skipping generation", out_dir, opts.seed)
        return meta
    if workers == "auto":
        workers = auto_workers(opts)
    if (Path(out_dir) / "meta.json").is_file():
        log.info("synthetic data set at %s was made with other options; regenerating", out_dir)
    d = opts.to_dict()
    return generate(out_dir, seed=d.pop("seed"), workers=workers, progress=progress, **d)


# ---------------------------------------------------------------------------------------------------------------
# Illustration
# ---------------------------------------------------------------------------------------------------------------
def save_class_strip(path: Any, *, seed: int = 0, size: int = 80, num_frames: int = 32, columns: int = 8) -> Path:
    """PNG with one row per class (DFEW order): ``columns`` evenly spaced frames of one clip at full intensity, class
    name on the left; 256-colour palette to keep the file small (~100 KB at the defaults)."""
    from PIL import ImageDraw

    label_w = 64
    sheet = Image.new("RGB", (label_w + columns * size, len(CLASSES) * size), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    picks = np.linspace(0, num_frames - 1, columns).round().astype(int)
    for row, name in enumerate(CLASSES):
        rng = np.random.default_rng([seed, _STREAM["strip"], row])
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


# ---------------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lgiformer.data.synthetic", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output folder")
    defaults = SyntheticOptions()
    for f in dataclasses.fields(SyntheticOptions):
        flag = "--" + f.name.replace("_", "-")
        if f.name == "parts":
            p.add_argument(flag, default=",".join(PARTS), help="comma-separated subset of " + ",".join(PARTS))
        else:
            value = getattr(defaults, f.name)
            p.add_argument(flag, type=type(value), default=value, help=f"(default {value})")
    p.add_argument("--workers", type=int, default=1, help="render processes (output does not depend on it)")
    p.add_argument("--force", action="store_true", help="regenerate even if meta.json matches the options")
    p.add_argument("--strip", default="", help="also save the per-class PNG strip to this path")
    return p


def main(argv: Optional[Iterable[str]] = None) -> int:
    args = _parser().parse_args(None if argv is None else list(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    opts = {f.name: getattr(args, f.name) for f in dataclasses.fields(SyntheticOptions)}
    t0 = time.perf_counter()
    skipped = not args.force and find_existing(args.out, **opts) is not None
    if args.force:
        seed = opts.pop("seed")
        meta = generate(args.out, seed=seed, workers=args.workers, **opts)
    else:
        meta = ensure_synthetic(args.out, workers=args.workers, **opts)
    if args.strip:
        save_class_strip(args.strip, seed=meta["seed"])
    counts = ", ".join(f"{k}={v}" for k, v in meta["counts"].items() if not isinstance(v, dict))
    how = "already up to date, not regenerated (use --force)" if skipped else \
        f"generated in {time.perf_counter() - t0:.1f} s"
    print(f"synthetic data set in {args.out}: {counts}; {how}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
