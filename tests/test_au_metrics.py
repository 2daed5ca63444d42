"""AU metrics and post-processing: docs/AU_METHODS.md#test-ids U5, U6, T-C5, dense mode."""
import math

import pytest
import torch

import lgiformer  # noqa: F401
from lgiformer.au.metrics import (auc_per_au, cross_fold_f1, f1_per_au, fold_f1, moving_average, slots_to_frames,
                                  smooth_by_video)


def test_f1_per_au_matches_hand_count_and_respects_mask():
    y = torch.tensor([[1, 0], [1, 1], [0, 0], [0, 1]])
    p = torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.7, 0.2], [0.2, 0.4]])
    # AU0: TP=1 FN=1 FP=1 -> 0.5; AU1: TP=1 FN=1 FP=0 -> 2/3
    assert f1_per_au(p, y) == pytest.approx([0.5, 2 / 3])
    v = torch.tensor([[1, 1], [1, 1], [0, 1], [1, 0]])
    assert f1_per_au(p, y, v) == pytest.approx([2 / 3, 1.0])
    assert f1_per_au(torch.zeros(3, 1), torch.zeros(3, 1)) == [0.0]  # undefined -> 0
    out = fold_f1(p, y, au_names=["AU1", "AU2"])
    assert out["mean"] == pytest.approx((0.5 + 2 / 3) / 2) and out["by_name"]["AU2"] == pytest.approx(2 / 3)


def test_cross_fold_pooling_flag():
    f1 = (torch.tensor([[0.9], [0.9]]), torch.tensor([[1], [1]]))  # F1 = 1
    f2 = (torch.tensor([[0.9], [0.1], [0.1], [0.1]]), torch.tensor([[0], [1], [1], [1]]))  # F1 = 0
    mean = cross_fold_f1([f1, f2])
    pooled = cross_fold_f1([f1, f2], pooling="pooled")
    assert mean["mean"] == pytest.approx(0.5)
    assert pooled["mean"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 3))  # TP=2 FP=1 FN=3
    assert [f["mean"] for f in mean["folds"]] == pytest.approx([1.0, 0.0])
    with pytest.raises(ValueError):
        cross_fold_f1([f1], pooling="other")


def test_moving_average_properties():
    const = torch.full((50, 3), 0.3)
    out = moving_average(const, 20)
    assert out.shape == const.shape and torch.allclose(out, const)
    x = torch.rand(37, 2)
    assert torch.allclose(moving_average(x, 1), x)
    assert torch.allclose(moving_average(x, 1, "causal"), x)
    alt = (torch.arange(100) % 2).float()
    sm = moving_average(alt, 20)
    assert sm.shape == (100,) and torch.allclose(sm[10:90], torch.full((80,), 0.5), atol=1e-6)
    # centred window, shrinking at the edges: first value averages frames 0..9
    assert sm[0].item() == pytest.approx(alt[:10].mean().item())
    causal = moving_average(alt, 4, "causal")
    assert causal[5].item() == pytest.approx(alt[2:6].mean().item())


def test_smoothing_stays_inside_each_video_and_slot_expansion():
    probs = torch.cat((torch.zeros(10, 1), torch.ones(10, 1)))
    ids = ["a"] * 10 + ["b"] * 10
    out = smooth_by_video(probs, ids, window=20)
    assert torch.equal(out, probs)  # no leak across the video boundary
    slots = torch.tensor([[[0.1, 0.2], [0.3, 0.4]]])
    frames = slots_to_frames(slots, tubelet=2)
    assert frames.shape == (1, 4, 2) and torch.equal(frames[0, 2], slots[0, 1])
    assert slots_to_frames(slots, 2, num_frames=3).shape == (1, 3, 2)


def test_auc_per_au_matches_pairwise_count_with_ties_and_mask():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 6, (200, 3), generator=g).float() / 5  # many ties
    labels = (torch.rand(200, 3, generator=g) < 0.3).float()
    valid = torch.rand(200, 3, generator=g) > 0.1
    labels[:, 2] = 0.0                                               # AU without a positive: undefined
    got = auc_per_au(scores, labels, valid)
    for k in range(2):
        s, y = scores[valid[:, k], k], labels[valid[:, k], k] > 0.5
        diff = s[y][:, None] - s[~y][None, :]
        want = float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())
        assert got[k] == pytest.approx(want, abs=1e-12)
    assert math.isnan(got[2])
    assert auc_per_au(labels[:, :2], labels[:, :2]) == [1.0, 1.0]      # perfect ranking
    assert auc_per_au(-labels[:, :2], labels[:, :2]) == [0.0, 0.0]
