"""Datasets: list entries -> clips, robust to bad files and reproducible per sample.

Robustness: a corrupt, missing or too-short video is logged once (per path and process) and counted. In training it
is replaced by another sample chosen from (seed, epoch, index, attempt); after ``max_retries`` replacements in a row
the error is raised (no silent recursion: docs/REFERENCE.md#defect-8). Counts live in shared memory, so they are
right with loader workers; the loop reports them per epoch and stops when the bad fraction passes a threshold
(:meth:`BadSampleCounter.check`). Evaluation never substitutes (``substitute=False``, the val / test modes): the
item is an :class:`Unreadable` record instead, which :func:`collate_readable` takes out of the batch, so no
prediction is ever made from another file under this sample's path and label (lgiformer.inference counts and reports
them).

Reproducibility: each item is drawn inside :func:`sample_rng`, which seeds Python's ``random``, numpy and torch from
(seed, epoch, index) and restores them afterwards. A sample's window, augmentation and mask therefore do not depend
on the number of workers or processes, nor on where a run was resumed.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import multiprocessing
import random
from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from lgiformer.data.lists import AUVideo, VideoSample, read_au_csv, read_video_list
from lgiformer.data.readers import VideoReadError, open_video
from lgiformer.data.sampling import center_indices, pretrain_indices, test_clip_indices, train_indices
from lgiformer.data.transforms import build_transform
from lgiformer.distributed import all_reduce_sum
from lgiformer.errors import InputError

log = logging.getLogger(__name__)


class TooManyBadSamples(InputError):
    """More unreadable samples than ``data.bad_sample_threshold`` allows (or ``max_retries`` in a row)."""


@dataclass(frozen=True)
class Unreadable:
    """An evaluation item that no reader could read: it is excluded, never replaced."""
    index: int
    path: str
    reason: str
    label: int = -1


class ReadableBatch(NamedTuple):
    """A batch without its unreadable items: ``batch`` (what ``default_collate`` makes of the readable items, None
    when there are none) and ``unreadable`` (:class:`Unreadable` records)."""
    batch: Any
    unreadable: list


def collate_readable(items: list) -> ReadableBatch:
    """The collate function of evaluation loaders: :class:`Unreadable` items are kept apart from the batch."""
    unreadable = [item for item in items if isinstance(item, Unreadable)]
    readable = [item for item in items if not isinstance(item, Unreadable)]
    return ReadableBatch(default_collate(readable) if readable else None, unreadable)


class BadSampleCounter:
    """Bad / total reads, shared by DataLoader workers: the counters and a few example messages live in shared
    memory created in the main process (before workers fork, or passed to spawned workers with the dataset), so the
    main process sees what every worker counted. Each bad path is logged once per process."""

    EXAMPLE_BYTES = 4096

    def __init__(self) -> None:
        self._bad = multiprocessing.Value("q", 0)
        self._total = multiprocessing.Value("q", 0)
        self._examples = multiprocessing.Array("c", self.EXAMPLE_BYTES)   # newline-separated, NUL-terminated
        self._logged: set[str] = set()

    def record_ok(self) -> None:
        with self._total.get_lock():
            self._total.value += 1

    def record(self, path: str = "", reason: str = "", action: str = "replaced") -> None:
        """One bad read (also counted in the total); ``action``: what became of it (replaced, excluded)."""
        with self._bad.get_lock():
            self._bad.value += 1
        with self._total.get_lock():
            self._total.value += 1
        if path not in self._logged:  # once per path and process
            self._logged.add(path)
            log.warning("bad sample, %s: %s (%s)", action, path, reason)
            self._add_example(f"{path}: {reason}"[:300])

    def _add_example(self, text: str) -> None:
        with self._examples.get_lock():
            current = self._examples.value.decode("utf-8", "replace")
            lines = current.split("\n") if current else []
            if len(lines) >= 5 or text in lines:
                return
            joined = "\n".join(lines + [text]).encode("utf-8", "replace")
            if len(joined) < self.EXAMPLE_BYTES:
                self._examples.value = joined

    def examples(self) -> list[str]:
        """Up to five ``path: reason`` messages, from every worker."""
        text = self._examples.value.decode("utf-8", "replace")
        return text.split("\n") if text else []

    def snapshot(self) -> dict:
        return {"bad": int(self._bad.value), "total": int(self._total.value)}

    def reset(self) -> None:
        """Zero the counts (each epoch); the examples and the logged paths are kept."""
        with self._bad.get_lock():
            self._bad.value = 0
        with self._total.get_lock():
            self._total.value = 0

    def check_counts(self, counts: dict, threshold: float = 0.01, min_total: int = 0) -> None:
        """Raise :class:`TooManyBadSamples` when more than ``threshold`` of the reads in ``counts`` failed (only once
        at least ``min_total`` reads were made)."""
        bad, total = int(counts["bad"]), int(counts["total"])
        if total < max(min_total, 1) or bad / total <= threshold:
            return
        examples = "\n  ".join(self.examples()) or "(see the warnings above)"
        raise TooManyBadSamples(
            f"{bad} of {total} samples ({100 * bad / total:.1f} %) could not be read, more than the threshold "
            f"{100 * threshold:.1f} % (data.bad_sample_threshold). Examples:\n  {examples}\n"
            "Check the data root and the list file, or remove the broken videos from the list.")

    def end_epoch(self, epoch: int, threshold: float = 0.01) -> dict:
        """The epoch's counts over every process (summed, so that all of them stop together or none), reported (a
        warning when any read failed), checked against ``threshold``, then zeroed for the next epoch."""
        local = self.snapshot()
        self.reset()
        counts = dict(zip(("bad", "total"), all_reduce_sum([local["bad"], local["total"]])))
        if counts["bad"]:
            log.warning("epoch %d: %d bad samples of %d training reads, each replaced by another training sample "
                        "(evaluation never replaces: it excludes and reports)", epoch, counts["bad"], counts["total"])
        self.check_counts(counts, threshold)
        return counts

    def check(self, threshold: float = 0.01, min_total: int = 0) -> None:
        """:meth:`check_counts` on the current counts."""
        self.check_counts(self.snapshot(), threshold, min_total)

    def __getstate__(self):  # the shared values travel with a spawned worker; the log-once set starts empty
        state = self.__dict__.copy()
        state["_logged"] = set()
        return state


@contextlib.contextmanager
def sample_rng(seed: int, epoch: int, index: int):
    """Seed Python's ``random``, numpy's global RNG and torch's CPU RNG for one sample from (seed, epoch, index) and
    restore their states afterwards; yields ``np.random.default_rng([seed, epoch, index])`` for the samplers. (Only
    the CPU generator is touched: ``torch.manual_seed`` would also reseed CUDA generators, which are not restored.)"""
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    key = [seed, epoch, index]
    rng = np.random.default_rng(key)
    mixed = int(np.random.SeedSequence(key).generate_state(1)[0])
    random.seed(mixed)
    np.random.seed(mixed)
    torch.random.default_generator.manual_seed(mixed)
    try:
        yield rng
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)


class RobustVideoDataset(Dataset):
    """Shared item logic: per-sample RNG, replacement (``substitute``, training) or exclusion (evaluation) of bad
    samples, the epoch.

    Subclasses keep their entries in the list named by ``_items_attr`` and implement ``load(index, rng)`` (the item
    without its index; raise :class:`VideoReadError` for unreadable data) and ``describe(index)``. The epoch is a
    shared value, so ``set_epoch`` in the main process reaches persistent DataLoader workers too.
    """

    _items_attr = "samples"
    BAD_ERRORS = (VideoReadError, OSError, ValueError)
    substitute = True   # False: a bad item is an Unreadable record (load it with collate_fn=collate_readable)

    def __init__(self, num_items: int, seed: int, max_retries: int) -> None:
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.num_items, self.seed, self.max_retries = num_items, seed, max_retries
        self._epoch = multiprocessing.Value("q", 0, lock=False)
        self.bad_samples = BadSampleCounter()

    def __len__(self) -> int:
        return self.num_items

    @property
    def epoch(self) -> int:
        return int(self._epoch.value)

    @epoch.setter
    def epoch(self, value: int) -> None:
        self._epoch.value = int(value)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def load(self, index: int, rng: np.random.Generator):
        raise NotImplementedError

    def describe(self, index: int) -> str:
        raise NotImplementedError

    def label_of(self, index: int) -> int:
        return -1

    def _num_items_for(self, entries: list) -> int:
        return len(entries)

    def replacement(self, index: int, attempt: int, failed: int) -> int:
        """The sample read instead of ``index`` after ``attempt`` failures (the last one at ``failed``, which is not
        chosen again): a function of (seed, epoch, index, attempt, failed) only, so runs with any number of workers
        or processes replace alike."""
        if len(self) < 2:
            return failed
        j = int(np.random.default_rng([self.seed, self.epoch, index, attempt, 104729]).integers(len(self) - 1))
        return j + 1 if j >= failed else j

    def __getitem__(self, index: int):
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        current, errors = index, []
        for attempt in range(self.max_retries + 1):
            with sample_rng(self.seed, self.epoch, current) as rng:
                try:
                    item = self.load(current, rng)
                except self.BAD_ERRORS as err:
                    reason = err.reason if isinstance(err, VideoReadError) else str(err)
                    if not self.substitute:
                        self.bad_samples.record(self.describe(index), reason, "excluded")
                        return Unreadable(index, self.describe(index), reason, self.label_of(index))
                    self.bad_samples.record(self.describe(current), reason)
                    errors.append(f"{self.describe(current)}: {reason}")
                    current = self.replacement(index, attempt + 1, current)
                    continue
            self.bad_samples.record_ok()
            return (*item, index)
        shown = "\n  ".join(errors[:5])
        raise TooManyBadSamples(f"{len(errors)} samples in a row could not be read for item {index} (max_retries "
                                f"{self.max_retries}):\n  {shown}")


def subset(dataset: RobustVideoDataset, indices: Sequence[int]) -> RobustVideoDataset:
    """A copy of ``dataset`` over the entries ``indices`` (its own epoch and bad-sample counter; the transform and
    settings are shared)."""
    entries = getattr(dataset, dataset._items_attr)
    picked = [entries[int(i)] for i in indices]
    out = copy.copy(dataset)
    setattr(out, dataset._items_attr, picked)
    out.num_items = dataset._num_items_for(picked)
    out._epoch = multiprocessing.Value("q", dataset.epoch, lock=False)
    out.bad_samples = BadSampleCounter()
    return out


def is_path(x) -> bool:
    return isinstance(x, (str, bytes)) or hasattr(x, "__fspath__")


def _available(reader, start: int, total: int | None) -> int:
    available = len(reader) - start
    return min(available, total) if total is not None else available


def _open_sample(s: VideoSample, backend: str, min_frames: int, frame_opts: dict):
    """(reader, available frames) of a sample; a sample with fewer than ``min_frames`` frames is a bad sample."""
    reader = open_video(s.path, backend, **frame_opts)
    available = _available(reader, s.start, s.total)
    if available < max(min_frames, 1):
        raise VideoReadError(s.path, f"too short: {max(available, 0)} frames (start {s.start}), fewer than "
                                     f"{max(min_frames, 1)}")
    return reader, available


def frame_opts(frame_ext, frame_template) -> dict:
    return {k: v for k, v in (("frame_ext", frame_ext), ("frame_template", frame_template)) if v}


class VideoPretrainDataset(RobustVideoDataset):
    """Unlabeled clips for masked pretraining: ``(clip [3, T, S, S] float, mask [N] bool, index)``; the mask is an
    empty bool tensor without ``mask_generator``. ``samples`` is a list of :class:`VideoSample` or a pretraining list
    file (``path`` or ``path start total``; its files are not checked here unless ``check_files``: the pretraining
    task checks them at start-up with :mod:`lgiformer.data.checks`, and one that breaks later is replaced when
    read).

    ``repeat_aug = r > 1`` is repeated sampling (MAE-ST's ``repeat_aug``, VideoMAE V2's ``num_sample``): the window is
    decoded once and cut into ``r`` views, each with its own crop and mask, so an item is ``(clips [r, 3, T, S, S],
    masks [r, N], index)``. Decoding is a large part of a sample's cost (about 60 % on 224 px, 8 s videos), so a
    loader worker delivers more clips per second: 1.6x with ``r = 2`` and 1.9x with ``r = 4`` there
    (docs/PERFORMANCE.md). Load it with ``collate_fn=collate_repeated``, which lays the views out as ``r``
    consecutive rows of an ordinary batch."""

    def __init__(self, samples: Sequence[VideoSample] | str, data_root: str | None = None, *, num_frames: int = 16,
                 stride: int = 4, input_size: int = 160, transform=None, mask_generator=None, seed: int = 0,
                 backend: str = "auto", max_retries: int = 10, min_frames: int = 1, check_files: bool = False,
                 frame_ext: str | None = None, frame_template: str | None = None, repeat_aug: int = 1) -> None:
        if repeat_aug < 1:
            raise ValueError(f"repeat_aug must be >= 1, got {repeat_aug}")
        if is_path(samples):
            samples = read_video_list(samples, data_root, labeled=False, check_files=check_files)
        super().__init__(len(samples), seed, max_retries)
        self.samples = list(samples)
        self.num_frames, self.stride, self.backend, self.min_frames = num_frames, stride, backend, min_frames
        self.repeat_aug = repeat_aug
        self.frame_opts = frame_opts(frame_ext, frame_template)
        if transform is None:
            transform = build_transform("pretrain", input_size)
        self.transform, self.mask_generator = transform, mask_generator

    def describe(self, index: int) -> str:
        return self.samples[index].path

    def load(self, index: int, rng: np.random.Generator):
        s = self.samples[index]
        reader, available = _open_sample(s, self.backend, self.min_frames, self.frame_opts)
        indices = pretrain_indices(available, self.num_frames, self.stride, rng) + s.start
        frames = reader.get(indices.tolist())
        views = [self._view(frames, rng) for _ in range(self.repeat_aug)]
        if self.repeat_aug == 1:
            return views[0]
        return torch.stack([clip for clip, _ in views]), torch.stack([mask for _, mask in views])

    def _view(self, frames, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        clip = self.transform(frames)
        if self.mask_generator is None:
            return clip, torch.zeros(0, dtype=torch.bool)
        gen = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
        return clip, self.mask_generator(1, "cpu", generator=gen)[0]


def collate_repeated(items: list) -> tuple[torch.Tensor, ...]:
    """Batch of :class:`VideoPretrainDataset` items made with ``repeat_aug = r``: ``[B * r, ...]`` clips and masks,
    the ``r`` views of each video in consecutive rows, and each video's index repeated ``r`` times."""
    clips, masks, indices = default_collate(items)
    r = clips.shape[1]
    return clips.flatten(0, 1), masks.flatten(0, 1), indices.repeat_interleave(r)


