"""Datasets and loaders: bad samples are replaced and counted, items are reproducible per (seed, epoch, index), the
distributed sampler gives the same global batches with 1 or 2 ranks and resumes mid-epoch."""
import logging
import random

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from lgiformer.data import (AUVideo, AUVideoDataset, RobustVideoDataset, TooManyBadSamples,
                            VideoClassificationDataset, VideoPretrainDataset, VideoSample, build_loader, set_epoch,
                            split_validation, subset)
from lgiformer.data.loader import ResumableDistributedSampler

S = 16


class StandIn:
    """Stands in for lgiformer.data.transforms: uint8 [T, H, W, 3] -> float [3, T, S, S]. Random (train) crops and
    noise come from Python's ``random`` and torch's global RNG; evaluation crops are fixed and distinct."""

    def __init__(self, train: bool = True) -> None:
        self.train = train

    def __call__(self, clip, crop_index: int = 0, num_crops: int = 1) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(clip)).permute(3, 0, 1, 2).float() / 255
        h, w = x.shape[-2:]
        if self.train:
            top, left = random.randint(0, h - S), int(torch.randint(0, w - S + 1, (1,)))
        else:
            top = (h - S) // 2
            left = (w - S) // 2 if num_crops == 1 else (w - S) * crop_index // (num_crops - 1)
        x = x[..., top:top + S, left:left + S]
        return x + 0.01 * torch.randn(x.shape) if self.train else x


@pytest.fixture
def data(tmp_path, media):
    """Four 10-frame folders (labels 0-3) and a corrupt mp4 (label 1) at index 4."""
    lines = []
    for i in range(4):
        media.folder(tmp_path / f"c{i}", media.frames(10, 32, seed=i))
        lines.append(f"c{i} {i}")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(np.random.default_rng(0).integers(0, 256, 2048, dtype=np.uint8).tobytes())
    lines.append("broken.mp4 1")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    return tmp_path


def _cls(root, mode="train", **kw):
    kw = {"num_frames": 4, "sampling_rate": 2, "img_size": S, "transform": StandIn(mode == "train"), **kw}
    return VideoClassificationDataset(str(root / "list.txt"), str(root), mode=mode, **kw)


def test_corrupt_video_is_skipped_counted_and_replaced(data, caplog):
    ds = _cls(data, seed=1)
    with caplog.at_level(logging.WARNING, logger="lgiformer.data.datasets"):
        clip, label, index = ds[4]
        again = ds[4]
    assert clip.shape == (3, 4, S, S) and index == 4 and 0 <= label <= 3
    assert torch.equal(clip, again[0]) and label == again[1]              # the same replacement each time
    assert ds.bad_samples.snapshot() == {"bad": 2, "total": 4}
    logged = [r for r in caplog.records if r.name == "lgiformer.data.datasets" and "broken.mp4" in r.getMessage()]
    assert len(logged) == 1                                                 # logged once per path
    ds.bad_samples.check(threshold=0.6)                                     # 50 % bad: under 60 %
    ds.bad_samples.check(threshold=0.01, min_total=100)                     # too few reads to judge
    with pytest.raises(TooManyBadSamples, match="broken.mp4") as err:
        ds.bad_samples.check(threshold=0.01)
    assert "2 of 4 samples" in str(err.value)
    # the end of an epoch: reported, zeroed for the next epoch, checked against the threshold
    with caplog.at_level(logging.WARNING, logger="lgiformer.data.datasets"):
        assert ds.bad_samples.end_epoch(3, threshold=0.6) == {"bad": 2, "total": 4}
    assert any("epoch 3: 2 bad samples of 4 training reads, each replaced" in r.getMessage() for r in caplog.records)
    assert ds.bad_samples.snapshot() == {"bad": 0, "total": 0}
    ds[4]
    with pytest.raises(TooManyBadSamples):
        ds.bad_samples.end_epoch(4, threshold=0.01)
    assert ds.bad_samples.snapshot() == {"bad": 0, "total": 0}


