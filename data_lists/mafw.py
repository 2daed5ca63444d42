"""MAFW: five folds of the single-expression set, 11 classes.

Reads ``Train & Test Set/single/no_caption/set_{k}/train.txt`` and ``test.txt`` (no header; lines
``<clip>.mp4 <label name>``, e.g. ``00025.mp4 anger``; the folder ``split/single/no_caption`` used by the MAE-DFER
scripts is accepted too) and the png frame folders ``data/frames/<clip>/`` (``--frames-dir`` to point elsewhere).
Writes ``train_fold{k}.txt``, ``test_fold{k}.txt`` and ``classes.txt``.
Options used: frames_dir, absolute, strict.
"""
from __future__ import annotations

from pathlib import Path

from data_lists.common import (BuildOptions, BuildReport, ListBuildError, first_existing, frames_root,
                               keep_clips_with_frames, label_index, read_lines, require, write_classes,
                               write_fold_lists)

CLASSES = ("anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise", "contempt", "anxiety",
           "helplessness", "disappointment")
SPLIT_DIRS = ("Train & Test Set/single/no_caption", "split/single/no_caption")
FRAMES_DIR = "data/frames"
FOLDS = 5


def read_split(path: Path, frames: Path, opts: BuildOptions, report: BuildReport) -> list[tuple[str, int]]:
    """(frame folder, 0-based label) for each ``clip label`` line whose folder holds frames."""
    def clips():
        for line, text in read_lines(path):
            fields = text.split()
            if len(fields) != 2:
                raise ListBuildError(f"expected '<clip>.mp4 <label name>', got {text!r}", path, line)
            clip, name = fields
            yield line, frames / Path(clip).stem, label_index(name, CLASSES, path, line)

    return keep_clips_with_frames(clips(), path, opts, report)


def build(opts: BuildOptions) -> BuildReport:
    """Write the five MAFW folds; a clip in both train and test of a fold is an error."""
    report = BuildReport("mafw")
    split_dir = first_existing(opts.root, SPLIT_DIRS, "MAFW split folder")
    frames = require(frames_root(opts, FRAMES_DIR), "frame folder root (data/frames or --frames-dir)")
    for k in range(1, FOLDS + 1):
        train = read_split(split_dir / f"set_{k}" / "train.txt", frames, opts, report)
        test = read_split(split_dir / f"set_{k}" / "test.txt", frames, opts, report)
        write_fold_lists(opts.out, k, train, test, report, split_dir / f"set_{k}" / "test.txt")
    report.outputs["classes.txt"] = write_classes(opts.out / "classes.txt", CLASSES)
    return report
