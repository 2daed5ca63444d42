"""DataLoaders for one process or many, reproducible and resumable mid-epoch.

Always a distributed-style sampler (one replica without torch.distributed), so a global batch holds the same
samples whatever the number of processes, and ``set_epoch(loader, epoch, start_index)`` both reshuffles and skips
the part of the epoch a resumed run has already seen. Per-sample randomness comes from the dataset (seeded from
(seed, epoch, index)), so worker seeds only matter for code outside it.
"""
from __future__ import annotations

import gc
import math
import random
from typing import Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler


class ResumableDistributedSampler(Sampler[int]):
    """Like ``DistributedSampler`` (same permutation from (seed, epoch), rank r takes every world-th index, padded
    or dropped to equal shares), plus ``start_index``: the number of this rank's samples to skip."""

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} not in [0, {num_replicas})")
        self.size, self.num_replicas, self.rank = len(dataset), num_replicas, rank
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.epoch, self.start_index = 0, 0
        if drop_last and self.size % num_replicas:
            self.num_samples = self.size // num_replicas
        else:
            self.num_samples = math.ceil(self.size / num_replicas)
        self.total_size = self.num_samples * num_replicas

    def set_epoch(self, epoch: int, start_index: int = 0) -> None:
        """The permutation of ``epoch``; the first ``start_index`` samples of this rank are skipped (resume)."""
        if start_index < 0:
            raise ValueError(f"start_index must be >= 0, got {start_index}")
        self.epoch, self.start_index = epoch, start_index

    def indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        if self.total_size > len(order):
            pad = self.total_size - len(order)
            order += (order * math.ceil(pad / len(order)))[:pad]
        else:
            order = order[:self.total_size]
        return order[self.rank:self.total_size:self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices()[self.start_index:])

    def __len__(self) -> int:
        return max(self.num_samples - self.start_index, 0)


def seed_worker(worker_id: int) -> None:
    """Seed Python and numpy in a worker from torch's per-worker seed (datasets reseed per sample anyway)."""
    seed = torch.initial_seed() % 2 ** 32
    random.seed(seed)
    np.random.seed(seed)


def build_loader(dataset: Dataset, batch_size: int, *, shuffle: bool, drop_last: bool, num_workers: int = 0,
                 seed: int = 0, rank: int | None = None, world_size: int | None = None, pin_memory: bool = False,
                 persistent_workers: bool = False, prefetch_factor: int | None = None,
                 collate_fn: Callable | None = None) -> DataLoader:
    """A DataLoader over a :class:`ResumableDistributedSampler` (world size and rank from torch.distributed when it
    is initialised, else 1 and 0), so global batch ``k`` (rank batches ``k`` of all ranks together) holds the same
    samples with 1 or N processes when ``batch_size`` x world size is kept. ``batch_size`` is per process. Workers
    are the platform's default (fork on Linux), started with :func:`seed_worker`. Call :func:`set_epoch` before each
    epoch."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if world_size is None:
        world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if rank is None:
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    sampler = ResumableDistributedSampler(dataset, world_size, rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
    generator = torch.Generator().manual_seed(seed + rank)
    extra = {"prefetch_factor": prefetch_factor} if prefetch_factor and num_workers > 0 else {}
    if num_workers > 0:
        # Forked workers inherit the parent's uncollected garbage; a decord VideoReader freed by the child's GC
        # aborts the worker (seen in CI: "Fatal Python error: Aborted" in VideoReader.__del__). Free it here first.
        gc.collect()
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, drop_last=drop_last,
                      pin_memory=pin_memory, worker_init_fn=seed_worker if num_workers > 0 else None,
                      collate_fn=collate_fn,
                      generator=generator, persistent_workers=persistent_workers and num_workers > 0, **extra)


def set_epoch(loader: DataLoader, epoch: int, start_index: int = 0, *, start_step: int | None = None) -> None:
    """New epoch for sampler and dataset. A resumed run skips what this rank already consumed in the epoch: either
    ``start_index`` samples of this rank, or ``start_step`` batches (``start_step x loader.batch_size`` samples)."""
    if start_step is not None:
        start_index = start_step * (loader.batch_size or 1)
    sampler = getattr(loader, "sampler", None)
    if isinstance(sampler, ResumableDistributedSampler):
        sampler.set_epoch(epoch, start_index)
    elif hasattr(sampler, "set_epoch"):
        if start_index:
            raise ValueError(f"{type(sampler).__name__} cannot skip samples; build the loader with build_loader")
        sampler.set_epoch(epoch)
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)
