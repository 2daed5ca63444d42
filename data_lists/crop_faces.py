"""``python -m data_lists crop-faces --list LIST --out OUT_DIR``: face crops of footage that is not face-cropped.

Reads a list in any of the formats (``path label``, ``path``, ``path start total``), crops the face in every frame of
every entry with :mod:`lgiformer.data.faces` (frontal-face detection, the largest face's track, median smoothing, a
square crop with a margin, resized), and writes

* ``OUT_DIR/crops/<path>``: a frame folder (``1.jpg ... T.jpg``) or, with ``--format mp4``, ``<path>.mp4``, where
  ``<path>`` is the entry's path below the deepest folder common to all entries, without its extension;
* ``OUT_DIR/<LIST's file name>``: the same lines with the crops' paths (relative to ``OUT_DIR``, or absolute with
  ``--absolute``): labels and ``start total`` stay valid, every frame is kept;
* ``OUT_DIR/crop_faces.json``: the settings, so that a rerun with other settings is refused instead of mixed.

Resumable: each crop is written atomically, and a rerun skips the crops that exist. An entry in which no frame has
a detectable face is skipped and counted (an error with ``--strict``), and left out of the new list.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from data_lists.common import BuildOptions, BuildReport, ListBuildError, write_lines, list_path

log = logging.getLogger("data_lists")

MANIFEST = "crop_faces.json"


@dataclass(frozen=True)
class Entry:
    line: int
    source: Path            # the input video or frame folder (resolved)
    target: Path            # its crop
    rest: tuple             # the fields after the path


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m data_lists crop-faces", description=__doc__.splitlines()[0],
                                epilog="Detector, tracking and what they miss: lgiformer/data/faces.py and "
                                       "data_lists/README.md (crop-faces)")
    p.add_argument("--list", type=Path, required=True, help="list of videos or frame folders (any list format)")
    p.add_argument("--out", type=Path, required=True, help="output folder: crops/, the new list, crop_faces.json")
    p.add_argument("--data-root", type=Path, default=None,
                   help="folder the list's relative paths are relative to (default: the current directory)")
    p.add_argument("--format", choices=("frames", "mp4"), default="frames",
                   help="frame folders of JPEGs (default) or H.264 mp4 files")
    p.add_argument("--size", type=int, default=None, help="crop side in px (default 224)")
    p.add_argument("--margin", type=float, default=None,
                   help="margin on each side, as a fraction of the detected box (default 0.25)")
    p.add_argument("--smooth", type=int, default=None, help="median window of the box track, frames (default 9)")
    p.add_argument("--absolute", action="store_true", help="write absolute paths (default: relative to --out)")
    p.add_argument("--strict", action="store_true", help="an entry without a detectable face is an error")
    p.add_argument("--workers", type=int, default=1, help="processes cropping videos")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def settings_from_args(args: argparse.Namespace):
    from lgiformer.data.faces import FaceCropSettings

    given = {k: getattr(args, k) for k in ("size", "margin", "smooth") if getattr(args, k) is not None}
    try:
        return FaceCropSettings(**given)
    except ValueError as err:
        raise ListBuildError(str(err)) from None


def read_entries(list_file: Path, out: Path, data_root: Path | None, fmt: str, strict: bool,
                 report: BuildReport) -> list[Entry]:
    """The list's entries with their crop paths; a missing input is skipped and counted (an error with ``strict``)."""
    if not list_file.is_file():
        raise ListBuildError("no such list file (expected a list of videos or frame folders, one per line)",
                             list_file)
    rows = []
    with open(list_file, encoding="utf-8-sig") as f:
        for number, raw in enumerate(f, start=1):
            fields = raw.split()
            if not fields or fields[0].startswith("#"):
                continue
            path = Path(fields[0])
            if not path.is_absolute() and data_root is not None:
                path = data_root / path
            path = Path(os.path.abspath(path))
            if not path.exists():
                report.skip("missing file or folder", str(path), strict, list_file, number)
                continue
            rows.append((number, path, tuple(fields[1:])))
    if (out / list_file.name).resolve() == list_file.resolve():
        raise ListBuildError("--out is the list's own folder: the new list would replace it; choose another --out",
                             list_file)
    if not rows:
        raise ListBuildError("the list holds no usable entries (expected 'path [label | start total]' lines)",
                             list_file)
    base = Path(os.path.commonpath([p.parent for _, p, _ in rows]))
    entries, seen = [], {}
    for number, path, rest in rows:
        relative = path.relative_to(base)
        if path.is_file():
            relative = relative.with_suffix("")
        target = out / "crops" / (relative.with_name(relative.name + ".mp4") if fmt == "mp4" else relative)
        if target in seen:
            raise ListBuildError(f"entries of lines {seen[target]} and {number} would be cropped to the same "
                                 f"{target} (same name, other extension)", list_file, number)
        seen[target] = number
        entries.append(Entry(number, path, target, rest))
    return entries


