"""The data path: list file -> sample -> reader -> temporal sampling -> clip-consistent transforms -> batch.

Also the deterministic synthetic face-video generator (``python -m lgiformer.data.synthetic``). The transforms, mixup
and generator names are imported lazily, on first use, so this package imports even while one of them is missing.
"""
from lgiformer.data.datasets import (AUVideoDataset, BadSampleCounter, ClipAULabels, RobustVideoDataset,
                                     TooManyBadSamples, VideoClassificationDataset, VideoPretrainDataset,
                                     collate_repeated, sample_rng, split_validation, subset)
from lgiformer.data.lists import AUVideo, ListFormatError, VideoSample, read_au_csv, read_video_list
from lgiformer.data.loader import ResumableDistributedSampler, build_loader, seed_worker, set_epoch
from lgiformer.data.readers import VideoReadError, list_frames, natural_key, open_video, read_frames
from lgiformer.data.registry import DatasetSpec, get_dataset_spec, list_datasets, register_dataset
from lgiformer.data.sampling import (center_indices, multi_clip_indices, pretrain_indices, test_clip_indices,
                                     train_indices)

_LAZY = {"build_transform": "transforms", "PretrainTransform": "transforms", "TrainTransform": "transforms",
         "EvalTransform": "transforms", "VideoMixup": "mixup", "ensure_synthetic": "synthetic",
         "generate": "synthetic", "resolve_root": "synthetic"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"lgiformer.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'lgiformer.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["AUVideo", "AUVideoDataset", "BadSampleCounter", "ClipAULabels", "DatasetSpec", "ListFormatError",
           "ResumableDistributedSampler", "RobustVideoDataset", "TooManyBadSamples", "VideoClassificationDataset",
           "VideoPretrainDataset", "VideoReadError", "VideoSample", "build_loader", "center_indices",
           "collate_repeated", "get_dataset_spec", "list_datasets", "list_frames", "multi_clip_indices", "natural_key",
           "open_video", "pretrain_indices", "read_au_csv", "read_frames", "read_video_list", "register_dataset",
           "sample_rng", "seed_worker", "set_epoch", "split_validation", "subset", "test_clip_indices", "train_indices",
           *_LAZY]
