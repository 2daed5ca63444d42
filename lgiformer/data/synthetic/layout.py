"""The data set's layout: which clips each part holds, how they are rendered and written, and the lists around them.

Three parts stand in for the real data sets: ``unlabeled`` (VoxCeleb2-like mp4 videos and a pretraining list),
``labeled`` (DFEW-like frame folders, 7 classes, five subject-disjoint folds, per-frame AUs) and ``au`` (BP4D /
DISFA-like frame folders with per-frame AU labels, three subject-exclusive folds). ``generate`` always writes; it
renders items in worker processes when asked, and since every item draws from its own generator
(``options.item_rng``) the bytes do not depend on the number of workers. Whether to generate at all, and where,
is ``store.py``'s question.
"""
from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from tqdm.auto import tqdm

from lgiformer.data.synthetic.expressions import AU_NAMES, CLASSES, random_au_curves
from lgiformer.data.synthetic.faces import Identity
from lgiformer.data.synthetic.options import SyntheticOptions, item_rng
from lgiformer.data.synthetic.render import render_clip
from lgiformer.data.synthetic.writers import video_codec, write_frames, write_mp4, write_text

log = logging.getLogger(__name__)

__all__ = ["GENERATOR", "GENERATOR_VERSION", "AU_INVALID", "generate", "auto_workers"]

GENERATOR = "lgiformer.data.synthetic"     # meta.json's "generator": the sets made by this code
GENERATOR_VERSION = 2                      # 2: labeled/au_labels.csv; mp4 frames converted to YUV in numpy
AU_INVALID = 9                             # label code of an unannotated AU entry in au/labels.csv


def _identity(opts: SyntheticOptions, stream: str, index: int) -> Identity:
    return Identity.sample(item_rng(opts, stream, index))


