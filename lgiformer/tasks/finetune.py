"""The config of ``finetune/run.py`` and the choice of its task: DFER (``task: dfer``), DFER + AU (``task: dfer``
with ``au.aux_weight > 0``) or AU detection (``task: au``). One schema for the three, so that every recipe and
command-line flag works with any of them."""
from __future__ import annotations

import dataclasses

from lgiformer.config import REFERENCE_ALIASES, ConfigError, OptimConfig, RunConfig, load_config
from lgiformer.tasks.au import AUConfig, AUTask
from lgiformer.tasks.base import Task
from lgiformer.tasks.common import EvalConfig, FinetuneDataConfig, FinetuneModelConfig, finetune_optim
from lgiformer.tasks.dfer import DFERTask
from lgiformer.tasks.multitask import DFERAUTask


@dataclasses.dataclass
class FinetuneConfig:
    task: str = "dfer"                    # dfer (expression classes) | au (action units)
    model: FinetuneModelConfig = dataclasses.field(default_factory=FinetuneModelConfig)
    data: FinetuneDataConfig = dataclasses.field(default_factory=FinetuneDataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=finetune_optim)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    au: AUConfig = dataclasses.field(default_factory=AUConfig)
    run: RunConfig = dataclasses.field(default_factory=lambda: RunConfig(output_dir="output/finetune"))
    release_dir: str = ""                 # "" : <output_dir>/release; "none": no release

    def validate(self) -> None:
        if self.task not in ("dfer", "au"):
            raise ConfigError(f"task: expected dfer or au, got {self.task!r}")
        if self.data.val_fraction == 0.0 and self.eval.select == "best_val":
            raise ConfigError("eval.select best_val needs a validation set (data.val_fraction > 0)")
        if self.run.zero_stage == 3:
            # Checked here, not at the end of training, where ZeRO 3 would first fail: the best-epoch copy, the test
            # and the release all read the whole model on every process, and ZeRO 3 keeps only a shard on each.
            raise ConfigError("run.zero_stage 3 is for pretraining only: finetuning keeps, tests and releases the full "
                              "model on every process. Use 0-2 (ZeRO 2 already shards the optimiser state and "
                              "gradients, enough for the largest encoder here)")
        a = self.au
        if a.aux_weight < 0:
            raise ConfigError(f"au.aux_weight must be >= 0, got {a.aux_weight}")
        if self.task == "dfer" and a.aux_weight > 0:
            unsupported = [k for k, on in (("au.dense", a.dense), ("au.moke", a.moke),
                                           ("au.freeze_encoder", a.freeze_encoder),
                                           ("model.freeze_encoder", self.model.freeze_encoder),
                                           ("au.head monet", a.head == "monet")) if on]
            if unsupported:
                raise ConfigError(f"multi-task DFER + AU (au.aux_weight > 0) trains one clip-level AU prediction next "
                                  f"to the expression on a shared, trainable encoder; not with {', '.join(unsupported)}")


ALIASES = {**REFERENCE_ALIASES, "pretrained": "model.pretrained"}


def load_finetune_config(config_file: str | None, overrides: list[str]) -> FinetuneConfig:
    return load_config(FinetuneConfig, config_file, overrides, ALIASES)


def finetune_task(cfg: FinetuneConfig) -> type[Task]:
    """The task ``cfg`` describes."""
    if cfg.task == "au":
        return AUTask
    return DFERAUTask if cfg.au.aux_weight > 0 else DFERTask
