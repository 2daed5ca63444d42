"""Masked video pretraining (MAE-DFER) behind ``pretrain/run.py``: its config schema and its task.

The model draws the masks in the data loader (each sample's mask comes from (seed, epoch, index)), builds its own
targets and computes its own loss; the task moves nothing but the batch. The release is the encoder, with the
decoder beside it (``release.with_decoder``) for ``python -m lgiformer.visualize``.

Pretraining follows the reference by default, and each place where it could differ is a named choice
(docs/REFERENCE.md, "Departures"): ``model.init`` (``reference``: Xavier-uniform, as the reference's pretraining
model; ``trunc_normal``), ``model.mask_rounding`` (``floor``: ``int(ratio x window)`` positions masked, as the
reference; ``round``) and ``optim.decay_region_tokens`` (``true``: weight decay on the representative tokens, as the
reference's name mismatch does; ``false``). The decoder's token order is a fix, not a choice (docs/REFERENCE.md#defect-1).

What pretraining learned is measured on videos it never trains on: ``eval.heldout_fraction`` of the pretraining
list (its tail: other identities in a list sorted by identity) is held out, and at the end of the run (and every
``eval.every`` epochs) the reconstruction loss on fixed windows, crops and masks of those videos is compared with two
predictors that learn nothing (:meth:`lgiformer.models.MaskedVideoAutoencoder.heldout_losses`). The release's model
card shows the three losses and the reconstruction of a held-out clip.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lgiformer.config import (REFERENCE_ALIASES, ConfigError, DataConfig, EncoderConfig, OptimConfig, RunConfig,
                              load_config, to_dict)
from lgiformer.data import VideoPretrainDataset, build_loader, collate_repeated, get_dataset_spec, read_video_list
from lgiformer.distributed import DistEnv
from lgiformer.masking import MASK_ROUNDINGS, MASK_TYPES
from lgiformer.models import MaskedVideoAutoencoder, build_pretrain_model, describe_model
from lgiformer.models.mae import PREDICTORS, PRETRAIN_INITS
from lgiformer.models.release import decoder_parts
from lgiformer.optim import param_groups
from lgiformer.tasks.base import Task

log = logging.getLogger("lgiformer")

HELDOUT_SEED = 0  # the held-out windows, crops and masks: the same in every run, whatever run.seed


@dataclasses.dataclass
class PretrainModelConfig(EncoderConfig):
    decoder_embed_dim: int = 384
    decoder_depth: int = 4
    decoder_num_heads: int = 6
    mask_type: str = "region_balanced"       # region_balanced (MAE-DFER) | tube (VideoMAE) | random
    mask_ratio: float = 0.9
    targets: list[str] = dataclasses.field(default_factory=lambda: ["appearance", "motion"])
    motion_weight: float = 0.5
    init: str = "reference"                  # reference (Xavier, as the reference's pretraining) | trunc_normal
    mask_rounding: str = "floor"             # floor: int(ratio x window) masked, as the reference | round

    def validate(self) -> None:
        super().validate()
        if self.mask_type == "part_window":  # the reference's name for the same masking
            self.mask_type = "region_balanced"
        if self.mask_type not in MASK_TYPES:
            raise ConfigError(f"model.mask_type: expected one of {MASK_TYPES}, got {self.mask_type!r}")
        if not 0.0 < self.mask_ratio < 1.0:
            raise ConfigError(f"model.mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if self.init not in PRETRAIN_INITS:
            raise ConfigError(f"model.init: expected one of {PRETRAIN_INITS}, got {self.init!r}")
        if self.mask_rounding not in MASK_ROUNDINGS:
            raise ConfigError(f"model.mask_rounding: expected one of {MASK_ROUNDINGS}, got {self.mask_rounding!r}")
        bad = set(self.targets) - {"appearance", "motion"}
        if bad or not self.targets:
            raise ConfigError(f"model.targets: a non-empty subset of [appearance, motion], got {self.targets}")

    def encoder_kwargs(self) -> dict[str, Any]:
        return dict(self.arch_kwargs(), drop_path_rate=self.drop_path_rate)


@dataclasses.dataclass
class PretrainDataConfig(DataConfig):
    dataset: str = "synthetic_unlabeled"
    list_file: str = ""                       # overrides the dataset's list (relative to data_root if not found)
    sampling_rate: int = 4
    repeat_aug: int = 1                       # views per decoded window (repeated sampling); 1 = the reference

    def validate(self) -> None:
        super().validate()
        if self.sampling_rate < 1 or self.repeat_aug < 1:
            raise ConfigError("data.sampling_rate and data.repeat_aug must be >= 1")


@dataclasses.dataclass
class PretrainOptimConfig(OptimConfig):
    decay_region_tokens: bool = True          # weight decay on the representative tokens, as the reference's
                                              # pretraining (docs/REFERENCE.md#defect-2); false exempts them


@dataclasses.dataclass
class PretrainEvalConfig:
    """The held-out reconstruction loss (module docstring)."""
    heldout_fraction: float = 0.0             # the tail of the pretraining list never trained on (0: none)
    heldout_views: int = 4                    # fixed (window, crop, mask) draws per held-out video
    every: int = 0                            # also every N epochs (0: at the end only)

    def validate(self) -> None:
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise ConfigError(f"eval.heldout_fraction must be in [0, 1), got {self.heldout_fraction}")
        if self.heldout_views < 1 or self.every < 0:
            raise ConfigError("eval.heldout_views must be >= 1 and eval.every >= 0")


@dataclasses.dataclass
class PretrainReleaseConfig:
    with_decoder: bool = True                 # keep the decoder beside the encoder (decoder.safetensors) for
                                              # python -m lgiformer.visualize; finetuning reads the encoder only


@dataclasses.dataclass
class PretrainConfig:
    model: PretrainModelConfig = dataclasses.field(default_factory=PretrainModelConfig)
    data: PretrainDataConfig = dataclasses.field(default_factory=PretrainDataConfig)
    optim: PretrainOptimConfig = dataclasses.field(default_factory=PretrainOptimConfig)
    eval: PretrainEvalConfig = dataclasses.field(default_factory=PretrainEvalConfig)
    run: RunConfig = dataclasses.field(default_factory=lambda: RunConfig(output_dir="output/pretrain"))
    release: PretrainReleaseConfig = dataclasses.field(default_factory=PretrainReleaseConfig)
    release_dir: str = ""                     # "" : <output_dir>/release; "none": no release at the end

    def validate(self) -> None:
        if self.run.batch_size % self.data.repeat_aug:
            raise ConfigError(f"run.batch_size ({self.run.batch_size}, the clips per step and process) must be a "
                              f"multiple of data.repeat_aug ({self.data.repeat_aug}, the clips cut from each video)")


def load_pretrain_config(config_file: str | None, overrides: list[str]) -> PretrainConfig:
    return load_config(PretrainConfig, config_file, overrides, REFERENCE_ALIASES)


def pretrain_list(data: PretrainDataConfig, root: Path) -> Path:
    """The pretraining list: ``data.list_file`` (relative to the data root when not found as given), else the
    dataset's."""
    if not data.list_file:
        return get_dataset_spec(data.dataset).list_file("pretrain", None, root)
    list_file = Path(data.list_file)
    return root / list_file if not list_file.is_file() and (root / list_file).is_file() else list_file


