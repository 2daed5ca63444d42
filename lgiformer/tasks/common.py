"""What the finetuning tasks (DFER, AU, DFER + AU) share: their config sections (``model``, ``data``, ``eval``) and
:class:`FinetuneTask`, which resolves the dataset, its fold lists and the start point of the encoder, and holds the
validation cadence and the selection rule."""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from torch import nn

from lgiformer.config import ConfigError, DataConfig, EncoderConfig, OptimConfig
from lgiformer.data import DatasetSpec, get_dataset_spec
from lgiformer.distributed import DistEnv
from lgiformer.interop.pretrained import LoadReport, load_pretrained, release_model_args
from lgiformer.models import create_model
from lgiformer.models.base import label_token_args
from lgiformer.tasks.base import Task

log = logging.getLogger("lgiformer")

# Architecture keys a release's model_args may fix; finetuning choices (classes, pooling, drop path) come from
# the recipe.
_ARCH_KEYS = ("img_size", "patch_size", "num_frames", "tubelet_size", "in_chans", "embed_dim", "depth", "num_heads",
              "mlp_ratio", "qkv_bias", "region_size", "norm_eps")


@dataclasses.dataclass
class FinetuneModelConfig(EncoderConfig):
    pretrained: str = ""                  # release dir, reference MAE-DFER / VideoMAE .pth, HF folder, "" = scratch
    global_pool: str | None = None        # None: "region" for lgiformer (the paper), "avg" for vit; or "spatial",
                                          # "label_token" (one attention query per class over the tokens)
    head_args: dict = dataclasses.field(default_factory=dict)   # label_token only: dim, depth, num_heads, ...
    drop_path_rate: float = 0.1
    freeze_encoder: bool = False          # train the head only (linear probing; finetune/configs/linear_probe.yaml)

    def validate(self) -> None:
        super().validate()
        if self.head_args and self.global_pool != "label_token":
            raise ConfigError(f"model.head_args {sorted(self.head_args)} are for model.global_pool label_token "
                              f"(got {self.global_pool!r})")
        if self.global_pool == "label_token":
            try:
                label_token_args(self.head_args)
            except ValueError as err:
                raise ConfigError(f"model.{err}") from None

    def head_kwargs(self) -> dict[str, Any]:
        """The classifier's pooling and head, as :func:`build_finetune_model` takes them."""
        kwargs: dict[str, Any] = dict(global_pool=self.global_pool)
        if self.head_args:
            kwargs["head_args"] = dict(self.head_args)
        return kwargs


@dataclasses.dataclass
class FinetuneDataConfig(DataConfig):
    dataset: str = "synthetic_dfer"
    lists_dir: str = ""                   # where the dataset's list files are ("" : data_root)
    fold: int = 1
    train_list: str = ""                  # override the registry's lists
    test_list: str = ""
    num_classes: int | None = None        # None: from the registry
    sampling_rate: int | None = None      # None: from the registry (4 for DFEW / MAFW, 1 for FERV39k)
    val_fraction: float = 0.1             # held out of the training list (by label, or by subject for AUs)
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
    au_labels: str = ""                   # multi-task (au.aux_weight > 0): the clips' per-frame AUs, an AU CSV

    def validate(self) -> None:
        super().validate()
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.test_num_clips < 1 or self.test_num_crops < 1:
            raise ConfigError("data.test_num_clips and data.test_num_crops must be >= 1")
        if self.auto_augment.strip().lower() in ("none", "null", "off", "false"):
            self.auto_augment = ""
        if self.auto_augment and not self.auto_augment.startswith("rand-"):
            raise ConfigError(f"data.auto_augment: expected a RandAugment spec such as 'rand-m7-n4-mstd0.5-inc1', or "
                              f"'' / none for no RandAugment, got {self.auto_augment!r}")


@dataclasses.dataclass
class EvalConfig:
    every: int = 1                        # validate every N epochs (and after the last)
    select: str = "best_val"              # best_val (validation score) | last
    max_views_per_call: int | None = None

    def validate(self) -> None:
        if self.select not in ("best_val", "last"):
            raise ConfigError(f"eval.select: expected best_val or last, got {self.select!r}")


