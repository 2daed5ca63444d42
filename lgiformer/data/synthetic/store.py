"""Where a synthetic set lives, and whether the set found there is used, completed or must be left alone.

A set is defined by its options, which ``meta.json`` records. A run that names no data root gets the folder of
its option set, ``data/synthetic/<name>`` (:func:`resolve_root`), so two recipes with different options never
share a folder and neither regenerates the other's data. A folder that holds a set made with other options (an
explicit data root, the CLI's ``--out``) is never replaced unless that is asked for (``overwrite``): generating
takes minutes, and the set there may be what another recipe or person is using.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from lgiformer.data.synthetic.layout import (
    GENERATOR,
    GENERATOR_VERSION,
    auto_workers,
    generate,
)
from lgiformer.data.synthetic.options import OVERWRITE, PARTS, SyntheticOptions
from lgiformer.errors import InputError

log = logging.getLogger(__name__)

__all__ = ["DATA_DIR", "NAMED_SETS", "SyntheticSetConflict", "set_name", "resolve_root", "find_existing",
           "ensure_synthetic"]

DATA_DIR = Path("data/synthetic")            # one folder per option set, for runs that name no data root
NAMED_SETS: Dict[str, Dict[str, Any]] = {    # option sets with a readable folder name
    "default": {},
    "demo": {"subjects": 40, "clips_per_class_per_subject": 4, "face_zoom": 1.6},   # the three demo recipes
}
_READABLE = 40                               # characters of changed options in a folder name
_WHAT_TO_DO = (f"use another folder (a run without data.data_root gets one per option set under {DATA_DIR}), or "
               "replace it explicitly: overwrite: true in the recipe's data.synthetic, overwrite=True in Python, "
               "--force on the command line")


class SyntheticSetConflict(InputError):
    """A folder holds a set made with other options, or other files, and replacing them was not asked for."""


def set_name(options: Mapping[str, Any]) -> str:
    """The folder name of an option set under :data:`DATA_DIR`: its name in :data:`NAMED_SETS`, else the options
    that differ from the defaults (those that fit in 40 characters) and 8 hex digits of a SHA-256 of all of them, e.g.
    ``seed1-subjects20-05d89b7e``. Options are resolved first: ``{"subjects": "40"}`` names the same set as
    ``{"subjects": 40}``, and ``parts`` in any order the same as in canonical order."""
    resolved = SyntheticOptions(**options).to_dict()
    for name, named in NAMED_SETS.items():
        if resolved == SyntheticOptions(**named).to_dict():
            return name
    defaults = SyntheticOptions().to_dict()
    readable = ""
    for k, v in resolved.items():
        token = f"{k}{'+'.join(v) if k == 'parts' else v}"
        if v != defaults[k] and len(readable) + len(token) < _READABLE:
            readable += token + "-"
    digest = hashlib.sha256(json.dumps(resolved, sort_keys=True).encode("utf-8")).hexdigest()[:8]
    return readable + digest


def resolve_root(data_root: Optional[str], options: Mapping[str, Any]) -> Path:
    """The folder of a run's synthetic set: ``data_root`` when given, else ``DATA_DIR / set_name(options)``.

    ``options`` is a recipe's ``data.synthetic`` (``overwrite`` included). Every rank calls this before rank 0
    generates, so a folder holding a set made with other options fails the run on all of them at once
    (:class:`SyntheticSetConflict`, unless ``overwrite``) instead of being regenerated.
    """
    options = dict(options)
    overwrite = bool(options.pop(OVERWRITE, False))
    root = Path(data_root) if data_root else DATA_DIR / set_name(options)
    _inspect(root, SyntheticOptions(**options), overwrite)
    return root


def _read_meta(root: Path) -> Optional[Dict[str, Any]]:
    """``meta.json`` of ``root``: None when absent, ``{}`` when unreadable (then it is not one of ours)."""
    try:
        meta = json.loads((root / "meta.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _differences(have: Mapping[str, Any], opts: SyntheticOptions) -> List[str]:
    """``"subjects 10 there, 40 wanted"`` for each option (parts aside) where ``have`` differs from ``opts``."""
    want = opts.to_dict()
    keys = [k for k in want if k != "parts"] + [k for k in have if k not in want]
    return [f"{k} {have.get(k, '(unset)')} there, {want.get(k, '(unset)')} wanted" for k in keys
            if have.get(k) != want.get(k)]


def _inspect(root: Path, opts: SyntheticOptions, overwrite: bool) -> Tuple[Optional[Dict[str, Any]], str]:
    """``(meta, foreign)``: the meta dict found in ``root`` (None: no set there) and, when generating ``opts`` there
    would replace a set made with other options or other files, what it would replace ('' otherwise). Raises
    :class:`SyntheticSetConflict` in that case unless ``overwrite``."""
    meta = _read_meta(root)
    foreign = ""
    if meta is None:
        ours = set(PARTS) | {"meta.json.part"}           # what an interrupted (or running) generation leaves
        others = sorted(p.name for p in root.iterdir() if p.name not in ours) if root.is_dir() else []
        if others:
            more = f" and {len(others) - 3} more" if len(others) > 3 else ""
            foreign = f"{root} holds {', '.join(others[:3])}{more} but no synthetic data set (no meta.json)"
    elif meta.get("generator") != GENERATOR:
        foreign = f"{root / 'meta.json'} was not written by {GENERATOR}"
    else:
        differ = _differences(meta.get("options", {}), opts)
        if differ:
            foreign = f"the synthetic data set at {root} was made with other options ({'; '.join(differ)})"
    if foreign and not overwrite:
        raise SyntheticSetConflict(f"{foreign}; not replacing it: {_WHAT_TO_DO}")
    return meta, foreign


def _matches(meta: Dict[str, Any], opts: SyntheticOptions) -> bool:
    if meta.get("generator") != GENERATOR or meta.get("version") != GENERATOR_VERSION:
        return False
    have = dict(meta.get("options", {}))
    want = opts.to_dict()
    if not set(want.pop("parts")) <= set(have.pop("parts", [])):
        return False
    return have == want


def _marker_files(opts: SyntheticOptions) -> List[str]:
    """One file per generated part, written after its items: a quick completeness check."""
    files = {"unlabeled": "unlabeled/pretrain.txt", "labeled": "labeled/au_labels.csv",
             "au": "au/lists/test_fold3.csv"}
    return [files[p] for p in opts.parts]


def find_existing(out_dir: Any, **options: Any) -> Optional[Dict[str, Any]]:
    """The meta dict of a complete set under ``out_dir`` made with these options (a superset of the requested parts
    is fine), else ``None``."""
    opts = SyntheticOptions(**options)
    meta = _read_meta(Path(out_dir))
    if meta and _matches(meta, opts) and all((Path(out_dir) / rel).is_file() for rel in _marker_files(opts)):
        return meta
    return None


def ensure_synthetic(out_dir: Any, *, workers: int | str = 1, progress: bool = True, overwrite: bool = False,
                     **options: Any) -> Dict[str, Any]:
    """Generate under ``out_dir`` unless a complete set with the same options (and at least the requested parts)
    is already there; returns the meta dict either way.

    A set made with other options, or a folder of other files, is not replaced unless ``overwrite``
    (:class:`SyntheticSetConflict`). A set with the same options that lacks a requested part, was interrupted or
    comes from another generator version is regenerated, with the parts it had and the requested ones.
    ``workers="auto"``: see :func:`auto_workers`.
    """
    opts = SyntheticOptions(**options)
    meta = find_existing(out_dir, **options)
    if meta is not None:
        log.info("synthetic data set at %s is up to date (seed %d); skipping generation", out_dir, opts.seed)
        return meta
    old, foreign = _inspect(Path(out_dir), opts, overwrite)
    if foreign:
        log.warning("%s; replacing it (overwrite)", foreign)
    elif old is not None:
        had = [p for p in old.get("options", {}).get("parts", []) if p in PARTS]
        opts = dataclasses.replace(opts, parts=tuple(set(opts.parts) | set(had)))
        why = (f"was made by generator version {old.get('version')}" if old.get("version") != GENERATOR_VERSION
               else "is incomplete or lacks a requested part")
        log.info("synthetic data set at %s has these options but %s; generating %s", out_dir, why,
                 ",".join(opts.parts))
    if workers == "auto":
        workers = auto_workers(opts)
    d = opts.to_dict()
    return generate(out_dir, seed=d.pop("seed"), workers=workers, progress=progress, **d)