def test_gives_up_after_max_retries(tmp_path):
    for name in ("a.mp4", "b.mp4"):
        (tmp_path / name).write_bytes(b"not a video at all")
    (tmp_path / "list.txt").write_text("a.mp4 0\nb.mp4 1\n")
    ds = _cls(tmp_path, max_retries=3)
    with pytest.raises(TooManyBadSamples, match="4 samples in a row"):
        ds[0]
    assert ds.bad_samples.snapshot() == {"bad": 4, "total": 4}


def test_too_short_videos_are_bad_samples(data):
    ds = _cls(data, min_frames=11)                          # every folder holds 10 frames
    with pytest.raises(TooManyBadSamples, match="too short"):
        ds[0]


def test_items_are_reproducible_per_seed_epoch_and_index(data):
    ds = _cls(data)
    states = random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()
    first = ds[1][0]
    assert random.getstate() == states[0] and (np.random.get_state()[1] == states[1]).all()
    assert torch.equal(torch.get_rng_state(), states[2])                   # global RNGs restored
    assert torch.equal(first, ds[1][0])
    assert torch.equal(first, _cls(data)[1][0])                             # a fresh dataset: same item
    assert not torch.equal(first, _cls(data, seed=5)[1][0])
    ds.set_epoch(1)
    assert not torch.equal(first, ds[1][0])
    ds.set_epoch(0)
    assert torch.equal(first, ds[1][0])


def test_workers_give_the_same_items_and_share_the_counts(data):
    ds = _cls(data)
    single = [b[0] for b in build_loader(ds, 2, shuffle=False, drop_last=False)]
    ds.bad_samples.reset()
    loader = build_loader(ds, 2, shuffle=False, drop_last=False, num_workers=2)
    multi = [b[0] for b in loader]
    assert all(torch.equal(a, b) for a, b in zip(single, multi)) and len(single) == len(multi) == 3
    assert ds.bad_samples.snapshot() == {"bad": 1, "total": 6}             # counted in a worker, seen here
    assert any("broken.mp4" in e for e in ds.bad_samples.examples())


def test_validation_and_test_modes(data):
    val = _cls(data, "val")
    a = val[0][0]
    val.set_epoch(3)
    assert torch.equal(a, val[0][0])                                        # deterministic validation
    test = _cls(data, "test", test_num_clips=2, test_num_crops=3)
    views, label, index = test[2]
    assert views.shape == (6, 3, 4, S, S) and label == 2 and index == 2 and test.num_views == 6
    assert not torch.equal(views[0], views[1])                              # distinct crops
    assert not torch.equal(views[0], views[3])                              # distinct windows, same crop


def test_pretrain_items_and_masks(tmp_path, media):
    media.mp4(tmp_path / "v.mp4", media.frames(24, 32))
    media.folder(tmp_path / "f", media.frames(12, 32, seed=1))
    (tmp_path / "pretrain.txt").write_text("v.mp4 0 24\nf\n")

    def masker(batch, device, generator=None):
        return torch.rand(batch, 10, generator=generator) < 0.5

    ds = VideoPretrainDataset(str(tmp_path / "pretrain.txt"), str(tmp_path), num_frames=4, stride=2,
                              transform=StandIn(), mask_generator=masker)
    clip, mask, index = ds[0]
    assert clip.shape == (3, 4, S, S) and mask.shape == (10,) and mask.dtype == torch.bool and index == 0
    assert torch.equal(mask, ds[0][1]) and not torch.equal(mask, ds[1][1])
    bare = VideoPretrainDataset([VideoSample(str(tmp_path / "f"))], transform=StandIn())
    assert bare[0][1].shape == (0,) and bare[0][1].dtype == torch.bool


