"""Classification metrics for DFER: UAR, WAR, per-class recall, weighted F1, confusion matrix (+ PNG / TensorBoard).

Conventions (as in the DFER literature): WAR = weighted average recall = accuracy; UAR = unweighted average recall =
mean of per-class recalls. Classes absent from the ground truth have no recall; they are left out of UAR (and
reported as NaN) rather than counted as zero, and a warning says so in the report.
Everything is plain numpy on integer labels; ``confusion[i, j]`` counts samples of true class i predicted as j.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred differ in shape: {y_true.shape} vs {y_pred.shape}")
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if y.size and (y.min() < 0 or y.max() >= num_classes):
            raise ValueError(f"{name} has labels outside [0, {num_classes})")
    flat = y_true * num_classes + y_pred
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_recall(cm: np.ndarray) -> np.ndarray:
    support = cm.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / support, np.nan)


def uar(cm: np.ndarray) -> float:
    recall = per_class_recall(cm)
    return float(np.nanmean(recall)) if np.isfinite(recall).any() else float("nan")


def war(cm: np.ndarray) -> float:
    total = cm.sum()
    return float(np.trace(cm) / total) if total else float("nan")


def weighted_f1(cm: np.ndarray) -> float:
    """F1 per class weighted by true-class support (sklearn's ``average='weighted'``; 0 where undefined)."""
    tp = np.diag(cm).astype(np.float64)
    predicted, support = cm.sum(0), cm.sum(1)
    denom = predicted + support
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return float((f1 * support).sum() / support.sum()) if support.sum() else float("nan")


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int,
                           class_names: Sequence[str] | None = None) -> dict:
    """All DFER figures in one plain dict (JSON-ready): uar, war, weighted_f1 (fractions), per_class_recall
    (name -> recall or None), support, confusion (list of lists), num_samples."""
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for {num_classes} classes")
    cm = confusion_matrix(y_true, y_pred, num_classes)
    recall = per_class_recall(cm)
    out = dict(uar=uar(cm), war=war(cm), weighted_f1=weighted_f1(cm),
               per_class_recall={n: (None if np.isnan(r) else float(r)) for n, r in zip(names, recall)},
               support={n: int(s) for n, s in zip(names, cm.sum(1))}, confusion=cm.tolist(),
               num_samples=int(cm.sum()))
    missing = [n for n, s in zip(names, cm.sum(1)) if s == 0]
    if missing:
        out["warning"] = f"classes with no samples (left out of UAR): {', '.join(missing)}"
    return out


def format_metrics(metrics: dict) -> str:
    """One readable block: UAR / WAR / F1 then per-class recall."""
    lines = [f"UAR {100 * metrics['uar']:.2f}  WAR {100 * metrics['war']:.2f}  "
             f"weighted F1 {100 * metrics['weighted_f1']:.2f}  (n={metrics['num_samples']})"]
    for name, r in metrics["per_class_recall"].items():
        lines.append(f"  {name:>16s}: {'  n/a' if r is None else f'{100 * r:5.1f}'}  (n={metrics['support'][name]})")
    if "warning" in metrics:
        lines.append("  warning: " + metrics["warning"])
    return "\n".join(lines)


def confusion_figure(cm: np.ndarray, class_names: Sequence[str], normalize: bool = True, title: str = ""):
    """A matplotlib Figure of the confusion matrix (rows = true class), row-normalised by default, counts printed."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    cm = np.asarray(cm)
    shown = cm / np.maximum(cm.sum(1, keepdims=True), 1) if normalize else cm
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * k, 0.8 + 0.55 * k), dpi=100)
    ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else max(int(cm.max()), 1))
    ax.set_xticks(range(k), labels=class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), labels=class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    for i in range(k):
        for j in range(k):
            text = f"{shown[i, j]:.2f}\n({cm[i, j]})" if normalize else str(cm[i, j])
            ax.text(j, i, text, ha="center", va="center", fontsize=7,
                    color="white" if shown[i, j] > 0.5 * (1 if normalize else cm.max()) else "black")
    fig.tight_layout()
    return fig


def save_confusion_png(cm: np.ndarray, class_names: Sequence[str], path, title: str = "") -> None:
    import matplotlib.pyplot as plt

    fig = confusion_figure(cm, class_names, title=title)
    fig.savefig(path)
    plt.close(fig)
