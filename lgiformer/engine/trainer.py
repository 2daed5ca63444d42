"""What pretraining and finetuning share around the loop: process setup, the DeepSpeed engine and schedules,
resume, the epoch loop with checkpoints and preemption, the per-epoch record."""
from __future__ import annotations

import copy
import dataclasses
import logging
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from lgiformer.config import OptimConfig, RunConfig, save_config, to_dict
from lgiformer.engine import ds
from lgiformer.engine.checkpoint import (complete_checkpoints, find_checkpoint, load_checkpoint, read_client_state,
                                         save_checkpoint)
from lgiformer.engine.compile import compile_engine
from lgiformer.engine.distributed import DistEnv, init_distributed
from lgiformer.engine.logger import RunLogger
from lgiformer.engine.loop import LoopState, Preemption, train_one_epoch
from lgiformer.engine.schedules import cosine_schedule

log = logging.getLogger("lgiformer")

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM: the sbatch script requeues on it


def setup(run: RunConfig) -> tuple[DistEnv, RunLogger]:
    """Distributed init, logging (rank 0 talks; every rank writes warnings), seeds."""
    env = init_distributed(run.device)
    out = Path(run.output_dir)
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if env.is_main:
        handlers.append(logging.FileHandler(out / "run.log"))
    logging.basicConfig(level=logging.WARNING, handlers=handlers, force=True,
                        format=f"%(asctime)s [rank {env.rank}] %(levelname)s %(name)s: %(message)s")
    logging.getLogger("lgiformer").setLevel(logging.INFO if env.is_main else logging.WARNING)
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    seed_everything(run.seed + env.rank)
    if env.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 runs use TF32 tensor cores (as timm / MAE do)
        torch.backends.cudnn.allow_tf32 = True
    log.info("process %d/%d (%s launch) on %s", env.rank, env.world_size, env.launcher, env.device)
    return env, RunLogger(out, env.is_main, run.tensorboard)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


@dataclass
class Training:
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

    @property
    def model(self) -> nn.Module:
        return self.engine.module

    @property
    def dtype(self) -> torch.dtype:
        """The dtype to cast batches to."""
        return ds.input_dtype(self.precision)

    def autocast(self):
        return ds.autocast(self.precision, self.env.device)


def build_training(model: nn.Module, param_groups: list[dict], run: RunConfig, optim: OptimConfig, env: DistEnv,
                   logger: RunLogger, batches_per_epoch: int, config: Any) -> Training:
    """The DeepSpeed engine and the schedules; logs and saves the resolved config with the effective lr."""
    if run.max_steps_per_epoch:
        batches_per_epoch = min(batches_per_epoch, run.max_steps_per_epoch)
    if batches_per_epoch < optim.accum_steps:
        raise ValueError(f"an epoch has {batches_per_epoch} batches per process, fewer than optim.accum_steps="
                         f"{optim.accum_steps}: use a smaller batch or more data")
    batches_per_epoch -= batches_per_epoch % optim.accum_steps
    precision = ds.resolve_precision(run.precision, env.device)
    if run.grad_checkpointing:
        model.set_grad_checkpointing(True)
    model.to(env.device)
    total_batch = run.batch_size * optim.accum_steps * env.world_size
    lr, min_lr, warmup_lr = optim.effective_lr(total_batch)
    engine, ds_config = ds.initialize(model, param_groups, lr=lr, betas=optim.betas, eps=optim.eps,
                                      micro_batch=run.batch_size, accum_steps=optim.accum_steps,
                                      world_size=env.world_size, precision=precision, zero_stage=run.zero_stage,
                                      clip_grad=optim.clip_grad)
    compile_engine(engine, run.compile, env.device)  # run.compile auto: on for CUDA (lgiformer/engine/compile.py)
    steps_per_epoch = batches_per_epoch // optim.accum_steps
    total = optim.epochs * steps_per_epoch
    lr_values = cosine_schedule(lr, min_lr, total, int(round(optim.warmup_epochs * steps_per_epoch)), warmup_lr)
    wd_end = optim.weight_decay if optim.weight_decay_end is None else optim.weight_decay_end
    wd_values = cosine_schedule(optim.weight_decay, wd_end, total)
    derived = dict(effective_lr=lr, min_lr=min_lr, total_batch=total_batch, world_size=env.world_size,
                   precision=precision, steps_per_epoch=steps_per_epoch, total_steps=total, deepspeed=ds_config)
    log.info("effective lr %.3g = %s x total batch %d / 256 (%d processes x %d per process x %d accumulation); "
             "precision %s, ZeRO %d, %d steps per epoch", lr, "lr" if optim.lr else f"blr {optim.blr:g}",
             total_batch, env.world_size, run.batch_size, optim.accum_steps, precision, run.zero_stage,
             steps_per_epoch)
    if env.is_main:
        save_config(config, Path(run.output_dir) / "config.yaml", **derived)
    return Training(engine, env, logger, precision, lr, total_batch, steps_per_epoch, batches_per_epoch, lr_values,
                    wd_values)


