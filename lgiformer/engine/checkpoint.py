"""Training checkpoints: DeepSpeed checkpoint directories made atomic, with plain-data state.

Layout of ``<run>/checkpoints/``::

    epoch0003_step00000120/        a complete checkpoint (DeepSpeed files + COMPLETE.json)
        universal/                 DeepSpeed's universal copy, made when a ZeRO run resumes on another process count
    .tmp_epoch0004_step00000160/   a save in progress (or killed): never read, removed by the next save
    latest                         name of the newest complete checkpoint (informative; resume scans)

A save writes into a hidden ``.tmp_*`` directory; when every rank is done, rank 0 writes ``COMPLETE.json`` (the
loop state as JSON: epoch, step, config, model name and arguments, precision, ZeRO stage) and renames the directory
into place, so a SIGKILL at any moment leaves the previous checkpoint usable. Assumes a file system shared by all
nodes (the usual cluster setup). ``--resume auto`` takes the newest directory with a ``COMPLETE.json``.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from lgiformer.engine.distributed import barrier
from lgiformer.interop.safe_load import DEEPSPEED_GLOBALS, check_files, load_checkpoint as load_torch_file
from lgiformer.interop.safe_load import weights_only_loads

log = logging.getLogger(__name__)

MARKER = "COMPLETE.json"
_TAG = re.compile(r"^epoch(\d+)_step(\d+)$")


def checkpoint_tag(epoch: int, step: int) -> str:
    return f"epoch{epoch:04d}_step{step:08d}"


def _fsync_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _progress(ckpt: Path) -> tuple[int, float, int]:
    """How far training had got: (epoch, fraction of it done, step). The step alone does not order checkpoints
    once a run has been resumed with another batch layout (``trainer.relayout``): it is recounted, so a later
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
    """Collective: every rank calls it. ``state`` must be plain data (JSON-serialisable)."""
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
        _fsync_write(root / tmp_tag / MARKER, json.dumps(state, indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(root / tmp_tag, final)
        _fsync_write(root / "latest", tag + "\n")
        for old in complete_checkpoints(root)[:-keep_last] if keep_last > 0 else []:
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
        raise RuntimeError(f"DeepSpeed could not load {ckpt}")
    return state


def universal_checkpoint(ckpt: Path) -> Path:
    """``<ckpt>/universal``: DeepSpeed's universal (process-count independent) copy of a ZeRO checkpoint, written by
    rank 0 on first use into a temporary directory and renamed into place, so a killed conversion is redone."""
    out = ckpt / "universal"
    check_files([ckpt], DEEPSPEED_GLOBALS)  # the converter unpickles every shard (and a present copy is loaded)
    if (torch.distributed.is_initialized() and torch.distributed.get_rank() != 0) or out.exists():
        barrier()
        return out
    import argparse
    import io

    from deepspeed.checkpoint import ds_to_universal

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


def read_client_state(ckpt: str | os.PathLike) -> dict[str, Any]:
    return json.loads((Path(ckpt) / MARKER).read_text())


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
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        check_files([ckpt], DEEPSPEED_GLOBALS)
        with weights_only_loads(DEEPSPEED_GLOBALS):
            sd = get_fp32_state_dict_from_zero_checkpoint(str(ckpt.parent), tag=ckpt.name)
    return {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
