"""``run(cfg, task)``: the one orchestration of every training job (pretraining, DFER, AU, DFER + AU).

Processes and logging, the output folder's ownership, the data root (the synthetic set is made once, by rank 0),
the task (model and data), the DeepSpeed engine with its schedules, the epoch loop with checkpoints, preemption and
resume, best-on-validation selection, the task's test and the release. The task (:class:`lgiformer.tasks.Task`)
holds what differs between jobs; nothing here knows which job it runs.
"""
from __future__ import annotations

import json
import logging
import os
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lgiformer.config import OptimConfig, RunConfig, save_config
from lgiformer.data import build_loader, get_dataset_spec, set_epoch
from lgiformer.data.synthetic import ensure_synthetic, resolve_root
from lgiformer.distributed import DistEnv, barrier, destroy, elastic_restart_warning, init_distributed
from lgiformer.engine import ds
from lgiformer.engine.compile import compile_engine
from lgiformer.engine.checkpointer import Checkpointer, claim_output_dir, read_fp32_state_dict
from lgiformer.engine.logger import RunLogger
from lgiformer.engine.loop import LoopState, Preemption, Training, train_one_epoch
from lgiformer.engine.schedules import cosine_schedule
from lgiformer.models.release import write_release
from lgiformer.provenance import git_commit
from lgiformer.tasks.base import Task

log = logging.getLogger("lgiformer")

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM


def run(cfg: Any, task_cls: type[Task]) -> dict[str, Any]:
    """Train ``task_cls`` as ``cfg`` says, test it and publish its release; returns the run's result."""
    env = init_distributed(cfg.run.device)
    try:
        claim_output_dir(cfg.run.output_dir, cfg.run.resume, cfg.run.overwrite, env.is_main)
        logger = setup(cfg.run, env)
        try:
            return _run(cfg, task_cls, env, logger)
        finally:
            logger.close()
    finally:
        destroy()


def _run(cfg: Any, task_cls: type[Task], env: DistEnv, logger: RunLogger) -> dict[str, Any]:
    task = task_cls(cfg, env, prepare_data_root(cfg.data, env.is_main), logger)
    loader = build_loader(task.train_set, task.videos_per_batch, shuffle=True, drop_last=True,
                          num_workers=cfg.data.num_workers, seed=cfg.run.seed, collate_fn=task.collate_fn)
    training = build_training(task.model, task.param_groups(), cfg.run, cfg.optim, env, logger, len(loader), cfg)
    checkpointer = Checkpointer(cfg.run.output_dir, keep_last=cfg.run.keep_last, is_main=env.is_main,
                                keep_best_weights=task.select == "best_val")
    task.begin(training)
    records = fit(training, cfg.run, cfg.optim, loader, task, checkpointer)
    model, selection = checkpointer.best.select(training.model, task.select, cfg.optim.epochs, f"val_{task.score}")
    result: dict[str, Any] = dict(epochs=records, selection=selection)
    chosen = checkpointer.best.info.get("metrics") if selection["select"] == "best_val" else None
    result.update(task.finish(model, selection, training, chosen))
    release_dir = getattr(cfg, "release_dir", "")
    published = None
    if release_dir != "none":  # under ZeRO 3 the weights are whole only in the last checkpoint
        state_dict = read_fp32_state_dict(checkpointer.latest()) if cfg.run.zero_stage == 3 else None
        published = task.release(model, result, state_dict)
    if published is not None and env.is_main:
        module, weights, fields = published
        out = Path(release_dir or Path(cfg.run.output_dir) / "release")
        write_release(module, out, state_dict=weights, overwrite=True, **fields)
        log.info("release: %s", out)
        result["release"] = str(out)
    barrier()
    return result


def setup(run: RunConfig, env: DistEnv) -> RunLogger:
    """Logging (rank 0 talks; every rank writes warnings) and seeds."""
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
    if env.is_main and int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0:
        log.warning("torchrun restarted the worker group (restart %s of %s) after a worker failed",
                    os.environ["TORCHELASTIC_RESTART_COUNT"], os.environ.get("TORCHELASTIC_MAX_RESTARTS", "?"))
    if env.is_main and elastic_restart_warning():
        log.warning(elastic_restart_warning())
    return RunLogger(out, env.is_main, run.tensorboard)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def prepare_data_root(data: Any, is_main: bool) -> Path:
    """The data root of ``data`` (a config's data section). A synthetic dataset lives in a folder named by its
    options (:func:`lgiformer.data.synthetic.resolve_root`) and is generated there by rank 0 when absent; the other
    processes wait for it."""
    spec = get_dataset_spec(data.dataset)
    root = resolve_root(data.data_root, data.synthetic) if spec.synthetic else Path(data.data_root)
    if spec.synthetic:
        if is_main:
            ensure_synthetic(root, workers="auto", **data.synthetic)
        barrier()
    return root


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
    compile_engine(engine, run.compile, env.device)
    steps_per_epoch = batches_per_epoch // optim.accum_steps
    total = optim.epochs * steps_per_epoch
    lr_values = cosine_schedule(lr, min_lr, total, int(round(optim.warmup_epochs * steps_per_epoch)), warmup_lr)
    wd_end = optim.weight_decay if optim.weight_decay_end is None else optim.weight_decay_end
    wd_values = cosine_schedule(optim.weight_decay, wd_end, total)
    derived = dict(effective_lr=lr, min_lr=min_lr, total_batch=total_batch, world_size=env.world_size,
                   precision=precision, steps_per_epoch=steps_per_epoch, total_steps=total, git_commit=git_commit(),
                   deepspeed=ds_config)
    log.info("effective lr %.3g = %s x total batch %d / 256 (%d processes x %d per process x %d accumulation); "
             "precision %s, ZeRO %d, %d steps per epoch", lr, "lr" if optim.lr else f"blr {optim.blr:g}",
             total_batch, env.world_size, run.batch_size, optim.accum_steps, precision, run.zero_stage,
             steps_per_epoch)
    if env.is_main:
        save_config(config, Path(run.output_dir) / "config.yaml", **derived)
    return Training(engine, env, logger, precision, lr, total_batch, steps_per_epoch, batches_per_epoch, lr_values,
                    wd_values, seed=run.seed, log_every=run.log_every, max_nonfinite=run.max_nonfinite,
                    progress=run.progress, clips_per_batch=run.batch_size)


