"""DeepSpeed from our config: precision, ZeRO stage, clipping and accumulation, with a torch AdamW passed in.

bf16 is autocast (weights, gradients and optimiser state stay fp32; matmuls and attention run in bf16), the same
rule as timm / MAE training with AMP, set through DeepSpeed's ``torch_autocast`` section (its engine switches off an
autocast opened outside it); DeepSpeed's own bf16 mode would keep bf16 weights when ZeRO is off. fp16 is
DeepSpeed's fp16 mode with dynamic loss scaling (overflow steps are skipped and counted by the loop).

The optimiser is a plain ``torch.optim.AdamW`` (a DeepSpeed ``"optimizer"`` entry would JIT-build FusedAdam, about
50 s on CPU); schedules are set per step by the loop, so no DeepSpeed scheduler either. On GPUs it is torch's fused
implementation (one multi-tensor kernel per parameter group and step instead of about ten foreach passes); on CPU it
keeps torch's default, so CPU runs and tests compute exactly what they did before.

No C++ op is built at run time. On CPU, DeepSpeed's communication setup JIT-builds its shared-memory all-reduce op
(``deepspeed_shm_comm``: about 40 s, under a lock file that an interrupted build leaves behind, and on which every
later run then waits forever); only DeepSpeed's tensor-parallel inference calls that op, so it is switched off here
(GPU runs never had it). Any op DeepSpeed does build goes to ``<environment>/torch_extensions`` when
``scripts/install.sh`` made that folder (``TORCH_EXTENSIONS_DIR``, unless already set), and a lock with no live
builder is reported with the command that removes it.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 on GPUs that support it, fp32 otherwise (CPU included)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("fp16 needs a GPU (DeepSpeed: 'Type fp16 is not supported' on CPU); use bf16 or fp32")
    return precision


def input_dtype(precision: str) -> torch.dtype:
    """The dtype batches must be cast to: half for DeepSpeed fp16 (the module is converted), fp32 otherwise."""
    return torch.float16 if precision == "fp16" else torch.float32


def autocast(precision: str, device: torch.device):
    """The forward context: bf16 autocast, or nothing."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def use_fused_adamw(param_groups: Sequence[dict]) -> bool:
    """Fused AdamW when every parameter is a floating-point CUDA tensor (torch's condition for ``fused=True``)."""
    params = [p for group in param_groups for p in group["params"]]
    return bool(params) and all(p.is_cuda and p.is_floating_point() for p in params)


def deepspeed_config(micro_batch: int, accum_steps: int, world_size: int, precision: str, zero_stage: int,
                     clip_grad: float | None) -> dict:
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage must be 0-3, got {zero_stage}")
    config = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": accum_steps,
        "train_batch_size": micro_batch * accum_steps * world_size,
        "zero_optimization": {"stage": zero_stage},
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,
    }
    # Always explicit: DeepSpeed's default is 1.0 (``GRADIENT_CLIPPING_DEFAULT``), so leaving the key out clipped
    # every run whose recipe asked for no clipping (and cost a norm and a scale per parameter each step).
    config["gradient_clipping"] = float(clip_grad) if clip_grad else 0.0
    if precision == "bf16":
        # DeepSpeed's engine replaces any outer autocast by its own setting, so bf16 autocast is configured here
        config["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}
    if precision == "fp16":
        config["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16, "loss_scale_window": 1000,
                          "hysteresis": 2, "min_loss_scale": 1}
    return config


def initialize(model: nn.Module, param_groups: Sequence[dict], *, lr: float, betas: Sequence[float], eps: float,
               micro_batch: int, accum_steps: int, world_size: int, precision: str, zero_stage: int,
               clip_grad: float | None):
    """(engine, DeepSpeed config). The engine's ``.module`` is the model; call ``engine(...)``,
    ``engine.backward(loss)``, ``engine.step()``."""
    use_environment_extensions()
    report_stale_build_locks()
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    # Only DeepSpeed's CPU accelerator has the op; reading the table probes every op (compilers, GPUs), which a GPU
    # run is spared. Setting it is DeepSpeed's own switch for an op that cannot be built.
    if get_accelerator().create_op_builder("ShareMemCommBuilder") is not None:
        deepspeed.ops.__compatible_ops__[SHM_OP] = False

    optimizer = torch.optim.AdamW(param_groups, lr=lr, betas=tuple(betas), eps=eps,
                                  fused=True if use_fused_adamw(param_groups) else None)
    config = deepspeed_config(micro_batch, accum_steps, world_size, precision, zero_stage, clip_grad)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config,
                                           dist_init_required=False)
    if world_size == 1 and zero_stage == 0:
        # One process has nothing to average, but DeepSpeed's ZeRO-0 backward would still flatten every gradient
        # into a bucket, scale it, all-reduce it over the one process and copy it back: three passes over all
        # gradients per step that a plain loop does not make.
        engine.enable_backward_allreduce = False
    return engine, config


