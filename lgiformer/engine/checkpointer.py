"""Training checkpoints: DeepSpeed checkpoint directories made atomic, with plain-data state, and the
:class:`Checkpointer` that owns them for a run (finding, saving, loading, relayout, best-on-validation weights).

Layout of ``<run>/checkpoints/``::

    epoch0003_step00000120/        a complete checkpoint (DeepSpeed files + COMPLETE.json)
        universal/                 DeepSpeed's universal copy, made when a ZeRO run resumes on another process count
    .tmp_epoch0004_step00000160/   a save in progress (or killed): never read, removed by the next save
    latest                         name of the newest complete checkpoint (informative; resume scans)

A save writes into a hidden ``.tmp_*`` directory; when every rank is done, rank 0 fsyncs the files, writes
``COMPLETE.json`` (the loop state as JSON: epoch, step, the run's id, config, model name and arguments, precision,
ZeRO stage) and renames the directory into place, so a SIGKILL or a power loss at any moment leaves the previous
checkpoint usable. Assumes a file system shared by all nodes (the usual cluster setup). Every file is checked
against an allowlist before DeepSpeed unpickles it (:mod:`lgiformer.interop.safe_load`).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import io
import json
import logging
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lgiformer.distributed import barrier, broadcast_object
from lgiformer.engine.loop import LoopState
from lgiformer.errors import InputError
from lgiformer.interop.safe_load import (
    DEEPSPEED_GLOBALS,
    CorruptFileError,
    check_files,
    weights_only_loads,
)
from lgiformer.interop.safe_load import load_checkpoint as load_torch_file
from lgiformer.provenance import follow_umask

log = logging.getLogger(__name__)

MARKER = "COMPLETE.json"
PREEMPTED = "PREEMPTED"   # <output_dir>/PREEMPTED: stopped on SIGTERM after a complete checkpoint (Checkpointer)
_TAG = re.compile(r"^epoch(\d+)_step(\d+)$")


class RunFolderInUse(InputError):
    """A fresh run was pointed at a folder that holds another run's checkpoints."""


# ---------------------------------------------------------------------------------------------- one checkpoint


def checkpoint_tag(epoch: int, step: int) -> str:
    return f"epoch{epoch:04d}_step{step:08d}"


def _fsync_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """Flush every file under ``folder`` and the folders themselves to disk, so that the rename that publishes
    them never publishes a checkpoint whose data is still only in the page cache."""
    for path in sorted(folder.rglob("*"), reverse=True) + [folder]:
        _fsync(path)


def read_client_state(ckpt: str | os.PathLike) -> dict[str, Any]:
    return json.loads((Path(ckpt) / MARKER).read_text())


def _progress(ckpt: Path) -> tuple[int, float, int]:
    """How far training had got: (epoch, fraction of it done, step). The step alone does not order checkpoints
    once a run has been resumed with another batch layout (:func:`relayout`): it is recounted, so a later
    checkpoint can carry a smaller step."""
    epoch, step = (int(g) for g in _TAG.match(ckpt.name).groups())
    try:
        state = read_client_state(ckpt)
        done = state["loop"]["batch_in_epoch"] / state["layout"]["batches_per_epoch"]
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):  # written before layouts were saved
        done = 0.0
    return epoch, done, step


def complete_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first (by epoch, then the fraction of it done, then step)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _TAG.match(p.name) and (p / MARKER).is_file()]
    return sorted(found, key=_progress)


def find_checkpoint(path: str | os.PathLike) -> Path:
    """``path`` itself when it is a complete checkpoint, else the newest complete checkpoint inside it."""
    path = Path(path)
    if (path / MARKER).is_file():
        return path
    if (path / "checkpoints").is_dir():
        path = path / "checkpoints"
    found = complete_checkpoints(path)
    if not found:
        raise FileNotFoundError(f"no complete checkpoint in {path} (looked for */{MARKER})")
    return found[-1]


