"""BP4D: 12 AUs (occurrence), 41 subjects, 3 subject-exclusive folds in the AU CSV format.

Reads the occurrence codes ``AUCoding/AU_OCC/<subject>_<task>.csv`` (header row: a frame column then one column per
AU number; rows: frame number, then 0 / 1 / 9 = unknown) and the face images ``BP4D-training/<subject>/<task>/
<frame>.jpg`` (``2DFaces/`` is accepted too, ``--frames-dir`` for cropped / aligned faces). A label row is matched to
the image whose name carries its frame number (+ ``--frame-offset``), so ``187.jpg`` and ``0187.jpg`` both work.

Folds (``--split literature``, default): the three subject parts of JAA-Net / DRML used by most AU papers; fold 1
tests part 3, fold 2 part 2, fold 3 part 1 (train on the two others), the numbering of the JAA-Net / ME-GraphAU
list scripts. ``--split sorted`` deals the naturally sorted subjects round-robin instead.
Writes ``train_fold{k}.csv``, ``test_fold{k}.csv`` and ``folds.txt`` (test subjects of each fold).
Options used: frames_dir, absolute, strict, split, frame_offset.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path

from data_lists.common import (AUFrame, BuildOptions, BuildReport, ListBuildError, au_rows_for_video,
                               first_existing, natural_key, parse_int, published_parts, require, subject_folds,
                               write_au_folds)

AUS = (1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24)
PARTS = (
    ("F001", "M007", "F018", "F008", "F002", "M004", "F010", "F009", "M012", "M001", "F016", "M014", "F023", "M008"),
    ("M011", "F003", "M010", "M002", "F005", "F022", "M018", "M017", "F013", "M016", "F020", "F011", "M013", "M005"),
    ("F007", "F015", "F006", "F019", "M006", "M009", "F012", "M003", "F004", "F021", "F017", "M015", "F014"),
)
FOLD_TEST_PART = (3, 2, 1)                       # fold k tests PARTS[FOLD_TEST_PART[k-1] - 1]
LABEL_DIR = "AUCoding/AU_OCC"
FRAME_DIRS = ("BP4D-training", "2DFaces")
NAME = re.compile(r"^([FM]\d{3})_(T\d+)\.csv$")


def read_occurrence(path: Path) -> dict[int, tuple[int, ...]]:
    """Frame number -> the 12 AU values (0, 1, 9) of one ``<subject>_<task>.csv``."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        columns = {}
        for j, h in enumerate(header[1:], start=1):
            if re.fullmatch(r"(AU)?\d+", h, flags=re.IGNORECASE):
                columns[int(h.upper().removeprefix("AU"))] = j
        missing = [a for a in AUS if a not in columns]
        if missing:
            raise ListBuildError(f"expected a header 'frame,1,2,...' with AU columns {list(AUS)}; "
                                 f"missing {missing}", path, 1)
        labels: dict[int, tuple[int, ...]] = {}
        for row in reader:
            if not any(c.strip() for c in row):
                continue
            line = reader.line_num
            if len(row) < len(header):
                raise ListBuildError(f"expected {len(header)} fields, got {len(row)}", path, line)
            frame = parse_int(row[0], "frame number", path, line, low=0)
            values = tuple(parse_int(row[columns[a]], f"AU{a} code (0, 1 or 9)", path, line, 0, 9) for a in AUS)
            bad = [f"AU{a}={v}" for a, v in zip(AUS, values) if v not in (0, 1, 9)]
            if bad:
                raise ListBuildError(f"expected AU codes 0, 1 or 9 (unknown), got {bad}", path, line)
            if frame in labels:
                raise ListBuildError(f"frame {frame} appears twice", path, line)
            labels[frame] = values
    return labels


def build(opts: BuildOptions) -> BuildReport:
    """Read every ``<subject>_<task>.csv``, match frames, and write 3 subject-exclusive folds."""
    report = BuildReport("bp4d")
    label_dir = require(opts.root / LABEL_DIR, "AU occurrence folder AUCoding/AU_OCC")
    frames = opts.frames_dir if opts.frames_dir is not None else first_existing(opts.root, FRAME_DIRS, "BP4D faces")
    frames = frames if frames.is_absolute() else opts.root / frames
    files = sorted(label_dir.glob("*.csv"), key=lambda p: natural_key(p.name))
    if not files:
        raise ListBuildError("no <subject>_<task>.csv files", label_dir)
    rows: list[AUFrame] = []
    for path in files:
        match = NAME.match(path.name)
        if match is None:
            raise ListBuildError("expected a file name <subject>_<task>.csv such as F001_T1.csv", path)
        subject, task = match.groups()
        rows += au_rows_for_video(frames / subject / task, subject, read_occurrence(path), opts, report, path)
    parts = published_parts(opts, PARTS)
    folds = subject_folds((r.subject for r in rows), parts)
    write_au_folds(opts.out, rows, folds, AUS, report, None if parts is None else FOLD_TEST_PART)
    return report
