"""The task interface: what differs between pretraining, DFER classification, AU detection and DFER + AU.

A task builds its model and training data from its config, turns a batch into losses, validates and tests, and
says what to publish. :func:`lgiformer.engine.run` owns everything else, once for every task: processes, data
preparation, the DeepSpeed engine and schedules, the epoch loop, checkpoints and resume, best-on-validation
selection and writing the release. See docs/ARCHITECTURE.md for how a batch flows through both.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from lgiformer.data import check_inputs
from lgiformer.distributed import DistEnv, broadcast_object
from lgiformer.errors import InputError
from lgiformer.optim import param_groups
from lgiformer.tasks.features import FeatureMonitor, feature_card, feature_summary, find_encoder


class Task:
    """One kind of training job. Subclasses build ``model`` and ``train_set`` in ``__init__`` and implement
    :meth:`loss`; the other hooks have defaults for a task without validation or test.

    ``score`` names the validation metric (higher is better) that ``eval.select best_val`` keeps the weights of;
    ``select`` is ``"best_val"`` or ``"last"``."""

    name: ClassVar[str] = ""
    score: ClassVar[str | None] = None

    model: nn.Module
    train_set: Dataset
    collate_fn: Callable | None = None
    select: str = "last"
    features: FeatureMonitor | None = None
    feature_meaning: ClassVar[dict[str, str]] = {
        "encoder": "the encoder's tokens before its final norm (what pooling and the head read)",
        "head_input": "the head's input (for a pooled classifier: the pooled, normalised features)"}

    def __init__(self, cfg: Any, env: DistEnv, data_root: Path, logger: Any) -> None:
        self.cfg, self.env, self.data_root, self.logger = cfg, env, Path(data_root), logger
        self.output_dir = Path(cfg.run.output_dir)

    def check_inputs(self, items: Sequence, num_frames: int, **read_opts: Any) -> int:
        """The start-up check of every listed input (:func:`lgiformer.data.check_inputs`: exists, opens, holds
        ``data.min_frames`` frames, by default ``num_frames``), before any model is built. Rank 0 checks, the other
        processes wait for its verdict, and all of them stop with its message when something is wrong. Returns the
        minimum frame count, for the datasets' own check when they read."""
        d = self.cfg.data
        min_frames = d.min_frames or num_frames
        error: Exception | None = None
        if self.env.is_main:
            try:
                check_inputs(items, min_frames=min_frames, backend=d.backend, cache_dir=self.output_dir / "input_cache",
                             progress=self.cfg.run.progress, **read_opts)
            except Exception as err:  # every process must hear of it, or the others wait for rank 0 forever
                error = err
        verdict = broadcast_object(None if error is None else (isinstance(error, InputError), str(error)))
        if error is not None:
            raise error
        if verdict is not None:
            bad_input, message = verdict
            raise InputError(message) if bad_input else RuntimeError(f"rank 0 failed checking the inputs: {message}")
        return min_frames

    @property
    def videos_per_batch(self) -> int:
        """Dataset items in one loader batch of one process."""
        return self.cfg.run.batch_size

    def param_groups(self) -> list[dict]:
        optim = self.cfg.optim
        return param_groups(self.model, optim.weight_decay, optim.layer_decay)

    def loss(self, model: nn.Module, batch: tuple) -> dict[str, torch.Tensor]:
        """``{"loss": scalar, ...}`` for a batch already on the device; every other scalar is logged too."""
        raise NotImplementedError

    def begin(self, training: Any) -> None:
        """Called once on every process before the first step: hooks the feature sites of the training model
        (``run.feature_batches`` forwards per epoch; 0 turns it off)."""
        batches = self.cfg.run.feature_batches
        sites = self.feature_sites(training.model) if batches > 0 else {}
        if sites:
            self.features = FeatureMonitor(training.model, sites, batches)

    def feature_sites(self, model: nn.Module) -> dict[str, tuple[nn.Module, str]]:
        """Where feature health is measured (:mod:`lgiformer.tasks.features`): the encoder's tokens before its final
        norm (what a finetuned model pools) and the head's input."""
        encoder = find_encoder(model)
        sites = {"encoder": (encoder.norm, "input")}
        head = getattr(model, "head", None)
        head = encoder.head if head is None else head
        if not isinstance(head, nn.Identity):
            sites["head_input"] = (head, "input")
        return sites

    def feature_health(self, result: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        """(``{"features": summary}`` for the release's training summary, its model-card section) from the run's
        epoch records; both empty when no features were measured."""
        summary = feature_summary(result.get("epochs") or [])
        if not summary:
            return {}, {}
        return {"features": summary}, {"Feature health": feature_card(summary, self.feature_meaning)}

    def on_step(self, training: Any, state: Any, batch: tuple) -> None:
        """Called after every micro-batch (every process: a forward under ZeRO 3 needs all of them)."""

    def validate(self, model: nn.Module, epoch: int, training: Any) -> dict[str, Any] | None:
        """Validation scalars at the end of ``epoch`` (``score`` among them; an optional ``details`` entry is kept
        with the best epoch's record), or None when none is due."""
        return None

    def end_of_epoch(self, epoch: int, training: Any) -> dict[str, float]:
        """Extra per-epoch scalars (every process calls it): added to the epoch record and logged to TensorBoard
        under their own names (``features/encoder_std``...)."""
        return self.features.epoch_stats() if self.features is not None else {}

    def checkpoint_info(self) -> dict[str, Any]:
        """Plain data saved in every checkpoint's COMPLETE.json: what the weights are."""
        return {}

    def finish(self, model: nn.Module, selection: dict[str, Any], training: Any,
               validation: dict[str, Any] | None = None) -> dict[str, Any]:
        """After training: test ``model`` (the selected weights; ``validation``: the details of their validation
        when they are the best epoch's) and write the reports; returns the run's result."""
        return {}

    def release(self, model: nn.Module, result: dict[str, Any], state_dict: dict[str, torch.Tensor] | None
                ) -> tuple[nn.Module, dict[str, torch.Tensor] | None, dict[str, Any]] | None:
        """What to publish: (model, its weights or None for the model's own, config.json fields), or None."""
        return None
