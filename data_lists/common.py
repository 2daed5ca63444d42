"""Shared helpers of the list builders: reading split files with line numbers, frame folders, writing lists.

Every builder turns an official release layout into the list formats that ``lgiformer.data.lists`` reads:

* reference list (DFER): ``path label`` per line, no header, label 0-based;
* pretraining list: ``path start total`` per line, or ``path`` when the frame count was not probed;
* AU CSV: header ``path,frame,subject,AU<n>,...``, one row per frame, values 0/1 and 9 for "not annotated".

Everything that can go wrong with the raw data raises :class:`ListBuildError` naming the file, the line and what was
expected, so a user can fix the tree instead of guessing. This module imports nothing heavy (no torch).
"""
from __future__ import annotations

import csv
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

log = logging.getLogger("data_lists")

FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")   # the same set as lgiformer.data.readers
AU_INVALID = 9                                         # AU value of an unannotated frame (BP4D convention)


class ListBuildError(ValueError):
    """A raw file does not look like the official release: says which file, which line and what was expected."""

    def __init__(self, message: str, source: str | os.PathLike | None = None, line: int | None = None) -> None:
        self.message, self.source, self.line = message, None if source is None else str(source), line
        where = "" if source is None else f"{source}:{line}: " if line else f"{source}: "
        super().__init__(where + message)


@dataclass
class BuildOptions:
    """Everything a builder may read; each builder uses the fields its module docstring names."""

    root: Path                                   # the raw dataset folder (official layout)
    out: Path                                    # where the lists are written
    frames_dir: Path | None = None               # frame folders, when not at the official place (relative to root)
    absolute: bool = False                       # write absolute paths instead of paths relative to root
    strict: bool = False                         # a missing frame folder / broken video is an error, not a skip
    probe: bool = True                           # VoxCeleb2: probe mp4 frame counts with PyAV
    exclude: Path | None = None                  # VoxCeleb2: list of known-broken files to leave out
    workers: int = 1                             # VoxCeleb2: processes probing frame counts
    class_order: str = "official"                # FERV39k: "official" or "mae-dfer" (the DFEW order)
    split: str = "literature"                    # BP4D/DISFA: "literature" folds or "sorted" round-robin
    frame_offset: int = 0                        # BP4D/DISFA: image number = label frame number + offset