def fit(training: Training, run: RunConfig, optim: OptimConfig, loader, task: Task, checkpointer: Checkpointer
        ) -> list[dict]:
    """Epoch loop from the resume point to ``optim.epochs``. Returns the per-epoch records of the whole run (those
    of the attempts before a resume come from ``log.jsonl``). ``loader`` comes from :func:`lgiformer.data.build_loader`,
    so each epoch can reshuffle it and skip what a resumed run has consumed."""
    env, logger = training.env, training.logger
    layout = dict(samples_per_batch=(loader.batch_size or 1) * env.world_size,
                  batches_per_epoch=training.batches_per_epoch)
    state, _ = checkpointer.resume(training.engine, run.resume, layout, optim.accum_steps)
    if state.step:
        logger.purge_from(state.step + 1)  # what was logged at the checkpoint's own step came before its save
    records = earlier_records(Path(run.output_dir) / "log.jsonl", state.epoch) if env.is_main else []
    info = dict(task.checkpoint_info(), task=task.name, precision=training.precision, zero_stage=run.zero_stage,
                world_size=env.world_size, layout=layout)

    def save() -> Path:
        return checkpointer.save(training.engine, dict(info, epoch=state.epoch, step=state.step, loop=state.to_dict()))

    def on_step(loop_state: LoopState, batch: tuple) -> None:
        task.on_step(training, loop_state, batch)

    with Preemption() as preemption:
        while state.epoch < optim.epochs:
            set_epoch(loader, state.epoch, start_step=state.batch_in_epoch)  # skips what this process consumed
            stats = train_one_epoch(training, loader, task.loss, state, preemption, on_step)
            if state.batch_in_epoch < training.batches_per_epoch:  # preempted mid-epoch
                checkpointer.mark_preempted(save())
                log.warning("stopped by SIGTERM at epoch %d, batch %d: resume with --run.resume auto", state.epoch,
                            state.batch_in_epoch)
                raise SystemExit(PREEMPTED_EXIT_CODE)
            record = dict(epoch=state.epoch, step=state.step, **{f"train_{k}": v for k, v in stats.items()})
            # training replaces an unreadable sample by another one (evaluation never does): count and say so
            bad = task.train_set.bad_samples.end_epoch(state.epoch, task.cfg.data.bad_sample_threshold)
            record["bad_samples_replaced"] = bad["bad"]
            logger.scalars({"bad_samples_replaced": bad["bad"]}, state.step, prefix="data/")
            extra = task.end_of_epoch(state.epoch, training)
            record.update(extra)
            logger.scalars(extra, state.step, prefix="")
            metrics = task.validate(training.model, state.epoch, training)
            if metrics is not None:
                details = metrics.pop("details", None)
                record.update({f"val_{k}": v for k, v in metrics.items()})
                logger.scalars(metrics, state.step, prefix="val/")
                checkpointer.best.update(metrics[task.score], state.epoch, training.model,
                                         **({"metrics": details} if details is not None else {}))
            logger.jsonl(record)
            log.info("epoch %d: %s", state.epoch, ", ".join(f"{k} {v:.4g}" for k, v in record.items()
                                                            if isinstance(v, float)))
            records.append(record)
            state.epoch += 1
            state.batch_in_epoch = 0
            if state.epoch % run.save_every == 0 or state.epoch == optim.epochs:
                save()
    return records


def earlier_records(path: Path, before_epoch: int) -> list[dict]:
    """The per-epoch records of epochs before ``before_epoch`` from a run's ``log.jsonl`` (the last one written for
    each epoch: an interrupted attempt may have logged an epoch that a resume then ran again)."""
    if before_epoch <= 0 or not path.is_file():
        return []
    by_epoch: dict[int, dict] = {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
        if isinstance(record.get("epoch"), int) and record["epoch"] < before_epoch:
            by_epoch[record["epoch"]] = record
    return [by_epoch[e] for e in sorted(by_epoch)]