def save_checkpoint(engine, root: str | os.PathLike, state: dict[str, Any], keep_last: int, is_main: bool) -> Path:
    """Collective: every rank calls it. ``state`` must be plain data (JSON-serialisable). Pruning keeps the newest
    ``keep_last`` checkpoints of this run (``state["run_id"]``) and never touches another run's."""
    root = Path(root)
    tag = checkpoint_tag(state["epoch"], state["step"])
    tmp_tag = f".tmp_{tag}"
    if is_main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(root / tmp_tag, ignore_errors=True)
    barrier()
    engine.save_checkpoint(str(root), tag=tmp_tag, client_state={"lgiformer": json.dumps(state)}, save_latest=False)
    barrier()
    final = root / tag
    if is_main:
        fsync_tree(root / tmp_tag)
        _fsync_write(root / tmp_tag / MARKER, json.dumps(state, indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(root / tmp_tag, final)
        _fsync_write(root / "latest", tag + "\n")
        _fsync(root)
        mine = [c for c in complete_checkpoints(root) if read_client_state(c).get("run_id") == state.get("run_id")]
        for old in mine[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
        for stale in root.glob(".tmp_*"):
            shutil.rmtree(stale, ignore_errors=True)
        log.info("checkpoint saved: %s", final)
    barrier()
    return final


def load_checkpoint(engine, ckpt: str | os.PathLike) -> dict[str, Any]:
    """Restore model, optimiser and engine counters from ``ckpt``; returns the loop state.

    ZeRO 1-3 shard the optimiser state over the data-parallel processes, and DeepSpeed refuses to load such a
    checkpoint on another number of processes. Then the checkpoint is converted once into DeepSpeed's universal
    format (``<ckpt>/universal``) and loaded from that, so a preempted job can resume on fewer or more GPUs."""
    ckpt = Path(ckpt)
    state = read_client_state(ckpt)
    check_files([ckpt], DEEPSPEED_GLOBALS)  # before DeepSpeed unpickles anything (the universal copy included)
    saved_world, world = state.get("world_size"), getattr(engine, "dp_world_size", 1)
    source, loading = ckpt, contextlib.nullcontext()
    if state.get("zero_stage", 0) > 0 and saved_world not in (None, world):
        log.warning("%s was written by %d processes with ZeRO %d, and this run has %d: loading it through "
                    "DeepSpeed's universal checkpoint format", ckpt, saved_world, state["zero_stage"], world)
        source, loading = universal_checkpoint(ckpt), _universal_loading(engine)
    with loading, weights_only_loads(DEEPSPEED_GLOBALS):
        path, _ = engine.load_checkpoint(str(source.parent), tag=source.name, load_optimizer_states=True,
                                         load_lr_scheduler_states=False)
    if path is None:
        raise CorruptFileError(f"{ckpt}: DeepSpeed found no loadable checkpoint in it")
    return state


def universal_checkpoint(ckpt: Path) -> Path:
    """``<ckpt>/universal``: DeepSpeed's universal (process-count independent) copy of a ZeRO checkpoint, written by
    rank 0 on first use into a temporary directory and renamed into place, so a killed conversion is redone."""
    from deepspeed.checkpoint import (
        ds_to_universal,  # deferred: DeepSpeed's converter is only needed here
    )

    out = ckpt / "universal"
    check_files([ckpt], DEEPSPEED_GLOBALS)  # the converter unpickles every shard (and a present copy is loaded)
    if (torch.distributed.is_initialized() and torch.distributed.get_rank() != 0) or out.exists():
        barrier()
        return out
    tmp = ckpt / ".universal_tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    args = argparse.Namespace(input_folder=str(ckpt), output_folder=str(tmp), num_extract_workers=1,
                              num_merge_workers=1, keep_temp_folder=False, strict=True, inject_missing_state=True)
    with contextlib.redirect_stdout(io.StringIO()), weights_only_loads(DEEPSPEED_GLOBALS):
        ds_to_universal.main(args)  # prints every step
    os.replace(tmp, out)
    log.info("universal checkpoint written: %s", out)
    barrier()
    return out


@contextlib.contextmanager
def _universal_loading(engine):
    """Around ``engine.load_checkpoint`` of a universal copy."""
    # Two defects of DeepSpeed's ZeRO 3 universal load (0.19), both found by a moved run that drifted from the run it
    # continues: every parameter group gets the first group's settings (so the weight-decayed group lost its decay),
    # and all groups share one Adam step tensor, which Adam increments in place once per group. This run built the
    # same groups, so their settings are put back, and each group gets its own step.
    settings = [{k: v for k, v in g.items() if k != "params"} for g in engine.optimizer.param_groups]
    # DeepSpeed reads this flag from its config at load time; it has no public setter, and it is only wanted for
    # this one load (the run's own checkpoints stay in the native format).
    config = engine._config
    config.load_universal_checkpoint = True
    try:
        yield
    finally:
        config.load_universal_checkpoint = False
    for group, kept in zip(engine.optimizer.param_groups, settings):
        group.update(kept)
    for state in getattr(engine.optimizer, "optimizer", engine.optimizer).state.values():
        if torch.is_tensor(state.get("step")):
            state["step"] = state["step"].clone()


def read_fp32_state_dict(ckpt: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Full fp32 weights of the model, consolidating ZeRO shards (and bf16 master weights) when needed."""
    ckpt = Path(ckpt)
    state = read_client_state(ckpt)
    if state.get("zero_stage", 0) == 0:  # the full module is in the model states file (fp32 but under fp16)
        files = sorted(ckpt.glob("mp_rank_*_model_states.pt"))
        if not files:
            raise FileNotFoundError(f"{ckpt}: no mp_rank_*_model_states.pt")
        sd = load_torch_file(files[0], extra_globals=DEEPSPEED_GLOBALS)["module"]
    else:
        from deepspeed.utils.zero_to_fp32 import (
            get_fp32_state_dict_from_zero_checkpoint,  # deferred: heavy
        )

        check_files([ckpt], DEEPSPEED_GLOBALS)
        with weights_only_loads(DEEPSPEED_GLOBALS):
            sd = get_fp32_state_dict_from_zero_checkpoint(str(ckpt.parent), tag=ckpt.name)
    return {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}


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


# ---------------------------------------------------------------------------------------------- the run's checkpoints


def claim_output_dir(output_dir: str | os.PathLike, resume: str, overwrite: bool, is_main: bool) -> None:
    """Called before a run writes anything. A fresh run (no ``run.resume``) in a folder that holds checkpoints would
    mix its work with another run's (its checkpoints pruned as older, its release built from the other run's
    weights): it stops, unless ``run.overwrite`` moves the old run aside to ``<folder>.replaced-<time>``."""
    out = Path(output_dir)
    if resume or not complete_checkpoints(out / "checkpoints"):
        return
    if not overwrite:
        raise RunFolderInUse(
            f"{out} holds the checkpoints of another run ({find_checkpoint(out).name} is its newest). Continue it with "
            "--run.resume auto, choose another --run.output_dir, or pass --run.overwrite true to move it aside")
    if is_main:
        aside = out.with_name(f"{out.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(out, aside)
        log.warning("run.overwrite: the run that was in %s is now in %s", out, aside)
    barrier()


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
                self.folder.mkdir(parents=True, exist_ok=True)
                save_file({k: v.contiguous() for k, v in self.state.items()}, str(self._file(epoch)))
                follow_umask(self._file(epoch))
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
            self.state = load_file(str(path))
        log.info("best validation so far: %.4g at epoch %d (restored)", self.value, self.epoch)

    def select(self, model: nn.Module, select: str, epochs: int, metric: str) -> tuple[nn.Module, dict]:
        """The weights to test under ``eval.select`` and the selection record saved with the test report
        (``metric`` names the validation score in it)."""
        selection: dict[str, Any] = dict(select=select, epoch=epochs - 1)
        if select == "best_val" and self.state is not None:
            chosen = copy.deepcopy(model)
            chosen.load_state_dict(self.state)
            selection.update({"epoch": self.epoch, metric: self.value})
            return chosen, selection
        if select == "best_val":
            log.warning("eval.select best_val: no validation score recorded (resumed at the end from a checkpoint "
                        "written before best epochs were kept?); testing the last weights")
            selection["select"] = "last (no validation available)"
        return model, selection


class Checkpointer:
    """A run's checkpoints: ``<output_dir>/checkpoints`` and ``<output_dir>/best_val``. Resume, periodic saves, the
    run's identity (pruning touches only its own checkpoints), the best-on-validation weights and the preemption
    marker live here.

    ``<output_dir>/PREEMPTED`` (JSON: time, checkpoint, Slurm job id) says that the run stopped on SIGTERM after a
    complete checkpoint, so that resuming continues it. Batch scripts requeue on it (scripts/slurm/requeue.sh), not
    on an exit code: torchrun exits 1 after a SIGTERM however its workers ended. A run removes it when it starts."""

    def __init__(self, output_dir: str | os.PathLike, *, keep_last: int, is_main: bool, keep_best_weights: bool
                 ) -> None:
        self.output_dir = Path(output_dir)
        self.root = self.output_dir / "checkpoints"
        self.keep_last, self.is_main = keep_last, is_main
        self.best = BestOnValidation(output_dir, keep_best_weights, is_main)
        self.run_id = broadcast_object(uuid.uuid4().hex[:12])   # a resumed run takes its checkpoint's
        if is_main:
            (self.output_dir / PREEMPTED).unlink(missing_ok=True)
        barrier()

    def mark_preempted(self, ckpt: Path) -> None:
        """Rank 0, after ``ckpt`` is complete: write the preemption marker (atomically, flushed to disk)."""
        if self.is_main:
            record = dict(time=time.strftime("%Y-%m-%dT%H:%M:%S%z"), checkpoint=str(ckpt),
                          job_id=os.environ.get("SLURM_JOB_ID"), run_id=self.run_id)
            _fsync_write(self.output_dir / PREEMPTED, json.dumps(record) + "\n")
            log.warning("%s written: resume continues from %s", self.output_dir / PREEMPTED, ckpt)
        barrier()

    def resume(self, engine, resume: str, layout: dict[str, int], accum_steps: int) -> tuple[LoopState, dict]:
        """The loop state to continue from (a fresh one without ``resume``) and the checkpoint's state (empty when
        starting fresh). ``resume`` is "auto" (the newest checkpoint that loads, if any) or a path. ``layout``
        (``samples_per_batch``: dataset items in one micro-batch of all processes together, ``batches_per_epoch``) is
        compared with the checkpoint's: see :func:`relayout`."""
        if not resume:
            return LoopState(), {}
        if resume == "auto":
            candidates = complete_checkpoints(self.root)[::-1]
            if not candidates:
                log.info("resume auto: no complete checkpoint in %s, starting fresh", self.root)
                return LoopState(), {}
        else:
            candidates = [find_checkpoint(resume)]
        state, ckpt = self._load_newest(engine, candidates)
        loop = LoopState(**state["loop"])
        self.run_id = state.get("run_id", self.run_id)
        log.info("resumed from %s: epoch %d, step %d, batch %d of the epoch", ckpt, loop.epoch, loop.step,
                 loop.batch_in_epoch)
        saved = state.get("layout")
        if saved and layout and saved != layout:
            loop = relayout(loop, saved, layout["samples_per_batch"], layout["batches_per_epoch"], accum_steps)
        self.best.restore(state.get("best"))
        return loop, state

    def _load_newest(self, engine, candidates: list[Path]) -> tuple[dict, Path]:
        """Load the first of ``candidates`` that loads; an unreadable one (truncated by a full disk, say) is skipped
        with a warning naming it. A tampered one stops the run (UnsafeCheckpointError): it is no accident."""
        failed: list[str] = []
        for ckpt in candidates:
            try:
                state = load_checkpoint(engine, ckpt)
            except (CorruptFileError, EOFError, OSError, json.JSONDecodeError) as err:
                log.warning("checkpoint %s cannot be loaded (%s): trying the one before it", ckpt,
                            (str(err) or type(err).__name__).splitlines()[0][:300])
                failed.append(str(ckpt))
                continue
            if failed:
                log.warning("resumed from %s instead of the newer %s, which could not be loaded", ckpt,
                            ", ".join(failed))
            return state, ckpt
        raise CorruptFileError(f"none of the checkpoints could be loaded: {', '.join(failed)}")

    def save(self, engine, state: dict[str, Any]) -> Path:
        """Collective. ``state`` (plain data) gets the run id and the best-on-validation record."""
        path = save_checkpoint(engine, self.root, dict(state, run_id=self.run_id, best=self.best.record()),
                               self.keep_last, self.is_main)
        self.best.checkpointed()
        return path

    def latest(self) -> Path:
        return find_checkpoint(self.root)
