"""VoxCeleb2 (dev set, mp4): the pretraining list.

Reads every ``dev/mp4/<identity>/<video id>/<clip>.mp4`` under the root (sorted) and writes ``pretrain.txt`` with
``path 0 total`` lines, ``total`` probed with PyAV (the stream's frame count, else a decode count); ``--no-probe``
writes bare ``path`` lines. A file that PyAV cannot open is skipped and counted (an error with ``--strict``).
``--exclude FILE`` leaves out known-broken clips: one path per line, matched on its last three parts
(``id/video/clip.mp4``), so lists written on another machine (absolute paths, other roots) work as they are.
Options used: absolute, strict, probe, exclude, workers.
"""
from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from data_lists.common import (BuildOptions, BuildReport, ListBuildError, list_path, log, natural_key, read_lines,
                               require, write_pretrain_list)

DEV_DIR = "dev/mp4"


def clip_key(path: str | Path) -> str:
    """``id00012/abc/00001.mp4``: the identity of a clip whatever the root it was listed under."""
    parts = Path(str(path).replace("\\", "/")).parts
    return "/".join(parts[-3:])


def read_exclude(path: Path) -> set[str]:
    """Clip keys of a broken-file list (first field of each line; ``#`` comments allowed)."""
    keys = set()
    for line, text in read_lines(path):
        if text.startswith("#"):
            continue
        entry = text.split()[0]
        if not entry.endswith(".mp4"):
            raise ListBuildError(f"expected an .mp4 path, got {entry!r}", path, line)
        keys.add(clip_key(entry))
    return keys


def probe_frames(path: Path) -> int:
    """Frame count of a video: the container's count when it has one, else decode and count."""
    import av

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        if stream.frames and stream.frames > 0:
            return int(stream.frames)
        return sum(1 for _ in container.decode(stream))


def _probe_or_reason(path: Path) -> int | str:
    """The frame count, or why the clip cannot be read (picklable, for worker processes)."""
    try:
        return probe_frames(path)
    except Exception as e:  # noqa: BLE001 - any decoder failure means "broken clip"
        return f"{type(e).__name__}: {e}"


def probe_all(clips: list[Path], workers: int) -> list[int | str]:
    """Probe every clip, in ``workers`` processes when > 1 (a million clips take hours on one core)."""
    log.info("probing %d clips with %d worker(s) (--no-probe to skip)", len(clips), max(workers, 1))
    if workers <= 1:
        return [_probe_or_reason(c) for c in clips]
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(_probe_or_reason, clips, chunksize=64))


def find_clips(dev: Path) -> list[Path]:
    """All ``<identity>/<video>/<clip>.mp4`` under ``dev/mp4``, in natural order."""
    clips = sorted(dev.glob("*/*/*.mp4"), key=lambda p: natural_key(p.relative_to(dev).as_posix()))
    if not clips:
        raise ListBuildError("no <identity>/<video>/<clip>.mp4 files", dev)
    return clips


def build(opts: BuildOptions) -> BuildReport:
    """Write pretrain.txt; excluded and unreadable clips are counted in the report."""
    report = BuildReport("voxceleb2")
    dev = require(opts.root / DEV_DIR, "VoxCeleb2 dev folder dev/mp4")
    exclude = read_exclude(opts.exclude) if opts.exclude is not None else set()
    clips, matched = [], set()
    for clip in find_clips(dev):
        if clip_key(clip) in exclude:
            matched.add(clip_key(clip))
            report.count("excluded (--exclude)")
        else:
            clips.append(clip)
    totals: list[int | str | None] = probe_all(clips, opts.workers) if opts.probe else [None] * len(clips)
    rows = []
    for clip, total in zip(clips, totals):
        if isinstance(total, str):
            report.skip("unreadable video", f"{clip} ({total})", opts.strict)
        elif total is not None and total < 1:
            report.skip("video without frames", str(clip), opts.strict)
        else:
            rows.append((list_path(clip, opts), total))
    if exclude - matched:
        report.count("--exclude entries not found", len(exclude - matched))
    report.outputs["pretrain.txt"] = write_pretrain_list(opts.out / "pretrain.txt", rows)
    return report
