"""Writing frames to disk: H.264 mp4 videos (PyAV), JPEG frame folders (Pillow) and small text files.

Every writer is deterministic for fixed library versions (one encoder thread, fixed quality settings, RGB -> YUV
in numpy) and atomic where a reader may look (a ``.part`` file renamed into place), because the data set promises
byte-identical files for a seed and ``meta.json`` is trusted to mean that everything before it was written.
"""
from __future__ import annotations

import functools
import io
import logging
import os
from pathlib import Path

import av
import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

__all__ = ["video_codec", "rgb_to_yuv420p", "write_mp4", "write_frames", "write_text"]


@functools.lru_cache(maxsize=None)
def video_codec() -> str:
    """libx264 when this PyAV build has it (the normal case), else MPEG-4 part 2, with one warning per process."""
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    if codec != "libx264":
        log.warning("libx264 is not available in PyAV; writing mpeg4 videos instead")
    return codec


def rgb_to_yuv420p(rgb: np.ndarray) -> np.ndarray:
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


def write_mp4(path: Path, frames: np.ndarray, fps: int, crf: int) -> None:
    """``frames`` ``[T, H, W, 3]`` uint8 RGB (H, W even) as a yuv420p mp4 at ``fps``; ``crf`` is libx264's quality."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".part.mp4")
    codec = video_codec()
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
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb_to_yuv420p(f), format="yuv420p")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)


def write_frames(folder: Path, frames: np.ndarray, quality: int) -> None:
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


def write_text(path: Path, text: str) -> None:
    """UTF-8 with LF line ends on every platform, renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text, encoding="utf-8", newline="\n")
    os.replace(tmp, path)
