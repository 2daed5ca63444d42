"""Temporal sampling: which frame indices make a clip.

Train windows are random; validation takes the deterministic centre window (the reference sampled validation
clips at random: docs/REFERENCE.md#defect-3); test takes N evenly spaced windows. Short videos are padded by repeating
the last frame. Every function returns an int array of frame indices in ``[0, num_available)``.
"""
from __future__ import annotations

import numpy as np


def _window(start: int, num_frames: int, stride: int, num_available: int) -> np.ndarray:
    idx = start + stride * np.arange(num_frames)
    return np.minimum(idx, num_available - 1).astype(np.int64)


def _span(num_frames: int, stride: int) -> int:
    return (num_frames - 1) * stride + 1


def _check(num_available: int, num_frames: int, stride: int) -> None:
    if num_available < 1:
        raise ValueError("the video has no frames")
    if num_frames < 1 or stride < 1:
        raise ValueError(f"num_frames and stride must be >= 1, got {num_frames}, {stride}")


def train_indices(num_available: int, num_frames: int, stride: int, rng: np.random.Generator) -> np.ndarray:
    """A random window; a video shorter than the window is padded with its last frame."""
    _check(num_available, num_frames, stride)
    room = num_available - _span(num_frames, stride)
    start = int(rng.integers(0, room + 1)) if room > 0 else 0
    return _window(start, num_frames, stride, num_available)


def pretrain_indices(num_available: int, num_frames: int = 16, stride: int = 4,
                     rng: np.random.Generator | None = None) -> np.ndarray:
    """Pretraining clips: ``num_frames`` at ``stride`` from a random start (as the reference: 16 x 4)."""
    return train_indices(num_available, num_frames, stride, rng or np.random.default_rng())


def center_indices(num_available: int, num_frames: int, stride: int) -> np.ndarray:
    """The deterministic centre window (validation)."""
    _check(num_available, num_frames, stride)
    room = num_available - _span(num_frames, stride)
    return _window(max(room, 0) // 2, num_frames, stride, num_available)


def test_clip_indices(num_available: int, num_frames: int, stride: int, num_clips: int) -> list[np.ndarray]:
    """``num_clips`` windows with evenly spaced starts from the first to the last possible start (one clip: the
    centre window). The windows are distinct when the video has at least ``num_clips - 1`` spare frames; a video
    shorter than one window gets starts spread over the first stride instead (phase-shifted windows, each padded with
    the last frame), so its views still differ when ``stride > 1``."""
    _check(num_available, num_frames, stride)
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    room = max(num_available - _span(num_frames, stride), 0)
    if num_clips == 1:
        return [center_indices(num_available, num_frames, stride)]
    room = max(room, min(stride - 1, num_available - 1))
    starts = np.linspace(0, room, num_clips).round().astype(int)
    return [_window(int(s), num_frames, stride, num_available) for s in starts]


test_clip_indices.__test__ = False          # not a pytest test, whatever imports it
multi_clip_indices = test_clip_indices      # former name
