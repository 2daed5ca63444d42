"""``python -m data_lists <dataset> --root RAW_DATASET_DIR --out OUT_DIR [options]``: build the list files.

One registry maps a dataset name to its builder; every builder takes the same :class:`BuildOptions` and returns a
:class:`BuildReport`. Exit status 2 with a ``file:line: what was expected`` message on a :class:`ListBuildError`.

``python -m data_lists crop-faces --list LIST --out OUT_DIR`` turns a list of raw footage into face crops and a new
list (:mod:`data_lists.crop_faces`); such commands over lists, with their own options, are in ``COMMANDS``.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable, Sequence

from data_lists import bp4d, crop_faces, dfew, disfa, ferv39k, mafw, voxceleb2
from data_lists.common import BuildOptions, BuildReport, ListBuildError

BUILDERS: dict[str, Callable[[BuildOptions], BuildReport]] = {
    "voxceleb2": voxceleb2.build,
    "dfew": dfew.build,
    "ferv39k": ferv39k.build,
    "mafw": mafw.build,
    "bp4d": bp4d.build,
    "disfa": disfa.build,
}
# Commands over existing lists, each with its own parser: name -> main(argv).
COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "crop-faces": crop_faces.main,
}


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m data_lists", description=__doc__.splitlines()[0],
                                epilog="Also: python -m data_lists crop-faces --list LIST --out OUT_DIR (face crops "
                                       "of raw footage; --help for its options). Expected layouts, outputs and "
                                       "examples: data_lists/README.md")
    p.add_argument("dataset", choices=sorted(BUILDERS))
    p.add_argument("--root", type=Path, required=True, help="raw dataset folder in the official layout")
    p.add_argument("--out", type=Path, required=True, help="output folder for the lists")
    p.add_argument("--frames-dir", type=Path, default=None,
                   help="folder of the frame folders, relative to --root unless absolute (default: per dataset)")
    p.add_argument("--absolute", action="store_true", help="write absolute paths (default: relative to --root)")
    p.add_argument("--strict", action="store_true",
                   help="a missing frame folder / unreadable video is an error (default: warn, skip and count)")
    p.add_argument("--no-probe", dest="probe", action="store_false",
                   help="voxceleb2: do not probe frame counts (write bare 'path' lines)")
    p.add_argument("--workers", type=int, default=1, help="voxceleb2: processes probing frame counts")
    p.add_argument("--exclude", type=Path, default=None, help="voxceleb2: list of known-broken clips to leave out")
    p.add_argument("--class-order", choices=("official", "mae-dfer"), default="official",
                   help="ferv39k: label order (mae-dfer = the DFEW order of the released MAE-DFER checkpoints)")
    p.add_argument("--split", choices=("literature", "sorted"), default="literature",
                   help="bp4d/disfa: the JAA-Net subject folds, or sorted subjects dealt round-robin")
    p.add_argument("--frame-offset", type=int, default=0,
                   help="bp4d/disfa: image number = label frame number + offset")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def options(args: argparse.Namespace) -> BuildOptions:
    keys = BuildOptions.__dataclass_fields__
    return BuildOptions(**{k: v for k, v in vars(args).items() if k in keys})


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        return COMMANDS[argv[0]](argv[1:])
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    log = logging.getLogger("data_lists")
    try:
        report = BUILDERS[args.dataset](options(args))
    except ListBuildError as e:
        log.error("%s", e)
        return 2
    log.info("wrote to %s\n%s", args.out, report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