def finetune_optim() -> OptimConfig:
    """The reference finetuning recipe's optimiser (docs/REFERENCE.md)."""
    return OptimConfig(blr=1e-3, min_blr=1e-6, betas=[0.9, 0.999], weight_decay=0.05, layer_decay=0.75,
                       epochs=100, warmup_epochs=5)


def freeze_all_but_head(model: nn.Module) -> None:
    """Linear probing: only the classifier (``fc_norm`` and ``head``) trains; the encoder is fixed."""
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(("head.", "fc_norm.")))
    log.info("model.freeze_encoder: training the head only (%d parameters)",
             sum(p.numel() for p in model.parameters() if p.requires_grad))


def build_finetune_model(model_name: str, num_classes: int, pretrained: str | None = None,
                         global_pool: str | None = None, drop_path_rate: float = 0.0, **model_kwargs: Any
                         ) -> tuple[nn.Module, LoadReport]:
    """(model, load report). With a release as ``pretrained`` its ``model_name`` and architecture win over the
    recipe's (a mismatch is logged), so a user never has to repeat the encoder's sizes."""
    release = release_model_args(pretrained)
    if release.get("model_name"):
        if release["model_name"] != model_name:
            log.warning("model %s from the release replaces the recipe's %s", release["model_name"], model_name)
        model_name = release["model_name"]
        arch = {k: v for k, v in release.get("model_args", {}).items() if k in _ARCH_KEYS}
        clash = {k: (v, arch[k]) for k, v in model_kwargs.items() if k in arch and v != arch[k]}
        if clash:
            log.warning("the release fixes %s (recipe value, release value)", clash)
        model_kwargs = {**model_kwargs, **arch}
    if global_pool is None:
        global_pool = "region" if model_name.startswith("lgiformer") else "avg"
    model = create_model(model_name, num_classes=num_classes, global_pool=global_pool, drop_path_rate=drop_path_rate,
                         **model_kwargs)
    return model, load_pretrained(model, pretrained)


class FinetuneTask(Task):
    """Shared by the finetuning tasks: the dataset spec, the fold's lists, validation every ``eval.every`` epochs
    (and after the last), selection by ``eval.select``, and the load report of the start point."""

    def __init__(self, cfg: Any, env: DistEnv, data_root: Path, logger: Any) -> None:
        super().__init__(cfg, env, data_root, logger)
        self.spec: DatasetSpec = get_dataset_spec(cfg.data.dataset)
        self.select = cfg.eval.select
        self.stride = cfg.data.sampling_rate or self.spec.sampling_rate

    def fold_lists(self) -> tuple[Path, Path]:
        """(train list, test list) of the configured fold."""
        d, spec = self.cfg.data, self.spec
        lists_dir = Path(d.lists_dir) if d.lists_dir else self.data_root
        fold = d.fold if spec.folds > 1 else None
        if spec.folds > 1 and not 1 <= d.fold <= spec.folds:
            raise ConfigError(f"data.fold: {spec.name} has folds 1-{spec.folds}, got {d.fold}")
        train = Path(d.train_list) if d.train_list else spec.list_file("train", fold, lists_dir)
        test = Path(d.test_list) if d.test_list else spec.list_file("test", fold, lists_dir)
        return train, test

    def clip_frames(self) -> int:
        """Frames per clip of the model this task will build (a release start point fixes it), known before it is
        built, for the start-up check of the inputs."""
        release = release_model_args(self.cfg.model.pretrained or None)
        return int(release.get("model_args", {}).get("num_frames", self.cfg.model.num_frames))

    def build_model(self, num_classes: int, **head: Any) -> nn.Module:
        """The encoder (with ``num_classes`` and ``head``) from the configured start point; writes the report."""
        m = self.cfg.model
        model, report = build_finetune_model(m.name, num_classes, m.pretrained or None,
                                             drop_path_rate=m.drop_path_rate, **head, **m.arch_kwargs())
        if m.freeze_encoder and num_classes:
            freeze_all_but_head(model)
        log.info("%s", report.summary())
        if self.env.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "load_report.json").write_text(json.dumps(report.to_dict(), indent=1))
        return model

    def validation_due(self, epoch: int) -> bool:
        return (epoch + 1) % self.cfg.eval.every == 0 or epoch + 1 == self.cfg.optim.epochs
