"""DFER + AU multi-task (``task: dfer`` with ``au.aux_weight > 0``): the expression classifier with an auxiliary AU
head on the same encoder tokens, trained on ``CE + aux_weight x AU loss`` (docs/AU.md).

The clips' per-frame AUs come from an AU CSV (``data.au_labels`` or the dataset's ``au_labels`` list); each clip is
labelled with the AUs of its window's centre frame. Under mixup / cutmix the AU targets are mixed with the same
lambda and partner as the clips (the area actually pasted, for cutmix), and an AU entry counts only where both
clips have it annotated. The release is the whole model (task ``dfer_au``): its ``model(clips)`` gives the
expression logits, as a classifier's does.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lgiformer.config import ConfigError
from lgiformer.data import ClipAULabels, DatasetSpec
from lgiformer.models import ExpressionAUModel
from lgiformer.tasks.au import MIN_RATE, build_loss, training_rates
from lgiformer.tasks.dfer import DFERTask, classification_loss

log = logging.getLogger("lgiformer")


def clip_au_label_file(data: Any, spec: DatasetSpec, data_root: Path) -> Path:
    """The AU CSV of the classification clips: ``data.au_labels``, else the dataset's ``au_labels`` list."""
    if data.au_labels:
        return Path(data.au_labels)
    if "au_labels" in spec.lists:
        lists_dir = Path(data.lists_dir) if data.lists_dir else data_root
        return spec.list_file("au_labels", data.fold if spec.folds > 1 else None, lists_dir)
    raise ConfigError(f"au.aux_weight > 0 needs AU labels for the clips of {spec.name}: set data.au_labels to an AU "
                      "CSV (header path,frame,subject,AU..., one row per frame, paths as in the clip lists)")


def expression_au_loss(model: nn.Module, batch: tuple, *, au_loss: nn.Module, au_weight: float, mixup: Any = None,
                       smoothing: float = 0.0) -> dict[str, torch.Tensor]:
    """``CE + au_weight x AU loss`` on ``(clips, labels, au [B, A], au_valid [B, A], ...)``, with ``cls`` and ``au``
    logged apart; under mixup / cutmix the AU targets are mixed like the clips (see the module docstring)."""
    clips, labels, au, au_valid = batch[0], batch[1], batch[2].float(), batch[3].bool()
    target = None
    if mixup is not None:
        clips, target = mixup(clips, labels)
        if mixup.last_lam < 1.0:
            lam = mixup.last_lam
            au, au_valid = lam * au + (1.0 - lam) * au.flip(0), au_valid & au_valid.flip(0)
    logits, au_out = model(clips, with_au=True)
    parts = classification_loss(logits, labels, target, smoothing)
    au_parts = au_loss(au_out, au, au_valid.float())
    return {"loss": parts["loss"] + au_weight * au_parts["loss"], "cls": parts["loss"].detach(),
            "au": au_parts["loss"].detach(), "acc": parts["acc"]}


class DFERAUTask(DFERTask):
    name = "dfer_au"

    def attach_au(self) -> None:
        a = self.cfg.au
        path = clip_au_label_file(self.cfg.data, self.spec, self.data_root)
        table = ClipAULabels.from_csv(path, self.data_root, au_names=self.spec.au_names or None)
        labelled = [table.video(s.path) for s in self.train_samples if s.path in table]
        if not labelled:
            raise ConfigError(f"{path}: none of the {len(self.train_samples)} training clips has AU labels (the AU CSV's "
                              f"paths must match the clip list's, relative to {self.data_root})")
        self.rates = training_rates(labelled).clamp_min(MIN_RATE)
        self.au_names = table.au_names
        log.info("multi-task DFER + AU: AU labels %s for %d of %d training clips; AUs %s; rates %s; AU loss weight %g",
                 path, len(labelled), len(self.train_samples), ",".join(table.au_names),
                 " ".join(f"{r:.3f}" for r in self.rates.tolist()), a.aux_weight)
        head_args, _ = a.split_head_args()
        self.model = ExpressionAUModel(self.model, a.head, head_args, num_aus=len(self.au_names), rates=self.rates)
        self.au_loss, _ = build_loss(a, self.rates)
        self.au_loss = self.au_loss.to(self.env.device)
        self.common["au_labels"] = table

    def loss(self, model: nn.Module, batch: tuple) -> dict[str, torch.Tensor]:
        return expression_au_loss(model, batch, au_loss=self.au_loss, au_weight=self.cfg.au.aux_weight,
                                  mixup=self.mixup, smoothing=self.cfg.data.smoothing)

    def au_eval_args(self) -> dict[str, Any]:
        return dict(au_names=self.au_names, au_threshold=self.cfg.au.threshold)

    def checkpoint_info(self) -> dict[str, Any]:
        return dict(super().checkpoint_info(), au_names=self.au_names)

    def release_extra(self) -> dict[str, Any]:
        return dict(au_names=list(self.au_names), rates=[float(r) for r in self.rates],
                    threshold=self.cfg.au.threshold)

    def release_training_extra(self, metrics: dict[str, Any]) -> dict[str, Any]:
        return dict(test_au_mean_f1=metrics["au"]["mean_f1"])
