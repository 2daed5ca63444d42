"""The one training loop, shared by pretraining and finetuning.

A task's loss is a function ``step_fn(model, batch) -> {"loss": tensor, ...}`` (the model computes its own loss);
the loop owns the rest: per-step lr / weight-decay schedules, DeepSpeed backward and step, non-finite handling, logging,
checkpoints, preemption (SIGTERM) and resume.

Reproducibility: data order comes from the sampler seeded by (seed, epoch), each sample's augmentation and mask from
(seed, epoch, index) in the dataset, and the global torch RNG (drop path, mixup) is reseeded from (seed, step, rank)
before every step. So a run resumed from a checkpoint takes exactly the steps the uninterrupted run takes.
"""
from __future__ import annotations

import logging
import math
import signal
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from lgiformer.distributed import DistEnv, all_reduce_mean, all_true
from lgiformer.engine import ds
from lgiformer.engine.logger import MeanMeter, RunLogger
from lgiformer.engine.schedules import apply_schedule

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    pass


@dataclass
class LoopState:
    """Plain data saved with every checkpoint."""
    epoch: int = 0            # the epoch in progress (or the next one, at an epoch boundary)
    step: int = 0             # optimiser steps taken
    batch_in_epoch: int = 0   # micro-batches of ``epoch`` already consumed
    skipped_steps: int = 0    # steps dropped for a non-finite loss or an fp16 overflow
    consecutive_nonfinite: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


class Preemption:
    """Turns SIGTERM (Slurm preemption / time limit, ``scancel``) into a flag the loop checks after each step."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> "Preemption":
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread
            self._previous = None
        return self

    def _handle(self, signum, frame) -> None:  # noqa: ANN001
        log.warning("SIGTERM received: saving a checkpoint after this step, then stopping")
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 9_973 + rank * 7) % (2 ** 63)


def _grad_norm(model: torch.nn.Module) -> torch.Tensor | None:
    """Global L2 norm of the gradients (DeepSpeed only reports one when it clips), as a tensor: one multi-tensor
    kernel, and no host sync until it is logged."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))) if grads else None


@dataclass
class Training:
    """What one epoch needs besides the data: the DeepSpeed engine, the per-step schedules and the run's loop
    settings. Built once by :func:`lgiformer.engine.runner.build_training`."""
    engine: Any
    env: DistEnv
    logger: RunLogger
    precision: str
    lr: float
    total_batch: int
    steps_per_epoch: int      # optimiser steps
    batches_per_epoch: int    # micro-batches per process
    lr_values: np.ndarray
    wd_values: np.ndarray
    seed: int = 0
    log_every: int = 10
    max_nonfinite: int = 10
    progress: bool = True
    clips_per_batch: int = 1  # clips in one micro-batch of one process (for clips/s)

    @property
    def model(self) -> torch.nn.Module:
        return self.engine.module

    @property
    def dtype(self) -> torch.dtype:
        """The dtype to cast input clips to."""
        return ds.input_dtype(self.precision)

    def autocast(self):
        return ds.autocast(self.precision, self.env.device)


def move_batch(batch: Sequence, device: torch.device, dtype: torch.dtype) -> tuple:
    """A batch on ``device``; its first element (the clips) also in ``dtype``, the rest (labels, masks) as they are."""
    return tuple(x.to(device, dtype if i == 0 else None, non_blocking=True) if torch.is_tensor(x) else x
                 for i, x in enumerate(batch))


