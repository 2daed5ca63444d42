"""Parameter groups for the optimiser, built only from the models' own hooks (``no_weight_decay``,
``group_matcher``) through timm's helpers.

No weight decay on biases, norms, representative tokens, the mask token and position tables, unless ``decay`` names
some of them: the reference's pretraining decays the representative tokens through a name mismatch, and our
pretraining does the same by default (``optim.decay_region_tokens``; docs/REFERENCE.md#defect-2). Layer-wise lr decay
for finetuning puts an ``lr_scale`` in every group; the schedules multiply by it
(``lgiformer.engine.schedules.apply_schedule``).

Groups whose hyperparameters are identical are merged: an optimiser step costs a few kernel launches per group
(fused or multi-tensor AdamW works group by group), and merging changes no update.
"""
from __future__ import annotations

from typing import Collection

from torch import nn
from timm.optim import param_groups_layer_decay, param_groups_weight_decay


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float | None = None,
                 decay: Collection[str] = ()) -> list[dict]:
    """timm's groups from the model's hooks; ``decay``: names the model exempts that take weight decay anyway (a name
    that is not an exempt parameter is an error, so a renamed parameter cannot silently fall back)."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    params = dict(model.named_parameters())
    unknown = sorted(n for n in decay if n not in skip or n not in params)
    if unknown:
        raise ValueError(f"decay: {unknown} are not parameters that {type(model).__name__} exempts from weight decay")
    skip -= set(decay)
    if layer_decay is not None and layer_decay < 1.0:
        groups = param_groups_layer_decay(model, weight_decay, no_weight_decay_list=skip, layer_decay=layer_decay)
    else:
        groups = param_groups_weight_decay(model, weight_decay, no_weight_decay_list=skip)
    for group in groups:
        group.setdefault("lr_scale", 1.0)
    return merge_identical_groups(groups)


def merge_identical_groups(groups: list[dict]) -> list[dict]:
    """One group per distinct set of hyperparameters (every key but ``params``), in order of first appearance; the
    parameters keep their order inside each group."""
    merged: dict[tuple, dict] = {}
    for group in groups:
        key = tuple(sorted((k, repr(v)) for k, v in group.items() if k != "params"))
        if key in merged:
            merged[key]["params"] = list(merged[key]["params"]) + list(group["params"])
        else:
            merged[key] = dict(group, params=list(group["params"]))
    return list(merged.values())
