#!/usr/bin/env python
"""Mean +- std over folds of the finetuning test figures, as a table.

    python scripts/summarize_folds.py output/finetune/dfew/fold*          # reads each RUN/test_metrics.json
    python scripts/summarize_folds.py --split val --format markdown RUN1 RUN2 ...

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


def table(runs: list[tuple[str, dict]], fmt: str = "text", per_class: bool = False) -> str:
    classes = list(runs[0][1]["per_class_recall"]) if per_class else []
    cols = [label for _, label in KEYS] + classes
    rows = []
    for name, m in runs:
        values = [100 * m[k] for k, _ in KEYS]
        values += [np.nan if m["per_class_recall"].get(c) is None else 100 * m["per_class_recall"][c]
                   for c in classes]
        rows.append((f"{name} ({m.get('selection', '?')})", values))
    data = np.array([v for _, v in rows], dtype=float)
    mean = np.nanmean(data, 0)
    std = np.nanstd(data, 0, ddof=1) if len(rows) > 1 else np.zeros_like(mean)
    summary = [f"{a:.2f} ± {b:.2f}" for a, b in zip(mean, std)]
    head = ["run (selection)"] + cols
    body = [[name] + [f"{v:.2f}" for v in values] for name, values in rows]
    body.append([f"mean ± std (n={len(rows)})"] + summary)
    if fmt == "markdown":
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])
    widths = [max(len(r[i]) for r in [head] + body) for i in range(len(head))]
    fmt_row = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    rule = "-" * len(fmt_row(head))
    return "\n".join([fmt_row(head), rule] + [fmt_row(r) for r in body[:-1]] + [rule, fmt_row(body[-1])])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="run directories or *_metrics.json files, one per fold")
    parser.add_argument("--split", default="test", help="which metrics file to read: test (default) or val")
    parser.add_argument("--format", choices=("text", "markdown"), default="text")
    parser.add_argument("--per-class", action="store_true", help="add a column per class recall")
    args = parser.parse_args(argv)
    print(table(load(args.runs, args.split), args.format, args.per_class))


if __name__ == "__main__":
    main()
