"""Video readers: mp4/avi through decord (one thread), PyAV as the fallback, and folders of frames.

``open_video(path)`` picks the reader: a directory is a frame folder (jpg/png, sorted naturally so ``10.jpg``
follows ``9.jpg``), a file goes to decord and falls back to PyAV when decord is not installed or fails on it.
Every reader returns frames as uint8 ``[T, H, W, 3]`` RGB, in the order of the requested indices (repeats allowed):
greyscale and palette frames are converted to RGB (the grey value in all three channels); 16-bit frames are refused,
since converting them would clip them. Unreadable input raises :class:`VideoReadError` naming the file and what every
reader said (training replaces the sample, evaluation excludes it: lgiformer.data.datasets).
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)

FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
BACKENDS = ("auto", "decord", "pyav", "frames")
WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")  # PIL modes that convert("RGB") would clip to 8 bits
_warned: set[str] = set()


class VideoReadError(RuntimeError):
    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


def natural_key(name: str) -> list:
    """``frame10`` after ``frame9``: digit runs compare as numbers."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _extensions(frame_ext: str | Sequence[str] | None) -> tuple[str, ...]:
    if not frame_ext:
        return FRAME_EXTENSIONS
    exts = [frame_ext] if isinstance(frame_ext, str) else list(frame_ext)
    return tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in exts)


def list_frames(folder: str | os.PathLike, frame_ext: str | Sequence[str] | None = None) -> list[Path]:
    """Image files of a frame folder (``frame_ext``, default jpg/jpeg/png/bmp, any case) in natural order."""
    folder, exts = Path(folder), _extensions(frame_ext)
    files = [p for p in folder.iterdir() if p.suffix.lower() in exts]
    return sorted(files, key=lambda p: natural_key(p.name))


def check_frame_mode(path: str | os.PathLike, mode: str) -> None:
    """Refuse frames that cannot become uint8 RGB without losing values (16-bit, float)."""
    if mode in WIDE_MODES:
        raise VideoReadError(path, f"{mode} frames (16-bit or float) are not supported: save them as 8-bit")


def template_frames(folder: str | os.PathLike, template: str, first: int = 1) -> list[Path]:
    """Frames named by ``template`` (e.g. ``img_{:05d}.jpg``) numbered from ``first`` up to the first missing one."""
    folder = Path(folder)
    names = set(os.listdir(folder))
    files, k = [], first
    while template.format(k) in names:
        files.append(folder / template.format(k))
        k += 1
    return files


class FrameFolderReader:
    """A folder of images, frame ``i`` = the ``i``-th file in natural order (``frame_ext`` filters the extension), or
    with ``frame_template`` the file ``frame_template.format(i + 1)`` (the reference's ``img_{:05}.jpg`` style).
    Only the requested frames are read."""

    def __init__(self, path: str | os.PathLike, frame_ext: str | Sequence[str] | None = None,
                 frame_template: str | None = None) -> None:
        self.path = Path(path)
        try:
            self.files = (template_frames(self.path, frame_template) if frame_template
                          else list_frames(self.path, frame_ext))
        except OSError as err:
            raise VideoReadError(path, f"cannot list frames ({err})") from None
        if not self.files:
            wanted = frame_template.format(1) if frame_template else ", ".join(_extensions(frame_ext))
            raise VideoReadError(path, f"no frames ({wanted}) in the folder")

    def __len__(self) -> int:
        return len(self.files)

    def get(self, indices: Sequence[int]) -> np.ndarray:
        from PIL import Image

        cache: dict[int, np.ndarray] = {}
        frames = []
        for i in indices:
            if i not in cache:
                try:
                    with Image.open(self.files[i]) as img:
                        check_frame_mode(self.files[i], img.mode)
                        cache[i] = np.asarray(img.convert("RGB"))
                except (OSError, IndexError) as err:
                    raise VideoReadError(self.files[i] if i < len(self.files) else self.path,
                                         f"cannot read frame {i} ({err})") from None
            frames.append(cache[i])
        if len({f.shape for f in frames}) > 1:
            raise VideoReadError(self.path, f"frames of different sizes: {sorted({f.shape for f in frames})}")
        return np.stack(frames)


class DecordReader:
    def __init__(self, path: str | os.PathLike) -> None:
        import decord

        self.path = str(path)
        try:
            self.reader = decord.VideoReader(self.path, num_threads=1)
        except Exception as err:  # decord raises its own DECORDError and RuntimeError
            raise VideoReadError(path, f"decord cannot open it ({str(err).splitlines()[0][:200]})") from None

    def __len__(self) -> int:
        return len(self.reader)

    def get(self, indices: Sequence[int]) -> np.ndarray:
        """Decoded by decord, or by PyAV when decord fails on this file (it does on some frame widths that are not
        a multiple of 32)."""
        try:
            return self.reader.get_batch(list(indices)).asnumpy()
        except Exception as err:
            if self.path not in _warned:
                _warned.add(self.path)
                log.warning("%s: decord cannot decode frames (%s); using PyAV for this file", self.path,
                            str(err).splitlines()[0][:200])
            return PyAVReader(self.path).get(indices)