def resume_state(training: Training, run: RunConfig, layout: dict[str, int] | None = None, accum_steps: int = 1
                 ) -> tuple[LoopState, dict[str, Any]]:
    """The loop state to continue from (a fresh one without ``run.resume``) and the checkpoint's client state
    (empty when starting fresh). ``layout`` (``samples_per_batch``: dataset items in one micro-batch of all processes
    together, ``batches_per_epoch``) is compared with the checkpoint's: see :func:`relayout`."""
    if not run.resume:
        return LoopState(), {}
    root = Path(run.output_dir) / "checkpoints"
    if run.resume == "auto":
        if not complete_checkpoints(root):
            log.info("resume auto: no complete checkpoint in %s, starting fresh", root)
            return LoopState(), {}
        ckpt = find_checkpoint(root)
    else:
        ckpt = find_checkpoint(run.resume)
    state = load_checkpoint(training.engine, ckpt)
    loop = LoopState(**state["loop"])
    log.info("resumed from %s: epoch %d, step %d, batch %d of the epoch", ckpt, loop.epoch, loop.step,
             loop.batch_in_epoch)
    saved = state.get("layout")
    if saved and layout and saved != layout:
        loop = relayout(loop, saved, layout["samples_per_batch"], layout["batches_per_epoch"], accum_steps)
    training.logger.purge_from(loop.step + 1)  # what was logged at the checkpoint's own step came before its save
    return loop, state


