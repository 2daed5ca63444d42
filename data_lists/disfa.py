"""DISFA: 8 AUs (intensity >= 2 is positive), 27 subjects, 3 subject-exclusive folds in the AU CSV format.

Reads ``ActionUnit_Labels/<subject>/<subject>_au<n>.txt`` (lines ``frame,intensity``, frame 1-based, intensity 0..5)
and frame folders ``<frames-dir>/<subject>/<frame>.jpg``. The official release holds videos
(``Videos_LeftCamera/LeftVideoSN001_comp.avi``), not frames: extract them first, one folder per subject, named by
frame number starting at 1 so that image k is label frame k, e.g.
``ffmpeg -i Videos_LeftCamera/LeftVideoSN001_comp.avi -start_number 1 -q:v 2 frames/SN001/%d.jpg``
(frames starting at 0: ``--frame-offset -1``). ``--frames-dir`` defaults to ``frames`` under the root.

A frame absent from one AU file gets 9 (not annotated) for that AU. Folds (``--split literature``): the JAA-Net
subject parts, fold 1 tests part 3, fold 2 part 2, fold 3 part 1; ``--split sorted`` deals subjects round-robin.
Writes ``train_fold{k}.csv``, ``test_fold{k}.csv`` and ``folds.txt``.
Options used: frames_dir, absolute, strict, split, frame_offset.
"""
from __future__ import annotations

import re
from pathlib import Path

from data_lists.common import (AU_INVALID, AUFrame, BuildOptions, BuildReport, ListBuildError, au_rows_for_video,
                               frames_root, natural_key, parse_int, published_parts, read_lines, require, subject_folds,
                               write_au_folds)

AUS = (1, 2, 4, 6, 9, 12, 25, 26)
POSITIVE = 2                                     # intensity >= 2 (B or more) counts as occurrence
PARTS = (
    ("SN002", "SN010", "SN001", "SN026", "SN027", "SN032", "SN030", "SN009", "SN016"),
    ("SN013", "SN018", "SN011", "SN028", "SN012", "SN006", "SN031", "SN021", "SN024"),
    ("SN003", "SN029", "SN023", "SN025", "SN008", "SN005", "SN007", "SN017", "SN004"),
)
FOLD_TEST_PART = (3, 2, 1)
LABEL_DIR = "ActionUnit_Labels"
FRAMES_DIR = "frames"
SUBJECT = re.compile(r"^SN\d{3}$")


def read_intensity(path: Path) -> dict[int, int]:
    """Frame number -> intensity (0..5) of one ``<subject>_au<n>.txt``."""
    values: dict[int, int] = {}
    for line, text in read_lines(path):
        fields = text.split(",")
        if len(fields) != 2:
            raise ListBuildError(f"expected 'frame,intensity', got {text!r}", path, line)
        frame = parse_int(fields[0], "frame number", path, line, low=0)
        if frame in values:
            raise ListBuildError(f"frame {frame} appears twice", path, line)
        values[frame] = parse_int(fields[1], "intensity (0..5)", path, line, 0, 5)
    return values


def subject_labels(folder: Path, subject: str) -> dict[int, tuple[int, ...]]:
    """Frame number -> 8 binary AU values (9 where an AU file has no row for that frame)."""
    per_au = [read_intensity(require(folder / f"{subject}_au{a}.txt", f"label file for AU{a}")) for a in AUS]
    frames = sorted(set().union(*per_au))
    return {f: tuple(AU_INVALID if f not in au else int(au[f] >= POSITIVE) for au in per_au) for f in frames}


def build(opts: BuildOptions) -> BuildReport:
    """Read every subject's 8 label files, match frames, and write 3 subject-exclusive folds."""
    report = BuildReport("disfa")
    label_dir = require(opts.root / LABEL_DIR, "label folder ActionUnit_Labels")
    frames = require(frames_root(opts, FRAMES_DIR), "extracted frames (see the module docstring, --frames-dir)")
    subjects = sorted((p.name for p in label_dir.iterdir() if p.is_dir()), key=natural_key)
    odd = [s for s in subjects if not SUBJECT.match(s)]
    if odd or not subjects:
        raise ListBuildError(f"expected subject folders SN001, SN002, ...; got {odd or 'none'}", label_dir)
    rows: list[AUFrame] = []
    for subject in subjects:
        labels = subject_labels(label_dir / subject, subject)
        rows += au_rows_for_video(frames / subject, subject, labels, opts, report, label_dir / subject)
    parts = published_parts(opts, PARTS)
    folds = subject_folds((r.subject for r in rows), parts)
    write_au_folds(opts.out, rows, folds, AUS, report, None if parts is None else FOLD_TEST_PART)
    return report