SHM_OP = "deepspeed_shm_comm"
EXTENSIONS_ENV = "TORCH_EXTENSIONS_DIR"


def environment_extensions() -> Path:
    """The per-environment folder for JIT-built ops, made by ``scripts/install.sh``: ``<sys.prefix>/torch_extensions``.
    torch's default (``~/.cache/torch_extensions``) is shared by every environment of the user."""
    return Path(sys.prefix) / "torch_extensions"


def use_environment_extensions() -> None:
    """Point ``TORCH_EXTENSIONS_DIR`` at :func:`environment_extensions` when that folder exists and the variable is
    unset (a user's own setting wins)."""
    if EXTENSIONS_ENV not in os.environ and environment_extensions().is_dir():
        os.environ[EXTENSIONS_ENV] = str(environment_extensions())


def extensions_root() -> Path:
    """Where torch builds JIT ops: ``TORCH_EXTENSIONS_DIR``, else torch's default root."""
    from torch.utils.cpp_extension import get_default_build_root

    return Path(os.environ.get(EXTENSIONS_ENV) or get_default_build_root())


def _open_files() -> set[str]:
    """Every file that a process of this machine that we may inspect holds open (``/proc/<pid>/fd``)."""
    found = set()
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            links = list(fd_dir.iterdir())
        except OSError:  # another user's process, or one that just ended
            continue
        for link in links:
            with contextlib.suppress(OSError):
                found.add(os.readlink(link))
    return found


def stale_build_locks(root: str | os.PathLike | None = None) -> list[Path]:
    """Lock files of torch's JIT builds (``<root>/<op>/lock``, or one level deeper under torch's default root) that
    no process holds open. torch's builder creates the lock and keeps it open until the build ends, then deletes
    it; a lock without a holder was left by a build that was killed, and torch's waiters poll for it to disappear
    with no time limit. A build running on another machine (a shared home folder) cannot be seen from here, so these
    are reported, never removed."""
    root = Path(root) if root is not None else extensions_root()
    if not root.is_dir():
        return []
    locks = [p for p in (*root.glob("*/lock"), *root.glob("*/*/lock")) if p.is_file()]
    if not locks:
        return []
    held = _open_files()
    return [lock for lock in locks if os.path.realpath(lock) not in held]


def report_stale_build_locks(root: str | os.PathLike | None = None) -> list[Path]:
    """One warning line per :func:`stale_build_locks`, with the command that removes it; returns them."""
    stale = stale_build_locks(root)
    for lock in stale:
        with contextlib.suppress(OSError):  # removed meanwhile
            age = (time.time() - lock.stat().st_mtime) / 60
            log.warning("%s: a JIT build lock that no process on this machine holds (left by an interrupted build "
                        "%.0f min ago); any build of that op would wait on it forever: remove it with rm %s", lock,
                        age, lock)
    return stale
