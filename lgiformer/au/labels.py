"""AU label helpers (docs/AU_METHODS.md#u3-masked-bce): validity masks and dataset unions.

* :func:`labels_and_validity`: raw label codes (e.g. Aff-Wild2 ``-1`` = not annotated) -> ``(y, v)``.
* :func:`binarize_intensity`: DISFA intensities 0-5 -> binary labels, positive at >= 2 (AU_METHODS.md#disfa-threshold).
* :func:`union_validity`: training on a union of datasets (MLT's rule): ``v = 0`` for every AU of the union that the
  sample's source dataset does not annotate.
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import torch

Tensor = torch.Tensor

__all__ = ["labels_and_validity", "binarize_intensity", "union_index", "union_validity", "to_union"]


def labels_and_validity(raw: Tensor, invalid_values: Sequence[float] = (-1,)) -> Tuple[Tensor, Tensor]:
    """``raw`` codes -> (``y`` float in {0, 1} with invalid entries set to 0, ``v`` bool validity)."""
    raw = torch.as_tensor(raw)
    v = torch.ones_like(raw, dtype=torch.bool)
    for bad in invalid_values:
        v &= raw != bad
    y = torch.where(v, (raw > 0).float(), torch.zeros_like(raw, dtype=torch.float32))
    return y, v


def binarize_intensity(intensity: Tensor, threshold: int = 2) -> Tensor:
    """DISFA convention used here: positive when intensity ``>= threshold`` (FT; TH says "higher than 2")."""
    return (torch.as_tensor(intensity) >= threshold).float()


def union_index(dataset_aus: Sequence[int], union_aus: Sequence[int]) -> Tensor:
    """Positions of a dataset's AUs inside the union list (raises if an AU is missing from the union)."""
    pos: Dict[int, int] = {au: i for i, au in enumerate(union_aus)}
    missing = [au for au in dataset_aus if au not in pos]
    if missing:
        raise ValueError(f"AUs {missing} are not in the union {list(union_aus)}")
    return torch.tensor([pos[au] for au in dataset_aus], dtype=torch.long)


def union_validity(dataset_aus: Sequence[int], union_aus: Sequence[int]) -> Tensor:
    """``[A_union]`` bool: True where the dataset annotates the AU."""
    v = torch.zeros(len(union_aus), dtype=torch.bool)
    v[union_index(dataset_aus, union_aus)] = True
    return v


def to_union(y: Tensor, v: Tensor, dataset_aus: Sequence[int], union_aus: Sequence[int]) -> Tuple[Tensor, Tensor]:
    """Scatter a dataset's labels ``[..., A_d]`` (and validity) into the union ``[..., A_union]``; AUs the dataset
    does not annotate get ``y = 0, v = False``."""
    idx = union_index(dataset_aus, union_aus)
    shape = (*y.shape[:-1], len(union_aus))
    y_u = torch.zeros(shape, dtype=torch.float32).index_copy(-1, idx, y.float())
    v_u = torch.zeros(shape, dtype=torch.bool).index_copy(-1, idx, v.bool())
    return y_u, v_u
