"""The dataset table (``datasets.yaml``): one spec per dataset instead of a branch per dataset in the code.

``get_dataset_spec("dfew").list_file("train", 1, lists_dir)`` -> ``lists_dir/train_fold1.txt``. More datasets can be
added at run time with :func:`register_dataset` (or by editing the YAML table)."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import yaml

_TABLE = Path(__file__).with_name("datasets.yaml")


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    format: str                       # frames | video | au_csv
    lists: dict = field(default_factory=dict)
    classes: tuple = ()
    aus: tuple = ()
    frame_ext: str = "jpg"
    sampling_rate: int = 4
    folds: int = 1
    synthetic: bool = False

    @property
    def au_names(self) -> list[str]:
        return [f"AU{a}" for a in self.aus]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def list_file(self, split: str, fold: int | None, lists_dir: str | os.PathLike) -> Path:
        """The list of ``split`` (train / test / pretrain) for ``fold`` (1-based; ignored by one-fold datasets)."""
        if split not in self.lists:
            raise KeyError(f"dataset {self.name} has no {split!r} list (has: {', '.join(self.lists)})")
        if self.folds > 1:
            if fold is None:
                raise ValueError(f"dataset {self.name} has {self.folds} folds: give a fold (1-{self.folds})")
            if not 1 <= int(fold) <= self.folds:
                raise ValueError(f"dataset {self.name} has folds 1-{self.folds}, got {fold}")
        return Path(lists_dir) / self.lists[split].format(fold=fold if fold is not None else 1)


_FORMATS = ("frames", "video", "au_csv")
_EXTRA: dict[str, DatasetSpec] = {}


def _spec(name: str, entry: dict) -> DatasetSpec:
    known = {f.name for f in dataclasses.fields(DatasetSpec)} - {"name"}
    unknown = sorted(set(entry) - known)
    if unknown:
        raise ValueError(f"dataset {name!r}: unknown keys {unknown} (known: {', '.join(sorted(known))})")
    entry = dict(entry)
    entry["classes"] = tuple(entry.get("classes", ()))
    entry["aus"] = tuple(entry.get("aus", ()))
    entry["lists"] = dict(entry.get("lists", {}))
    spec = DatasetSpec(name=name, **entry)
    if spec.format not in _FORMATS:
        raise ValueError(f"dataset {name!r}: format must be one of {_FORMATS}, got {spec.format!r}")
    if spec.folds < 1 or spec.sampling_rate < 1:
        raise ValueError(f"dataset {name!r}: folds and sampling_rate must be >= 1")
    return spec


@lru_cache(maxsize=1)
def _table() -> dict[str, DatasetSpec]:
    raw = yaml.safe_load(_TABLE.read_text())
    return {name: _spec(name, entry or {}) for name, entry in raw.items()}


def register_dataset(name: str, **fields) -> DatasetSpec:
    """Add (or replace) a dataset spec for this process, with the keys of ``datasets.yaml``."""
    spec = _spec(name, fields)
    _EXTRA[name] = spec
    return spec


def list_datasets() -> list[str]:
    return sorted({**_table(), **_EXTRA})


def get_dataset_spec(name: str) -> DatasetSpec:
    """The spec of ``name``; a ``KeyError`` naming the known datasets otherwise."""
    table = {**_table(), **_EXTRA}
    if name not in table:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(sorted(table))} (lgiformer/data/datasets.yaml)")
    return table[name]
