"""``python -m lgiformer.data.synthetic``: generate a set into a folder from the command line.

Every generator option is a flag (``--num-frames``); the folder is explicit (``--out``), so a folder that holds a
set made with other options is refused unless ``--force`` says to replace it. Kept out of ``__main__.py`` so that
the package can export :func:`main` without importing ``__main__`` twice.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from typing import Iterable, Optional

from lgiformer.data.synthetic.layout import generate
from lgiformer.data.synthetic.options import PARTS, SyntheticOptions
from lgiformer.data.synthetic.render import save_class_strip
from lgiformer.data.synthetic.store import SyntheticSetConflict, ensure_synthetic, find_existing

__all__ = ["main"]

DESCRIPTION = "Deterministic procedural face videos: the project's embedded default data set."


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lgiformer.data.synthetic", description=DESCRIPTION)
    p.add_argument("--out", required=True, help="output folder")
    defaults = SyntheticOptions()
    for f in dataclasses.fields(SyntheticOptions):
        flag = "--" + f.name.replace("_", "-")
        if f.name == "parts":
            p.add_argument(flag, default=",".join(PARTS), help="comma-separated subset of " + ",".join(PARTS))
        else:
            value = getattr(defaults, f.name)
            p.add_argument(flag, type=type(value), default=value, help=f"(default {value})")
    p.add_argument("--workers", type=int, default=1, help="render processes (output does not depend on it)")
    p.add_argument("--force", action="store_true", help="regenerate even if meta.json matches the options")
    p.add_argument("--strip", default="", help="also save the per-class PNG strip to this path")
    return p


def main(argv: Optional[Iterable[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_args(None if argv is None else list(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    opts = {f.name: getattr(args, f.name) for f in dataclasses.fields(SyntheticOptions)}
    try:
        SyntheticOptions(**opts)
    except ValueError as err:
        parser.error(str(err))
    t0 = time.perf_counter()
    skipped = not args.force and find_existing(args.out, **opts) is not None
    if args.force:
        seed = opts.pop("seed")
        meta = generate(args.out, seed=seed, workers=args.workers, **opts)
    else:
        try:
            meta = ensure_synthetic(args.out, workers=args.workers, **opts)
        except SyntheticSetConflict as err:
            parser.error(str(err))
    if args.strip:
        save_class_strip(args.strip, seed=meta["seed"])
    counts = ", ".join(f"{k}={v}" for k, v in meta["counts"].items() if not isinstance(v, dict))
    how = "already up to date, not regenerated (use --force)" if skipped else \
        f"generated in {time.perf_counter() - t0:.1f} s"
    print(f"synthetic data set in {args.out}: {counts}; {how}")
    return 0
