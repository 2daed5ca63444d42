"""DFEW: five folds from the official split files.

Reads ``EmoLabel_DataSplit/{train,test}(single-labeled)/set_{k}.csv`` (header ``video_name,label``, label 1..7) and
the frame folders ``Clip/clip_224x224/<video_name as 5 digits>/`` (``--frames-dir`` for another frame set, e.g.
``Clip/jpg_256``). Writes ``train_fold{k}.txt``, ``test_fold{k}.txt`` (0-based labels) and ``classes.txt``.
Options used: frames_dir, absolute, strict.
"""
from __future__ import annotations

from pathlib import Path

from data_lists.common import (BuildOptions, BuildReport, frames_root, keep_clips_with_frames, parse_int,
                               read_csv_dicts, require, write_classes, write_fold_lists)

CLASSES = ("Happy", "Sad", "Neutral", "Angry", "Surprise", "Disgust", "Fear")   # official label k+1 = class k
SPLIT_DIR = "EmoLabel_DataSplit"
FRAMES_DIR = "Clip/clip_224x224"
FOLDS = 5


def split_file(root: Path, split: str, fold: int) -> Path:
    """``EmoLabel_DataSplit/train(single-labeled)/set_3.csv`` and the like."""
    return root / SPLIT_DIR / f"{split}(single-labeled)" / f"set_{fold}.csv"


def read_split(path: Path, frames: Path, opts: BuildOptions, report: BuildReport) -> list[tuple[str, int]]:
    """(frame folder, 0-based label) for every row whose frame folder holds frames."""
    def clips():
        for line, row in read_csv_dicts(path, ("video_name", "label")):
            video = parse_int(row["video_name"], "video_name (clip number)", path, line, low=1)
            label = parse_int(row["label"], f"label (1..{len(CLASSES)})", path, line, 1, len(CLASSES)) - 1
            yield line, frames / f"{video:05d}", label

    return keep_clips_with_frames(clips(), path, opts, report)


def build(opts: BuildOptions) -> BuildReport:
    """Write the five DFEW folds; a clip in both the train and test file of a fold is an error."""
    report = BuildReport("dfew")
    frames = require(frames_root(opts, FRAMES_DIR), "frame folder root (Clip/clip_224x224 or --frames-dir)")
    for k in range(1, FOLDS + 1):
        train = read_split(split_file(opts.root, "train", k), frames, opts, report)
        test = read_split(split_file(opts.root, "test", k), frames, opts, report)
        write_fold_lists(opts.out, k, train, test, report, split_file(opts.root, "test", k))
    report.outputs["classes.txt"] = write_classes(opts.out / "classes.txt", CLASSES)
    return report
