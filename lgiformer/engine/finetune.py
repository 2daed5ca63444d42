"""Finetuning and evaluation (DFER classification) behind ``finetune/run.py``: the config schema and the run.

One run = one dataset fold: train on the fold's training list minus a held-out validation part (the reference
validated on the test set: REFERENCE defect 3), validate every ``eval.every`` epochs (deterministic centre window),
then test the selected weights (``eval.select``: last epoch, or best validation UAR) with N clips x M crops, and
write the reports and a finetuned release that ``python -m lgiformer.predict`` reads.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch

from lgiformer.config import (REFERENCE_ALIASES, ConfigError, OptimConfig, RunConfig, check_synthetic, load_config,
                              to_dict)
from lgiformer.engine import ds, trainer
from lgiformer.engine.distributed import barrier, destroy
from lgiformer.models import ENCODER_NAMES
from lgiformer.models.lgiformer import label_token_args
from lgiformer.optim import param_groups

log = logging.getLogger("lgiformer")


@dataclasses.dataclass
class FinetuneModelConfig:
    name: str = "lgiformer_base_patch16_160"
    pretrained: str = ""                  # release dir, reference MAE-DFER / VideoMAE .pth, HF folder, "" = scratch
    img_size: int = 160
    num_frames: int = 16
    tubelet_size: int = 2
    patch_size: int = 16
    region_size: list[int] | None = None
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    global_pool: str | None = None        # None: "region" for lgiformer (the paper), "avg" for vit; or "spatial",
                                          # "label_token" (one attention query per class over the tokens)
    head_args: dict = dataclasses.field(default_factory=dict)   # label_token only: dim, depth, num_heads, ...
    drop_path_rate: float = 0.1

    def validate(self) -> None:
        if self.name not in ENCODER_NAMES:
            raise ConfigError(f"model.name: unknown encoder {self.name!r}; available: {', '.join(ENCODER_NAMES)}")
        if self.head_args and self.global_pool != "label_token":
            raise ConfigError(f"model.head_args {sorted(self.head_args)} are for model.global_pool label_token "
                              f"(got {self.global_pool!r})")
        if self.global_pool == "label_token":
            try:
                label_token_args(self.head_args)
            except ValueError as err:
                raise ConfigError(f"model.{err}") from None

    def head_kwargs(self) -> dict[str, Any]:
        """The classifier's pooling and head, as ``build_classifier`` takes them."""
        kwargs: dict[str, Any] = dict(global_pool=self.global_pool)
        if self.head_args:
            kwargs["head_args"] = dict(self.head_args)
        return kwargs

    def arch_kwargs(self) -> dict[str, Any]:
        kwargs = dict(img_size=self.img_size, num_frames=self.num_frames, tubelet_size=self.tubelet_size,
                      patch_size=self.patch_size)
        for key in ("region_size", "embed_dim", "depth", "num_heads"):
            if getattr(self, key) is not None:
                kwargs[key] = getattr(self, key)
        return kwargs


