"""Action unit data: videos with per-frame AU labels (a headered CSV, :func:`lgiformer.data.lists.read_au_csv`).

* :class:`AUVideoDataset`: training windows (clip or dense labels), robust and reproducible like every dataset;
* :class:`AUFrameWindows`: evaluation, one clip centred on each labelled frame (the frame-wise protocol);
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from lgiformer.data.datasets import RobustVideoDataset, Unreadable, frame_opts, is_path
from lgiformer.data.lists import AUVideo, read_au_csv
from lgiformer.data.readers import VideoReadError, open_video
from lgiformer.data.sampling import center_indices, train_indices
from lgiformer.data.transforms import build_transform


class AUVideoDataset(RobustVideoDataset):
    """Per-frame AU labels. Clip mode: ``(clip, labels [K] float, valid [K] bool, index)`` with the labels of the
    sampled window's centre frame (position ``num_frames // 2``); dense mode: ``(clip, labels [T, K], valid [T, K],
    index)`` for every sampled frame. train: random window (+ augmentation, no flip), ``windows_per_video`` items
    per video; val / test: the centre window."""

    _items_attr = "videos"
    MODES = ("train", "val", "test")

    def __init__(self, videos: Sequence[AUVideo] | str, data_root: str | None = None, *, mode: str = "train",
                 num_frames: int = 16, sampling_rate: int = 4, img_size: int = 160, dense: bool = False,
                 au_names: Sequence[str] | None = None, auto_augment: str | None = None, reprob: float = 0.0,
                 seed: int = 0, backend: str = "auto", max_retries: int = 10, windows_per_video: int = 1,
                 intensity_threshold: float | None = None, frame_ext: str | None = None,
                 frame_template: str | None = None, transform=None) -> None:
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        if is_path(videos):
            videos, au_names = read_au_csv(videos, data_root, au_names=au_names,
                                           intensity_threshold=intensity_threshold)
        self.videos = list(videos)
        if not self.videos:
            raise ValueError("AUVideoDataset: no videos")
        self.au_names = list(au_names or self.videos[0].au_names)
        # several windows per video and epoch: AU videos are long and few
        self.windows_per_video = max(1, windows_per_video if mode == "train" else 1)
        super().__init__(self._num_items_for(self.videos), seed, max_retries)
        self.mode, self.num_frames, self.stride, self.dense, self.backend = mode, num_frames, sampling_rate, dense, \
            backend
        self.frame_opts = frame_opts(frame_ext, frame_template)
        if transform is None:
            transform = (build_transform("train", img_size, auto_augment=auto_augment, reprob=reprob, hflip=0.0)
                         if mode == "train" else build_transform("val", img_size))
        self.transform = transform
        self.substitute = mode == "train"

    def _num_items_for(self, entries: list) -> int:
        return len(entries) * self.windows_per_video

    def describe(self, index: int) -> str:
        return self.videos[index % len(self.videos)].path

    def load(self, index: int, rng: np.random.Generator):
        v = self.videos[index % len(self.videos)]
        n = len(v.frames)
        if n < 1:
            raise VideoReadError(v.path, "no labelled frames")
        positions = (train_indices(n, self.num_frames, self.stride, rng) if self.mode == "train"
                     else center_indices(n, self.num_frames, self.stride))
        frames = open_video(v.path, self.backend, **self.frame_opts).get(v.frames[positions].tolist())
        clip = self.transform(frames)
        if self.dense:
            return clip, torch.from_numpy(v.labels[positions]), torch.from_numpy(v.valid[positions])
        centre = positions[len(positions) // 2]
        return clip, torch.from_numpy(v.labels[centre]), torch.from_numpy(v.valid[centre])


def window_positions(n: int, centre: int, num_frames: int, stride: int) -> np.ndarray:
    """``num_frames`` positions at ``stride`` with ``centre`` at index ``num_frames // 2``, clamped to the video."""
    idx = centre + stride * (np.arange(num_frames) - num_frames // 2)
    return np.clip(idx, 0, n - 1).astype(np.int64)


class AUFrameWindows(Dataset):
    """Evaluation items: one clip centred on each labelled frame (every ``frame_stride``-th) of each video, in video
    and time order. Items: ``(clip [3, T, S, S], labels [K], valid [K], item)``; :attr:`items` maps an item to
    ``(video index, position)``. Deterministic (no augmentation). An item that cannot be read is an
    :class:`~lgiformer.data.datasets.Unreadable` record (load with ``collate_readable``); evaluation then leaves out
    the whole video (:func:`lgiformer.inference.evaluate_au`)."""

    def __init__(self, videos: Sequence, *, num_frames: int, sampling_rate: int, img_size: int,
                 backend: str = "auto", frame_stride: int = 1) -> None:
        self.videos = list(videos)
        self.num_frames, self.stride, self.backend = num_frames, sampling_rate, backend
        self.items = [(vi, p) for vi, v in enumerate(self.videos) for p in range(0, len(v.frames), frame_stride)]
        self.transform = build_transform("val", img_size)
        self._reader: tuple[int, Any] | None = None

    def __len__(self) -> int:
        return len(self.items)

    def _open(self, vi: int):
        """The video's reader, kept for its next frames; a video that cannot be opened fails once, not per frame."""
        if self._reader is None or self._reader[0] != vi:
            try:
                self._reader = (vi, open_video(self.videos[vi].path, self.backend))
            except VideoReadError as err:
                self._reader = (vi, err)
        if isinstance(self._reader[1], VideoReadError):
            raise self._reader[1]
        return self._reader[1]

    def __getitem__(self, index: int):
        vi, p = self.items[index]
        v = self.videos[vi]
        positions = window_positions(len(v.frames), p, self.num_frames, self.stride)
        try:
            frames = self._open(vi).get(v.frames[positions].tolist())
        except (VideoReadError, OSError, ValueError) as err:
            return Unreadable(index, v.path, err.reason if isinstance(err, VideoReadError) else str(err))
        return (self.transform(frames), torch.from_numpy(v.labels[p]), torch.from_numpy(v.valid[p]), index)
