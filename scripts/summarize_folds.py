#!/usr/bin/env python
"""Mean +- std over folds of the finetuning test figures, as a table.

    python scripts/summarize_folds.py output/finetune/dfew/fold*          # reads each RUN/test_metrics.json
    python scripts/summarize_folds.py --split val --format markdown RUN1 RUN2 ...
    python scripts/summarize_folds.py --pooled output/finetune_au/bp4d/fold*   # AU runs: per-AU F1 over folds

Expression runs give UAR, WAR and weighted F1 (and the AU head's mean F1 of multi-task runs); AU runs (task au) give
the mean F1 and one column per AU; ``--pooled`` adds the F1 of all folds' frames pooled (U6 of docs/AU_METHODS.md).

Each argument is a run directory (or a ``*_metrics.json`` file) written by ``finetune/run.py``. Figures are in %;
std is the sample standard deviation over folds (n - 1), the usual choice for 5-fold DFER results.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

KEYS = (("uar", "UAR"), ("war", "WAR"), ("weighted_f1", "wF1"))


def load(paths: list[str], split: str) -> list[tuple[str, dict]]:
    runs = []
    for p in paths:
        path = Path(p)
        file = path / f"{split}_metrics.json" if path.is_dir() else path
        if not file.is_file():
            sys.exit(f"error: {file} not found (did the run finish its {split} evaluation?)")
        runs.append((path.name if path.is_dir() else path.parent.name, json.loads(file.read_text())))
    return runs


def _selection(m: dict) -> str:
    """The selection rule of a run: DFER reports carry ``select``, AU reports a ``selection`` dict."""
    sel = m.get("select", m.get("selection", "?"))
    return sel.get("select", "?") if isinstance(sel, dict) else str(sel)


def is_au(m: dict) -> bool:
    return "per_au" in m and "uar" not in m


def _render(head: list[str], rows: list[tuple[str, list[float]]], fmt: str, extra: list[list[str]] = ()) -> str:
    data = np.array([v for _, v in rows], dtype=float)
    mean = np.nanmean(data, 0)
    std = np.nanstd(data, 0, ddof=1) if len(rows) > 1 else np.zeros_like(mean)
    summary = [f"{a:.2f} ± {b:.2f}" for a, b in zip(mean, std)]
    body = [[name] + [f"{v:.2f}" for v in values] for name, values in rows]
    tail = [[f"mean ± std (n={len(rows)})"] + summary, *extra]
    if fmt == "markdown":
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body + tail])
    widths = [max(len(r[i]) for r in [head] + body + tail) for i in range(len(head))]

    def fmt_row(r: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    rule = "-" * len(fmt_row(head))
    return "\n".join([fmt_row(head), rule] + [fmt_row(r) for r in body] + [rule] + [fmt_row(r) for r in tail])


def table(runs: list[tuple[str, dict]], fmt: str = "text", per_class: bool = False) -> str:
    """DFER runs: UAR, WAR, weighted F1 (and the auxiliary AU head's mean F1 of multi-task runs)."""
    classes = list(runs[0][1]["per_class_recall"]) if per_class else []
    with_au = all("au" in m for _, m in runs)
    cols = [label for _, label in KEYS] + (["AU F1"] if with_au else []) + classes
    rows = []
    for name, m in runs:
        values = [100 * m[k] for k, _ in KEYS] + ([100 * m["au"]["mean_f1"]] if with_au else [])
        values += [np.nan if m["per_class_recall"].get(c) is None else 100 * m["per_class_recall"][c]
                   for c in classes]
        rows.append((f"{name} ({_selection(m)})", values))
    return _render(["run (selection)"] + cols, rows, fmt)


def _pooled_f1(paths: list[str], au_names: list[str], threshold: float) -> list[float]:
    """U6 "pooled": every fold's test frames together, one F1 per AU, from the runs' test_predictions.csv."""
    import csv

    import torch

    from lgiformer.au.metrics import cross_fold_f1

    folds = []
    for p in paths:
        file = Path(p) / "test_predictions.csv"
        if not file.is_file():
            sys.exit(f"error: {file} not found (--pooled reads each AU run's per-frame predictions)")
        with open(file, newline="") as f:
            rows = list(csv.DictReader(f))
        prob = [f"{a}_smoothed" if f"{a}_smoothed" in rows[0] else f"{a}_prob" for a in au_names]
        scores = torch.tensor([[float(r[c]) for c in prob] for r in rows])
        labels = torch.tensor([[float(r[f"{a}_label"]) for a in au_names] for r in rows])
        folds.append((scores, labels.clamp_min(0), labels >= 0))
    return cross_fold_f1(folds, pooling="pooled", threshold=threshold)["per_au"]


def au_table(runs: list[tuple[str, dict]], fmt: str = "text", pooled_from: list[str] | None = None) -> str:
    """AU runs (task au): mean F1 and per-AU F1 per fold; the mean over folds is U6's default (each fold's F1, then
    the mean); ``pooled_from`` (the run directories) adds U6's pooled row."""
    names = list(runs[0][1]["per_au"])
    rows = [(f"{name} ({_selection(m)})", [100 * m["mean_f1"]] + [100 * m["per_au"][a] for a in names])
            for name, m in runs]
    extra = []
    if pooled_from:
        per_au = _pooled_f1(pooled_from, names, float(runs[0][1].get("threshold", 0.5)))
        extra.append(["pooled over folds"] + [f"{100 * sum(per_au) / len(per_au):.2f}"] +
                     [f"{100 * v:.2f}" for v in per_au])
    return _render(["run (selection)", "mean F1"] + names, rows, fmt, extra)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="run directories or *_metrics.json files, one per fold")
    parser.add_argument("--split", default="test", help="which metrics file to read: test (default) or val")
    parser.add_argument("--format", choices=("text", "markdown"), default="text")
    parser.add_argument("--per-class", action="store_true", help="add a column per class recall")
    parser.add_argument("--pooled", action="store_true", help="AU runs: add the F1 of all folds' frames pooled")
    args = parser.parse_args(argv)
    runs = load(args.runs, args.split)
    kinds = {is_au(m) for _, m in runs}
    if len(kinds) > 1:
        sys.exit("error: these runs mix AU runs (task au) with expression runs; summarise them separately")
    if kinds == {True}:
        print(au_table(runs, args.format, args.runs if args.pooled else None))
    else:
        print(table(runs, args.format, args.per_class))


if __name__ == "__main__":
    main()
