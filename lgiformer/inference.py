"""Evaluation, once for every task: deterministic validation and multi-view testing of classifiers, frame-wise AU
evaluation, and the report files.

* Classification: a batch is ``(clips, labels, indices)``: clips [B, 3, T, H, W] (one view, validation) or
  [B, V, 3, T, H, W] (V = temporal clips x spatial crops, test). Every view goes through the model; the softmax
  probabilities are averaged over views (:func:`average_views`), as the paper's protocol does. A DFER + AU model
  gets ``(clips, labels, au, au_valid, indices)`` batches and is also scored per AU, view by view.
* AU detection: every labelled frame of a test video is predicted from the clip centred on it (clip mode: the clip's
  prediction; dense mode: the prediction of the slot holding the centre frame); reported per AU and as mean F1
  (U5, U6; docs/AU_METHODS.md#shared-rules-u1-u6) raw (``frame``), smoothed over time (``smoothed``,
  docs/AU_METHODS.md#moving-mean) and at each video's centre clip (``centre_clip``).
* Determinism: the model runs in eval mode under ``torch.no_grad``; the loaders do not shuffle and the datasets'
  val/test modes sample fixed windows and crops (the reference validated on a random window:
  docs/REFERENCE.md#defect-3).
* Under torch.distributed each rank evaluates its shard; results are gathered and de-duplicated by sample index,
  so a padded DistributedSampler does not count a sample twice.
* Unreadable input is never replaced here (training replaces it; evaluation must not score one file under another's
  path and label): a clip (an AU video) that no reader can read is excluded, logged, counted in the metrics
  (``evaluated``, ``excluded``) and listed with its error under ``excluded_files``; the figures cover the rest. When
  more than ``bad_sample_threshold`` of the clips (videos) are excluded, or all of them, evaluation stops with
  :class:`~lgiformer.data.TooManyBadSamples` naming the files.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from lgiformer import metrics as M
from lgiformer.au import fold_f1, smooth_by_video
from lgiformer.data import AUFrameWindows, ReadableBatch, TooManyBadSamples, center_indices, collate_readable
from lgiformer.distributed import gather_objects, rank_and_world
from lgiformer.models.au import au_probs

log = logging.getLogger(__name__)


def amp_dtype(precision: str) -> torch.dtype:
    """The autocast dtype of a run's precision (``bf16``, ``fp16``, else fp32: no autocast)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def _autocast(device: torch.device | str, amp_dtype: torch.dtype | None):
    if amp_dtype is None or amp_dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=amp_dtype)


def average_views(logits: torch.Tensor) -> torch.Tensor:
    """Logits [B, V, K] (or [B, K]) -> class probabilities [B, K]: softmax per view, then mean over views."""
    probs = logits.float().softmax(-1)
    return probs.mean(1) if probs.dim() == 3 else probs


def forward_views(model: nn.Module, clips: torch.Tensor, max_views_per_call: int | None = None,
                  with_au: bool = False):
    """Run every view through the model: [B, 3, T, H, W] -> [B, K]; [B, V, 3, T, H, W] -> [B, V, K]. With
    ``with_au`` (a multi-task model) returns ``(logits, AU probabilities)``, the latter [B, A] or [B, V, A]."""
    def call(x):
        if not with_au:
            return model(x), None
        logits, au_out = model(x, with_au=True)
        return logits, au_probs(au_out)

    if clips.dim() == 5:
        logits, au = call(clips)
        return (logits, au) if with_au else logits
    b, v = clips.shape[:2]
    flat = clips.flatten(0, 1)
    step = max_views_per_call or flat.shape[0]
    outs = [call(flat[i:i + step]) for i in range(0, flat.shape[0], step)]
    logits = torch.cat([o[0] for o in outs]).view(b, v, -1)
    return (logits, torch.cat([o[1] for o in outs]).view(b, v, -1)) if with_au else logits


@dataclass
class EvalResult:
    """Per-sample probabilities (view-averaged), labels and dataset indices of the samples that were read, sorted by
    index, plus metrics. From a multi-task model, also the AU probabilities, labels and validity of every view,
    ``[N, V, A]`` (``au_*``). ``excluded``: the samples no reader could read (``index, path, reason, label``), sorted
    by index; they have no row in the arrays."""
    probs: np.ndarray
    labels: np.ndarray
    indices: np.ndarray
    metrics: dict = field(default_factory=dict)
    au_probs: np.ndarray | None = None
    au_labels: np.ndarray | None = None
    au_valid: np.ndarray | None = None
    excluded: list = field(default_factory=list)

    @property
    def preds(self) -> np.ndarray:
        return self.probs.argmax(1)


