"""Facial action unit (AU) detection (``task: au``; docs/AU_METHODS.md, user guide docs/AU.md).

One run = one fold of a subject-exclusive protocol (BP4D, DISFA, the synthetic AU set):

* the encoder from ``model`` (its start point through :func:`lgiformer.interop.pretrained.load_pretrained`, report
  in ``load_report.json``), built without pooling or classifier, and an AU head from ``au.head`` on its tokens, both
  inside :class:`lgiformer.models.AUModel`; ``au.freeze_encoder`` freezes the encoder, ``au.moke`` attaches MoKE
  adapters to a frozen encoder and adds the training-only expert heads read by the ``mdwa`` loss;
* training on the fold's training list minus a validation part held out BY SUBJECT; occurrence rates of the training
  labels (valid entries only, U1) weight the loss and initialise the heads' final biases (U2);
* frame-wise evaluation (:func:`lgiformer.inference.evaluate_au`), selection by ``eval.select`` (best validation
  mean F1, or the last epoch), reports ``val_metrics.json``, ``test_metrics.json`` and ``test_predictions.csv``;
* the release: the whole AU model, its AU names, rates and threshold.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from lgiformer.au import build_au_loss, occurrence_rates, slot_targets
from lgiformer.config import ConfigError
from lgiformer.data import AUFrameWindows, AUVideoDataset, read_au_csv, split_validation
from lgiformer.distributed import DistEnv
from lgiformer.inference import amp_dtype, au_frame_rows, evaluate_au, write_csv
from lgiformer.models import AUModel, describe_model
from lgiformer.models.au import MOKE_KEYS, au_probs
from lgiformer.tasks.common import FinetuneTask

log = logging.getLogger("lgiformer")

# Heads whose natural training loss is not the plain weighted BCE: with ``au.loss: wbce`` (the default) they get it.
_HEAD_LOSS = {"fantrans_okd": "okd", "monet": "monet"}
MIN_RATE = 1e-3  # floor of the training occurrence rates used for the U1 weights and the U2 bias


@dataclasses.dataclass
class AUConfig:
    """Facial action unit detection (task "au"; docs/AU_METHODS.md). Every [ENG] choice there is a key here
    with its documented default; ``head_args`` / ``loss_args`` pass anything else to the head / loss builders."""
    head: str = "label_token"             # lgiformer.heads.list_au_heads(): linear, label_token, fantrans_okd, monet
    loss: str = "wbce"                    # lgiformer.au.list_au_losses()
    au_weighting: str = "inverse_freq"
    target_transform: str = "none"        # none | vls | vals | rhls
    ls_convention: str = "halved"         # halved (default) | printed
    dense: bool = False                   # one prediction per temporal slot instead of per clip
    threshold: float = 0.5
    smooth_window: int = 20               # moving average over frames for frame-wise evaluation (0: off)
    windows_per_video: int = 4            # training windows drawn per video and epoch
    freeze_encoder: bool = False
    moke: bool = False                    # AUFormer MoKE adapters in a frozen encoder
    aux_weight: float = 0.0               # task dfer: > 0 adds an AU head, loss CE + aux_weight x AU loss
    head_args: dict = dataclasses.field(default_factory=dict)
    loss_args: dict = dataclasses.field(default_factory=dict)

    def split_head_args(self) -> tuple[dict, dict]:
        """(the head's arguments, the MoKE adapters' arguments: ``moke_*`` keys without the prefix)."""
        head = {k: v for k, v in self.head_args.items() if not k.startswith("moke_")}
        moke = {k[len("moke_"):]: v for k, v in self.head_args.items()
                if k.startswith("moke_") and k[len("moke_"):] in MOKE_KEYS}
        return head, moke


def training_rates(videos: Sequence) -> torch.Tensor:
    """U1: per-AU occurrence rate over every labelled frame of the training videos, valid entries only."""
    labels = torch.from_numpy(np.concatenate([v.labels for v in videos]))
    valid = torch.from_numpy(np.concatenate([v.valid for v in videos]))
    return occurrence_rates(labels, valid)


def build_loss(au_cfg: AUConfig, rates: torch.Tensor) -> tuple[nn.Module, str]:
    """(the AU loss module, its name): ``au.loss``, or the head's own loss when ``au.loss`` is the default."""
    name = au_cfg.loss
    if name == "wbce" and au_cfg.head in _HEAD_LOSS:
        name = _HEAD_LOSS[au_cfg.head]
        log.info("au.head %s trains with its own loss %r (au.loss wbce is the default)", au_cfg.head, name)
    if name in ("kd_bernoulli", "pattel", "h2p"):
        raise ValueError(f"au.loss {name!r} is an auxiliary term, not a training loss on its own")
    tt: Any = "none"
    if au_cfg.target_transform != "none":
        tt = {"name": au_cfg.target_transform}
        if au_cfg.target_transform in ("vals", "rhls"):
            tt["ls_convention"] = "literal" if au_cfg.ls_convention in ("printed", "literal") else au_cfg.ls_convention
    kwargs: dict[str, Any] = dict(rates=rates, target_transform=tt)
    if name != "kd_bernoulli":
        kwargs["au_weighting"] = au_cfg.au_weighting
    args = dict(au_cfg.loss_args)
    if isinstance(tt, dict):
        tt.update(args.pop("target_args", {}))
    kwargs.update(args)
    return build_au_loss(name, **kwargs), name