def test_repeated_sampling_decodes_once_and_cuts_distinct_views(tmp_path, media, monkeypatch):
    """repeat_aug = 3: one decode per item, 3 views with their own crop and mask; view 0 is the item that
    repeat_aug = 1 gives (same draws in the same order), and the collated batch holds each video's views in a row."""
    import lgiformer.data.datasets as datasets
    from lgiformer.data import collate_repeated

    media.mp4(tmp_path / "v.mp4", media.frames(24, 32))
    media.folder(tmp_path / "f", media.frames(12, 32, seed=1))
    (tmp_path / "pretrain.txt").write_text("v.mp4 0 24\nf\n")

    def masker(batch, device, generator=None):
        return torch.rand(batch, 10, generator=generator) < 0.5

    def dataset(repeat_aug):
        return VideoPretrainDataset(str(tmp_path / "pretrain.txt"), str(tmp_path), num_frames=4, stride=2,
                                    transform=StandIn(), mask_generator=masker, repeat_aug=repeat_aug)

    decodes = []
    real_open = datasets.open_video

    def counting_open(*args, **kwargs):
        reader = real_open(*args, **kwargs)
        real_get = reader.get
        reader.get = lambda indices: decodes.append(list(indices)) or real_get(indices)
        return reader

    monkeypatch.setattr(datasets, "open_video", counting_open)
    single, repeated = dataset(1), dataset(3)
    for index in (0, 1):
        decodes.clear()
        clips, masks, got = repeated[index]
        assert len(decodes) == 1 and got == index
        assert clips.shape == (3, 3, 4, S, S) and masks.shape == (3, 10) and masks.dtype == torch.bool
        clip, mask, _ = single[index]
        torch.testing.assert_close(clips[0], clip)
        assert torch.equal(masks[0], mask)
        for a, b in ((0, 1), (0, 2), (1, 2)):
            assert not torch.allclose(clips[a], clips[b]) and not torch.equal(masks[a], masks[b])
        again = repeated[index]  # reproducible per (seed, epoch, index), as every item
        assert torch.equal(again[0], clips) and torch.equal(again[1], masks)
    batch = collate_repeated([repeated[0], repeated[1]])
    assert batch[0].shape == (6, 3, 4, S, S) and batch[1].shape == (6, 10)
    assert batch[2].tolist() == [0, 0, 0, 1, 1, 1]
    assert torch.equal(batch[0][3:], repeated[1][0]) and torch.equal(batch[1][:3], repeated[0][1])
    with pytest.raises(ValueError, match="repeat_aug must be >= 1"):
        dataset(0)


def test_au_items_clip_and_dense(tmp_path, media):
    media.folder(tmp_path / "v", media.frames(10, 32))
    labels = (np.arange(30).reshape(10, 3) % 2).astype(np.float32)
    labels[:, 2] = np.arange(10)                                        # column 2 = frame position, to check
    valid = np.ones((10, 3), bool)
    valid[5, 0] = False
    video = AUVideo(str(tmp_path / "v"), np.arange(10), labels, valid, "S1")
    kw = dict(num_frames=4, sampling_rate=2, img_size=S, transform=StandIn(False))
    clip, lab, val, index = AUVideoDataset([video], mode="val", **kw)[0]
    # centre window of 10 frames, 4 x 2: positions 1, 3, 5, 7; the label is that of position 5 (index T // 2)
    assert clip.shape == (3, 4, S, S) and lab.shape == (3,) and lab[2] == 5 and not val[0] and val[1]
    _, dense_lab, dense_val, _ = AUVideoDataset([video], mode="val", dense=True, **kw)[0]
    assert dense_lab.shape == dense_val.shape == (4, 3) and dense_lab[:, 2].tolist() == [1, 3, 5, 7]
    train = AUVideoDataset([video], mode="train", windows_per_video=3, **kw)
    assert len(train) == 3 and len(subset(train, [0])) == 3


