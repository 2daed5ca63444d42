"""One way to find out who we are in a distributed run (torchrun, then Slurm, then a single process), and the few
collectives the library needs.

DeepSpeed needs RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT (without them it falls back to MPI
discovery and fails on mpi4py), so a plain ``python pretrain/run.py`` and an ``srun`` task get them filled in here.
"""
from __future__ import annotations

import logging
import os
import socket
import subprocess
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    launcher: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _slurm_master(nodelist: str) -> str:
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
        return out.stdout.split()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        # "node[01-04],other" -> "node01": good enough when scontrol is not on PATH
        head = nodelist.split(",")[0]
        if "[" in head:
            prefix, rest = head.split("[", 1)
            return prefix + rest.split("-")[0].split(",")[0].rstrip("]")
        return head


def _fill_env() -> str:
    """Make the torchrun variables exist; returns the launcher name."""
    if all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")):
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29500")
        return "torchrun"
    if "SLURM_PROCID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        os.environ["RANK"] = os.environ["SLURM_PROCID"]
        os.environ["WORLD_SIZE"] = os.environ["SLURM_NTASKS"]
        os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")
        os.environ.setdefault("MASTER_ADDR", _slurm_master(os.environ.get("SLURM_JOB_NODELIST", "127.0.0.1")))
        os.environ.setdefault("MASTER_PORT", str(29500 + int(os.environ.get("SLURM_JOB_ID", "0")) % 1000))
        return "slurm"
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    return "single"


def init_distributed(device: str = "auto", timeout_minutes: int = 30) -> DistEnv:
    """Initialise the default process group (also for one process, so the same code path runs everywhere):
    NCCL on GPUs, gloo on CPU."""
    launcher = _fill_env()
    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(minutes=timeout_minutes),
                                **({"device_id": dev} if use_cuda else {}))
    return DistEnv(rank, world, local, dev, launcher)


def elastic_restart_warning() -> str | None:
    """A warning for a torchrun launch whose restarts (``--max-restarts``) would be unsafe, else None.

    Since torch 2.4 torchrun keeps one TCPStore across the restarts of its worker group and gives it to the workers'
    process group without a per-attempt prefix, so a restarted worker can read the address a dead worker published
    and fail to connect, or wait forever (pytorch/pytorch#135712: 2 of 4 restarts failed here, 0 of 6 with the
    switch). torch's switch ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` gives every attempt a fresh store; it acts in
    torchrun's own process, so it must be set where torchrun starts, and the workers see it in their environment."""
    if int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0 and \
            os.environ.get("TORCH_DISABLE_SHARE_RDZV_TCP_STORE") != "1":
        return ("torchrun --max-restarts: set TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 in torchrun's environment, or a "
                "restarted worker group can fail to connect or hang (pytorch/pytorch#135712)")
    return None


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def all_reduce_mean(value: float | torch.Tensor) -> float:
    t = torch.as_tensor(value, dtype=torch.float64).clone()
    if dist.is_initialized() and dist.get_world_size() > 1:
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return float(t)


def all_reduce_sum(values: list[int]) -> list[int]:
    """Element-wise sums of integer ``values`` over every rank (so that every rank takes the same decision)."""
    t = torch.tensor(values, dtype=torch.int64)
    if dist.is_initialized() and dist.get_world_size() > 1:
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t)
    return [int(v) for v in t.tolist()]


def all_true(flag: bool, device: torch.device | None = None) -> bool:
    """True when ``flag`` holds on every rank (so all ranks take the same branch)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return bool(flag)
    t = torch.tensor([0 if flag else 1], device=device or "cpu")
    dist.all_reduce(t)
    return int(t.item()) == 0


def gather_arrays(*arrays):
    """Every rank's ``arrays`` (numpy arrays or tensors), concatenated along the first axis in rank order; the
    arrays themselves in one process. For evaluation results, which are small."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return arrays
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, arrays)
    cat = [torch.cat if torch.is_tensor(a) else np.concatenate for a in arrays]
    return tuple(cat[i]([p[i] for p in parts]) for i in range(len(arrays)))


def gather_objects(value) -> list:
    """Every rank's ``value`` (any picklable object), in rank order; ``[value]`` in one process. For small results
    whose shapes may differ between ranks (a rank may have read nothing)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return [value]
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, value)
    return parts


def broadcast_object(value):
    """Rank 0's ``value`` on every rank."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