def av_reason(err: Exception) -> str:
    """FFmpeg's message without the file name PyAV appends (the error names the file already)."""
    return str(getattr(err, "strerror", None) or err)


class PyAVReader:
    """Sequential decoding up to the last requested frame (seeking is unreliable across codecs)."""

    def __init__(self, path: str | os.PathLike) -> None:
        import av

        self.path = str(path)
        try:
            with av.open(self.path) as container:
                stream = container.streams.video[0]
                self._count = int(stream.frames or 0)
                if self._count <= 0:
                    self._count = sum(1 for _ in container.decode(video=0))
        except Exception as err:
            raise VideoReadError(path, f"PyAV cannot open it ({av_reason(err)})") from None

    def __len__(self) -> int:
        return self._count

    def get(self, indices: Sequence[int]) -> np.ndarray:
        import av

        wanted = set(int(i) for i in indices)
        last, got, decoded, last_frame = max(wanted, default=-1), {}, 0, None
        try:
            with av.open(self.path) as container:
                for i, frame in enumerate(container.decode(video=0)):
                    decoded, last_frame = i + 1, frame
                    if i in wanted:
                        got[i] = frame.to_ndarray(format="rgb24")
                    if i >= last:
                        break
        except Exception as err:
            raise VideoReadError(self.path, f"PyAV cannot decode it ({av_reason(err)})") from None
        missing = sorted(i for i in wanted if i not in got)
        if missing:
            if decoded == 0 or min(missing) < decoded:
                raise VideoReadError(self.path, f"frames {missing[:5]} not in the video ({len(got)} decoded)")
            if self._count - decoded > max(2, self._count // 20):  # more than metadata slack: a cut-off file
                raise VideoReadError(self.path, f"only {decoded} of the {self._count} frames its container announces "
                                                "could be decoded (truncated?)")
            # the container announced more frames than it holds (common off-by-a-few metadata): pad with the last
            if "pad:" + self.path not in _warned:
                _warned.add("pad:" + self.path)
                log.warning("%s: %d frames announced, %d decoded; padding with the last frame", self.path,
                            self._count, decoded)
            self._count = decoded
            padding = last_frame.to_ndarray(format="rgb24")
            for i in missing:
                got[i] = padding
        return np.stack([got[int(i)] for i in indices])


def open_video(path: str | os.PathLike, backend: str = "auto", *, frame_ext: str | Sequence[str] | None = None,
               frame_template: str | None = None):
    """A reader with ``len(reader)`` (frames) and ``reader.get(indices) -> uint8 [T, H, W, 3]``.

    ``backend``: ``auto`` (a directory -> frames, a file -> decord, PyAV when decord is missing or fails on the file,
    logged once per file), ``decord``, ``pyav`` or ``frames``. ``frame_ext`` / ``frame_template``: frame folders only.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    path = Path(path)
    if backend == "frames" or (backend == "auto" and path.is_dir()):
        if not path.is_dir():
            raise VideoReadError(path, "no such frame folder")
        return FrameFolderReader(path, frame_ext, frame_template)
    if not path.is_file():
        raise VideoReadError(path, "is a folder: read it with backend 'frames' or 'auto'" if path.is_dir()
                             else "no such file")
    if path.stat().st_size == 0:
        raise VideoReadError(path, "empty file (0 bytes)")
    if backend == "pyav":
        return PyAVReader(path)
    try:
        return DecordReader(path)
    except ImportError:
        if "decord" not in _warned:
            _warned.add("decord")
            log.warning("decord is not installed: reading videos with PyAV (slower)")
        if backend == "decord":
            raise
        return PyAVReader(path)
    except VideoReadError as err:
        if backend == "decord":
            raise
        decord_error = err
    try:
        reader = PyAVReader(path)
    except VideoReadError as err:  # every reader failed: say what each one said
        raise VideoReadError(path, f"{decord_error.reason}; {err.reason}") from None
    if str(path) not in _warned:
        _warned.add(str(path))
        log.warning("%s; read with PyAV instead", decord_error)
    return reader


def read_frames(path: str | os.PathLike, indices: Sequence[int], backend: str = "auto", **kwargs) -> np.ndarray:
    """``open_video(path, backend, **kwargs).get(indices)``."""
    return open_video(path, backend, **kwargs).get(indices)