class AUTask(FinetuneTask):
    name = "au"
    score = "mean_f1"

    def __init__(self, cfg: Any, env: DistEnv, data_root: Path, logger: Any) -> None:
        super().__init__(cfg, env, data_root, logger)
        d, a = cfg.data, cfg.au
        if a.aux_weight > 0:
            log.warning("au.aux_weight weighs the auxiliary AU loss of multi-task DFER + AU runs (task dfer); ignored "
                        "in task au")
        if self.spec.format != "au_csv":
            raise ConfigError(f"task au needs an AU dataset (format au_csv); {self.spec.name} is {self.spec.format}")
        train_list, test_list = self.fold_lists()
        # Lists hold binary labels (9 = not annotated); DISFA intensities are binarised at >= 2 by data_lists
        # (docs/AU_METHODS.md#disfa-threshold).
        videos, self.au_names = read_au_csv(train_list, data_root, au_names=self.spec.au_names or None,
                                            check_files=False)
        test_videos, _ = read_au_csv(test_list, data_root, au_names=self.au_names, check_files=False)
        self.check_inputs(videos + test_videos, self.clip_frames())
        train_videos, val_videos = split_validation(videos, d.val_fraction, seed=cfg.run.seed, by="subject")
        if cfg.eval.select == "best_val" and not val_videos:
            raise ConfigError("eval.select best_val needs validation subjects: the training list has too few subjects "
                              "for data.val_fraction; use eval.select last")
        rates = training_rates(train_videos)
        rare = [n for n, r in zip(self.au_names, rates.tolist()) if r < MIN_RATE]
        if rare:
            log.warning("AUs %s have (almost) no positive training label in this fold: their rate is clamped to %g "
                        "for the loss weights and the bias init", ",".join(rare), MIN_RATE)
        self.rates = rates.clamp_min(MIN_RATE)
        log.info("AU data %s fold %d: %d train videos (%d subjects), %d validation videos (%d subjects, held out of "
                 "the training list by subject), %d test videos; AUs %s; training rates %s", self.spec.name, d.fold,
                 len(train_videos), len({v.subject for v in train_videos}), len(val_videos),
                 len({v.subject for v in val_videos}), len(test_videos), ",".join(self.au_names),
                 " ".join(f"{n}={r:.3f}" for n, r in zip(self.au_names, self.rates.tolist())))

        encoder = self.build_model(0, global_pool="")
        head_args, moke_args = a.split_head_args()
        frozen = a.freeze_encoder or cfg.model.freeze_encoder
        self.model = AUModel(encoder, a.head, head_args, num_aus=len(self.au_names), freeze_encoder=frozen,
                             moke=a.moke, moke_args=moke_args, dense=a.dense, rates=self.rates)
        log.info("AU model: head %s, %s%s%s", a.head, describe_model(self.model),
                 ", encoder frozen" if frozen else "", ", MoKE adapters" if a.moke else "")
        if a.head == "monet" and a.head_args.get("num_orders", 512) > 1:
            log.info("MONET: order warm-up and the separate order-selector lr (docs/AU_METHODS.md#monet-training) are "
                     "not applied here; the order logits train with the head from step 0 (no weight decay)")
        self.loss_fn, self.loss_name = build_loss(a, self.rates)
        self.loss_fn = self.loss_fn.to(env.device)
        args = encoder.model_args
        frames, size, self.tubelet = args["num_frames"], args["img_size"], args["tubelet_size"]
        self.train_set = AUVideoDataset(train_videos, mode="train", auto_augment=d.auto_augment or None,
                                        reprob=d.reprob, windows_per_video=a.windows_per_video, num_frames=frames,
                                        sampling_rate=self.stride, img_size=size, seed=cfg.run.seed,
                                        backend=d.backend, au_names=self.au_names, dense=a.dense)
        window = dict(num_frames=frames, sampling_rate=self.stride, img_size=size, backend=d.backend)
        self.val_set = AUFrameWindows(val_videos, **window) if val_videos else None
        self.test_set = AUFrameWindows(test_videos, **window)
        self.data_settings = dict(num_frames=frames, sampling_rate=self.stride, img_size=size)
        self.last_validation: dict[str, Any] = {}

    def loss(self, model: nn.Module, batch: tuple) -> dict[str, torch.Tensor]:
        clips, y, v = batch[0], batch[1].float(), batch[2]
        if self.cfg.au.dense:
            y, v = slot_targets(y, self.tubelet, "first", v)
        out = model(clips, y=y) if self.model.wants_labels else model(clips)
        parts = self.loss_fn(out, y, v.float())
        with torch.no_grad():
            hit = ((au_probs(out) >= self.cfg.au.threshold).float() == (y >= 0.5).float()).float()
            vf = v.float()
            parts["acc"] = (hit * vf).sum() / vf.sum().clamp_min(1)
        return parts

    def _evaluate(self, model: nn.Module, dataset: AUFrameWindows, precision: str, split: str) -> tuple[dict, dict]:
        """Frame-wise evaluation; a video that cannot be read is excluded and reported, never replaced."""
        a = self.cfg.au
        return evaluate_au(model, dataset, self.au_names, threshold=a.threshold, smooth_window=a.smooth_window,
                           batch_size=self.cfg.run.batch_size, device=self.env.device, amp_dtype=amp_dtype(precision),
                           num_workers=self.cfg.data.num_workers, dense=a.dense, tubelet=self.tubelet,
                           bad_sample_threshold=self.cfg.data.bad_sample_threshold, split=split)

    def validate(self, model: nn.Module, epoch: int, training: Any) -> dict[str, Any] | None:
        if self.val_set is None or not self.validation_due(epoch):
            return None
        metrics, _ = self._evaluate(model, self.val_set, training.precision, f"validation (epoch {epoch})")
        self.last_validation = dict(metrics, epoch=epoch)
        return dict(mean_f1=metrics["mean_f1"], frame_f1=metrics["frame"]["mean_f1"], excluded=metrics["excluded"],
                    details=metrics)

    def finish(self, model: nn.Module, selection: dict[str, Any], training: Any,
               validation: dict[str, Any] | None = None) -> dict[str, Any]:
        metrics, arrays = self._evaluate(model, self.test_set, training.precision, "test")
        metrics.update(selection=selection, dataset=self.spec.name, fold=self.cfg.data.fold, head=self.cfg.au.head,
                       loss=self.loss_name, train_rates=dict(zip(self.au_names, self.rates.tolist())))
        self.test_metrics = metrics
        if self.env.is_main:
            val = dict(validation, epoch=selection["epoch"]) if validation else self.last_validation or None
            if val is not None:  # the validation metrics of the tested weights (best epoch, or the last validation)
                (self.output_dir / "val_metrics.json").write_text(json.dumps(val, indent=1))
            (self.output_dir / "test_metrics.json").write_text(json.dumps(metrics, indent=1))
            write_csv(self.output_dir / "test_predictions.csv",
                      *au_frame_rows(self.test_set, self.au_names, arrays, self.cfg.au.threshold))
            self.logger.scalars({"mean_f1": metrics["mean_f1"], "frame_f1": metrics["frame"]["mean_f1"]},
                                training.engine.global_steps, prefix="test/")
            log.info("test (%s, epoch %d, %d frames of %d videos%s): mean F1 %.2f (%s)  frame-wise %.2f  centre clip %s"
                     "  |  %s", selection["select"], selection["epoch"], metrics["num_frames"], metrics["num_videos"],
                     f"; {metrics['excluded']} unreadable videos excluded" if metrics["excluded"] else "",
                     100 * metrics["mean_f1"], metrics["protocol"], 100 * metrics["frame"]["mean_f1"],
                     f"{100 * metrics['centre_clip']['mean_f1']:.2f}" if "centre_clip" in metrics else "-",
                     " ".join(f"{n} {100 * f:.1f}" for n, f in metrics["per_au"].items()))
        return dict(test=metrics)

    def checkpoint_info(self) -> dict[str, Any]:
        return dict(model_name=self.model.model_name, model_args=self.model.model_args, au_names=self.au_names)

    def release(self, model: nn.Module, result: dict[str, Any], state_dict: dict[str, torch.Tensor] | None
                ) -> tuple[nn.Module, dict[str, torch.Tensor] | None, dict[str, Any]]:
        a, metrics = self.cfg.au, self.test_metrics
        features, card = self.feature_health(result)
        return model, None, dict(
            task=self.name, source=dict(format="lgiformer-finetune", file=str(self.output_dir),
                                        pretrained=self.cfg.model.pretrained),
            au_names=list(self.au_names), rates=[float(r) for r in self.rates], threshold=a.threshold,
            smooth_window=a.smooth_window, data=self.data_settings, card=card,
            training=dict(dataset=self.spec.name, fold=self.cfg.data.fold, **result["selection"], head=a.head,
                          loss=self.loss_name, test_mean_f1=metrics.get("mean_f1"), **features))
