"""List files: what a run reads, validated once at start-up.

* Reference format (DFER): ``path label`` per line, space-separated, no header, label 0-based.
* Pretraining format: ``path`` or ``path start total`` per line.
* AU CSV: a header ``path,frame,subject,AU1,AU2,...`` and one row per frame; AU values 0/1, and 9 (or -1) for
  "not annotated" (the BP4D convention), which becomes a validity mask.

Paths: a relative path is joined to ``data_root`` when one is given; with no ``data_root`` it is used as written,
i.e. relative to the current directory (NOT to the list file's folder). Absolute paths are kept. Paths cannot hold
whitespace (the reference format is space-separated).

Validation: every bad line is collected and reported in one :class:`ListFormatError` naming the file, the line
number and the reason (wrong number of fields, non-integer or out-of-range label, missing file or folder, too few
frames when the count is known from the list or cheap to get, i.e. for frame folders). Blank lines and lines
starting with ``#`` are skipped. An empty list is an error. The training tasks read their lists with
``check_files=False`` and check every file in one pass instead (:mod:`lgiformer.data.checks`: exists, opens, holds
enough frames, video files included).
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from lgiformer.data.readers import FRAME_EXTENSIONS
from lgiformer.errors import InputError

INVALID_AU_CODES = (9, -1)


class ListFormatError(InputError):
    """Every bad line of one list file, each as ``file:line: reason`` (the first 50, then a count); line 0 stands
    for the file as a whole (missing, empty)."""

    def __init__(self, source: str | os.PathLike, problems: Sequence[tuple[int, str]], total: int | None = None):
        self.source, self.problems = str(source), list(problems)
        if len(self.problems) == 1 and self.problems[0][0] == 0:
            super().__init__(f"{self.source}: {self.problems[0][1]}")
            return
        shown = "\n".join(f"  {self.source}:{line}: {reason}" for line, reason in self.problems[:50])
        more = f"\n  ... and {len(self.problems) - 50} more" if len(self.problems) > 50 else ""
        super().__init__(f"{len(self.problems)} bad line(s) in {self.source}"
                         f"{f' ({total} lines)' if total is not None else ''}:\n{shown}{more}")


@dataclass(frozen=True)
class VideoSample:
    path: str
    label: int = -1
    start: int = 0
    total: int | None = None
    source: str = ""
    line: int = 0


@dataclass(frozen=True)
class AUVideo:
    path: str
    frames: np.ndarray                 # [F] frame indices (0-based, natural order of the folder)
    labels: np.ndarray                 # [F, K] float32 in {0, 1}
    valid: np.ndarray                  # [F, K] bool
    subject: str = ""
    source: str = ""
    line: int = 0
    au_names: tuple = field(default=())


def resolve(path: str, data_root: str | os.PathLike | None) -> str:
    p = Path(path)
    return str(p if p.is_absolute() or not data_root else Path(data_root) / p)


def _count_frames(path: str) -> int | None:
    """Frame count when it is cheap to know (frame folders); None for video files."""
    p = Path(path)
    if p.is_dir():
        return sum(1 for f in p.iterdir() if f.suffix.lower() in FRAME_EXTENSIONS)
    return None


def read_video_list(list_file: str | os.PathLike, data_root: str | os.PathLike | None = None, *,
                    labeled: bool = True, num_classes: int | None = None, check_files: bool = True,
                    min_frames: int = 0) -> list[VideoSample]:
    """Read and validate a reference-format (``labeled``: ``path label``) or pretraining-format list (``path`` or
    ``path start total``). ``num_classes`` bounds the labels; ``check_files`` checks that every path exists and that
    it has at least ``min_frames`` frames (frame folders are counted; ``total`` is filled from the count); a video
    file's length is only known when the list gives it. Raises :class:`ListFormatError` listing every bad line."""
    list_file = Path(list_file)
    if not list_file.is_file():
        raise ListFormatError(list_file, [(0, "list file not found")])
    samples, problems = [], []
    lines = list_file.read_text().splitlines()
    for number, raw in enumerate(lines, start=1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        fields = text.split()
        label, start, total = -1, 0, None
        if labeled:
            if len(fields) != 2:
                problems.append((number, f"expected 'path label' (2 fields), got {len(fields)}: {text[:80]!r}"))
                continue
            try:
                label = int(fields[1])
            except ValueError:
                problems.append((number, f"label {fields[1]!r} is not an integer"))
                continue
            if label < 0 or (num_classes is not None and label >= num_classes):
                problems.append((number, f"label {label} out of range [0, {num_classes})"))
                continue
        else:
            if len(fields) not in (1, 3):
                problems.append((number, f"expected 'path' or 'path start total', got {len(fields)} fields"))
                continue
            if len(fields) == 3:
                try:
                    start, total = int(fields[1]), int(fields[2])
                except ValueError:
                    problems.append((number, f"start/total {fields[1]!r} {fields[2]!r} are not integers"))
                    continue
                if start < 0 or total < 1:
                    problems.append((number, f"start {start} / total {total}: expected start >= 0, total >= 1"))
                    continue
        path = resolve(fields[0], data_root)
        if check_files:
            if not os.path.exists(path):
                problems.append((number, f"missing file or folder: {path}"))
                continue
            count = _count_frames(path)
            if count is not None and total is not None and start + total > count:
                problems.append((number, f"start {start} + total {total} > {count} frames in the folder ({path})"))
                continue
            if total is not None:
                count = total
            if count is not None and count < max(min_frames, 1):
                problems.append((number, f"too few frames: {count} < {max(min_frames, 1)} ({path})"))
                continue
            if total is None:
                total = count
        samples.append(VideoSample(path, label, start, total, str(list_file), number))
    if problems:
        raise ListFormatError(list_file, problems, len(lines))
    if not samples:
        raise ListFormatError(list_file, [(0, "the list holds no samples")])
    return samples


def read_au_csv(csv_file: str | os.PathLike, data_root: str | os.PathLike | None = None, *,
                au_names: Sequence[str] | None = None, check_files: bool = True,
                intensity_threshold: float | None = None) -> tuple[list[AUVideo], list[str]]:
    """Per-frame AU labels grouped by video (rows of one path, sorted by frame). ``frame`` is the 0-based index of the
    image in the naturally sorted frame folder (or of the frame in a video file). Values: 0 / 1, and 9 or -1 for
    "not annotated" (``valid`` False). ``intensity_threshold`` instead binarises intensities 0-5 (DISFA: >= 2).
    ``au_names`` selects and orders columns. Returns ``(videos, au_names)``; raises :class:`ListFormatError`."""
    csv_file = Path(csv_file)
    if not csv_file.is_file():
        raise ListFormatError(csv_file, [(0, "AU list not found")])
    problems: list[tuple[int, str]] = []
    rows: dict[str, list] = {}
    with open(csv_file, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header or header[:3] != ["path", "frame", "subject"]:
            raise ListFormatError(csv_file, [(1, f"expected the header 'path,frame,subject,AU...', got {header}")])
        columns = header[3:]
        bad = [c for c in columns if not c.startswith("AU")]
        if bad or not columns:
            raise ListFormatError(csv_file, [(1, f"AU columns must be named AU<n>, got {bad or 'none'}")])
        names = list(au_names) if au_names else columns
        missing = [n for n in names if n not in columns]
        if missing:
            raise ListFormatError(csv_file, [(1, f"AUs {missing} are not columns of the file")])
        pick = [columns.index(n) for n in names]
        for number, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                problems.append((number, f"expected {len(header)} fields, got {len(row)}"))
                continue
            try:
                frame = int(row[1])
                values = [float(row[3 + j]) for j in pick]
            except ValueError:
                problems.append((number, "frame and AU values must be numbers"))
                continue
            if frame < 0:
                problems.append((number, f"frame {frame} is negative"))
                continue
            rows.setdefault(row[0], []).append((number, frame, row[2], values))
    videos = []
    for path, items in rows.items():
        full = resolve(path, data_root)
        if check_files and not os.path.exists(full):
            problems.append((items[0][0], f"missing file or folder: {full}"))
            continue
        items.sort(key=lambda t: t[1])
        frames_seen = [t[1] for t in items]
        if len(set(frames_seen)) != len(frames_seen):
            dup = next(t for t, u in zip(items[1:], items) if t[1] == u[1])
            problems.append((dup[0], f"frame {dup[1]} of {path} appears twice"))
            continue
        if len({t[2] for t in items}) > 1:
            problems.append((items[0][0], f"{path} has rows of several subjects: {sorted({t[2] for t in items})}"))
            continue
        count = _count_frames(full) if check_files else None
        if count is not None and frames_seen[-1] >= count:
            problems.append((max(items, key=lambda t: t[1])[0],
                             f"frame {frames_seen[-1]} but the folder {full} holds {count} frames"))
            continue
        raw = np.array([t[3] for t in items], dtype=np.float32)
        valid = ~np.isin(raw, INVALID_AU_CODES)
        if intensity_threshold is not None:
            labels = (raw >= intensity_threshold) & valid
        else:
            bad_values = valid & ~np.isin(raw, (0, 1))
            if bad_values.any():
                row = items[int(np.argwhere(bad_values)[0][0])][0]
                problems.append((row, "AU values must be 0, 1 or 9 (not annotated)"))
                continue
            labels = (raw > 0) & valid
        videos.append(AUVideo(full, np.array([t[1] for t in items], dtype=np.int64), labels.astype(np.float32),
                              valid, items[0][2], str(csv_file), items[0][0], tuple(names)))
    if problems:
        raise ListFormatError(csv_file, sorted(problems))
    if not videos:
        raise ListFormatError(csv_file, [(0, "the file holds no rows")])
    return videos, names


def split_validation(items: Sequence, fraction: float = 0.1, seed: int = 0, by: str = "label"
                     ) -> tuple[list, list]:
    """(train, validation) out of a TRAINING list (not the test list: docs/REFERENCE.md#defect-3), chosen with a
    fixed seed, each part in list order.

    ``by="label"`` (DFER clips): about ``fraction`` of each label; a label keeps at least one training item and,
    when it has two or more, gives at least one to validation. ``by="subject"`` (AU videos): whole subjects, so no
    face is in both parts; ``round(fraction x subjects)`` of them, at least one when there are three or more and at
    least one left for training."""
    items = list(items)
    if not 0 <= fraction < 1:
        raise ValueError(f"the validation fraction must be in [0, 1), got {fraction}")
    if by not in ("label", "subject"):
        raise ValueError(f"split by 'label' or 'subject', got {by!r}")
    if fraction == 0:
        return items, []
    rng = np.random.default_rng([seed, 7919])
    if by == "subject":
        subjects = sorted({v.subject for v in items})
        k = int(round(len(subjects) * fraction))
        if k == 0 and len(subjects) >= 3:
            k = 1
        k = min(k, len(subjects) - 1)
        held = {subjects[i] for i in rng.permutation(len(subjects))[:max(k, 0)].tolist()}
        return [v for v in items if v.subject not in held], [v for v in items if v.subject in held]
    by_label: dict[int, list[int]] = {}
    for i, s in enumerate(items):
        by_label.setdefault(getattr(s, "label", -1), []).append(i)
    val: set[int] = set()
    for label in sorted(by_label):
        idx = by_label[label]
        k = min(max(int(round(len(idx) * fraction)), 1), len(idx) - 1) if len(idx) > 1 else 0
        val.update(rng.permutation(idx)[:k].tolist())
    return [s for i, s in enumerate(items) if i not in val], [s for i, s in enumerate(items) if i in val]
