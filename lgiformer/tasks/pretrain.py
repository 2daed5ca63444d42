"""Masked video pretraining (MAE-DFER) behind ``pretrain/run.py``: its config schema and its task.

The model draws the masks in the data loader (each sample's mask comes from (seed, epoch, index)), builds its own
targets and computes its own loss; the task moves nothing but the batch. The release is the encoder.
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
from lgiformer.data import VideoPretrainDataset, collate_repeated, get_dataset_spec, read_video_list
from lgiformer.distributed import DistEnv
from lgiformer.masking import MASK_TYPES
from lgiformer.models import build_pretrain_model, describe_model
from lgiformer.tasks.base import Task

log = logging.getLogger("lgiformer")


@dataclasses.dataclass
class PretrainModelConfig(EncoderConfig):
    decoder_embed_dim: int = 384
    decoder_depth: int = 4
    decoder_num_heads: int = 6
    mask_type: str = "region_balanced"       # region_balanced (MAE-DFER) | tube (VideoMAE) | random
    mask_ratio: float = 0.9
    targets: list[str] = dataclasses.field(default_factory=lambda: ["appearance", "motion"])
    motion_weight: float = 0.5

    def validate(self) -> None:
        super().validate()
        if self.mask_type == "part_window":  # the reference's name for the same masking
            self.mask_type = "region_balanced"
        if self.mask_type not in MASK_TYPES:
            raise ConfigError(f"model.mask_type: expected one of {MASK_TYPES}, got {self.mask_type!r}")
        if not 0.0 < self.mask_ratio < 1.0:
            raise ConfigError(f"model.mask_ratio must be in (0, 1), got {self.mask_ratio}")
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
class PretrainConfig:
    model: PretrainModelConfig = dataclasses.field(default_factory=PretrainModelConfig)
    data: PretrainDataConfig = dataclasses.field(default_factory=PretrainDataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    run: RunConfig = dataclasses.field(default_factory=lambda: RunConfig(output_dir="output/pretrain"))
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


class PretrainTask(Task):
    """Masked video pretraining: model = encoder + decoder, loss = the reconstruction loss, release = the
    encoder."""

    name = "pretrain"

    def __init__(self, cfg: PretrainConfig, env: DistEnv, data_root: Path, logger: Any) -> None:
        super().__init__(cfg, env, data_root, logger)
        m, d = cfg.model, cfg.data
        list_file = pretrain_list(d, data_root)
        samples = read_video_list(list_file, data_root, labeled=False, check_files=False)
        min_frames = self.check_inputs(samples, m.num_frames)
        self.model = build_pretrain_model(m.name, decoder_embed_dim=m.decoder_embed_dim,
                                          decoder_depth=m.decoder_depth, decoder_num_heads=m.decoder_num_heads,
                                          mask_type=m.mask_type, mask_ratio=m.mask_ratio, targets=m.targets,
                                          motion_weight=m.motion_weight, **m.encoder_kwargs())
        log.info("model %s + decoder %dx%d: %s; %d visible of %d tokens per clip", m.name, m.decoder_depth,
                 m.decoder_embed_dim, describe_model(self.model), self.model.masker.num_visible,
                 self.model.layout.num_tokens)
        self.train_set = VideoPretrainDataset(samples, num_frames=m.num_frames, stride=d.sampling_rate,
                                              input_size=m.img_size, mask_generator=self.model.masker,
                                              seed=cfg.run.seed, backend=d.backend, repeat_aug=d.repeat_aug,
                                              min_frames=min_frames)
        self.collate_fn = collate_repeated if d.repeat_aug > 1 else None
        log.info("data: %d videos from %s (root %s)%s", len(self.train_set), list_file, data_root,
                 f"; {d.repeat_aug} views of each per epoch (repeated sampling)" if d.repeat_aug > 1 else "")

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

    def checkpoint_info(self) -> dict[str, Any]:
        m, d = self.cfg.model, self.cfg.data
        encoder = self.model.encoder
        return dict(model_name=encoder.model_name, model_args=encoder.model_args,
                    mean=list(self.model.norm_mean.tolist()), std=list(self.model.norm_std.tolist()),
                    config=to_dict(self.cfg),
                    summary=dict(dataset=d.dataset, clips=len(self.train_set), mask_type=m.mask_type,
                                 mask_ratio=m.mask_ratio, targets=m.targets))

    def finish(self, model: nn.Module, selection: dict[str, Any], training: Any,
               validation: dict[str, Any] | None = None) -> dict[str, Any]:
        self._training_summary = dict(effective_lr=training.lr, total_batch=training.total_batch)
        return {}

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
        last_record = records[-1] if records else {}
        training = dict(info["summary"], **self._training_summary, epoch=last_record.get("epoch", -1) + 1,
                        step=last_record.get("step"), first_loss=result.get("first_loss"),
                        last_loss=result.get("last_loss"))
        return self.model.encoder, weights, dict(
            task="pretrain", source=dict(format="lgiformer-pretrain-run", file=str(self.output_dir)),
            training=training, mean=info["mean"], std=info["std"],
            notes="Encoder of a masked-autoencoder pretraining run; finetune it with finetune/run.py "
                  "--model.pretrained <this folder>.")
