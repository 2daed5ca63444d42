"""How long ``import lgiformer`` takes now and at an older commit, measured side by side in one run.

    python benchmarks/import_time.py                       # against 9ba085e, the commit before the redesign
    python benchmarks/import_time.py --old 9ba085e --repeats 9

The old tree is exported with ``git archive`` into a temporary folder. Every measurement is a fresh interpreter
that times its own imports with ``time.perf_counter`` (interpreter start-up excluded); the statements run in turn
(old, new, old, new, ...), so a machine that gets busier or quieter affects them alike. Printed: the median and
the spread of each statement, and whether DeepSpeed, transformers or matplotlib got imported.

At 9ba085e ``import lgiformer`` registered nothing with timm (its models were registered by
``import lgiformer.models``), so the old commit is measured both ways. ``import torch, timm`` (after
``lgiformer._compat``, without which torchvision fails to import here) is what any registration with timm costs at
least; the old bare ``import lgiformer`` did not import timm.

Measured 2026-12-05 (2-core VM, shared, load 1.7-3; 9 repeats, medians): old ``import lgiformer`` 2.09 s, old
``import lgiformer.models`` 2.39 s, now ``import lgiformer`` 2.49 s, ``import torch, timm`` 2.36 s; none of them
imports DeepSpeed, transformers or matplotlib.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("deepspeed", "transformers", "matplotlib")

PROBE = """
import sys, time, json
t = time.perf_counter()
{statement}
seconds = time.perf_counter() - t
print(json.dumps(dict(seconds=seconds, heavy=[m for m in {heavy!r} if m in sys.modules])))
"""


def export_tree(commit: str, dest: Path) -> Path:
    """``lgiformer/`` as it was at ``commit``, under ``dest``."""
    archive = dest / "old.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", "-o", str(archive), commit, "lgiformer"],
                   check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    return dest


def measure(statement: str, tree: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", PROBE.format(statement=statement, heavy=HEAVY)], cwd=tree, env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--old", default="9ba085e", help="the commit to compare with")
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        old = export_tree(args.old, Path(tmp))
        cases = {
            "floor: import torch, timm (after the torchvision fix)": ("import lgiformer._compat, torch, timm", ROOT),
            f"{args.old}: import lgiformer (no timm registration)": ("import lgiformer", old),
            f"{args.old}: import lgiformer.models (registers)": ("import lgiformer.models", old),
            "now: import lgiformer (registers)": ("import lgiformer", ROOT),
        }
        for statement, tree in cases.values():  # warm the file cache once; not counted
            measure(statement, tree)
        times: dict[str, list[float]] = {name: [] for name in cases}
        heavy: dict[str, list[str]] = {}
        for _ in range(args.repeats):
            for name, (statement, tree) in cases.items():
                result = measure(statement, tree)
                times[name].append(result["seconds"])
                heavy[name] = result["heavy"]
    rows = {name: dict(median_s=round(statistics.median(t), 3), min_s=round(min(t), 3), max_s=round(max(t), 3),
                       heavy_modules=heavy[name]) for name, t in times.items()}
    print(json.dumps(dict(repeats=args.repeats, python=sys.version.split()[0], results=rows), indent=1))


if __name__ == "__main__":
    main()
