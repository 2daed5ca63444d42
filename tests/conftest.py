"""Shared test helpers: tiny videos (PyAV) and frame folders (PIL) written into ``tmp_path``."""
from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest


def moving_frames(t: int = 12, size: int = 48, seed: int = 0) -> np.ndarray:
    """uint8 [T, size, size, 3]: a blocky random pattern that shifts 2 px per frame (every frame differs, and a codec
    keeps it well)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (size // 8, size // 8, 3)).astype(np.float32)
    big = np.kron(base, np.ones((8, 8, 1)))
    return np.stack([np.roll(big, 2 * i, axis=1) for i in range(t)]).astype(np.uint8)


def write_mp4(path: str | Path, frames: np.ndarray, fps: int = 25, faststart: bool = False) -> Path:
    """An H.264 (or MPEG-4 part 2 when libx264 is missing) mp4 of ``frames`` [T, H, W, 3] uint8 (H, W even);
    ``faststart``: the index (moov) before the frames, so a copy cut short still opens and announces every frame."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {}) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": "10"} if codec == "libx264" else {"qscale": "2"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def write_frame_folder(folder: str | Path, frames: np.ndarray, ext: str = "png", names=None) -> Path:
    """``folder/1.<ext> ... folder/T.<ext>`` (not zero-padded: lexicographic order would be wrong), or ``names``."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = names or [f"{i}.{ext}" for i in range(1, len(frames) + 1)]
    for name, f in zip(names, frames):
        Image.fromarray(f).save(folder / name)
    return folder


@pytest.fixture
def media():
    """``media.frames(...)``, ``media.mp4(path, frames)``, ``media.folder(path, frames)``."""
    return types.SimpleNamespace(frames=moving_frames, mp4=write_mp4, folder=write_frame_folder)


@pytest.fixture(scope="session")
def tiny_unlabeled(tmp_path_factory) -> Path:
    """The unlabeled synthetic set tests/configs/tiny_pretrain.yaml trains on (8 videos of 12 frames, 64 px), made
    once per test session."""
    from lgiformer.data import ensure_synthetic

    root = tmp_path_factory.mktemp("tiny_unlabeled")
    ensure_synthetic(root, size=64, num_frames=12, unlabeled_clips=8, parts="unlabeled", progress=False)
    return root