def pretrain_model(m: PretrainModelConfig) -> MaskedVideoAutoencoder:
    """The masked autoencoder a ``model`` section describes."""
    return build_pretrain_model(m.name, decoder_embed_dim=m.decoder_embed_dim, decoder_depth=m.decoder_depth,
                                decoder_num_heads=m.decoder_num_heads, mask_type=m.mask_type, mask_ratio=m.mask_ratio,
                                targets=m.targets, motion_weight=m.motion_weight, init=m.init,
                                mask_rounding=m.mask_rounding, **m.encoder_kwargs())


def pretrain_param_groups(model: MaskedVideoAutoencoder, optim: PretrainOptimConfig) -> list[dict]:
    """The optimiser's groups: the model's exemptions, less the representative tokens with
    ``optim.decay_region_tokens`` (as the reference's pretraining decays them)."""
    decay = [f"encoder.{n}" for n in model.encoder.region_tokens] if optim.decay_region_tokens else []
    return param_groups(model, optim.weight_decay, optim.layer_decay, decay=decay)


def split_heldout(samples: list, fraction: float) -> tuple[list, list]:
    """(training, held-out): the last ``ceil(fraction x N)`` entries are held out (none at 0)."""
    count = math.ceil(fraction * len(samples)) if fraction > 0 else 0
    if count and count >= len(samples):
        raise ConfigError(f"eval.heldout_fraction {fraction} leaves no training video of {len(samples)}")
    return samples[:len(samples) - count], samples[len(samples) - count:]