def train_one_epoch(training: Training, loader: Iterable, step_fn: Callable[[Any, tuple], dict],
                    state: LoopState, preemption: Preemption | None = None,
                    on_step: Callable[[LoopState, tuple], None] | None = None) -> dict[str, float]:
    """Runs micro-batches ``state.batch_in_epoch .. training.batches_per_epoch`` of ``state.epoch``: ``step_fn(engine,
    batch)`` returns the loss and any other scalars (each is logged, per step and per epoch); returns epoch means."""
    engine, logger, env = training.engine, training.logger, training.env
    lr_values, wd_values, steps_in_epoch = training.lr_values, training.wd_values, training.batches_per_epoch
    meter = MeanMeter()
    engine.train()
    bar = tqdm(total=steps_in_epoch, initial=state.batch_in_epoch, desc=f"epoch {state.epoch}", dynamic_ncols=True,
               disable=not (training.progress and logger.enabled), leave=False)
    end = time.perf_counter()
    window_start, window_clips = end, 0
    for batch in loader:
        if state.batch_in_epoch >= steps_in_epoch:
            break
        data_time = time.perf_counter() - end
        batch = move_batch(batch, env.device, training.dtype)
        index = min(state.step, len(lr_values) - 1)
        apply_schedule(engine.optimizer, float(lr_values[index]), float(wd_values[index]))
        torch.manual_seed(step_seed(training.seed, state.step * 1000 + state.batch_in_epoch, env.rank))
        boundary = engine.is_gradient_accumulation_boundary()
        with training.autocast():
            out = step_fn(engine, batch)
        loss = out["loss"]
        if not all_true(bool(torch.isfinite(loss.detach()).all())):
            state.consecutive_nonfinite += 1
            state.skipped_steps += 1
            log.warning("non-finite loss at epoch %d step %d (%d in a row): step skipped", state.epoch, state.step,
                        state.consecutive_nonfinite)
            if state.consecutive_nonfinite >= training.max_nonfinite:
                raise NonFiniteLossError(
                    f"{state.consecutive_nonfinite} consecutive non-finite losses (limit run.max_nonfinite="
                    f"{training.max_nonfinite}) at epoch {state.epoch}, step {state.step}: lower the learning rate, "
                    "use bf16 instead of fp16, or enable optim.clip_grad")
            engine.zero_grad()
            meter.update(nonfinite_loss=1.0)
        else:
            state.consecutive_nonfinite = 0
            engine.backward(loss)
            own_norm = _grad_norm(engine.module) if boundary and engine.zero_optimization_stage() == 0 else None
            engine.step()
            if boundary:
                state.step += 1
                if not engine.was_step_applied():  # fp16 overflow: DeepSpeed skipped the update
                    state.skipped_steps += 1
                grad_norm = engine.get_global_grad_norm()  # None unless DeepSpeed computed it (clipping, ZeRO)
                grad_norm = own_norm if grad_norm is None else grad_norm
                meter.update(grad_norm=grad_norm)
            meter.update(**{k: v.detach() for k, v in out.items() if torch.is_tensor(v) and v.numel() == 1})
        state.batch_in_epoch += 1
        window_clips += training.clips_per_batch
        meter.update(data_time=data_time)
        bar.update(1)
        if state.batch_in_epoch % training.log_every == 0 or state.batch_in_epoch == steps_in_epoch:
            now = time.perf_counter()
            current = dict(lr=float(lr_values[index]), wd=float(wd_values[index]), data_time=data_time,
                           clips_per_s=window_clips / max(now - window_start, 1e-9), skipped_steps=state.skipped_steps)
            current.update({k: meter.mean(k) for k in meter.counts if k not in current and k != "nonfinite_loss"})
            logger.scalars(current, state.step)
            logger.jsonl(dict(epoch=state.epoch, batch=state.batch_in_epoch, step=state.step,
                              loss=float(loss.detach()), **{k: v for k, v in current.items() if k != "loss"}),
                         name="steps.jsonl")
            bar.set_postfix(loss=f"{meter.mean('loss'):.4f}", lr=f"{current['lr']:.2e}")
            window_start, window_clips = now, 0
        if on_step is not None:
            on_step(state, batch)
        end = time.perf_counter()
        if preemption is not None and all_true(not preemption.requested) is False:
            break
    bar.close()
    stats = {k: all_reduce_mean(v) if math.isfinite(v) else v for k, v in meter.means().items()}
    stats["skipped_steps"] = state.skipped_steps
    return stats
