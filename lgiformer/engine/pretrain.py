"""Masked video pretraining (MAE-DFER): the config schema and the run, behind ``pretrain/run.py``."""
from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any

import torch

from lgiformer.config import (REFERENCE_ALIASES, ConfigError, OptimConfig, RunConfig, check_synthetic, load_config,
                              to_dict)
from lgiformer.engine import trainer
from lgiformer.engine.distributed import barrier, destroy
from lgiformer.masking import MASK_TYPES
from lgiformer.models import ENCODER_NAMES, build_pretrain_model
from lgiformer.optim import param_groups

log = logging.getLogger("lgiformer")


@dataclasses.dataclass
class PretrainModelConfig:
    name: str = "lgiformer_base_patch16_160"
    img_size: int = 160
    num_frames: int = 16
    tubelet_size: int = 2
    patch_size: int = 16
    region_size: list[int] | None = None     # (t, h, w) tokens per region; None: the variant's
    embed_dim: int | None = None             # None: the variant's width / depth / heads
    depth: int | None = None
    num_heads: int | None = None
    drop_path_rate: float = 0.0
    decoder_embed_dim: int = 384
    decoder_depth: int = 4
    decoder_num_heads: int = 6
    mask_type: str = "region_balanced"       # region_balanced (MAE-DFER) | tube (VideoMAE) | random
    mask_ratio: float = 0.9
    targets: list[str] = dataclasses.field(default_factory=lambda: ["appearance", "motion"])
    motion_weight: float = 0.5

    def validate(self) -> None:
        if self.name not in ENCODER_NAMES:
            raise ConfigError(f"model.name: unknown encoder {self.name!r}; available: {', '.join(ENCODER_NAMES)}")
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
        kwargs = dict(img_size=self.img_size, num_frames=self.num_frames, tubelet_size=self.tubelet_size,
                      patch_size=self.patch_size, drop_path_rate=self.drop_path_rate)
        for key in ("region_size", "embed_dim", "depth", "num_heads"):
            if getattr(self, key) is not None:
                kwargs[key] = getattr(self, key)
        if self.region_size is not None and not self.name.startswith("lgiformer"):
            raise ConfigError("model.region_size applies to lgiformer_* encoders only")
        return kwargs


@dataclasses.dataclass
class PretrainDataConfig:
    dataset: str = "synthetic_unlabeled"      # a name in lgiformer/data/datasets.yaml
    data_root: str = ""                       # "" with a synthetic dataset: data/synthetic/<its options' name>
    list_file: str = ""                       # overrides the dataset's list (relative to data_root if not found)
    sampling_rate: int = 4
    num_workers: int = 2
    backend: str = "auto"                     # auto | decord | pyav | frames
    repeat_aug: int = 1                       # views per decoded window (repeated sampling); 1 = the reference
    bad_sample_threshold: float = 0.01
    synthetic: dict = dataclasses.field(default_factory=dict)   # generator options (lgiformer.data.synthetic)

    def validate(self) -> None:
        if self.sampling_rate < 1 or self.num_workers < 0 or self.repeat_aug < 1:
            raise ConfigError("data.sampling_rate and data.repeat_aug must be >= 1, and data.num_workers >= 0")
        if not 0.0 <= self.bad_sample_threshold <= 1.0:
            raise ConfigError(f"data.bad_sample_threshold must be in [0, 1], got {self.bad_sample_threshold}")
        check_synthetic(self.synthetic)


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


def prepare_data_root(cfg: PretrainDataConfig, is_main: bool) -> tuple[Path, Path]:
    """(data root, list file). A synthetic dataset is generated by rank 0 when absent."""
    from lgiformer.data import get_dataset_spec, resolve_root

    spec = get_dataset_spec(cfg.dataset)
    root = resolve_root(cfg.data_root, cfg.synthetic) if spec.synthetic else Path(cfg.data_root)
    if spec.synthetic:
        if is_main:
            from lgiformer.data import ensure_synthetic

            ensure_synthetic(root, workers="auto", **cfg.synthetic)
        barrier()
    if cfg.list_file:
        list_file = Path(cfg.list_file)
        if not list_file.is_file() and (root / list_file).is_file():
            list_file = root / list_file
    else:
        list_file = spec.list_file("pretrain", None, root)
    return root, list_file


def run(cfg: PretrainConfig) -> dict[str, Any]:
    env, logger = trainer.setup(cfg.run)
    try:
        return _run(cfg, env, logger)
    finally:
        logger.close()
        destroy()