def check_manifest(out: Path, settings: dict) -> None:
    """Refuse to mix crops made with other settings into an existing output folder."""
    path = out / MANIFEST
    if path.is_file():
        previous = json.loads(path.read_text())
        if previous != settings:
            changed = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k))
            raise ListBuildError(f"the crops there were made with other settings ({', '.join(changed)}: "
                                 f"{[previous.get(k) for k in changed]}); use another --out or the same settings",
                                 path)
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=1) + "\n")


def crop_one(job: tuple) -> tuple[str, dict | str]:
    """Worker: ``(status, track summary or error)`` for one ``(source, target, settings dict, format)``."""
    from lgiformer.data.faces import FaceCropSettings, NoFaceError, crop_to
    from lgiformer.data.readers import VideoReadError

    source, target, settings, fmt = job
    try:
        track = crop_to(source, target, FaceCropSettings(**settings), fmt, _detector())
    except NoFaceError as err:
        return "no face found", str(err)
    except VideoReadError as err:
        return "unreadable video", str(err)
    return "cropped", track.summary()


_DETECTOR = None


def _detector():
    global _DETECTOR
    if _DETECTOR is None:
        from lgiformer.data.faces import HaarFaceDetector

        _DETECTOR = HaarFaceDetector()
    return _DETECTOR


def map_ordered(function, jobs: Sequence, workers: int, progress: bool) -> Iterator:
    """``function(job)`` for each job, in order, in ``workers`` spawned processes, with a progress bar."""
    from tqdm.auto import tqdm

    with tqdm(total=len(jobs), desc="crop-faces", unit="video", disable=not progress, dynamic_ncols=True) as bar:
        if workers <= 1:
            results: Iterable = map(function, jobs)
            pool = None
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"))
            results = pool.map(function, jobs)
        try:
            for result in results:
                yield result
                bar.update()
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)


def build(args: argparse.Namespace) -> tuple[BuildReport, dict]:
    settings = settings_from_args(args)
    report = BuildReport("crop-faces")
    out = args.out
    entries = read_entries(args.list, out, args.data_root, args.format, args.strict, report)
    check_manifest(out, dict(asdict(settings), format=args.format, detector="opencv-haar-frontalface-default"))
    todo = [e for e in entries if not e.target.exists()]
    summary = dict(entries=len(entries), reused=len(entries) - len(todo), cropped=0, frames=0, frames_detected=0)
    failed: set[int] = set()
    jobs = [(str(e.source), str(e.target), asdict(settings), args.format) for e in todo]
    for entry, (status, detail) in zip(todo, map_ordered(crop_one, jobs, args.workers, args.progress)):
        if status == "cropped":
            summary["cropped"] += 1
            summary["frames"] += detail["frames"]
            summary["frames_detected"] += detail["detected"]
            if detail["detected"] < detail["frames"]:
                log.debug("%s: face detected in %d of %d frames (the rest interpolated or held)", entry.source,
                          detail["detected"], detail["frames"])
            continue
        failed.add(entry.line)
        report.skip(status, detail, args.strict, args.list, entry.line)
    opts = BuildOptions(root=out, out=out, absolute=args.absolute)
    lines = (" ".join((list_path(e.target, opts), *e.rest)) for e in entries if e.line not in failed)
    written = write_lines(out / args.list.name, lines)
    report.outputs[args.list.name] = written
    summary.update(list=str(out / args.list.name), written=written, skipped=dict(report.skipped),
                   settings=asdict(settings), format=args.format)
    return report, summary


def main(argv: Sequence[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    try:
        report, summary = build(args)
    except (ListBuildError, ImportError) as err:
        log.error("%s", err)
        return 2
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        log.info("wrote to %s (%d cropped, %d already there)\n%s", args.out, summary["cropped"], summary["reused"],
                 report.summary())
    return 0
