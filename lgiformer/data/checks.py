"""Start-up checks of a run's inputs: every listed video or frame folder exists, opens, and holds enough frames for
one clip. The tasks run them once, before building their model (on rank 0 under torch.distributed:
``lgiformer.tasks.base.Task.check_inputs``), so a bad list stops the run at once with one message that names every
problem (list file, line, video, reason), instead of an epoch later (the bad-sample threshold) or never (a short
video padded without a word).

"Enough frames" is ``min_frames`` (``data.min_frames``; by default the clip's frame count ``num_frames``). A video
with that many frames but shorter than a clip's span ((num_frames - 1) x stride + 1) is sampled as the reference
code samples it: the window is clamped to the video and padded with its last frame (``lgiformer.data.sampling``).
``data.min_frames 1`` accepts any video with one frame, as the reference did.

Cost: a frame folder is listed and its first frame's header read (so a folder of non-images or of 16-bit frames is
caught); a video file's container header is read with PyAV, nothing is decoded (a file cut off after its header
passes here and fails when it is read: training replaces it, evaluation excludes and reports it). The files are
checked by a thread pool, with a progress bar on long lists. Frame counts are cached per list, keyed by each file's
size and modification time, in ``.lgiformer-cache/`` next to the list file (every run and fold on that list shares
it), or in the run's folder when the list's folder is read-only: the next start-up on the same list stats the files
and reads none of them.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from lgiformer.data.lists import AUVideo, VideoSample
from lgiformer.data.readers import FrameFolderReader, VideoReadError, av_reason, check_frame_mode
from lgiformer.errors import InputError
from lgiformer.provenance import follow_umask

log = logging.getLogger(__name__)

CACHE_DIR = ".lgiformer-cache"
CACHE_VERSION = 1
PROGRESS_MIN = 500      # files: a shorter list is checked without a progress bar
MAX_SHOWN = 50          # problems listed in one error message


@dataclass(frozen=True)
class Problem:
    source: str         # the list file
    line: int
    reason: str         # names the video

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.reason}" if self.line else f"{self.source}: {self.reason}"


class InputCheckError(InputError):
    """Every problem the start-up check found, one per line as ``list:line: video: reason`` (the first 50, then a
    count)."""

    def __init__(self, problems: Sequence[Problem], checked: int, hint: str = "") -> None:
        self.problems = list(problems)
        shown = "\n".join(f"  {p}" for p in self.problems[:MAX_SHOWN])
        more = f"\n  ... and {len(self.problems) - MAX_SHOWN} more" if len(self.problems) > MAX_SHOWN else ""
        super().__init__(f"{len(self.problems)} problem(s) in the {checked} listed inputs:\n{shown}{more}"
                         f"{chr(10) + hint if hint else ''}")


@dataclass
class CheckReport:
    checked: int        # list entries
    files: int          # distinct files and folders
    read: int           # counted by opening them (the rest came from the cache)


def count_frames(path: str | os.PathLike, *, backend: str = "auto", frame_ext=None,
                 frame_template: str | None = None) -> int:
    """Frames of a video file or frame folder, cheaply: a folder's frames as the reader lists them (its first
    frame's header is read too), a file's frame count from its container (PyAV; estimated from the duration when the
    container stores none). Raises :class:`VideoReadError` with the reason."""
    path = Path(path)
    if not path.exists():
        raise VideoReadError(path, "no such file or folder")
    if backend == "frames" or (backend == "auto" and path.is_dir()):
        if not path.is_dir():
            raise VideoReadError(path, "not a frame folder (data.backend frames)")
        reader = FrameFolderReader(path, frame_ext, frame_template)
        first = reader.files[0]
        from PIL import Image

        try:
            with Image.open(first) as img:
                check_frame_mode(first, img.mode)
        except OSError as err:
            raise VideoReadError(first, f"not an image PIL can read ({err})") from None
        return len(reader)
    if path.is_dir():
        raise VideoReadError(path, f"is a folder, but data.backend is {backend}")
    if path.stat().st_size == 0:
        raise VideoReadError(path, "empty file (0 bytes)")
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoReadError(path, "no video stream")
            stream = container.streams.video[0]
            count = int(stream.frames or 0)
            rate = stream.average_rate or stream.guessed_rate
            if count <= 0 and rate and stream.duration and stream.time_base:
                count = int(stream.duration * stream.time_base * rate)
            elif count <= 0 and rate and container.duration:
                count = int(container.duration / av.time_base * rate)
            if count <= 0:  # no count and no duration in the container: decode it (rare)
                count = sum(1 for _ in container.decode(video=0))
    except VideoReadError:
        raise
    except Exception as err:  # PyAV raises its own FFmpeg error classes
        raise VideoReadError(path, f"not a video PyAV can open ({av_reason(err)})") from None
    if count <= 0:
        raise VideoReadError(path, "no frames")
    return count


def cache_name(list_file: str | os.PathLike, settings: str) -> str:
    key = f"{Path(list_file).resolve()}|{settings}".encode()
    return f"{Path(list_file).name}.{hashlib.sha1(key).hexdigest()[:10]}.json"


class FrameCountCache:
    """The frame counts of one list's files, each valid while the file's size and modification time are unchanged.
    Read from the first of ``places`` that holds it; written (atomically) to the first that accepts it."""

    def __init__(self, places: Sequence[Path]) -> None:
        self.places = list(places)
        self.entries: dict[str, list] = {}
        for place in self.places:
            try:
                data = json.loads(place.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(data, dict) and data.get("version") == CACHE_VERSION and isinstance(data.get("entries"),
                                                                                              dict):
                self.entries = data["entries"]
                break

    def get(self, path: str, stat: os.stat_result) -> int | None:
        entry = self.entries.get(path)
        if isinstance(entry, list) and len(entry) == 3 and entry[:2] == [stat.st_size, stat.st_mtime_ns]:
            return int(entry[2])
        return None

    def put(self, path: str, stat: os.stat_result, count: int) -> None:
        self.entries[path] = [stat.st_size, stat.st_mtime_ns, int(count)]

    def save(self, keep: set[str]) -> Path | None:
        """Write the entries of ``keep`` (the list's current files); returns where, or None when no place took
        it."""
        text = json.dumps({"version": CACHE_VERSION, "entries": {p: e for p, e in self.entries.items() if p in keep}})
        for place in self.places:
            tmp = None
            try:
                place.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=place.parent, prefix=place.name, suffix=".tmp")
                with os.fdopen(fd, "w") as f:
                    f.write(text)
                follow_umask(tmp)  # mkstemp makes it private; a shared list's cache is shared
                os.replace(tmp, place)
                return place
            except OSError:
                if tmp is not None and os.path.exists(tmp):
                    os.unlink(tmp)
        return None


def _requirement(item: VideoSample | AUVideo, count: int, min_frames: int) -> str | None:
    """Why ``item`` cannot give a clip from a video of ``count`` frames, or None."""
    if isinstance(item, AUVideo):
        last = int(item.frames.max()) if len(item.frames) else -1
        if last >= count:
            return f"frame {last} is labelled but the video holds {count} frames"
        if len(item.frames) < min_frames:
            return f"too short: {len(item.frames)} labelled frames, a clip needs {min_frames}"
        return None
    if item.total is not None and item.start + item.total > count:
        return f"start {item.start} + total {item.total} > the {count} frames of the video"
    usable = item.total if item.total is not None else count - item.start
    if usable < min_frames:
        return f"too short: {max(usable, 0)} frames{f' from frame {item.start}' if item.start else ''}, a clip " \
               f"needs {min_frames}"
    return None


SHORT_HINT = ("Too short: fewer frames than data.min_frames (default: the clip's num_frames). --data.min_frames 1 "
              "accepts every video with one frame; a clip is then padded with the last frame, as the reference "
              "code did.")


def check_inputs(items: Sequence[VideoSample | AUVideo], *, min_frames: int, backend: str = "auto", frame_ext=None,
                 frame_template: str | None = None, cache_dir: str | os.PathLike | None = None,
                 workers: int | None = None, progress: bool = False) -> CheckReport:
    """Check every item (list entries: their ``source`` and ``line`` name them): the file or folder exists and
    opens, and holds at least ``min_frames`` frames (from ``start``, within ``total`` for pretraining entries; for
    AU videos, labelled frames, and every labelled frame exists). Raises :class:`InputCheckError` listing every
    problem. ``cache_dir``: where the counts are cached when a list's own folder is read-only."""
    min_frames = max(int(min_frames), 1)
    settings = json.dumps([backend, frame_ext, frame_template])
    by_list: dict[str, list] = {}
    for item in items:
        by_list.setdefault(item.source, []).append(item)
    workers = workers or min(32, 4 * (os.cpu_count() or 1))
    problems: list[Problem] = []
    files = read = 0
    for source, entries in by_list.items():
        name = cache_name(source or "inputs", settings)
        places = ([Path(source).parent / CACHE_DIR / name] if source else []) + \
                 ([Path(cache_dir) / name] if cache_dir else [])
        cache = FrameCountCache(places)
        paths = sorted({e.path for e in entries})

        def probe(path: str) -> tuple[str, int | str, bool]:
            try:
                stat = os.stat(path)
            except OSError:
                return path, f"{path}: no such file or folder", False
            cached = cache.get(path, stat)
            if cached is not None:
                return path, cached, False
            try:
                count = count_frames(path, backend=backend, frame_ext=frame_ext, frame_template=frame_template)
            except VideoReadError as err:
                return path, str(err), True
            cache.put(path, stat, count)
            return path, count, True

        results: dict[str, int | str] = {}
        opened = 0
        bar = tqdm(total=len(paths), desc=f"checking {Path(source).name or 'inputs'}", unit="file",
                   disable=not progress or len(paths) < PROGRESS_MIN)
        with ThreadPoolExecutor(workers) as pool:
            for path, outcome, was_read in pool.map(probe, paths):
                results[path] = outcome
                opened += was_read
                bar.update()
        bar.close()
        files, read = files + len(paths), read + opened
        for e in entries:
            outcome = results[e.path]
            reason = outcome if isinstance(outcome, str) else _requirement(e, outcome, min_frames)
            if reason is not None:
                problems.append(Problem(source, e.line, reason if isinstance(outcome, str) else f"{e.path}: {reason}"))
        saved = cache.save(set(paths))
        log.info("inputs of %s: %d entries, %d files checked: %d opened, %d known from the cache (%s)",
                 source or "(no list)", len(entries), len(paths), opened, len(paths) - opened,
                 saved or "not saved: no writable place")
    if problems:
        problems.sort(key=lambda p: (p.source, p.line))
        short = any("too short:" in p.reason for p in problems)
        raise InputCheckError(problems, len(items), SHORT_HINT if short else "")
    return CheckReport(len(items), files, read)