@dataclass
class BuildReport:
    """What a builder wrote and what it left out; the CLI logs it, tests check it."""

    dataset: str
    outputs: dict[str, int] = field(default_factory=dict)     # file name -> number of lines / rows
    skipped: dict[str, int] = field(default_factory=dict)     # reason -> count

    def count(self, reason: str, n: int = 1) -> None:
        """Count ``n`` left-out items under ``reason`` (no warning: the summary reports them)."""
        self.skipped[reason] = self.skipped.get(reason, 0) + n

    def skip(self, reason: str, what: str, strict: bool, source: str | os.PathLike | None = None,
             line: int | None = None) -> None:
        """Count one left-out item, or raise when ``strict`` (first few are logged with their place)."""
        if strict:
            raise ListBuildError(f"{reason}: {what} (drop --strict to skip such items with a warning)", source, line)
        self.count(reason)
        if self.skipped[reason] <= 5:
            where = "" if source is None else f" ({source}:{line})" if line else f" ({source})"
            log.warning("skipped, %s: %s%s", reason, what, where)

    def summary(self) -> str:
        lines = [f"{self.dataset}: " + ", ".join(f"{k} ({v})" for k, v in self.outputs.items())]
        lines += [f"  skipped {v} x {k}" for k, v in self.skipped.items()]
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- frame folders
def natural_key(name: str) -> list:
    """``10.jpg`` after ``9.jpg``: digit runs compare as numbers (same order as the training-time reader)."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def list_frames(folder: Path) -> list[Path]:
    """Image files of a frame folder in natural order; their position is the 0-based frame index."""
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in FRAME_EXTENSIONS]
    return sorted(files, key=lambda p: natural_key(p.name))


def count_frames(folder: Path) -> int:
    """Number of images in a frame folder (0 when the folder is missing)."""
    return len(list_frames(folder)) if folder.is_dir() else 0


def frame_index_by_number(folder: Path) -> dict[int, int]:
    """Map the number in each image name (last digit run: ``0042.jpg`` -> 42) to its 0-based frame index."""
    index: dict[int, int] = {}
    for i, p in enumerate(list_frames(folder)):
        digits = re.findall(r"\d+", p.stem)
        if not digits:
            raise ListBuildError(f"frame file name has no number: {p.name}", folder)
        number = int(digits[-1])
        if number in index:
            raise ListBuildError(f"two images carry frame number {number} (e.g. {p.name})", folder)
        index[number] = i
    return index


def frames_root(opts: BuildOptions, default: str) -> Path:
    """The folder holding the frame folders: ``--frames-dir`` (relative to root unless absolute) or the default."""
    sub = opts.frames_dir if opts.frames_dir is not None else Path(default)
    return sub if sub.is_absolute() else opts.root / sub


def require(path: Path, what: str) -> Path:
    """Fail early, with the expected layout, when an official file or folder is missing."""
    if not path.exists():
        raise ListBuildError(f"missing {what}; see data_lists/README.md for the expected layout", path)
    return path


def first_existing(root: Path, candidates: Sequence[str], what: str) -> Path:
    """The first of several known spellings of a release folder (releases and mirrors rename them)."""
    for c in candidates:
        if (root / c).exists():
            return root / c
    raise ListBuildError(f"missing {what}: expected one of {list(candidates)}", root)


def list_path(path: Path, opts: BuildOptions) -> str:
    """A path as written in a list: relative to root (default) or absolute; spaces are refused (space-separated)."""
    path = Path(os.path.abspath(path))
    root = Path(os.path.abspath(opts.root))
    if opts.absolute:
        text = path.as_posix()
    else:
        try:
            text = path.relative_to(root).as_posix()
        except ValueError:
            raise ListBuildError(f"{path} is not under --root {root}; pass --absolute to write absolute paths")
    if any(c.isspace() for c in text):
        raise ListBuildError(f"path contains whitespace, which the space-separated list format cannot hold: "
                             f"{text!r}; rename the folder (or the root) first")
    return text


def keep_clips_with_frames(clips: Iterable[tuple[int, Path, int]], source: Path, opts: BuildOptions,
                           report: BuildReport) -> list[tuple[str, int]]:
    """(list path, label) for each (line, frame folder, label) of ``source`` whose folder holds frames. A missing or
    empty folder is skipped and counted (an error with --strict); no usable clip in the whole file is an error."""
    rows = []
    for line, folder, label in clips:
        if count_frames(folder) == 0:
            report.skip("missing or empty frame folder", str(folder), opts.strict, source, line)
            continue
        rows.append((list_path(folder, opts), label))
    if not rows:
        raise ListBuildError("no usable clips (are the frame folders at the expected place?)", source)
    return rows


# ----------------------------------------------------------------------------------------------- reading
def read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Non-empty lines with their 1-based number (BOM and trailing whitespace stripped)."""
    require(path, "split file")
    with open(path, encoding="utf-8-sig") as f:
        for number, raw in enumerate(f, start=1):
            text = raw.strip()
            if text:
                yield number, text