@dataclasses.dataclass
class FinetuneDataConfig:
    dataset: str = "synthetic_dfer"       # a name in lgiformer/data/datasets.yaml
    data_root: str = ""                   # "" with a synthetic dataset: data/synthetic/<its options' name>
    lists_dir: str = ""                   # where the dataset's list files are ("" : data_root)
    fold: int = 1
    train_list: str = ""                  # override the registry's lists
    test_list: str = ""
    num_classes: int | None = None        # None: from the registry
    sampling_rate: int | None = None      # None: from the registry (4 for DFEW / MAFW, 1 for FERV39k)
    num_workers: int = 2
    backend: str = "auto"
    val_fraction: float = 0.1             # held out of the training list, stratified, fixed seed
    test_num_clips: int = 2
    test_num_crops: int = 2
    short_side_size: int | None = None
    auto_augment: str = "rand-m7-n4-mstd0.5-inc1"   # "" : no RandAugment
    crop_scale: list[float] = dataclasses.field(default_factory=lambda: [0.08, 1.0])  # random resized crop area
    reprob: float = 0.25
    mixup: float = 0.8
    cutmix: float = 1.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    smoothing: float = 0.1
    bad_sample_threshold: float = 0.01
    au_labels: str = ""                   # multi-task (au.aux_weight > 0): the clips' per-frame AUs, an AU CSV
    synthetic: dict = dataclasses.field(default_factory=dict)

    def validate(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.test_num_clips < 1 or self.test_num_crops < 1:
            raise ConfigError("data.test_num_clips and data.test_num_crops must be >= 1")
        if self.auto_augment.strip().lower() in ("none", "null", "off", "false"):
            self.auto_augment = ""
        if self.auto_augment and not self.auto_augment.startswith("rand-"):
            raise ConfigError(f"data.auto_augment: expected a RandAugment spec such as 'rand-m7-n4-mstd0.5-inc1', or "
                              f"'' / none for no RandAugment, got {self.auto_augment!r}")
        check_synthetic(self.synthetic)


@dataclasses.dataclass
class EvalConfig:
    every: int = 1                        # validate every N epochs (and after the last)
    select: str = "best_val"              # best_val (validation UAR) | last
    max_views_per_call: int | None = None

    def validate(self) -> None:
        if self.select not in ("best_val", "last"):
            raise ConfigError(f"eval.select: expected best_val or last, got {self.select!r}")


@dataclasses.dataclass
class AUConfig:
    """Facial action unit detection (task "au"; specs/AU_HEADS.md). Every [ENG] choice of the spec is a key here
    with the spec's default; ``head_args`` / ``loss_args`` pass anything else to the head / loss builders."""
    head: str = "label_token"             # lgiformer.au.list_au_heads(): linear, label_token, fantrans_okd, monet
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


def _finetune_optim() -> OptimConfig:
    return OptimConfig(blr=1e-3, min_blr=1e-6, betas=[0.9, 0.999], weight_decay=0.05, layer_decay=0.75,
                       epochs=100, warmup_epochs=5)


@dataclasses.dataclass
class FinetuneConfig:
    task: str = "dfer"                    # dfer (expression classes) | au (action units)
    model: FinetuneModelConfig = dataclasses.field(default_factory=FinetuneModelConfig)
    data: FinetuneDataConfig = dataclasses.field(default_factory=FinetuneDataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=_finetune_optim)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    au: AUConfig = dataclasses.field(default_factory=AUConfig)
    run: RunConfig = dataclasses.field(default_factory=lambda: RunConfig(output_dir="output/finetune"))
    release_dir: str = ""                 # "" : <output_dir>/release; "none": no release


ALIASES = {**REFERENCE_ALIASES, "pretrained": "model.pretrained"}


def load_finetune_config(config_file: str | None, overrides: list[str]) -> FinetuneConfig:
    cfg = load_config(FinetuneConfig, config_file, overrides, ALIASES)
    if cfg.data.val_fraction == 0.0 and cfg.eval.select == "best_val":
        raise ConfigError("eval.select best_val needs a validation set (data.val_fraction > 0)")
    if cfg.run.zero_stage == 3:
        # Checked here, not at the end of training, where ZeRO 3 would first fail: the best-epoch copy, the test and
        # the release all read the whole model on every process, and ZeRO 3 keeps only a shard on each.
        raise ConfigError("run.zero_stage 3 is for pretraining only: finetuning keeps, tests and releases the full "
                          "model on every process. Use 0-2 (ZeRO 2 already shards the optimiser state and gradients, "
                          "enough for the largest encoder here)")
    a = cfg.au
    if cfg.task == "dfer" and a.aux_weight > 0:
        unsupported = [k for k, on in (("au.dense", a.dense), ("au.moke", a.moke),
                                       ("au.freeze_encoder", a.freeze_encoder), ("au.head monet", a.head == "monet"))
                       if on]
        if unsupported:
            raise ConfigError(f"multi-task DFER + AU (au.aux_weight > 0) trains one clip-level AU prediction next to "
                              f"the expression on a shared, trainable encoder; not with {', '.join(unsupported)}")
    if a.aux_weight < 0:
        raise ConfigError(f"au.aux_weight must be >= 0, got {a.aux_weight}")
    return cfg


def _lists_dir(cfg: FinetuneDataConfig, root: Path) -> Path:
    return Path(cfg.lists_dir) if cfg.lists_dir else root


def _lists(cfg: FinetuneDataConfig, spec, root: Path) -> tuple[Path, Path]:
    lists_dir = _lists_dir(cfg, root)
    fold = cfg.fold if spec.folds > 1 else None
    if spec.folds > 1 and not 1 <= cfg.fold <= spec.folds:
        raise ConfigError(f"data.fold: {spec.name} has folds 1-{spec.folds}, got {cfg.fold}")
    train = Path(cfg.train_list) if cfg.train_list else spec.list_file("train", fold, lists_dir)
    test = Path(cfg.test_list) if cfg.test_list else spec.list_file("test", fold, lists_dir)
    return train, test


def _clip_au_labels(cfg: FinetuneDataConfig, spec, root: Path):
    """The per-frame AU labels of the classification clips (multi-task): ``data.au_labels``, else the dataset's
    ``au_labels`` list."""
    from lgiformer.data import ClipAULabels

    if cfg.au_labels:
        path = Path(cfg.au_labels)
    elif "au_labels" in spec.lists:
        path = spec.list_file("au_labels", cfg.fold if spec.folds > 1 else None, _lists_dir(cfg, root))
    else:
        raise ConfigError(f"au.aux_weight > 0 needs AU labels for the clips of {spec.name}: set data.au_labels to an "
                          "AU CSV (header path,frame,subject,AU..., one row per frame, paths as in the clip lists)")
    return ClipAULabels.from_csv(path, root, au_names=spec.au_names or None), path


def run(cfg: FinetuneConfig) -> dict[str, Any]:
    if cfg.task not in ("dfer", "au"):
        raise ConfigError(f"task: expected dfer or au, got {cfg.task!r}")
    env, logger = trainer.setup(cfg.run)
    try:
        if cfg.task == "au":
            from lgiformer.engine.finetune_au import run_au

            return run_au(cfg, env, logger)
        return _run(cfg, env, logger)
    finally:
        logger.close()
        destroy()


def _run(cfg: FinetuneConfig, env, logger) -> dict[str, Any]:
    from lgiformer.data import (VideoClassificationDataset, VideoMixup, build_loader, ensure_synthetic,
                                get_dataset_spec, read_video_list, resolve_root, split_validation)
    from lgiformer.evaluate import evaluate, save_report
    from lgiformer.release import write_release
    from lgiformer.tasks.build import build_classifier
    from lgiformer.tasks.classification import ClassificationTask

    d, m = cfg.data, cfg.model
    spec = get_dataset_spec(d.dataset)
    root = resolve_root(d.data_root, d.synthetic) if spec.synthetic else Path(d.data_root)
    if spec.synthetic:
        if env.is_main:
            ensure_synthetic(root, workers="auto", **d.synthetic)
        barrier()
    num_classes = d.num_classes or len(spec.classes)
    class_names = list(spec.classes) if len(spec.classes) == num_classes else [str(i) for i in range(num_classes)]
    stride = d.sampling_rate or spec.sampling_rate
    train_list, test_list = _lists(d, spec, root)

    model, report = build_classifier(m.name, num_classes, m.pretrained or None, drop_path_rate=m.drop_path_rate,
                                     **m.head_kwargs(), **m.arch_kwargs())
    log.info("%s", report.summary())
    if env.is_main:
        (Path(cfg.run.output_dir) / "load_report.json").write_text(json.dumps(report.to_dict(), indent=1))
    args = model.model_args
    frames, size = args["num_frames"], args["img_size"]

    samples = read_video_list(train_list, root, labeled=True, num_classes=num_classes)
    train_samples, val_samples = split_validation(samples, d.val_fraction, seed=cfg.run.seed)
    test_samples = read_video_list(test_list, root, labeled=True, num_classes=num_classes)
    common = dict(num_frames=frames, sampling_rate=stride, img_size=size, seed=cfg.run.seed, backend=d.backend,
                  num_classes=num_classes, frame_ext=spec.frame_ext)
    au_loss, au_names, au_rates = None, None, None
    if cfg.au.aux_weight > 0:
        model, au_loss, au_names, au_rates, common["au_labels"] = _attach_au_head(cfg, spec, root, model,
                                                                                  train_samples)
    train_set = VideoClassificationDataset(train_samples, mode="train", auto_augment=d.auto_augment or None,
                                           reprob=d.reprob, crop_scale=d.crop_scale, **common)
    val_set = VideoClassificationDataset(val_samples, mode="val", **common) if val_samples else None
    test_set = VideoClassificationDataset(test_samples, mode="test", test_num_clips=d.test_num_clips,
                                          test_num_crops=d.test_num_crops, short_side_size=d.short_side_size,
                                          **common)
    log.info("data %s fold %s: %d train, %d validation (held out of the training list), %d test; %d classes",
             spec.name, d.fold if spec.folds > 1 else "-", len(train_set), len(val_samples), len(test_set),
             num_classes)
    loader = build_loader(train_set, cfg.run.batch_size, shuffle=True, drop_last=True, num_workers=d.num_workers,
                          seed=cfg.run.seed)
    eval_loader = (lambda ds: build_loader(ds, cfg.run.batch_size, shuffle=False, drop_last=False,
                                           num_workers=d.num_workers, seed=cfg.run.seed))
    mixup = None
    if d.mixup > 0 or d.cutmix > 0:
        mixup = VideoMixup(mixup_alpha=d.mixup, cutmix_alpha=d.cutmix, prob=d.mixup_prob,
                           switch_prob=d.mixup_switch_prob, label_smoothing=d.smoothing, num_classes=num_classes)
    task = ClassificationTask(num_classes, mixup=mixup, smoothing=d.smoothing,
                              au_loss=au_loss.to(env.device) if au_loss is not None else None,
                              au_weight=cfg.au.aux_weight)
    groups = param_groups(model, cfg.optim.weight_decay, cfg.optim.layer_decay)
    training = trainer.build_training(model, groups, cfg.run, cfg.optim, env, logger, len(loader), cfg)
    out_dir = Path(cfg.run.output_dir)
    best = trainer.BestOnValidation(out_dir, keep_weights=cfg.eval.select == "best_val", is_main=env.is_main)

    def step_fn(engine, batch) -> dict[str, torch.Tensor]:
        clips = batch[0].to(env.device, training.dtype, non_blocking=True)
        return task(engine, (clips, *batch[1:]), env.device)

    def run_eval(net, dataset):
        return evaluate(net, eval_loader(dataset), num_classes, class_names, env.device,
                        ds.amp_dtype(training.precision), cfg.eval.max_views_per_call, au_names, cfg.au.threshold)

    def end_of_epoch(state, stats) -> dict:
        bad = train_set.bad_samples.end_epoch(state.epoch, d.bad_sample_threshold)
        record: dict[str, Any] = {"bad_samples": bad["bad"]}
        last = state.epoch + 1 == cfg.optim.epochs
        if val_set is not None and ((state.epoch + 1) % cfg.eval.every == 0 or last):
            result = run_eval(training.model, val_set)
            scalars = {"uar": result.metrics["uar"], "war": result.metrics["war"]}
            if "au" in result.metrics:
                scalars["au_mean_f1"] = result.metrics["au"]["mean_f1"]
            record.update({f"val_{k}": v for k, v in scalars.items()})
            logger.scalars(scalars, state.step, prefix="val/")
            best.update(result.metrics["uar"], state.epoch, training.model)
        return record

    records = trainer.fit(training, cfg.run, cfg.optim, loader, step_fn,
                          checkpoint_info=dict(kind="finetune", model_name=model.model_name, model_args=args,
                                               config=to_dict(cfg), class_names=class_names),
                          end_of_epoch=end_of_epoch, best=best)

    final_model, selection = trainer.select_final_model(training.model, cfg.eval.select, cfg.optim.epochs, best,
                                                        "val_uar")
    result = run_eval(final_model, test_set)
    test_report: dict[str, Any] = {}
    if env.is_main:
        test_report = save_report(result, out_dir, "test", class_names, [s.path for s in test_samples],
                                  writer=logger.writer, step=training.engine.global_steps, extra=selection)
        log.info("test (%s, epoch %d, %d clips x %d crops): UAR %.2f  WAR %.2f  weighted F1 %.2f",
                 selection["select"], selection["epoch"], d.test_num_clips, d.test_num_crops,
                 100 * result.metrics["uar"], 100 * result.metrics["war"], 100 * result.metrics["weighted_f1"])
        if "au" in result.metrics:
            au = result.metrics["au"]
            log.info("test AUs (auxiliary head, %d views): mean F1 %.2f  |  %s", au["num_views"],
                     100 * au["mean_f1"], " ".join(f"{n} {100 * f:.1f}" for n, f in au["per_au"].items()))
        if cfg.release_dir != "none":
            release = Path(cfg.release_dir or out_dir / "release")
            classifier = getattr(final_model, "classifier", final_model)  # the expression model of a multi-task one
            write_release(classifier, release, overwrite=True,
                          source=dict(format="lgiformer-finetune", file=str(out_dir), pretrained=m.pretrained),
                          class_names=class_names, training=dict(dataset=spec.name, fold=d.fold, **selection,
                                                                  test_uar=result.metrics["uar"],
                                                                  test_war=result.metrics["war"]),
                          data=dict(num_frames=frames, sampling_rate=stride, img_size=size,
                                    test_num_clips=d.test_num_clips, test_num_crops=d.test_num_crops,
                                    short_side_size=d.short_side_size))
            log.info("finetuned release: %s  (python -m lgiformer.predict --model %s VIDEO)", release, release)
            if au_loss is not None:
                from lgiformer.engine.finetune_au import save_au_model
                from lgiformer.tasks.multitask import export_au_model

                save_au_model(export_au_model(final_model), out_dir, cfg, au_names, au_rates, selection,
                              result.metrics["au"])
    barrier()
    return dict(epochs=records, test=test_report, selection=selection)


def _attach_au_head(cfg: FinetuneConfig, spec, root: Path, classifier, train_samples):
    """Multi-task DFER + AU: the classifier wrapped with an AU head (:class:`ExpressionAUModel`), the AU loss, the
    AU names, the training occurrence rates (U1: loss weights; U2: the head's bias init) and the clips' AU labels."""
    from lgiformer.au import build_au_head
    from lgiformer.engine.finetune_au import MIN_RATE, build_loss, head_kwargs, training_rates
    from lgiformer.tasks.multitask import ExpressionAUModel

    a = cfg.au
    table, path = _clip_au_labels(cfg.data, spec, root)
    labelled = [table.video(s.path) for s in train_samples if s.path in table]
    if not labelled:
        raise ConfigError(f"{path}: none of the {len(train_samples)} training clips has AU labels (the AU CSV's paths "
                          f"must match the clip list's, relative to {root})")
    rates = training_rates(labelled).clamp_min(MIN_RATE)
    log.info("multi-task DFER + AU: AU labels %s for %d of %d training clips; AUs %s; rates %s; AU loss weight %g",
             path, len(labelled), len(train_samples), ",".join(table.au_names),
             " ".join(f"{r:.3f}" for r in rates.tolist()), a.aux_weight)
    num_aus = len(table.au_names)
    head = build_au_head(a.head, **head_kwargs(a.head, classifier, num_aus, False, dict(a.head_args)))
    model = ExpressionAUModel(classifier, head, num_aus, rates=rates)
    loss_fn, _ = build_loss(a, rates)
    return model, loss_fn, table.au_names, rates, table