def test_split_validation_is_stratified_deterministic_and_disjoint():
    samples = [VideoSample(f"v{i}", label=i % 3) for i in range(30)] + [VideoSample("lonely", label=3)]
    train, val = split_validation(samples, 0.2, seed=0)
    assert len(train) + len(val) == len(samples) and not {s.path for s in train} & {s.path for s in val}
    assert sorted(s.label for s in val) == [0, 0, 1, 1, 2, 2]               # 20 % of each label
    assert "lonely" in {s.path for s in train}                              # a single sample stays in training
    assert split_validation(samples, 0.2, seed=0) == (train, val)
    assert split_validation(samples, 0.2, seed=1)[1] != val
    assert split_validation(samples, 0.0) == (samples, [])
    with pytest.raises(ValueError):
        split_validation(samples, 1.0)


def test_subset_keeps_settings(data):
    ds = _cls(data, "val")
    part = subset(ds, [2, 0])
    assert len(part) == 2 and [s.label for s in part.samples] == [2, 0]
    assert torch.equal(part[0][0], ds[2][0]) and part.bad_samples is not ds.bad_samples


class Ints(Dataset):
    def __init__(self, n):
        self.n, self.epoch = n, 0

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return i

    def set_epoch(self, epoch):
        self.epoch = epoch


def _batches(n, batch, world, epoch=0, start_step=0, drop_last=True):
    """Per rank, the list of batches (as lists of indices) of one epoch."""
    out = []
    for rank in range(world):
        loader = build_loader(Ints(n), batch, shuffle=True, drop_last=drop_last, seed=7, rank=rank,
                              world_size=world)
        set_epoch(loader, epoch, start_step=start_step)
        out.append([b.tolist() for b in loader])
    return out


def test_global_batches_do_not_depend_on_the_number_of_ranks():
    for n, drop_last in ((37, True), (40, False)):
        one = _batches(n, 8, 1, epoch=2, drop_last=drop_last)[0]
        two = _batches(n, 4, 2, epoch=2, drop_last=drop_last)
        assert len(two[0]) == len(two[1])
        for k, (a, b) in enumerate(zip(two[0], two[1])):
            if len(a) + len(b) == 8:
                assert sorted(a + b) == sorted(one[k])
    assert sorted(sum(_batches(40, 8, 1)[0], [])) == list(range(40))       # a permutation of the epoch
    assert _batches(40, 8, 1, epoch=0) != _batches(40, 8, 1, epoch=1)


def test_resume_skips_the_consumed_part_of_the_epoch():
    full = _batches(37, 4, 2, epoch=3)
    resumed = _batches(37, 4, 2, epoch=3, start_step=2)
    assert [r[2:] for r in full] == resumed
    sampler = ResumableDistributedSampler(Ints(10), 1, 0, shuffle=True, seed=0)
    sampler.set_epoch(1, start_index=3)
    assert list(sampler) == sampler.indices()[3:] and len(sampler) == 7


class EpochItems(RobustVideoDataset):
    def __init__(self):
        super().__init__(4, seed=0, max_retries=0)

    def load(self, index, rng):
        return (torch.tensor(self.epoch),)

    def describe(self, index):
        return str(index)


def test_persistent_workers_see_the_new_epoch():
    ds = EpochItems()
    loader = build_loader(ds, 2, shuffle=False, drop_last=False, num_workers=1, persistent_workers=True)
    for epoch in range(3):
        set_epoch(loader, epoch)
        assert all((b[0] == epoch).all() for b in loader)


def test_default_transforms_give_the_documented_shapes(data):
    pytest.importorskip("lgiformer.data.transforms")
    kw = dict(num_frames=4, sampling_rate=2, img_size=S)
    lst, root = str(data / "list.txt"), str(data)
    assert VideoClassificationDataset(lst, root, mode="train", auto_augment=None, **kw)[0][0].shape == (3, 4, S, S)
    assert VideoClassificationDataset(lst, root, mode="val", **kw)[0][0].shape == (3, 4, S, S)
    views = VideoClassificationDataset(lst, root, mode="test", test_num_clips=2, test_num_crops=2, **kw)[0][0]
    assert views.shape == (4, 3, 4, S, S) and views.dtype == torch.float32
    assert VideoPretrainDataset([VideoSample(str(data / "c0"))], num_frames=4, stride=2, input_size=S)[0][0].shape \
        == (3, 4, S, S)