def _unlabeled_item(out: Path, opts: SyntheticOptions, i: int) -> Dict[str, Any]:
    rng = item_rng(opts, "unlabeled", i)
    ident = _identity(opts, "unlabeled_id", i // opts.clips_per_identity)
    expression = None if rng.random() < 0.3 else CLASSES[int(rng.integers(len(CLASSES)))]
    talking = bool(rng.random() < 0.7)
    frames, _ = render_clip(ident, expression, opts.num_frames, opts.size, rng, talking,
                            intensity=float(rng.uniform(0.3, 1.0)), zoom=opts.face_zoom)
    write_mp4(out / "unlabeled" / "videos" / f"{i:05d}.mp4", frames, opts.fps, opts.crf)
    return {}


def _labeled_item(out: Path, opts: SyntheticOptions, i: int) -> Dict[str, Any]:
    reps = opts.clips_per_class_per_subject
    subject, label, rep = i // (len(CLASSES) * reps), (i // reps) % len(CLASSES), i % reps
    rng = item_rng(opts, "labeled", i)
    ident = _identity(opts, "labeled_id", subject)
    talking = bool(rng.random() < 0.25)
    frames, aus = render_clip(ident, None if CLASSES[label] == "Neutral" else CLASSES[label], opts.labeled_frames,
                              opts.size, rng, talking, zoom=opts.face_zoom)
    write_frames(out / "labeled" / "frames" / f"{i:05d}", frames, opts.jpeg_quality)
    peak = int(np.argmax(aus.max(axis=1))) if aus.max() > 0 else -1
    return {"subject": subject, "label": label, "rep": rep, "talking": talking, "peak_frame": peak,
            "peak": float(aus.max()), "aus": (aus >= 0.5).astype(np.int64).tolist()}


def _au_item(out: Path, opts: SyntheticOptions, i: int) -> Dict[str, Any]:
    rng = item_rng(opts, "au", i)
    subject = i % opts.au_subjects
    ident = _identity(opts, "au_id", subject)
    talking = bool(rng.random() < 0.3)
    if rng.random() < 0.5:
        expr = CLASSES[int(rng.integers(len(CLASSES)))]
        frames, aus = render_clip(ident, None if expr == "Neutral" else expr, opts.au_frames, opts.size, rng,
                                  talking, intensity=float(rng.uniform(0.3, 1.0)), zoom=opts.face_zoom)
    else:
        frames, aus = render_clip(ident, None, opts.au_frames, opts.size, rng, talking,
                                  channels=random_au_curves(opts.au_frames, rng), zoom=opts.face_zoom)
    write_frames(out / "au" / "frames" / f"{i:05d}", frames, opts.jpeg_quality)
    labels = (aus >= 0.5).astype(np.int64)
    mrng = item_rng(opts, "au_mask", i)
    labels[mrng.random(labels.shape) < 0.01] = AU_INVALID           # single unannotated entries
    labels[mrng.random(labels.shape[0]) < 0.01] = AU_INVALID        # whole unannotated frames
    return {"subject": subject, "labels": labels.tolist()}


_ITEM_FN = {"unlabeled": _unlabeled_item, "labeled": _labeled_item, "au": _au_item}


def _run_chunk(part: str, out: str, opts_dict: Dict[str, Any], indices: Sequence[int]) -> List[Dict[str, Any]]:
    opts = SyntheticOptions(**opts_dict)
    return [_ITEM_FN[part](Path(out), opts, i) for i in indices]


def _run_part(part: str, out: Path, opts: SyntheticOptions, count: int, pool: Optional[ProcessPoolExecutor],
              workers: int, progress: bool) -> List[Dict[str, Any]]:
    bar = tqdm(total=count, desc=f"synthetic {part}", unit="clip", disable=not progress, leave=False)
    results: List[Dict[str, Any]] = []
    try:
        if pool is None:
            for i in range(count):
                results.append(_ITEM_FN[part](out, opts, i))
                bar.update(1)
        else:
            chunk = max(1, min(16, count // (workers * 4)))
            chunks = [list(range(s, min(count, s + chunk))) for s in range(0, count, chunk)]
            futures = [pool.submit(_run_chunk, part, str(out), opts.to_dict(), c) for c in chunks]
            for fut in futures:                             # in order: results stay index-aligned
                res = fut.result()
                results.extend(res)
                bar.update(len(res))
    finally:
        bar.close()
    return results


def _folds(subjects: int, num_folds: int, rng: np.random.Generator) -> List[List[int]]:
    order = rng.permutation(subjects)
    return [sorted(int(s) for s in order[f::num_folds]) for f in range(num_folds)]


def _write_labeled_lists(out: Path, opts: SyntheticOptions, results: List[Dict[str, Any]]) -> Dict[str, Any]:
    folds = _folds(opts.subjects, 5, item_rng(opts, "folds", 0))
    rows = [(f"labeled/frames/{i:05d}", r["label"], r["subject"]) for i, r in enumerate(results)]
    for f, test_subjects in enumerate(folds, start=1):
        test = set(test_subjects)
        write_text(out / "labeled" / "lists" / f"train_fold{f}.txt",
                    "".join(f"{p} {y}\n" for p, y, s in rows if s not in test))
        write_text(out / "labeled" / "lists" / f"test_fold{f}.txt",
                    "".join(f"{p} {y}\n" for p, y, s in rows if s in test))
    write_text(out / "labeled" / "classes.txt", "".join(c + "\n" for c in CLASSES))
    lines = ["path,subject,label,class,rep,talking,peak_frame,peak"]
    for i, r in enumerate(results):
        lines.append(f"labeled/frames/{i:05d},{_subject_id('L', r['subject'])},{r['label']},{CLASSES[r['label']]},"
                     f"{r['rep']},{int(r['talking'])},{r['peak_frame']},{r['peak']:.3f}")
    write_text(out / "labeled" / "clips.csv", "\n".join(lines) + "\n")
    # The clips' per-frame AUs (the AU part's CSV format, every entry annotated): multi-task DFER + AU training.
    au_rows = [f"labeled/frames/{i:05d},{t},{_subject_id('L', r['subject'])}," + ",".join(map(str, lab)) + "\n"
               for i, r in enumerate(results) for t, lab in enumerate(r["aus"])]
    header = "path,frame,subject," + ",".join(AU_NAMES) + "\n"
    write_text(out / "labeled" / "au_labels.csv", header + "".join(au_rows))
    return {str(f): [_subject_id("L", s) for s in subs] for f, subs in enumerate(folds, start=1)}


def _subject_id(prefix: str, index: int) -> str:
    return f"{prefix}{index:03d}"


def _write_au_lists(out: Path, opts: SyntheticOptions, results: List[Dict[str, Any]]) -> Dict[str, Any]:
    header = "path,frame,subject," + ",".join(AU_NAMES) + "\n"
    rows: List[Tuple[int, str]] = []
    for i, r in enumerate(results):
        sid = _subject_id("A", r["subject"])
        for t, lab in enumerate(r["labels"]):
            rows.append((r["subject"], f"au/frames/{i:05d},{t},{sid}," + ",".join(str(x) for x in lab) + "\n"))
    write_text(out / "au" / "labels.csv", header + "".join(line for _, line in rows))
    folds = _folds(opts.au_subjects, 3, item_rng(opts, "folds", 1))
    for f, test_subjects in enumerate(folds, start=1):
        test = set(test_subjects)
        write_text(out / "au" / "lists" / f"train_fold{f}.csv",
                    header + "".join(line for s, line in rows if s not in test))
        write_text(out / "au" / "lists" / f"test_fold{f}.csv",
                    header + "".join(line for s, line in rows if s in test))
    return {str(f): [_subject_id("A", s) for s in subs] for f, subs in enumerate(folds, start=1)}


def _counts(opts: SyntheticOptions) -> Dict[str, int]:
    return {"unlabeled": opts.unlabeled_clips, "labeled": opts.subjects * len(CLASSES) *
            opts.clips_per_class_per_subject, "au": opts.au_clips}


def generate(out_dir: Any, *, seed: int = 0, workers: int = 1, progress: bool = True, **sizes: Any) -> Dict[str, Any]:
    """Generate the data set under ``out_dir`` (always regenerates) and return the ``meta.json`` dict.

    ``sizes`` are the fields of :class:`SyntheticOptions` (``size``, ``num_frames``, ``unlabeled_clips``, ``subjects``,
    ``clips_per_class_per_subject``, ``au_clips``, ``jpeg_quality``, ``parts``, ...). ``workers`` > 1 renders in
    that many processes; the output does not depend on it.
    """
    opts = SyntheticOptions(seed=seed, **sizes)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / "meta.json"
    if meta_path.exists():
        meta_path.unlink()                       # meta.json marks a complete set; it is written last
    t0 = time.perf_counter()
    counts = _counts(opts)
    meta: Dict[str, Any] = {"generator": GENERATOR, "version": GENERATOR_VERSION, "seed": opts.seed,
                            "options": opts.to_dict(), "counts": {}, "classes": list(CLASSES),
                            "aus": list(AU_NAMES), "au_invalid_code": AU_INVALID, "folds": {}, "files": {}}
    pool = None
    if workers > 1:
        pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"))
    try:
        _generate_parts(out, opts, counts, meta, pool, workers, progress)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    write_text(meta_path, json.dumps(meta, indent=1) + "\n")
    log.info("synthetic data set written to %s in %.1f s (%s)", out, time.perf_counter() - t0,
             ", ".join(f"{k}={v}" for k, v in meta["counts"].items() if not isinstance(v, dict)))
    return meta


def _generate_parts(out: Path, opts: SyntheticOptions, counts: Dict[str, int], meta: Dict[str, Any],
                    pool: Optional[ProcessPoolExecutor], workers: int, progress: bool) -> None:
    if "unlabeled" in opts.parts:
        _run_part("unlabeled", out, opts, counts["unlabeled"], pool, workers, progress)
        write_text(out / "unlabeled" / "pretrain.txt", "".join(
            f"unlabeled/videos/{i:05d}.mp4 0 {opts.num_frames}\n" for i in range(counts["unlabeled"])))
        meta["counts"]["unlabeled_videos"] = counts["unlabeled"]
        meta["counts"]["unlabeled_identities"] = -(-counts["unlabeled"] // opts.clips_per_identity)
        meta["files"]["pretrain_list"] = "unlabeled/pretrain.txt"
        meta["video_codec"] = video_codec()
    if "labeled" in opts.parts:
        res = _run_part("labeled", out, opts, counts["labeled"], pool, workers, progress)
        meta["folds"]["labeled"] = _write_labeled_lists(out, opts, res)
        meta["counts"]["labeled_clips"] = counts["labeled"]
        meta["counts"]["labeled_subjects"] = opts.subjects
        meta["files"]["labeled_lists"] = "labeled/lists/{split}_fold{fold}.txt"
        meta["files"]["labeled_au_labels"] = "labeled/au_labels.csv"
    if "au" in opts.parts:
        res = _run_part("au", out, opts, counts["au"], pool, workers, progress)
        meta["folds"]["au"] = _write_au_lists(out, opts, res)
        labels = np.array([lab for r in res for lab in r["labels"]])
        meta["counts"]["au_clips"] = counts["au"]
        meta["counts"]["au_frames"] = int(labels.shape[0])
        meta["counts"]["au_subjects"] = opts.au_subjects
        meta["counts"]["au_positive_rate"] = {n: round(float((labels[:, k] == 1).mean()), 4)
                                              for k, n in enumerate(AU_NAMES)}
        meta["files"]["au_labels"] = "au/labels.csv"
        meta["files"]["au_lists"] = "au/lists/{split}_fold{fold}.csv"


# Below this many frames, starting worker processes (each imports the package) costs more than it saves.
_FRAMES_PER_WORKER = 10_000


def auto_workers(opts: SyntheticOptions) -> int:
    """Processes for ``workers="auto"``: one for small sets, else one per usable CPU (at most 4), so that a run's
    large demo set (40k frames) does not render on one core while the others wait."""
    frames = {"unlabeled": opts.num_frames, "labeled": opts.labeled_frames, "au": opts.au_frames}
    total = sum(n * frames[part] for part, n in _counts(opts).items() if part in opts.parts)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(4, cpus, total // _FRAMES_PER_WORKER))
