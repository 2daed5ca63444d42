"""Deterministic validation and multi-view testing for video classification.

* A batch is ``(clips, labels, indices)``: clips [B, 3, T, H, W] (one view, validation) or [B, V, 3, T, H, W]
  (V = temporal clips x spatial crops, test). Every view goes through the model; the softmax probabilities are
  averaged over views (:func:`average_views`), as the paper's protocol does.
* Determinism: the model runs in eval mode under ``torch.no_grad``; the loader must not shuffle and the dataset's
  val/test modes sample fixed windows and crops (REFERENCE defect 3: the reference validated on a random window).
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


def forward_views(model: nn.Module, clips: torch.Tensor, max_views_per_call: int | None = None) -> torch.Tensor:
    """Run every view through the model: [B, 3, T, H, W] -> [B, K]; [B, V, 3, T, H, W] -> [B, V, K]."""
    if clips.dim() == 5:
        return model(clips)
    b, v = clips.shape[:2]
    flat = clips.flatten(0, 1)
    step = max_views_per_call or flat.shape[0]
    logits = torch.cat([model(flat[i:i + step]) for i in range(0, flat.shape[0], step)])
    return logits.view(b, v, -1)


@dataclass
class EvalResult:
    """Per-sample probabilities (view-averaged), labels and dataset indices, sorted by index, plus metrics."""
    probs: np.ndarray
    labels: np.ndarray
    indices: np.ndarray
    metrics: dict = field(default_factory=dict)

    @property
    def preds(self) -> np.ndarray:
        return self.probs.argmax(1)


def _gather(probs: np.ndarray, labels: np.ndarray, indices: np.ndarray):
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return probs, labels, indices
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, (probs, labels, indices))
    probs, labels, indices = (np.concatenate([p[i] for p in parts]) for i in range(3))
    return probs, labels, indices


@torch.no_grad()
def predict(model: nn.Module, loader, device: torch.device | str = "cpu", amp_dtype: torch.dtype | None = None,
            max_views_per_call: int | None = None) -> EvalResult:
    """View-averaged probabilities for every sample of ``loader`` (all ranks gathered, sorted by index)."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    autocast = (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None and amp_dtype != torch.float32
                else nullcontext())
    probs, labels, indices = [], [], []
    try:
        for clips, target, index in loader:
            with autocast:
                logits = forward_views(model, clips.to(device, non_blocking=True), max_views_per_call)
            probs.append(average_views(logits).cpu().numpy())
            labels.append(torch.as_tensor(target).view(-1).cpu().numpy())
            indices.append(torch.as_tensor(index).view(-1).cpu().numpy())
    finally:
        model.train(was_training)
    k = probs[0].shape[1] if probs else 0
    p, y, i = _gather(np.concatenate(probs) if probs else np.zeros((0, k), np.float32),
                      np.concatenate(labels).astype(np.int64) if labels else np.zeros(0, np.int64),
                      np.concatenate(indices).astype(np.int64) if indices else np.zeros(0, np.int64))
    i, first = np.unique(i, return_index=True)  # sorted; drops the DistributedSampler's padded repeats
    return EvalResult(probs=p[first], labels=y[first], indices=i)


def evaluate(model: nn.Module, loader, num_classes: int, class_names: Sequence[str] | None = None,
             device: torch.device | str = "cpu", amp_dtype: torch.dtype | None = None,
             max_views_per_call: int | None = None) -> EvalResult:
    """:func:`predict` plus UAR / WAR / per-class recall / weighted F1 / confusion matrix in ``result.metrics``."""
    result = predict(model, loader, device, amp_dtype, max_views_per_call)
    result.metrics = M.classification_metrics(result.labels, result.preds, num_classes, class_names)
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
        writer.add_figure(f"{split}/confusion", M.confusion_figure(cm, class_names, title=title), step)
    return report
