"""Dynamic facial expression recognition (DFEW, FERV39k, MAFW, the synthetic set): the classification task.

One run = one dataset fold: train on the fold's training list minus a held-out validation part (the reference
validated on the test set: docs/REFERENCE.md#defect-3), validate every ``eval.every`` epochs (deterministic centre
window), test the selected weights (``eval.select``: last epoch, or best validation UAR) with N clips x M crops,
and release the classifier, which ``python -m lgiformer.predict`` reads. The loss is the reference recipe's:
soft-target cross-entropy under mixup / cutmix, label-smoothing cross-entropy without them.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lgiformer.data import (VideoClassificationDataset, VideoMixup, build_loader, collate_readable, read_video_list,
                            split_validation)
from lgiformer.distributed import DistEnv
from lgiformer.inference import EvalResult, amp_dtype, evaluate, save_report
from lgiformer.tasks.common import FinetuneTask

log = logging.getLogger("lgiformer")


def soft_target_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, target: torch.Tensor | None = None,
                        smoothing: float = 0.0) -> dict[str, torch.Tensor]:
    """``loss`` (soft-target CE against mixed ``target``, else label-smoothing CE) and the hard-label accuracy
    ``acc`` of the batch (logged only)."""
    if target is not None:
        loss = soft_target_cross_entropy(logits, target)
    else:
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=smoothing)
    with torch.no_grad():
        acc = (logits.argmax(-1) == labels).float().mean()
    return {"loss": loss, "acc": acc}


def expression_loss(model: nn.Module, batch: tuple, mixup: Any = None, smoothing: float = 0.0
                    ) -> dict[str, torch.Tensor]:
    """The DFER training step on ``(clips, labels, ...)``: mixup / cutmix (a ``VideoMixup``) when given."""
    clips, labels = batch[0], batch[1]
    target = None
    if mixup is not None:
        clips, target = mixup(clips, labels)
    return classification_loss(model(clips), labels, target, smoothing)


class DFERTask(FinetuneTask):
    """Expression classification. ``loss`` returns ``loss`` and the batch's hard-label accuracy ``acc`` (before
    mixup; logged only)."""

    name = "dfer"
    score = "uar"

    def __init__(self, cfg: Any, env: DistEnv, data_root: Path, logger: Any) -> None:
        super().__init__(cfg, env, data_root, logger)
        d, m = cfg.data, cfg.model
        self.num_classes = d.num_classes or len(self.spec.classes)
        self.class_names = (list(self.spec.classes) if len(self.spec.classes) == self.num_classes
                            else [str(i) for i in range(self.num_classes)])
        train_list, test_list = self.fold_lists()
        samples = read_video_list(train_list, data_root, labeled=True, num_classes=self.num_classes, check_files=False)
        self.test_samples = read_video_list(test_list, data_root, labeled=True, num_classes=self.num_classes,
                                            check_files=False)
        min_frames = self.check_inputs(samples + self.test_samples, self.clip_frames(), frame_ext=self.spec.frame_ext)
        self.train_samples, val_samples = split_validation(samples, d.val_fraction, seed=cfg.run.seed)
        self.model = self.build_model(self.num_classes, **m.head_kwargs())
        args = self.model.model_args
        self.frames, self.size = args["num_frames"], args["img_size"]
        self.common = dict(num_frames=self.frames, sampling_rate=self.stride, img_size=self.size, seed=cfg.run.seed,
                           backend=d.backend, num_classes=self.num_classes, frame_ext=self.spec.frame_ext,
                           min_frames=min_frames)
        self.attach_au()
        self.train_set = VideoClassificationDataset(self.train_samples, mode="train", auto_augment=d.auto_augment or None,
                                                    reprob=d.reprob, crop_scale=d.crop_scale, **self.common)
        self.val_set = VideoClassificationDataset(val_samples, mode="val", **self.common) if val_samples else None
        self.test_set = VideoClassificationDataset(self.test_samples, mode="test", test_num_clips=d.test_num_clips,
                                                   test_num_crops=d.test_num_crops,
                                                   short_side_size=d.short_side_size, **self.common)
        log.info("data %s fold %s: %d train, %d validation (held out of the training list), %d test; %d classes",
                 self.spec.name, d.fold if self.spec.folds > 1 else "-", len(self.train_set), len(val_samples),
                 len(self.test_set), self.num_classes)
        self.mixup = None
        if d.mixup > 0 or d.cutmix > 0:
            self.mixup = VideoMixup(mixup_alpha=d.mixup, cutmix_alpha=d.cutmix, prob=d.mixup_prob,
                                    switch_prob=d.mixup_switch_prob, label_smoothing=d.smoothing,
                                    num_classes=self.num_classes)

    def attach_au(self) -> None:
        """The DFER + AU task wraps the classifier here; plain DFER has nothing to add."""

    # ---- training -----------------------------------------------------------------------------------------------
    def loss(self, model: nn.Module, batch: tuple) -> dict[str, torch.Tensor]:
        return expression_loss(model, batch, self.mixup, self.cfg.data.smoothing)

    # ---- evaluation ---------------------------------------------------------------------------------------------
    def run_eval(self, model: nn.Module, dataset: VideoClassificationDataset, precision: str, split: str
                 ) -> EvalResult:
        """Evaluate on ``dataset``: unreadable clips are excluded and reported, never replaced; more than
        ``data.bad_sample_threshold`` of them stops the run."""
        loader = build_loader(dataset, self.cfg.run.batch_size, shuffle=False, drop_last=False,
                              num_workers=self.cfg.data.num_workers, seed=self.cfg.run.seed,
                              collate_fn=collate_readable)
        return evaluate(model, loader, self.num_classes, self.class_names, self.env.device, amp_dtype(precision),
                        self.cfg.eval.max_views_per_call, **self.au_eval_args(),
                        bad_sample_threshold=self.cfg.data.bad_sample_threshold, split=split)

    def au_eval_args(self) -> dict[str, Any]:
        return {}

    def validate(self, model: nn.Module, epoch: int, training: Any) -> dict[str, Any] | None:
        if self.val_set is None or not self.validation_due(epoch):
            return None
        metrics = self.run_eval(model, self.val_set, training.precision, f"validation (epoch {epoch})").metrics
        scalars = {"uar": metrics["uar"], "war": metrics["war"], "excluded": metrics["excluded"]}
        if "au" in metrics:
            scalars["au_mean_f1"] = metrics["au"]["mean_f1"]
        return scalars

    def finish(self, model: nn.Module, selection: dict[str, Any], training: Any,
               validation: dict[str, Any] | None = None) -> dict[str, Any]:
        result = self.run_eval(model, self.test_set, training.precision, "test")
        self.test_metrics = result.metrics
        report: dict[str, Any] = {}
        if self.env.is_main:
            report = save_report(result, self.output_dir, "test", self.class_names,
                                 [s.path for s in self.test_samples], writer=self.logger.writer,
                                 step=training.engine.global_steps, extra=selection)
            d = self.cfg.data
            log.info("test (%s, epoch %d, %d clips x %d crops): UAR %.2f  WAR %.2f  weighted F1 %.2f  (%d clips%s)",
                     selection["select"], selection["epoch"], d.test_num_clips, d.test_num_crops,
                     100 * result.metrics["uar"], 100 * result.metrics["war"], 100 * result.metrics["weighted_f1"],
                     result.metrics["evaluated"],
                     f"; {result.metrics['excluded']} unreadable, excluded" if result.metrics["excluded"] else "")
            if "au" in result.metrics:
                au = result.metrics["au"]
                log.info("test AUs (auxiliary head, %d views): mean F1 %.2f  |  %s", au["num_views"],
                         100 * au["mean_f1"], " ".join(f"{n} {100 * f:.1f}" for n, f in au["per_au"].items()))
        return dict(test=report)

    # ---- what is saved ------------------------------------------------------------------------------------------
    def checkpoint_info(self) -> dict[str, Any]:
        return dict(model_name=self.model.model_name, model_args=self.model.model_args, class_names=self.class_names)

    def release(self, model: nn.Module, result: dict[str, Any], state_dict: dict[str, torch.Tensor] | None
                ) -> tuple[nn.Module, dict[str, torch.Tensor] | None, dict[str, Any]]:
        d, selection = self.cfg.data, result["selection"]
        metrics = self.test_metrics
        features, card = self.feature_health(result)
        return model, None, dict(
            task=self.name, source=dict(format="lgiformer-finetune", file=str(self.output_dir),
                                        pretrained=self.cfg.model.pretrained),
            class_names=self.class_names, **self.release_extra(), card=card,
            training=dict(dataset=self.spec.name, fold=d.fold, **selection, test_uar=metrics["uar"],
                          test_war=metrics["war"], **self.release_training_extra(metrics), **features),
            data=dict(num_frames=self.frames, sampling_rate=self.stride, img_size=self.size,
                      test_num_clips=d.test_num_clips, test_num_crops=d.test_num_crops,
                      short_side_size=d.short_side_size))

    def release_extra(self) -> dict[str, Any]:
        return {}

    def release_training_extra(self, metrics: dict[str, Any]) -> dict[str, Any]:
        return {}