class ClipAULabels:
    """Per-frame AU labels of classification clips, looked up by path and frame (multi-task DFER + AU).
    ``targets(path, frames) -> (labels [n, K] float32, valid [n, K] bool)``; a clip or a frame without labels is
    all invalid, so it adds nothing to the AU loss or metrics."""

    def __init__(self, videos: Sequence[AUVideo], au_names: Sequence[str]) -> None:
        self.au_names = list(au_names)
        self._videos = {v.path: (v, {int(f): row for row, f in enumerate(v.frames)}) for v in videos}

    def __contains__(self, path: str) -> bool:
        return path in self._videos

    def video(self, path: str) -> AUVideo:
        return self._videos[path][0]

    @classmethod
    def from_csv(cls, csv_file, data_root=None, au_names: Sequence[str] | None = None) -> "ClipAULabels":
        videos, names = read_au_csv(csv_file, data_root, au_names=au_names)
        return cls(videos, names)

    def targets(self, path: str, frames: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        k = len(self.au_names)
        labels, valid = np.zeros((len(frames), k), np.float32), np.zeros((len(frames), k), bool)
        entry = self._videos.get(path)
        if entry is not None:
            video, rows = entry
            for i, f in enumerate(frames):
                row = rows.get(int(f))
                if row is not None:
                    labels[i], valid[i] = video.labels[row], video.valid[row]
        return torch.from_numpy(labels), torch.from_numpy(valid)


class VideoClassificationDataset(RobustVideoDataset):
    """Labeled clips. train: a random window + augmentation; val: the centre window, centre crop (deterministic);
    items ``(clip [3, T, S, S], label, index)``. test: ``(views [V, 3, T, S, S], label, index)`` with
    V = test_num_clips x test_num_crops (evenly spaced windows x distinct spatial crops, clip-major). In val and test
    a clip that cannot be read is an :class:`Unreadable` item, never another clip (load with ``collate_readable``).

    With ``au_labels`` (:class:`ClipAULabels`) the items also carry the AUs of each window's centre frame (position
    ``num_frames // 2``, as in the AU task's clip mode), before the index: ``au [K], au_valid [K]``, and in test mode
    one row per view, ``[V, K]``."""

    MODES = ("train", "val", "test")

    def __init__(self, samples: Sequence[VideoSample] | str, data_root: str | None = None, *, mode: str = "train",
                 num_frames: int = 16, sampling_rate: int = 4, img_size: int = 160, short_side_size: int | None = None,
                 test_num_clips: int = 2, test_num_crops: int = 2, auto_augment: str | None = "rand-m7-n4-mstd0.5-inc1",
                 reprob: float = 0.25, crop_scale: Sequence[float] = (0.08, 1.0),
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 seed: int = 0, backend: str = "auto", num_classes: int | None = None, max_retries: int = 10,
                 frame_ext: str | None = None, frame_template: str | None = None, min_frames: int = 1,
                 transform=None, au_labels: ClipAULabels | None = None) -> None:
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        if test_num_clips < 1 or test_num_crops < 1:
            raise ValueError(f"test_num_clips and test_num_crops must be >= 1, got {test_num_clips}, "
                             f"{test_num_crops}")
        if is_path(samples):
            samples = read_video_list(samples, data_root, labeled=True, num_classes=num_classes)
        super().__init__(len(samples), seed, max_retries)
        self.samples = list(samples)
        self.mode, self.num_frames, self.stride, self.backend = mode, num_frames, sampling_rate, backend
        self.test_num_clips, self.test_num_crops, self.min_frames = test_num_clips, test_num_crops, min_frames
        self.frame_opts = frame_opts(frame_ext, frame_template)
        if transform is None:
            norm = {k: v for k, v in (("mean", mean), ("std", std)) if v is not None}
            if mode == "train":
                transform = build_transform("train", img_size, auto_augment=auto_augment, reprob=reprob,
                                            scale=tuple(crop_scale), **norm)
            else:
                transform = build_transform(mode, img_size, short_side_size=short_side_size, **norm)
        self.transform = transform
        self.au_labels = au_labels
        self.substitute = mode == "train"

    @property
    def labels(self) -> list[int]:
        return [s.label for s in self.samples]

    def label_of(self, index: int) -> int:
        return self.samples[index].label

    @property
    def num_views(self) -> int:
        return self.test_num_clips * self.test_num_crops if self.mode == "test" else 1

    def describe(self, index: int) -> str:
        return self.samples[index].path

    def load(self, index: int, rng: np.random.Generator):
        s = self.samples[index]
        reader, available = _open_sample(s, self.backend, self.min_frames, self.frame_opts)
        if self.mode != "test":
            window = (train_indices(available, self.num_frames, self.stride, rng) if self.mode == "train"
                      else center_indices(available, self.num_frames, self.stride))
            clip = self.transform(reader.get((window + s.start).tolist()))
            if self.au_labels is None:
                return clip, s.label
            au, au_valid = self.au_labels.targets(s.path, [window[self.num_frames // 2] + s.start])
            return clip, s.label, au[0], au_valid[0]
        windows = test_clip_indices(available, self.num_frames, self.stride, self.test_num_clips)
        # one decode for all windows (sequential readers decode up to the last frame once)
        wanted = np.unique(np.concatenate(windows))
        frames = reader.get((wanted + s.start).tolist())
        views = []
        for window in windows:
            clip = frames[np.searchsorted(wanted, window)]
            views += [self.transform(clip, crop_index=c, num_crops=self.test_num_crops)
                      for c in range(self.test_num_crops)]
        if self.au_labels is None:
            return torch.stack(views), s.label
        centres = [int(w[self.num_frames // 2]) + s.start for w in windows for _ in range(self.test_num_crops)]
        return (torch.stack(views), s.label, *self.au_labels.targets(s.path, centres))