class PretrainTask(Task):
    """Masked video pretraining: model = encoder + decoder, loss = the reconstruction loss, release = the
    encoder."""

    name = "pretrain"

    def __init__(self, cfg: PretrainConfig, env: DistEnv, data_root: Path, logger: Any) -> None:
        super().__init__(cfg, env, data_root, logger)
        m, d = cfg.model, cfg.data
        self.model = pretrain_model(m)
        log.info("model %s + decoder %dx%d: %s; %d visible of %d tokens per clip; init %s, mask rounding %s, "
                 "weight decay on the representative tokens: %s", m.name, m.decoder_depth, m.decoder_embed_dim,
                 describe_model(self.model), self.model.masker.num_visible, self.model.layout.num_tokens, m.init,
                 m.mask_rounding, "yes" if cfg.optim.decay_region_tokens else "no")
        list_file = pretrain_list(d, data_root)
        videos = read_video_list(list_file, data_root, labeled=False, check_files=False)
        min_frames = self.check_inputs(videos, m.num_frames)
        train, self.heldout = split_heldout(videos, cfg.eval.heldout_fraction)
        common = dict(num_frames=m.num_frames, stride=d.sampling_rate, input_size=m.img_size,
                      mask_generator=self.model.masker, backend=d.backend, min_frames=min_frames)
        self.train_set = VideoPretrainDataset(train, seed=cfg.run.seed, repeat_aug=d.repeat_aug, **common)
        # Each held-out video appears heldout_views times: every copy draws its own fixed window, crop and mask.
        self.heldout_set = (VideoPretrainDataset(self.heldout * cfg.eval.heldout_views, seed=HELDOUT_SEED, **common)
                            if self.heldout else None)
        self.collate_fn = collate_repeated if d.repeat_aug > 1 else None
        log.info("data: %d videos from %s (root %s)%s%s", len(self.train_set), list_file, data_root,
                 f"; {d.repeat_aug} views of each per epoch (repeated sampling)" if d.repeat_aug > 1 else "",
                 f"; the last {len(self.heldout)} held out (eval.heldout_fraction {cfg.eval.heldout_fraction})"
                 if self.heldout else "")

    def param_groups(self) -> list[dict]:
        return pretrain_param_groups(self.model, self.cfg.optim)

    @property
    def videos_per_batch(self) -> int:
        # run.batch_size counts clips (memory and the lr scaling see clips); the loader's batch counts videos
        return self.cfg.run.batch_size // self.cfg.data.repeat_aug

    def loss(self, model: nn.Module, batch: tuple) -> dict[str, torch.Tensor]:
        return model(batch[0], batch[1])

    def on_step(self, training: Any, state: Any, batch: tuple) -> None:
        # Every process runs this forward, and only rank 0 logs it: under ZeRO 3 a forward gathers each layer's
        # shards from all processes, so a forward on rank 0 alone hangs or fails (measured: a 2-process run died at
        # its first image with "disagreement on list length between rank0 and rank1").
        every = self.cfg.run.image_every
        if every and state.batch_in_epoch == 1 and \
                (state.epoch * training.steps_per_epoch) % every < training.steps_per_epoch:
            with training.autocast():
                frames = training.model.reconstruction_images(batch[0][:1], batch[1][:1])
            if self.env.is_main:
                self.logger.images(frames, state.step)

    # ---- feature health and the held-out reconstruction -------------------------------------------------------
    feature_meaning = {
        "encoder": "the encoder's visible tokens (representative and local) before its final norm: what finetuning "
                   "pools, since a finetuned encoder has no final norm",
        "decoder": "the decoder's predictions for the masked tokens (the targets are normalised per token: std about 1 "
                   "for appearance)",
        "head_input": "the input of the decoder's head (after the decoder's norm)"}

    def feature_sites(self, model: nn.Module) -> dict[str, tuple[nn.Module, str]]:
        return {"encoder": (model.encoder.norm, "input"), "decoder": (model.decoder, "output"),
                "head_input": (model.decoder.head, "input")}

    def end_of_epoch(self, epoch: int, training: Any) -> dict[str, float]:
        out = super().end_of_epoch(epoch, training)
        every = self.cfg.eval.every
        if self.heldout_set is not None and every and (epoch + 1) % every == 0:
            losses, _ = self.heldout_eval(training.model, training)
            out.update({f"heldout/{k}": v for k, v in losses["model"].items()})
            out.update({f"heldout/wins_{k}": v for k, v in losses["wins"].items()})
        return out

    @torch.no_grad()
    def heldout_eval(self, model: nn.Module, training: Any) -> tuple[dict[str, Any], tuple]:
        """The mean losses of the model and of the two baselines over the held-out clips, with ``wins`` (for each
        baseline, the fraction of clips on which the model's total loss is lower), and the first held-out clip with
        its mask. Each process evaluates all the clips: the set is small, and under ZeRO 3 every process must take
        part in each forward."""
        loader = build_loader(self.heldout_set, self.cfg.run.batch_size, shuffle=False, drop_last=False,
                              num_workers=self.cfg.data.num_workers, seed=HELDOUT_SEED, rank=0, world_size=1)
        was_training = model.training
        model.eval()
        per_clip: dict[str, dict[str, list[torch.Tensor]]] = {}
        first = ()
        for batch in loader:
            clips = batch[0].to(self.env.device, training.dtype)
            mask = batch[1].to(self.env.device)
            with training.autocast():
                losses = model.heldout_losses(clips, mask)
            for name, parts in losses.items():
                for key, values in parts.items():
                    per_clip.setdefault(name, {}).setdefault(key, []).append(values.float().cpu())
            first = first or (clips[:1], mask[:1])
        model.train(was_training)
        clip_losses = {name: {k: torch.cat(v) for k, v in parts.items()} for name, parts in per_clip.items()}
        out: dict[str, Any] = {name: {k: float(v.mean()) for k, v in parts.items()}
                               for name, parts in clip_losses.items()}
        out["wins"] = {name: float((clip_losses["model"]["loss"] < clip_losses[name]["loss"]).float().mean())
                       for name in ("visible_mean", "zero")}
        return out, first

    def checkpoint_info(self) -> dict[str, Any]:
        m, d = self.cfg.model, self.cfg.data
        encoder = self.model.encoder
        return dict(model_name=encoder.model_name, model_args=encoder.model_args, decoder=self.model.decoder_args,
                    mean=list(self.model.norm_mean.tolist()), std=list(self.model.norm_std.tolist()),
                    config=to_dict(self.cfg), data=dict(dataset=d.dataset, sampling_rate=d.sampling_rate),
                    summary=dict(dataset=d.dataset, clips=len(self.train_set), mask_type=m.mask_type,
                                 mask_ratio=m.mask_ratio, mask_rounding=m.mask_rounding, init=m.init,
                                 decay_region_tokens=self.cfg.optim.decay_region_tokens, targets=m.targets))

    def finish(self, model: nn.Module, selection: dict[str, Any], training: Any,
               validation: dict[str, Any] | None = None) -> dict[str, Any]:
        self._training_summary = dict(effective_lr=training.lr, total_batch=training.total_batch)
        self._heldout, self._heldout_image = None, None
        if self.heldout_set is None:
            return {}
        losses, first = self.heldout_eval(model, training)
        with training.autocast():
            frames = model.reconstruction_images(*first)
        if self.env.is_main:
            self._heldout_image = self.logger.images(frames, training.engine.global_steps,
                                                     prefix="heldout_reconstruction")
        self._heldout = dict(videos=len(self.heldout), views=self.cfg.eval.heldout_views,
                             clips=len(self.heldout_set), seed=HELDOUT_SEED, **losses)
        parts = loss_columns(losses["model"])
        log.info("held-out reconstruction: %d videos never trained on x %d fixed views (window, crop, mask); "
                 "lower is better", len(self.heldout), self.cfg.eval.heldout_views)
        log.info("  %-28s %s", "predictor", "".join(f"{label:>12}" for label in parts.values()))
        for name, label in PREDICTORS.items():
            log.info("  %-28s %s", label, "".join(f"{losses[name][key]:12.4f}" for key in parts))
        log.info("  %s; its total loss is lower on %.0f %% of the clips than the mean of the visible patches' and "
                 "on %.0f %% than zero's", heldout_verdict(losses), 100 * losses["wins"]["visible_mean"],
                 100 * losses["wins"]["zero"])
        return dict(heldout=self._heldout)

    def release(self, model: nn.Module, result: dict[str, Any], state_dict: dict[str, torch.Tensor] | None
                ) -> tuple[nn.Module, dict[str, torch.Tensor] | None, dict[str, Any]]:
        records = result.get("epochs") or []
        if records:
            first, last = records[0].get("train_loss", math.nan), records[-1].get("train_loss", math.nan)
            log.info("reconstruction loss: first epoch %.4f, last epoch %.4f", first, last)
            result.update(first_loss=first, last_loss=last)
        weights = None
        if state_dict is not None:  # ZeRO 3: the consolidated weights of the last checkpoint
            weights = {k[len("encoder."):]: v for k, v in state_dict.items() if k.startswith("encoder.")}
        info = self.checkpoint_info()
        decoder = decoder_parts(info["decoder"], state_dict if state_dict is not None else self.model.state_dict()) \
            if self.cfg.release.with_decoder else {}
        last_record = records[-1] if records else {}
        features, card = self.feature_health(result)
        files = {}
        if self._heldout is not None:
            card = {"Held-out reconstruction": heldout_card(self._heldout, self._heldout_image is not None), **card}
            if self._heldout_image is not None:
                files["heldout_reconstruction.png"] = self._heldout_image
        training = dict(info["summary"], **self._training_summary, epoch=last_record.get("epoch", -1) + 1,
                        step=last_record.get("step"), first_loss=result.get("first_loss"),
                        last_loss=result.get("last_loss"), **({"heldout": self._heldout} if self._heldout else {}),
                        **features)
        return self.model.encoder, weights, dict(
            task="pretrain", source=dict(format="lgiformer-pretrain-run", file=str(self.output_dir)),
            training=training, mean=info["mean"], std=info["std"], data=info["data"], card=card, files=files, **decoder,
            notes="Encoder of a masked-autoencoder pretraining run; finetune it with finetune/run.py "
                  "--model.pretrained <this folder>.")