def _views(x: torch.Tensor, b: int, a: int) -> np.ndarray:
    """AU rows of one batch as [B, V, A] (validation batches have one view)."""
    return x.reshape(b, -1, a).cpu().numpy()


def _unique_by_index(records) -> list[dict]:
    """One record per sample index (a padded DistributedSampler reads some samples twice), sorted by index."""
    by_index: dict[int, dict] = {}
    for r in records:
        by_index.setdefault(int(r["index"]), dict(r))
    return [by_index[i] for i in sorted(by_index)]


@torch.no_grad()
def predict(model: nn.Module, loader, device: torch.device | str = "cpu", amp_dtype: torch.dtype | None = None,
            max_views_per_call: int | None = None, progress: bool = False) -> EvalResult:
    """View-averaged probabilities for every readable sample of ``loader`` (all ranks gathered, sorted by index).
    Evaluation loaders use ``collate_fn=collate_readable``: their unreadable samples come out in
    ``result.excluded``, with no prediction. Batches ``(clips, labels, au, au_valid, indices)`` (a dataset with AU
    labels) are run with ``with_au=True`` and give the AU fields too."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    autocast = _autocast(device, amp_dtype)
    rows: list[list[np.ndarray]] = []  # per batch: probs, labels, indices (, AU probs, AU labels, AU validity)
    unreadable: list[dict] = []
    try:
        for batch in tqdm(loader, desc="evaluating", disable=not progress, leave=False, dynamic_ncols=True):
            if isinstance(batch, ReadableBatch):
                unreadable += [dataclasses.asdict(u) for u in batch.unreadable]
                batch = batch.batch
                if batch is None:
                    continue
            clips, target, index = batch[0], batch[1], batch[-1]
            with_au = len(batch) == 5
            with autocast:
                out = forward_views(model, clips.to(device, non_blocking=True), max_views_per_call, with_au)
            logits = out[0] if with_au else out
            row = [average_views(logits).cpu().numpy(), torch.as_tensor(target).view(-1).cpu().numpy().astype(np.int64),
                   torch.as_tensor(index).view(-1).cpu().numpy().astype(np.int64)]
            if with_au:
                b, a = logits.shape[0], out[1].shape[-1]
                row += [_views(x, b, a) for x in (out[1].float(), batch[2].float(), batch[3].bool())]
            rows.append(row)
    finally:
        model.train(was_training)
    parts = gather_objects((rows, unreadable))  # a rank may have read nothing: gather lists, not arrays
    rows = [row for part in parts for row in part[0]]
    excluded = _unique_by_index(u for part in parts for u in part[1])
    if not rows:
        return EvalResult(np.zeros((0, 0), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64),
                          excluded=excluded)
    arrays = [np.concatenate(column) for column in zip(*rows)]
    i, first = np.unique(arrays[2], return_index=True)  # sorted; drops the DistributedSampler's padded repeats
    read = set(i.tolist())
    result = EvalResult(probs=arrays[0][first], labels=arrays[1][first], indices=i,
                        excluded=[e for e in excluded if e["index"] not in read])
    if len(arrays) > 3:
        result.au_probs, result.au_labels, result.au_valid = (x[first] for x in arrays[3:])
    return result


def check_excluded(excluded: Sequence[dict], total: int, threshold: float | None, split: str,
                   unit: str = "clips") -> None:
    """Log the ``excluded`` files of an evaluation of ``total`` items; raise :class:`TooManyBadSamples`, naming
    them, when none could be read or more than ``threshold`` (``data.bad_sample_threshold``) of them are
    excluded."""
    if not excluded:
        return
    n = len(excluded)
    shown = "\n  ".join(f"{e['path']}: {e['reason']}" for e in excluded[:20])
    if n > 20:
        shown += f"\n  ... and {n - 20} more"
    over = threshold is not None and n / total > threshold
    if n >= total or over:
        limit = f", more than data.bad_sample_threshold ({100 * threshold:.1f} %)" if over else ""
        raise TooManyBadSamples(
            f"{split}: {n} of {total} {unit} ({100 * n / total:.1f} %) could not be read{limit}. Evaluation excludes "
            f"unreadable {unit} (it never scores another file in their place), so the figures would leave them "
            f"out:\n  {shown}\nRepair the files or remove them from the list.")
    if rank_and_world()[0] == 0:
        log.warning("%s: %d of %d %s could not be read and are left out of the figures (never replaced):\n  %s",
                    split, n, total, unit, shown)


def au_view_metrics(result: EvalResult, au_names: Sequence[str], threshold: float = 0.5) -> dict:
    """Per-AU F1 and their mean over every view of every sample (each view is scored against the labels of its
    window's centre frame; unannotated entries are left out)."""
    a = result.au_probs.shape[-1]
    flat = [torch.from_numpy(x.reshape(-1, a)) for x in (result.au_probs, result.au_labels, result.au_valid)]
    r = fold_f1(flat[0], flat[1].float(), flat[2].bool(), threshold, list(au_names))
    return {"mean_f1": r["mean"], "per_au": r["by_name"], "threshold": threshold,
            "num_views": int(flat[0].shape[0]), "annotated": float(flat[2].float().mean())}


def evaluate(model: nn.Module, loader, num_classes: int, class_names: Sequence[str] | None = None,
             device: torch.device | str = "cpu", amp_dtype: torch.dtype | None = None,
             max_views_per_call: int | None = None, au_names: Sequence[str] | None = None,
             au_threshold: float = 0.5, *, bad_sample_threshold: float | None = None,
             split: str = "evaluation", progress: bool = False) -> EvalResult:
    """:func:`predict` plus UAR / WAR / per-class recall / weighted F1 / confusion matrix in ``result.metrics``
    over the samples that were read, with their count (``evaluated``) and that of the unreadable ones
    (``excluded``; :func:`check_excluded` stops at ``bad_sample_threshold``); with AU labels also the AU F1
    (:func:`au_view_metrics`) under ``result.metrics["au"]``."""
    result = predict(model, loader, device, amp_dtype, max_views_per_call, progress)
    check_excluded(result.excluded, len(result.indices) + len(result.excluded), bad_sample_threshold, split)
    result.metrics = M.classification_metrics(result.labels, result.preds, num_classes, class_names)
    result.metrics.update(evaluated=int(len(result.indices)), excluded=len(result.excluded))
    if result.au_probs is not None:
        names = list(au_names) if au_names is not None else [f"AU{i}" for i in range(result.au_probs.shape[-1])]
        result.metrics["au"] = au_view_metrics(result, names, au_threshold)
    return result


def write_csv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """The one predictions-file writer (classification: one row per clip; AU: one row per frame)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def classification_rows(result: EvalResult, class_names: Sequence[str], sample_paths: Sequence[str] | None = None
                        ) -> tuple[list[str], Iterator[list]]:
    """Header and rows: index, path (if known), label, prediction, then one probability column per class."""
    header = ["index", "path", "label", "pred", "label_name", "pred_name", *[f"p_{n}" for n in class_names]]

    def rows() -> Iterator[list]:
        for i, y, p in zip(result.indices, result.labels, result.probs):
            pred = int(p.argmax())
            yield [int(i), sample_paths[i] if sample_paths is not None else "", int(y), pred, class_names[int(y)],
                   class_names[pred], *[f"{v:.6f}" for v in p]]

    return header, rows()


def save_report(result: EvalResult, out_dir: str | Path, split: str, class_names: Sequence[str],
                sample_paths: Sequence[str] | None = None, writer=None, step: int = 0,
                extra: dict | None = None) -> dict:
    """Write the metrics JSON (with ``excluded_files``, the unreadable samples and their errors), predictions CSV
    (one row per sample that was read) and confusion PNG for ``split``; log to TensorBoard if given. Returns the
    metrics dict with ``extra`` (e.g. the checkpoint-selection rule) merged in."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {"split": split, **(extra or {}), **result.metrics, "excluded_files": list(result.excluded)}
    (out_dir / f"{split}_metrics.json").write_text(json.dumps(report, indent=1))
    write_csv(out_dir / f"{split}_predictions.csv", *classification_rows(result, class_names, sample_paths))
    cm = np.asarray(result.metrics["confusion"])
    title = f"{split}: UAR {100 * result.metrics['uar']:.1f}  WAR {100 * result.metrics['war']:.1f}"
    if result.excluded:
        title += f"  ({len(result.excluded)} unreadable excluded)"
    M.save_confusion_png(cm, class_names, out_dir / f"{split}_confusion.png", title=title)
    if writer is not None:
        for key in ("uar", "war", "weighted_f1"):
            writer.add_scalar(f"{split}/{key}", result.metrics[key], step)
        if "au" in result.metrics:
            writer.add_scalar(f"{split}/au_mean_f1", result.metrics["au"]["mean_f1"], step)
        writer.add_figure(f"{split}/confusion", M.confusion_figure(cm, class_names, title=title), step)
    return report


def au_metrics(probs, labels, valid, video_ids: Sequence, centre_mask=None, *, threshold: float = 0.5,
               smooth_window: int = 0, au_names: Sequence[str] | None = None) -> tuple[Dict[str, Any], Any]:
    """(metrics, smoothed probabilities or None). Per-AU F1 and mean F1 (U5, U6) of frame-wise probabilities
    ``[N, A]`` (frames of a video contiguous and in time order): ``frame`` (raw), ``smoothed`` (moving mean of
    ``smooth_window`` frames per video, AU_METHODS.md#moving-mean; only for a window > 1), ``centre_clip`` (the rows in
    ``centre_mask``). ``mean_f1`` / ``per_au`` / ``protocol`` name the primary view (smoothed when present, else
    frame)."""
    probs = torch.as_tensor(probs).float()
    labels, valid = torch.as_tensor(labels).float(), torch.as_tensor(valid).bool()
    names = list(au_names) if au_names is not None else [f"AU{i}" for i in range(probs.shape[1])]
    out: Dict[str, Any] = dict(threshold=threshold, smooth_window=smooth_window, num_frames=int(probs.shape[0]),
                               num_videos=len(set(video_ids)), au_names=names)

    def view(p, y, v) -> Dict[str, Any]:
        r = fold_f1(p, y, v, threshold, names)
        return {"mean_f1": r["mean"], "per_au": r["by_name"]}

    out["frame"] = view(probs, labels, valid)
    primary = "frame"
    smoothed = None
    if smooth_window and smooth_window > 1:
        smoothed = smooth_by_video(probs, list(video_ids), smooth_window)
        out["smoothed"] = view(smoothed, labels, valid)
        primary = "smoothed"
    if centre_mask is not None and bool(torch.as_tensor(centre_mask).any()):
        m = torch.as_tensor(centre_mask).bool()
        out["centre_clip"] = view(probs[m], labels[m], valid[m])
    out["protocol"] = primary
    out["mean_f1"] = out[primary]["mean_f1"]
    out["per_au"] = out[primary]["per_au"]
    out["positive_rate"] = dict(zip(names, ((labels * valid).sum(0) / valid.sum(0).clamp_min(1)).tolist()))
    return out, smoothed


def _probs_from_output(out: Dict, dense: bool, centre_slot: int) -> torch.Tensor:
    probs = au_probs(out)
    return probs[:, centre_slot] if dense else probs


@torch.no_grad()
def predict_frames(model: nn.Module, dataset: AUFrameWindows, *, batch_size: int, device, amp_dtype=None,
                   num_workers: int = 0, dense: bool = False, tubelet: int = 2) -> tuple[torch.Tensor, list[dict]]:
    """Probabilities ``[len(dataset), A]`` in dataset order (rows of unreadable items stay zero) and the unreadable
    items (``index, path, reason``), sorted. With torch.distributed each rank predicts a strided share and the
    shares are gathered."""
    rank, world = rank_and_world()
    indices = list(range(rank, len(dataset), world))
    loader = DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=collate_readable)
    was_training = model.training
    model.eval()
    centre_slot = (dataset.num_frames // 2) // tubelet
    autocast = _autocast(device, amp_dtype)
    rows, probs, unreadable = [], [], []
    for collated in loader:
        unreadable += [dataclasses.asdict(u) for u in collated.unreadable]
        if collated.batch is None:
            continue
        clips = collated.batch[0].to(device, non_blocking=True)
        with autocast:
            out = model(clips)
        probs.append(_probs_from_output(out, dense, centre_slot).cpu())
        rows.append(collated.batch[3])
    model.train(was_training)
    parts = gather_objects((rows, probs, unreadable))
    rows = [r for part in parts for r in part[0]]
    probs = [p for part in parts for p in part[1]]
    a = probs[0].shape[1] if probs else getattr(model, "num_aus", 0)
    result = torch.zeros(len(dataset), a)
    if rows:
        result[torch.cat(rows)] = torch.cat(probs).float()
    return result, _unique_by_index(u for part in parts for u in part[2])


def evaluate_au(model: nn.Module, dataset: AUFrameWindows, au_names: Sequence[str], *, threshold: float,
                smooth_window: int, batch_size: int, device, amp_dtype=None, num_workers: int = 0,
                dense: bool = False, tubelet: int = 2, sampling_rate: int = 1,
                bad_sample_threshold: float | None = None, split: str = "evaluation") -> tuple[Dict, Dict]:
    """(metrics, arrays for the predictions file). A video with a frame that cannot be read is left out whole (its
    other frames too): the metrics cover the videos that were read and list the others under ``excluded_files``
    (:func:`check_excluded` stops at ``bad_sample_threshold``); ``arrays["rows"]`` are the dataset items kept."""
    probs, unreadable = predict_frames(model, dataset, batch_size=batch_size, device=device, amp_dtype=amp_dtype,
                                       num_workers=num_workers, dense=dense, tubelet=tubelet)
    failed: dict[int, dict] = {}
    for u in unreadable:
        vi = dataset.items[u["index"]][0]
        failed.setdefault(vi, dict(path=dataset.videos[vi].path, reason=u["reason"], frames=0))["frames"] += 1
    excluded = [failed[vi] for vi in sorted(failed)]
    videos = sorted({vi for vi, _ in dataset.items})
    check_excluded(excluded, len(videos), bad_sample_threshold, split, unit="videos")
    rows = [row for row, (vi, _) in enumerate(dataset.items) if vi not in failed]
    items = [dataset.items[row] for row in rows]
    probs = probs[torch.tensor(rows, dtype=torch.long)]
    labels = torch.stack([torch.from_numpy(dataset.videos[vi].labels[p]) for vi, p in items])
    valid = torch.stack([torch.from_numpy(dataset.videos[vi].valid[p]) for vi, p in items])
    vids = [vi for vi, _ in items]
    centre_pos = {vi: int(center_indices(len(v.frames), dataset.num_frames, dataset.stride)[dataset.num_frames // 2])
                  for vi, v in enumerate(dataset.videos)}
    centre = torch.tensor([centre_pos[vi] == p for vi, p in items])
    metrics, smoothed = au_metrics(probs, labels, valid, vids, centre, threshold=threshold,
                                   smooth_window=smooth_window, au_names=au_names)
    metrics.update(evaluated=len(videos) - len(excluded), excluded=len(excluded), excluded_files=excluded)
    return metrics, dict(probs=probs, smoothed=smoothed, labels=labels, valid=valid, rows=rows)


def au_frame_rows(dataset: AUFrameWindows, au_names: Sequence[str], arrays: Dict, threshold: float
                  ) -> tuple[list[str], Iterator[list]]:
    """Header and rows, one per evaluated frame (``arrays["rows"]``: the dataset items that were read): ``path,
    frame, subject``, then per AU the raw probability, the smoothed one (if any), the prediction (from the primary
    probabilities) and the label (``-1`` = not annotated)."""
    probs, smoothed = arrays["probs"], arrays["smoothed"]
    items = [dataset.items[row] for row in arrays.get("rows", range(len(dataset.items)))]
    primary = smoothed if smoothed is not None else probs
    header = ["path", "frame", "subject"]
    for name in au_names:
        header += [f"{name}_prob"] + ([f"{name}_smoothed"] if smoothed is not None else []) + [f"{name}_pred",
                                                                                              f"{name}_label"]

    def rows() -> Iterator[list]:
        for row, (vi, p) in enumerate(items):
            v = dataset.videos[vi]
            line: list[Any] = [v.path, int(v.frames[p]), v.subject]
            for k in range(len(au_names)):
                line.append(f"{float(probs[row, k]):.5f}")
                if smoothed is not None:
                    line.append(f"{float(smoothed[row, k]):.5f}")
                line.append(int(float(primary[row, k]) >= threshold))
                line.append(int(v.labels[p, k]) if v.valid[p, k] else -1)
            yield line

    return header, rows()
