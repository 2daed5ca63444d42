"""Deterministic validation and multi-view testing for video classification.

* A batch is ``(clips, labels, indices)``: clips [B, 3, T, H, W] (one view, validation) or [B, V, 3, T, H, W]
  (V = temporal clips x spatial crops, test). Every view goes through the model; the softmax probabilities are
  averaged over views (:func:`average_views`), as the paper's protocol does. A multi-task DFER + AU model gets
  ``(clips, labels, au, au_valid, indices)`` batches and is also scored per AU, view by view.
* Determinism: the model runs in eval mode under ``torch.no_grad``; the loader must not shuffle and the dataset's
  val/test modes sample fixed windows and crops (docs/REFERENCE.md#defect-3: the reference validated on a random one).
* Under torch.distributed each rank evaluates its shard; results are gathered and de-duplicated by sample index,
  so a padded DistributedSampler does not count a sample twice.
* :func:`save_report` writes ``{split}_metrics.json``, ``{split}_predictions.csv`` and ``{split}_confusion.png``
  and, given a TensorBoard writer, the scalars and the confusion-matrix figure.
"""
from __future__ import annotations

import csv
import json
import logging
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from lgiformer import metrics as M

log = logging.getLogger(__name__)


def average_views(logits: torch.Tensor) -> torch.Tensor:
    """Logits [B, V, K] (or [B, K]) -> class probabilities [B, K]: softmax per view, then mean over views."""
    probs = logits.float().softmax(-1)
    return probs.mean(1) if probs.dim() == 3 else probs


def forward_views(model: nn.Module, clips: torch.Tensor, max_views_per_call: int | None = None,
                  with_au: bool = False):
    """Run every view through the model: [B, 3, T, H, W] -> [B, K]; [B, V, 3, T, H, W] -> [B, V, K]. With
    ``with_au`` (a multi-task model) returns ``(logits, AU probabilities)``, the latter [B, A] or [B, V, A]."""
    from lgiformer.tasks.multitask import au_probs

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
    """Per-sample probabilities (view-averaged), labels and dataset indices, sorted by index, plus metrics. From a
    multi-task model, also the AU probabilities, labels and validity of every view, ``[N, V, A]`` (``au_*``)."""
    probs: np.ndarray
    labels: np.ndarray
    indices: np.ndarray
    metrics: dict = field(default_factory=dict)
    au_probs: np.ndarray | None = None
    au_labels: np.ndarray | None = None
    au_valid: np.ndarray | None = None

    @property
    def preds(self) -> np.ndarray:
        return self.probs.argmax(1)


def _gather(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return arrays
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, arrays)
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(len(arrays)))


def _views(x: torch.Tensor, b: int, a: int) -> np.ndarray:
    """AU rows of one batch as [B, V, A] (validation batches have one view)."""
    return x.reshape(b, -1, a).cpu().numpy()