def _run(cfg: PretrainConfig, env, logger) -> dict[str, Any]:
    from lgiformer.data import VideoPretrainDataset, build_loader, collate_repeated

    m, d = cfg.model, cfg.data
    model = build_pretrain_model(m.name, decoder_embed_dim=m.decoder_embed_dim, decoder_depth=m.decoder_depth,
                                 decoder_num_heads=m.decoder_num_heads, mask_type=m.mask_type,
                                 mask_ratio=m.mask_ratio, targets=m.targets, motion_weight=m.motion_weight,
                                 **m.encoder_kwargs())
    log.info("model %s + decoder %dx%d: %s; %d visible of %d tokens per clip", m.name, m.decoder_depth,
             m.decoder_embed_dim, trainer.describe_model(model), model.masker.num_visible,
             model.layout.num_tokens)
    root, list_file = prepare_data_root(d, env.is_main)
    dataset = VideoPretrainDataset(str(list_file), str(root), num_frames=m.num_frames, stride=d.sampling_rate,
                                   input_size=m.img_size, mask_generator=model.masker, seed=cfg.run.seed,
                                   backend=d.backend, repeat_aug=d.repeat_aug)
    # run.batch_size counts clips (memory and the lr scaling see clips); the loader's batch counts videos
    loader = build_loader(dataset, cfg.run.batch_size // d.repeat_aug, shuffle=True, drop_last=True,
                          num_workers=d.num_workers, seed=cfg.run.seed,
                          collate_fn=collate_repeated if d.repeat_aug > 1 else None)
    log.info("data: %d videos from %s (root %s)%s", len(dataset), list_file, root,
             f"; {d.repeat_aug} views of each per epoch (repeated sampling)" if d.repeat_aug > 1 else "")
    training = trainer.build_training(model, param_groups(model, cfg.optim.weight_decay), cfg.run, cfg.optim, env,
                                      logger, len(loader), cfg)

    def step_fn(engine, batch) -> dict[str, torch.Tensor]:
        clips, mask = batch[0], batch[1]
        clips = clips.to(env.device, training.dtype, non_blocking=True)
        return engine(clips, mask.to(env.device, non_blocking=True))

    def on_step(state, batch) -> None:
        # Every process runs this forward, and only rank 0 logs it: under ZeRO 3 a forward gathers each layer's
        # shards from all processes, so a forward on rank 0 alone hangs or fails (measured: a 2-process run died at
        # its first image with "disagreement on list length between rank0 and rank1").
        if cfg.run.image_every and state.batch_in_epoch == 1 and \
                (state.epoch * training.steps_per_epoch) % cfg.run.image_every < training.steps_per_epoch:
            clips = batch[0][:1].to(env.device, training.dtype)
            with training.autocast():
                frames = training.model.reconstruction_images(clips, batch[1][:1].to(env.device))
            if env.is_main:
                logger.images(frames, state.step)

    def end_of_epoch(state, stats) -> dict:
        bad = dataset.bad_samples.end_epoch(state.epoch, d.bad_sample_threshold)
        logger.scalars({"bad_samples": bad["bad"]}, state.step, prefix="data/")
        return {"bad_samples": bad["bad"]}

    info = dict(kind="pretrain", model_name=model.encoder.model_name, model_args=model.encoder.model_args,
                mean=list(model.norm_mean.tolist()), std=list(model.norm_std.tolist()), config=to_dict(cfg),
                summary=dict(dataset=d.dataset, clips=len(dataset), mask_type=m.mask_type, mask_ratio=m.mask_ratio,
                             targets=m.targets, effective_lr=training.lr, total_batch=training.total_batch))
    records = trainer.fit(training, cfg.run, cfg.optim, loader, step_fn, checkpoint_info=info,
                          end_of_epoch=end_of_epoch, on_step=on_step)
    result: dict[str, Any] = {"epochs": records}
    if records:
        first, last = records[0].get("train_loss", math.nan), records[-1].get("train_loss", math.nan)
        log.info("reconstruction loss: first epoch %.4f, last epoch %.4f", first, last)
        result.update(first_loss=first, last_loss=last)
    if env.is_main and cfg.release_dir != "none":
        from lgiformer.release import release_from_checkpoint

        out = Path(cfg.release_dir or Path(cfg.run.output_dir) / "release")
        release_from_checkpoint(trainer.last_checkpoint(cfg.run), out, overwrite=True)
        log.info("encoder release: %s  (finetune with: python finetune/run.py --model.pretrained %s)", out, out)
        result["release"] = str(out)
    barrier()
    return result
