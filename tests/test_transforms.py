"""Clip-consistent transforms: one random draw per clip, seeded reproducibility, deterministic distinct test crops."""
import random

import numpy as np
import pytest
import torch
from PIL import Image

from lgiformer.data.transforms import (ClipRandAugment, ClipRandomErasing, EvalTransform, PretrainTransform,
                                       TrainTransform, build_transform)

MEAN, STD = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])


def _image(size=(64, 64), seed=0) -> np.ndarray:
    """A textured uint8 frame in [0, 200] (room for the +t offsets below without saturation)."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    noise = np.random.default_rng(seed).integers(0, 40, (h, w, 3))
    base = np.stack([xx * 150 // w, yy * 150 // h, (xx + yy) * 75 // (h + w)], -1) + noise
    return base.clip(0, 200).astype(np.uint8)


def _still(t=6, size=(64, 64)) -> np.ndarray:
    return np.repeat(_image(size)[None], t, axis=0)


def _ramp(t=6, size=(64, 64)) -> np.ndarray:
    """Frame t = frame 0 + 5 t: any clip-consistent linear geometry keeps a constant offset between frames."""
    return np.stack([_image(size) + np.uint8(5 * i) for i in range(t)])


def _seed(s):
    random.seed(s)
    torch.manual_seed(s)


def _frames_equal(out):
    return all(torch.equal(out[:, 0], out[:, t]) for t in range(out.shape[1]))


TRANSFORMS = {
    "pretrain": lambda: PretrainTransform(32),
    "train_all": lambda: TrainTransform(32, hflip=0.5, reprob=1.0),  # RandAugment + crop + flip + erasing
    "train_strong_ra": lambda: TrainTransform(32, auto_augment="rand-m9-n4-mstd1.0", reprob=1.0, remode="rand",
                                              recount=3),
}


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_still_clip_stays_still(name):
    """Identical input frames give identical output frames: every random choice is made once per clip."""
    transform = TRANSFORMS[name]()
    for s in range(6):
        _seed(s)
        out = transform(_still())
        assert out.shape == (3, 6, 32, 32) and out.dtype == torch.float32
        assert _frames_equal(out), f"seed {s}: frames of a still clip differ"


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_seeded_reproducible_and_seeds_differ(name):
    transform, clip = TRANSFORMS[name](), _ramp()
    _seed(3)
    a = transform(clip)
    np.random.seed(123)  # numpy is not a source of randomness of the transforms
    _seed(3)
    assert torch.equal(a, transform(clip))
    outs = []
    for s in range(4):
        _seed(s)
        outs.append(transform(clip))
    assert all(not torch.equal(outs[i], outs[j]) for i in range(4) for j in range(i + 1, 4))


@pytest.mark.parametrize("transform", [PretrainTransform(32), TrainTransform(32, auto_augment=None, reprob=0.0)],
                         ids=["pretrain", "train_crop_flip"])
def test_same_box_and_flip_on_every_frame(transform):
    """Frames t and 0 differ by 5 t grey levels: after a shared crop / resize / flip they still differ by the same
    constant (in normalised units), pixel for pixel; a per-frame box or flip would break this."""
    for s in range(8):
        _seed(s)
        out = transform(_ramp(size=(60, 80)))
        for t in range(1, 6):
            expected = (5 * t / 255 / STD).view(3, 1, 1).expand(3, 32, 32)
            torch.testing.assert_close(out[:, t] - out[:, 0], expected, atol=1.5 / 255 / 0.224, rtol=0)


def test_flip_is_one_coin_per_clip():
    """With only a flip (full-frame crop), the output is the normalised clip or its mirror, never a mix."""
    transform = TrainTransform(64, auto_augment=None, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.5, reprob=0.0)
    clip = _ramp()
    plain = EvalTransform(64)(clip)
    seen = set()
    for s in range(10):
        _seed(s)
        out = transform(clip)
        flipped = torch.allclose(out, plain.flip(-1))
        assert flipped or torch.allclose(out, plain)
        seen.add(flipped)
    assert seen == {True, False}


@pytest.mark.parametrize("mode", ["pixel", "rand", "const"])
def test_erasing_box_spans_all_frames(mode):
    """The erased pixels hold the same fill on all frames, inside one rectangle, at the same place on every frame."""
    erase = ClipRandomErasing(probability=1.0, mode=mode)
    x = torch.arange(6, dtype=torch.float32).view(1, 6, 1, 1).expand(3, 6, 40, 40) + 100  # frames differ everywhere
    for s in range(5):
        _seed(s)
        out = erase(x)
        changed = (out != x).any(0)  # [T, H, W]
        assert changed[0].any() and all(torch.equal(changed[0], changed[t]) for t in range(6))
        ys, xs = changed[0].nonzero(as_tuple=True)
        box = torch.zeros_like(changed[0])
        box[ys.min():ys.max() + 1, xs.min():xs.max() + 1] = True
        if mode != "const":
            assert torch.equal(box, changed[0]), "erased pixels must form one rectangle"
        inside = out[:, :, changed[0]]
        assert torch.equal(inside, inside[:, :1].expand_as(inside)), "the fill must be the same on every frame"
    _seed(0)
    assert torch.equal(ClipRandomErasing(probability=0.0)(x), x)


def test_randaugment_same_ops_on_every_frame():
    ra = ClipRandAugment("rand-m9-n4-mstd0.5-inc1", 32)
    changed = 0
    for s in range(6):
        _seed(s)
        out = ra(_still(4))
        assert out.dtype == np.uint8 and out.shape == (4, 64, 64, 3)
        assert all(np.array_equal(out[0], out[t]) for t in range(4))
        changed += not np.array_equal(out[0], _image())
    assert changed >= 3, "RandAugment should change most clips"


def test_accepts_pil_list_and_tensor():
    clip = _ramp(4)
    pil = [Image.fromarray(f) for f in clip]
    for transform in (PretrainTransform(32), TrainTransform(32), EvalTransform(32)):
        outs = []
        for c in (clip, pil, torch.from_numpy(clip)):
            _seed(7)
            outs.append(transform(c))
        assert all(torch.equal(outs[0], o) for o in outs[1:])
    with pytest.raises(ValueError):
        EvalTransform(32)(clip.astype(np.float32))


def test_eval_centre_crop_matches_hand_normalisation():
    clip = _ramp(3, size=(48, 60))  # short side 48 = input size: no resize, centre crop of the long side
    out = EvalTransform(48)(clip)
    assert out.shape == (3, 3, 48, 48) and out.dtype == torch.float32
    expected = (torch.from_numpy(clip[:, :, 6:54]).float() / 255 - MEAN) / STD
    torch.testing.assert_close(out, expected.permute(3, 0, 1, 2))
    tall = EvalTransform(48)(clip.transpose(0, 2, 1, 3))  # portrait frames: crop along the height
    torch.testing.assert_close(tall, expected.permute(3, 0, 2, 1))
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    custom = EvalTransform(48, mean=mean, std=std)(clip)
    torch.testing.assert_close(custom, ((torch.from_numpy(clip[:, :, 6:54]).float() / 255 - 0.5) / 0.25)
                               .permute(3, 0, 1, 2))


@pytest.mark.parametrize("size", [(64, 64), (64, 96), (96, 64)])
@pytest.mark.parametrize("num_crops", [2, 3])
def test_multi_crop_views_differ(size, num_crops):
    """docs/REFERENCE.md#defect-4: its 2 test crops were identical. Square frames included, views differ pairwise;
    each view is deterministic."""
    clip = _ramp(4, size=size)
    transform = build_transform("test", 48)
    views = [transform(clip, crop_index=i, num_crops=num_crops) for i in range(num_crops)]
    assert all(v.shape == (3, 4, 48, 48) for v in views)
    for i in range(num_crops):
        for j in range(i + 1, num_crops):
            assert not torch.allclose(views[i], views[j])
        assert torch.equal(views[i], transform(clip, crop_index=i, num_crops=num_crops))


def test_eval_rejects_repeating_crops_and_bad_index():
    with pytest.raises(ValueError, match="repeat"):
        EvalTransform(48, short_side_size=48)(_still(2, (48, 48)), crop_index=0, num_crops=2)
    with pytest.raises(ValueError):
        EvalTransform(48)(_still(2), crop_index=2, num_crops=2)


def _grid(offsets, h, w, ch, cw):
    return {(oy * ((h - ch) // 4), ox * ((w - cw) // 4)) for ox, oy in offsets}


def test_pretrain_crop_boxes_follow_the_grid():
    """Crop sides from scales x short side (at most one scale step apart), positions on the 13 or 5 point grid."""
    corners_centre = [(0, 0), (4, 0), (0, 4), (4, 4), (2, 2)]
    thirteen = corners_centre + [(0, 2), (4, 2), (2, 4), (2, 0), (1, 1), (3, 1), (1, 3), (3, 3)]
    sides = [128, 112, 96, 84]  # int(128 x (1, .875, .75, .66))
    for transform, offsets in ((PretrainTransform(112), thirteen),
                               (PretrainTransform(112, more_fix_crop=False), corners_centre)):
        seen = set()
        for s in range(300):
            _seed(s)
            top, left, h, w = transform.crop_box(128, 160)
            assert abs(sides.index(h) - sides.index(w)) <= 1
            assert (top, left) in _grid(offsets, 128, 160, h, w)
            seen.add((h, w))
        assert len(seen) == 10  # 4 equal pairs + 6 one step apart
    heights = set()
    for s in range(100):  # a side within 3 px of the output size is snapped to it (TSN): 102 -> 100
        _seed(s)
        heights.add(PretrainTransform(100).crop_box(102, 102)[2])
    assert heights == {100, 89, 76, 67}


def test_build_transform_modes():
    assert isinstance(build_transform("pretrain", 32), PretrainTransform)
    assert isinstance(build_transform("train", 32, reprob=0.0), TrainTransform)
    assert isinstance(build_transform("val", 32), EvalTransform)
    assert isinstance(build_transform("test", 32, short_side_size=40), EvalTransform)
    with pytest.raises(ValueError):
        build_transform("eval", 32)