@torch.no_grad()
def predict(model: nn.Module, loader, device: torch.device | str = "cpu", amp_dtype: torch.dtype | None = None,
            max_views_per_call: int | None = None) -> EvalResult:
    """View-averaged probabilities for every sample of ``loader`` (all ranks gathered, sorted by index). Batches
    ``(clips, labels, au, au_valid, indices)`` (a dataset with AU labels) are run with ``with_au=True`` and give
    the AU fields too."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    autocast = (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None and amp_dtype != torch.float32
                else nullcontext())
    probs, labels, indices, au = [], [], [], ([], [], [])
    with_au = False
    try:
        for batch in loader:
            clips, target, index = batch[0], batch[1], batch[-1]
            with_au = len(batch) == 5
            with autocast:
                out = forward_views(model, clips.to(device, non_blocking=True), max_views_per_call, with_au)
            logits = out[0] if with_au else out
            probs.append(average_views(logits).cpu().numpy())
            labels.append(torch.as_tensor(target).view(-1).cpu().numpy())
            indices.append(torch.as_tensor(index).view(-1).cpu().numpy())
            if with_au:
                b, a = logits.shape[0], out[1].shape[-1]
                for store, x in zip(au, (out[1].float(), batch[2].float(), batch[3].bool())):
                    store.append(_views(x, b, a))
    finally:
        model.train(was_training)
    k = probs[0].shape[1] if probs else 0
    arrays = [np.concatenate(probs) if probs else np.zeros((0, k), np.float32),
              np.concatenate(labels).astype(np.int64) if labels else np.zeros(0, np.int64),
              np.concatenate(indices).astype(np.int64) if indices else np.zeros(0, np.int64)]
    if with_au:
        arrays += [np.concatenate(x) for x in au]
    arrays = _gather(*arrays)
    i, first = np.unique(arrays[2], return_index=True)  # sorted; drops the DistributedSampler's padded repeats
    result = EvalResult(probs=arrays[0][first], labels=arrays[1][first], indices=i)
    if with_au:
        result.au_probs, result.au_labels, result.au_valid = (x[first] for x in arrays[3:])
    return result


def au_view_metrics(result: EvalResult, au_names: Sequence[str], threshold: float = 0.5) -> dict:
    """Per-AU F1 and their mean over every view of every sample (each view is scored against the labels of its
    window's centre frame; unannotated entries are left out)."""
    from lgiformer.au import fold_f1

    a = result.au_probs.shape[-1]
    flat = [torch.from_numpy(x.reshape(-1, a)) for x in (result.au_probs, result.au_labels, result.au_valid)]
    r = fold_f1(flat[0], flat[1].float(), flat[2].bool(), threshold, list(au_names))
    return {"mean_f1": r["mean"], "per_au": r["by_name"], "threshold": threshold,
            "num_views": int(flat[0].shape[0]), "annotated": float(flat[2].float().mean())}


def evaluate(model: nn.Module, loader, num_classes: int, class_names: Sequence[str] | None = None,
             device: torch.device | str = "cpu", amp_dtype: torch.dtype | None = None,
             max_views_per_call: int | None = None, au_names: Sequence[str] | None = None,
             au_threshold: float = 0.5) -> EvalResult:
    """:func:`predict` plus UAR / WAR / per-class recall / weighted F1 / confusion matrix in ``result.metrics``, and
    with AU labels the AU F1 (:func:`au_view_metrics`) under ``result.metrics["au"]``."""
    result = predict(model, loader, device, amp_dtype, max_views_per_call)
    result.metrics = M.classification_metrics(result.labels, result.preds, num_classes, class_names)
    if result.au_probs is not None:
        names = list(au_names) if au_names is not None else [f"AU{i}" for i in range(result.au_probs.shape[-1])]
        result.metrics["au"] = au_view_metrics(result, names, au_threshold)
    return result


def write_predictions_csv(path: str | Path, result: EvalResult, class_names: Sequence[str],
                          sample_paths: Sequence[str] | None = None) -> None:
    """One row per sample: index, path (if known), label, prediction, then one probability column per class."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "path", "label", "pred", "label_name", "pred_name", *[f"p_{n}" for n in class_names]])
        for i, y, p in zip(result.indices, result.labels, result.probs):
            path_i = sample_paths[i] if sample_paths is not None else ""
            pred = int(p.argmax())
            w.writerow([int(i), path_i, int(y), pred, class_names[int(y)], class_names[pred],
                        *[f"{v:.6f}" for v in p]])


def save_report(result: EvalResult, out_dir: str | Path, split: str, class_names: Sequence[str],
                sample_paths: Sequence[str] | None = None, writer=None, step: int = 0,
                extra: dict | None = None) -> dict:
    """Write the metrics JSON, predictions CSV and confusion PNG for ``split``; log to TensorBoard if given.
    Returns the metrics dict with ``extra`` (e.g. the checkpoint-selection rule) merged in."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {"split": split, **(extra or {}), **result.metrics}
    (out_dir / f"{split}_metrics.json").write_text(json.dumps(report, indent=1))
    write_predictions_csv(out_dir / f"{split}_predictions.csv", result, class_names, sample_paths)
    cm = np.asarray(result.metrics["confusion"])
    title = f"{split}: UAR {100 * result.metrics['uar']:.1f}  WAR {100 * result.metrics['war']:.1f}"
    M.save_confusion_png(cm, class_names, out_dir / f"{split}_confusion.png", title=title)
    if writer is not None:
        for key in ("uar", "war", "weighted_f1"):
            writer.add_scalar(f"{split}/{key}", result.metrics[key], step)
        if "au" in result.metrics:
            writer.add_scalar(f"{split}/au_mean_f1", result.metrics["au"]["mean_f1"], step)
        writer.add_figure(f"{split}/confusion", M.confusion_figure(cm, class_names, title=title), step)
    return report