def relayout(loop: LoopState, saved: dict[str, int], samples_per_batch: int, batches_per_epoch: int,
             accum_steps: int) -> LoopState:
    """The loop state of a checkpoint written with another batch layout (another number of processes, batch size,
    ``repeat_aug`` or ``max_steps_per_epoch``), mapped onto this run's. Kept as it is, its step would index the new
    lr schedule at the wrong place and its batch count would skip the wrong part of the epoch. The epoch is kept; the
    position in it becomes the last new micro-batch boundary, on an accumulation boundary, that has consumed no more
    items than the old position (the items in between, fewer than ``accum_steps`` new micro-batches, are seen
    again); the step is recounted in the new layout."""
    consumed = loop.batch_in_epoch * saved["samples_per_batch"]
    batch = min(consumed // samples_per_batch, batches_per_epoch)
    batch -= batch % accum_steps
    steps_per_epoch = batches_per_epoch // accum_steps
    new = dataclasses.replace(loop, batch_in_epoch=batch, step=loop.epoch * steps_per_epoch + batch // accum_steps)
    log.warning("the checkpoint was written with %d items per micro-batch (all processes) and %d micro-batches per "
                "epoch; this run has %d and %d. Continuing at epoch %d, batch %d, step %d (was batch %d, step %d): "
                "the lr schedule follows this run's layout, and the data order from the start of the epoch is kept",
                saved["samples_per_batch"], saved["batches_per_epoch"], samples_per_batch, batches_per_epoch,
                new.epoch, new.batch_in_epoch, new.step, loop.batch_in_epoch, loop.step)
    return new


def fit(training: Training, run: RunConfig, optim: OptimConfig, loader, step_fn: Callable, *,
        checkpoint_info: dict[str, Any], end_of_epoch: Callable[[LoopState, dict], dict] | None = None,
        on_step: Callable[[LoopState, Any], None] | None = None, best: "BestOnValidation | None" = None
        ) -> list[dict]:
    """Epoch loop from the resume point to ``optim.epochs``. Returns the per-epoch records (this session's).
    ``loader`` comes from :func:`lgiformer.data.build_loader`, so each epoch can reshuffle it and skip what a resumed
    run has consumed. ``best`` (updated by ``end_of_epoch``) is saved with every checkpoint and restored on resume."""
    from lgiformer.data import set_epoch

    env, logger = training.env, training.logger
    layout = dict(samples_per_batch=(loader.batch_size or 1) * env.world_size,
                  batches_per_epoch=training.batches_per_epoch)
    state, saved = resume_state(training, run, layout, optim.accum_steps)
    if best is not None:
        best.restore(saved.get("best"))
    ckpt_root = Path(run.output_dir) / "checkpoints"
    records: list[dict] = []

    def save() -> None:
        save_checkpoint(training.engine, ckpt_root, dict(checkpoint_info, epoch=state.epoch, step=state.step,
                                                         loop=state.to_dict(),
                                                         precision=training.precision, zero_stage=run.zero_stage,
                                                         world_size=env.world_size, layout=layout,
                                                         best=best.record() if best is not None else None),
                        run.keep_last, env.is_main)
        if best is not None:
            best.checkpointed()

    with Preemption() as preemption:
        while state.epoch < optim.epochs:
            set_epoch(loader, state.epoch, start_step=state.batch_in_epoch)  # skips what this process consumed
            stats = train_one_epoch(
                training.engine, loader, step_fn, state, lr_values=training.lr_values,
                wd_values=training.wd_values, steps_in_epoch=training.batches_per_epoch, seed=run.seed,
                rank=env.rank, logger=logger, log_every=run.log_every, max_nonfinite=run.max_nonfinite,
                preemption=preemption, on_step=on_step, progress=run.progress, clips_per_batch=run.batch_size,
                autocast=training.autocast)
            if state.batch_in_epoch < training.batches_per_epoch:  # preempted mid-epoch
                save()
                log.warning("stopped by SIGTERM at epoch %d, batch %d: resume with --run.resume auto", state.epoch,
                            state.batch_in_epoch)
                raise SystemExit(PREEMPTED_EXIT_CODE)
            record = dict(epoch=state.epoch, step=state.step, **{f"train_{k}": v for k, v in stats.items()})
            if end_of_epoch is not None:
                record.update(end_of_epoch(state, stats))
            logger.jsonl(record)
            log.info("epoch %d: %s", state.epoch, ", ".join(f"{k} {v:.4g}" for k, v in record.items()
                                                            if isinstance(v, float)))
            records.append(record)
            state.epoch += 1
            state.batch_in_epoch = 0
            if state.epoch % run.save_every == 0 or state.epoch == optim.epochs:
                save()
    return records


class BestOnValidation:
    """The best validation score of a finetuning run and, with ``keep_weights`` (``eval.select best_val``), its
    weights, kept across a resume: otherwise a preempted run would choose only among the epochs after its restart.
    Rank 0 writes each new best to ``<output_dir>/best_val/epochNNNN.safetensors``; every checkpoint records the best
    so far, and a resumed run reloads that epoch's file. Files that neither the current best nor a kept checkpoint
    refers to are removed."""

    def __init__(self, output_dir: str | os.PathLike, keep_weights: bool, is_main: bool) -> None:
        self.folder = Path(output_dir) / "best_val"
        self.checkpoints = Path(output_dir) / "checkpoints"
        self.keep_weights, self.is_main = keep_weights, is_main
        self.value, self.epoch, self.info = -float("inf"), -1, {}
        self.state: dict[str, torch.Tensor] | None = None

    def _file(self, epoch: int) -> Path:
        return self.folder / f"epoch{epoch:04d}.safetensors"

    def update(self, value: float, epoch: int, model: nn.Module, **info: Any) -> bool:
        """Record ``value`` at ``epoch`` if it beats the best so far (ties keep the earlier epoch)."""
        if not value > self.value:
            return False
        self.value, self.epoch, self.info = float(value), epoch, info
        if self.keep_weights:
            self.state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            if self.is_main:
                from safetensors.torch import save_file

                self.folder.mkdir(parents=True, exist_ok=True)
                save_file({k: v.contiguous() for k, v in self.state.items()}, str(self._file(epoch)))
                self._prune()
        return True

    def record(self) -> dict[str, Any]:
        return dict(value=self.value, epoch=self.epoch, info=self.info)

    def checkpointed(self) -> None:
        if self.is_main:
            self._prune()

    def _prune(self) -> None:
        epochs = {self.epoch} | {(read_client_state(c).get("best") or {}).get("epoch", -1)
                                 for c in complete_checkpoints(self.checkpoints)}
        keep = {self._file(e) for e in epochs}
        for path in self.folder.glob("epoch*.safetensors"):
            if path not in keep:
                path.unlink(missing_ok=True)

    def restore(self, record: dict[str, Any] | None) -> None:
        if not record or record.get("epoch", -1) < 0:
            return
        self.value, self.epoch, self.info = float(record["value"]), int(record["epoch"]), record.get("info") or {}
        if self.keep_weights:
            path = self._file(self.epoch)
            if not path.is_file():
                raise FileNotFoundError(f"{path}: the checkpoint says the best validation score ({self.value:.4g}) "
                                        f"came at epoch {self.epoch}, and its weights should be in this file. Restore "
                                        f"it, or resume with eval.select last")
            from safetensors.torch import load_file

            self.state = load_file(str(path))
        log.info("best validation so far: %.4g at epoch %d (restored)", self.value, self.epoch)


def select_final_model(model: nn.Module, select: str, epochs: int, best: BestOnValidation, metric: str
                       ) -> tuple[nn.Module, dict]:
    """The weights to test under ``eval.select`` and the selection record saved with the test report (``metric``
    names the validation score in it)."""
    selection: dict[str, Any] = dict(select=select, epoch=epochs - 1)
    if select == "best_val" and best.state is not None:
        chosen = copy.deepcopy(model)
        chosen.load_state_dict(best.state)
        selection.update({"epoch": best.epoch, metric: best.value})
        return chosen, selection
    if select == "best_val":
        log.warning("eval.select best_val: no validation score recorded (resumed at the end from a checkpoint "
                    "written before best epochs were kept?); testing the last weights")
        selection["select"] = "last (no validation available)"
    return model, selection


def last_checkpoint(run: RunConfig) -> Path:
    return find_checkpoint(Path(run.output_dir) / "checkpoints")


def describe_model(model: nn.Module) -> str:
    n = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return f"{n / 1e6:.2f} M parameters ({trainable / 1e6:.2f} M trainable)"


def world_info() -> dict:
    return {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "SLURM_JOB_ID")}


__all__ = ["BestOnValidation", "PREEMPTED_EXIT_CODE", "Training", "build_training", "describe_model", "fit",
           "last_checkpoint", "resume_state", "seed_everything", "select_final_model", "setup", "to_dict"]