def read_csv_dicts(path: Path, columns: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """Rows of a headered CSV as dicts with their line number; the header must hold ``columns``."""
    require(path, "split file")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        missing = [c for c in columns if c not in header]
        if missing:
            raise ListBuildError(f"expected a header with columns {list(columns)}, got {header}", path, 1)
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            if len(row) < len(header):
                raise ListBuildError(f"expected {len(header)} fields ({','.join(header)}), got {len(row)}: {row}",
                                     path, reader.line_num)
            yield reader.line_num, {h: cell.strip() for h, cell in zip(header, row)}


def parse_int(text: str, what: str, source: Path, line: int, low: int | None = None, high: int | None = None) -> int:
    """An integer field in a range, or a ListBuildError saying which field was expected."""
    try:
        number = float(text)
    except ValueError:
        number = float("nan")
    if not number.is_integer():
        raise ListBuildError(f"expected an integer {what}, got {text!r}", source, line)
    value = int(number)
    if (low is not None and value < low) or (high is not None and value > high):
        raise ListBuildError(f"expected {what} in [{low}, {high}], got {value}", source, line)
    return value


def label_index(name: str, classes: Sequence[str], source: Path, line: int) -> int:
    """0-based index of a class name (case-insensitive), or an error listing the known names."""
    lowered = [c.lower() for c in classes]
    if name.strip().lower() not in lowered:
        raise ListBuildError(f"unknown label {name!r}; expected one of {list(classes)}", source, line)
    return lowered.index(name.strip().lower())


# ----------------------------------------------------------------------------------------------- writing
def write_lines(path: Path, lines: Iterable[str]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    n = 0
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for line in lines:
            f.write(line + "\n")
            n += 1
    os.replace(tmp, path)                        # never leave a half-written list behind
    return n


def write_video_list(path: Path, rows: Iterable[tuple[str, int]]) -> int:
    """Reference format: ``path label`` per line, no header. Returns the number of lines."""
    return write_lines(path, (f"{p} {int(label)}" for p, label in rows))


def write_pretrain_list(path: Path, rows: Iterable[tuple[str, int | None]]) -> int:
    """Pretraining format: ``path 0 total`` when the frame count is known, else just ``path``."""
    return write_lines(path, (p if total is None else f"{p} 0 {int(total)}" for p, total in rows))


def write_classes(path: Path, classes: Sequence[str]) -> int:
    """One class name per line, line k = label k: the order travels with the lists."""
    return write_lines(path, classes)


@dataclass(frozen=True)
class AUFrame:
    """One AU CSV row: frame folder (as written), 0-based frame index, subject, AU values (0, 1 or 9)."""

    path: str
    frame: int
    subject: str
    values: tuple[int, ...]


def write_au_csv(path: Path, rows: Iterable[AUFrame], aus: Sequence[int]) -> int:
    """AU CSV with the header ``path,frame,subject,AU<n>...``. Returns the number of data rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    n = 0
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["path", "frame", "subject", *(f"AU{a}" for a in aus)])
        for row in rows:
            if len(row.values) != len(aus) or any(v not in (0, 1, AU_INVALID) for v in row.values):
                raise ListBuildError(f"AU row {row} does not hold {len(aus)} values in (0, 1, {AU_INVALID})")
            writer.writerow([row.path, row.frame, row.subject, *row.values])
            n += 1
    os.replace(tmp, path)
    return n


# ----------------------------------------------------------------------------------------------- folds
def subject_folds(subjects: Iterable[str], parts: Sequence[Sequence[str]] | None = None,
                  num_folds: int = 3) -> list[list[str]]:
    """Test subjects of each fold, subject-exclusive and covering every subject once.

    With ``parts`` (a published split), the present subjects are placed in their part and a subject missing from
    every part is an error. Without, naturally sorted subjects are dealt round-robin: deterministic, documented.
    """
    present = sorted(set(subjects), key=natural_key)
    if not present:
        raise ListBuildError("no subjects found")
    if parts is None:
        folds = [present[k::num_folds] for k in range(num_folds)]
    else:
        known = {s: k for k, part in enumerate(parts) for s in part}
        unknown = [s for s in present if s not in known]
        if unknown:
            raise ListBuildError(f"subjects {unknown} are in no fold of the published split; "
                                 f"use --split sorted for a round-robin split")
        folds = [[s for s in present if known[s] == k] for k in range(len(parts))]
    empty = [k + 1 for k, f in enumerate(folds) if not f]
    if empty:
        raise ListBuildError(f"fold(s) {empty} would have no test subject ({len(present)} subjects found)")
    return folds


def fold_rows(rows: Sequence[AUFrame], test_subjects: Iterable[str]) -> tuple[list[AUFrame], list[AUFrame]]:
    """Split rows into (train, test) by subject."""
    test = set(test_subjects)
    return [r for r in rows if r.subject not in test], [r for r in rows if r.subject in test]


def au_rows_for_video(folder: Path, subject: str, labels: dict[int, tuple[int, ...]], opts: BuildOptions,
                      report: BuildReport, source: Path) -> list[AUFrame]:
    """AU rows of one video: each labelled frame number is matched to the image carrying that number + offset.

    Labelled frames without an image are skipped and counted (an error with ``--strict``); images without a label
    row get no row. ``frame`` is the image's 0-based position in the natural order of the folder.
    """
    if not folder.is_dir():
        report.skip("missing frame folder", str(folder), opts.strict, source)
        return []
    index = frame_index_by_number(folder)
    path = list_path(folder, opts)
    rows = []
    for number in sorted(labels):
        i = index.get(number + opts.frame_offset)
        if i is None:
            report.skip("labelled frame without image", f"{folder}/{number + opts.frame_offset}.*", opts.strict,
                        source)
            continue
        rows.append(AUFrame(path, i, subject, labels[number]))
    return rows


def write_au_folds(out: Path, rows: Sequence[AUFrame], folds: Sequence[Sequence[str]], aus: Sequence[int],
                   report: BuildReport, fold_of_part: Sequence[int] | None = None) -> None:
    """``train_fold{k}.csv`` / ``test_fold{k}.csv``: fold k tests part ``fold_of_part[k-1]`` (default part k)."""
    order = list(fold_of_part) if fold_of_part is not None else list(range(1, len(folds) + 1))
    for k, part in enumerate(order, start=1):
        train, test = fold_rows(rows, folds[part - 1])
        if not train or not test:
            raise ListBuildError(f"fold {k} has {len(train)} train and {len(test)} test rows; "
                                 f"check the frame folders of subjects {list(folds[part - 1])}")
        report.outputs[f"train_fold{k}.csv"] = write_au_csv(out / f"train_fold{k}.csv", train, aus)
        report.outputs[f"test_fold{k}.csv"] = write_au_csv(out / f"test_fold{k}.csv", test, aus)
    lines = [f"fold{k} test: {' '.join(folds[part - 1])}" for k, part in enumerate(order, start=1)]
    report.outputs["folds.txt"] = write_lines(out / "folds.txt", lines)


def check_disjoint(train: Sequence[tuple[str, int]], test: Sequence[tuple[str, int]], what: str,
                   source: Path) -> None:
    """A clip listed in both train and test would leak the test set into training."""
    both = sorted({p for p, _ in train} & {p for p, _ in test})
    if both:
        raise ListBuildError(f"{what}: {len(both)} clip(s) in both train and test, e.g. {both[0]}", source)


def published_parts(opts: BuildOptions, parts: Sequence[Sequence[str]]) -> Sequence[Sequence[str]] | None:
    """The published subject parts (``--split literature``) or None for the sorted round-robin split."""
    if opts.split not in ("literature", "sorted"):
        raise ListBuildError(f"--split must be 'literature' or 'sorted', got {opts.split!r}")
    return None if opts.split == "sorted" else parts


def write_fold_lists(out: Path, fold: int, train: Sequence[tuple[str, int]], test: Sequence[tuple[str, int]],
                     report: BuildReport, source: Path) -> None:
    """``train_fold{k}.txt`` / ``test_fold{k}.txt``; a clip in both (a leaked test clip) is an error."""
    check_disjoint(train, test, f"fold {fold}", source)
    report.outputs[f"train_fold{fold}.txt"] = write_video_list(out / f"train_fold{fold}.txt", train)
    report.outputs[f"test_fold{fold}.txt"] = write_video_list(out / f"test_fold{fold}.txt", test)
