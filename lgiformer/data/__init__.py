"""The data path: list file -> sample -> reader -> temporal sampling -> clip-consistent transforms -> batch.

Also the deterministic synthetic face-video generator (``python -m lgiformer.data.synthetic``).
"""
from lgiformer.data.au import AUFrameWindows, AUVideoDataset, window_positions
from lgiformer.data.checks import InputCheckError, check_inputs, count_frames
from lgiformer.data.datasets import (BadSampleCounter, ClipAULabels, ReadableBatch, RobustVideoDataset,
                                     TooManyBadSamples, Unreadable, VideoClassificationDataset, VideoPretrainDataset,
                                     collate_readable, collate_repeated, sample_rng, subset)
from lgiformer.data.lists import (AUVideo, ListFormatError, VideoSample, read_au_csv, read_video_list,
                                  split_validation)
from lgiformer.data.loader import ResumableDistributedSampler, build_loader, seed_worker, set_epoch
from lgiformer.data.mixup import VideoMixup
from lgiformer.data.readers import VideoReadError, list_frames, natural_key, open_video, read_frames
from lgiformer.data.registry import DatasetSpec, get_dataset_spec, list_datasets, register_dataset
from lgiformer.data.sampling import (center_indices, multi_clip_indices, pretrain_indices, test_clip_indices,
                                     train_indices)
from lgiformer.data.synthetic import ensure_synthetic, generate, resolve_root
from lgiformer.data.transforms import EvalTransform, PretrainTransform, TrainTransform, build_transform

__all__ = ["AUFrameWindows", "AUVideo", "AUVideoDataset", "BadSampleCounter", "ClipAULabels", "DatasetSpec",
           "EvalTransform", "InputCheckError", "ListFormatError", "PretrainTransform", "ReadableBatch",
           "ResumableDistributedSampler", "RobustVideoDataset", "TooManyBadSamples", "TrainTransform", "Unreadable",
           "VideoClassificationDataset", "VideoMixup", "VideoPretrainDataset", "VideoReadError", "VideoSample",
           "build_loader", "build_transform", "center_indices", "check_inputs", "collate_readable", "collate_repeated",
           "count_frames", "ensure_synthetic", "generate", "get_dataset_spec", "list_datasets",
           "list_frames", "multi_clip_indices", "natural_key", "open_video", "pretrain_indices", "read_au_csv",
           "read_frames", "read_video_list", "register_dataset", "resolve_root", "sample_rng", "seed_worker", "set_epoch",
           "split_validation", "subset", "test_clip_indices", "train_indices", "window_positions"]
