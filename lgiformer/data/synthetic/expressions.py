"""Action units, the seven expression classes and their onset-apex-offset dynamics.

An expression is a set of per-channel intensity curves over the clip plus a head-motion offset. The curves are the
generator's ground truth: the face is drawn from them (``faces.py``) and the AU labels are thresholded from them,
so a class is defined once, here, by its AU combination, its timing and its head motion (docs/SYNTHETIC.md).
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Tuple

import numpy as np

__all__ = ["CLASSES", "AU_NAMES", "EXTRA_CHANNELS", "CHANNELS", "CHANNEL_INDEX", "ExpressionSpec", "EXPRESSIONS",
           "expression_curves", "random_au_curves"]

CLASSES: Tuple[str, ...] = ("Happy", "Sad", "Neutral", "Angry", "Surprise", "Disgust", "Fear")   # DFEW order
AU_NAMES: Tuple[str, ...] = ("AU1", "AU2", "AU4", "AU6", "AU9", "AU12", "AU15", "AU25", "AU26")
# Internal control channels after the labelled AUs: lip pressor (Angry), lip stretcher (Fear), upper-lid raiser
# (Surprise / Fear), upper-lip raiser (Disgust). They move the face but are not part of the AU labels.
EXTRA_CHANNELS: Tuple[str, ...] = ("press", "stretch", "lid", "lipraise")
CHANNELS: Tuple[str, ...] = AU_NAMES + EXTRA_CHANNELS
CHANNEL_INDEX: Dict[str, int] = {name: i for i, name in enumerate(CHANNELS)}


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
        curves[:, CHANNEL_INDEX[ch]] = weight * amp * _profile(num_frames, start + lag, onset, apex, offset) * tremor
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

