"""FERV39k: the All_scenes split (one train / test split, 31,088 / 7,847 clips in the full release).

Reads ``4_setups/All_scenes/train_All.csv`` and ``test_All.csv`` (no header; lines ``<clip path> <label name>``,
the path relative to ``2_ClipsforFaceCrop/``, e.g. ``Action/ActionScene/0001 Happy``) and the frame folders under
``2_ClipsforFaceCrop/`` (``--frames-dir`` to point elsewhere). Writes ``train.txt``, ``test.txt``, ``classes.txt``.

Class order: ``official`` (default) is Angry, Disgust, Fear, Happy, Neutral, Sad, Surprise, the order of
``lgiformer/data/datasets.yaml``. The released MAE-DFER FERV39k checkpoints were trained with the DFEW order
(Happy, Sad, Neutral, Angry, Surprise, Disgust, Fear): build with ``--class-order mae-dfer`` to evaluate those.
Options used: frames_dir, absolute, strict, class_order.
"""
from __future__ import annotations

from pathlib import Path

from data_lists.common import (BuildOptions, BuildReport, ListBuildError, check_disjoint, frames_root,
                               keep_clips_with_frames, label_index, read_lines, require, write_classes,
                               write_video_list)

CLASS_ORDERS = {
    "official": ("Angry", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise"),
    "mae-dfer": ("Happy", "Sad", "Neutral", "Angry", "Surprise", "Disgust", "Fear"),
}
SPLIT_DIR = "4_setups/All_scenes"
FRAMES_DIR = "2_ClipsforFaceCrop"
SPLITS = {"train": "train_All.csv", "test": "test_All.csv"}


def read_split(path: Path, frames: Path, classes: tuple[str, ...], opts: BuildOptions,
               report: BuildReport) -> list[tuple[str, int]]:
    """(frame folder, 0-based label) for each ``path label`` line whose folder holds frames."""
    def clips():
        for line, text in read_lines(path):
            fields = text.rsplit(None, 1)
            if len(fields) != 2:
                raise ListBuildError(f"expected '<clip path> <label name>', got {text!r}", path, line)
            clip, name = fields
            yield line, frames / clip.strip().strip("/"), label_index(name, classes, path, line)

    return keep_clips_with_frames(clips(), path, opts, report)


def build(opts: BuildOptions) -> BuildReport:
    """Write train.txt / test.txt / classes.txt of the All_scenes setup."""
    if opts.class_order not in CLASS_ORDERS:
        raise ListBuildError(f"--class-order must be one of {sorted(CLASS_ORDERS)}, got {opts.class_order!r}")
    classes = CLASS_ORDERS[opts.class_order]
    report = BuildReport("ferv39k")
    frames = require(frames_root(opts, FRAMES_DIR), "frame folder root (2_ClipsforFaceCrop or --frames-dir)")
    rows = {split: read_split(opts.root / SPLIT_DIR / name, frames, classes, opts, report)
            for split, name in SPLITS.items()}
    check_disjoint(rows["train"], rows["test"], "All_scenes", opts.root / SPLIT_DIR / SPLITS["test"])
    for split, items in rows.items():
        report.outputs[f"{split}.txt"] = write_video_list(opts.out / f"{split}.txt", items)
    report.outputs["classes.txt"] = write_classes(opts.out / "classes.txt", classes)
    return report