def loss_columns(losses: dict[str, float]) -> dict[str, str]:
    """The loss keys in display order (total first) with their column titles."""
    return {key: key[len("loss_"):] if key.startswith("loss_") else key
            for key in sorted(losses, key=lambda k: (k != "loss", k))}


def heldout_verdict(losses: dict[str, dict[str, float]]) -> str:
    """One line: does the model beat both baselines, on the total loss and on each part?"""
    baselines = ("visible_mean", "zero")
    model = losses["model"]
    total = [PREDICTORS[n] for n in baselines if model["loss"] >= losses[n]["loss"]]
    parts = [f"{key[len('loss_'):]} against {PREDICTORS[n]}" for n in baselines for key in model
             if key != "loss" and model[key] >= losses[n][key]]
    if total:
        return f"the release does NOT beat {' nor '.join(total)} on the total loss"
    if parts:
        return f"the release beats both baselines on the total loss, but not on {'; '.join(parts)}"
    return "the release beats both baselines, on the total loss and on every part"


def heldout_card(heldout: dict[str, Any], image: bool) -> str:
    """The model card's held-out section: the three predictors' losses, the verdict, the image."""
    parts = loss_columns(heldout["model"])
    lines = [f"Reconstruction loss of the pretraining model (this encoder with the run's decoder) on "
             f"{heldout['videos']} videos of the pretraining list that training never saw, "
             f"{heldout['views']} fixed views each (window, crop and mask drawn from seed {heldout['seed']}); lower is "
             "better. The two baselines learn nothing: one predicts every masked patch as the mean of the clip's "
             "visible patches, the other predicts zero (no motion, and each patch flat at its own mean colour).", "",
             "| predictor | " + " | ".join(parts.values()) + " |", "|---" * (len(parts) + 1) + "|"]
    for name, label in PREDICTORS.items():
        lines.append(f"| {label} | " + " | ".join(f"{heldout[name][key]:.4f}" for key in parts) + " |")
    verdict = heldout_verdict(heldout)
    wins = heldout["wins"]
    lines += ["", f"{verdict[0].upper() + verdict[1:]}. Clip by clip, its total loss is lower than the mean of the "
                  f"visible patches' on {100 * wins['visible_mean']:.0f} % of the held-out clips and lower than "
                  f"zero's on {100 * wins['zero']:.0f} %."]
    if image:
        lines += ["", "A held-out clip (rows: input, masked input, predicted and true appearance, predicted and true "
                      "motion):", "", "![held-out reconstruction](heldout_reconstruction.png)"]
    return "\n".join(lines)
