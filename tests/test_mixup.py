"""Video mixup / CutMix: one box through all frames, lambda = pasted area, smoothed soft targets, torch-only RNG."""
import numpy as np
import pytest
import torch

from lgiformer.data.mixup import VideoMixup, clip_cutmix_box, one_hot_smooth

B, T, H, W, K = 4, 5, 24, 20, 7


def _batch():
    """Clip b is the constant b + 1 (plus a per-frame offset): any pixel tells which clip it came from."""
    clips = torch.arange(1, B + 1, dtype=torch.float32).view(B, 1, 1, 1, 1).expand(B, 3, T, H, W).clone()
    clips += torch.arange(T, dtype=torch.float32).view(1, 1, T, 1, 1) * 10
    return clips, torch.tensor([0, 3, 5, 6])


def test_cutmix_box_spans_all_frames_and_lambda_is_pasted_area():
    clips, labels = _batch()
    original = clips.clone()
    mix = VideoMixup(mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0, num_classes=K)
    boxes = 0
    for seed in range(20):
        torch.manual_seed(seed)
        out, target = mix(clips, labels)
        assert out.shape == clips.shape and target.shape == (B, K)
        lam = mix.last_lam
        for b in range(B):
            partner = B - 1 - b
            from_partner = out[b] == clips[partner]  # [3, T, H, W]
            assert torch.equal(out[b][~from_partner], clips[b][~from_partner])
            pasted = from_partner[0]  # [T, H, W]
            assert all(torch.equal(pasted[0], pasted[t]) for t in range(T)), "one box on every frame"
            assert from_partner.all(0).equal(pasted)  # and on every channel
            frac = pasted[0].float().mean().item()
            assert frac == pytest.approx(1 - lam, abs=1 / (H * W))
            expected = torch.zeros(K)
            expected[labels[b]] += lam
            expected[labels[partner]] += 1 - lam
            torch.testing.assert_close(target[b], expected)
        boxes += mix.last_box is not None and 0 < lam < 1
    assert boxes >= 15
    assert torch.equal(clips, original), "the input batch is not modified in place"


def test_box_geometry():
    torch.manual_seed(0)
    for lam in (0.0, 0.3, 0.75, 0.99):
        y0, y1, x0, x1 = clip_cutmix_box(H, W, lam)
        assert 0 <= y0 <= y1 <= H and 0 <= x0 <= x1 <= W
        assert y1 - y0 <= int(H * (1 - lam) ** 0.5) and x1 - x0 <= int(W * (1 - lam) ** 0.5)


def test_mixup_blends_with_flipped_batch():
    clips, labels = _batch()
    mix = VideoMixup(mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.1, num_classes=K)
    torch.manual_seed(1)
    out, target = mix(clips, labels)
    lam = mix.last_lam
    assert 0 < lam < 1 and mix.last_box is None
    torch.testing.assert_close(out, lam * clips + (1 - lam) * clips.flip(0))
    expected = lam * one_hot_smooth(labels, K, 0.1) + (1 - lam) * one_hot_smooth(labels.flip(0), K, 0.1)
    torch.testing.assert_close(target, expected)
    torch.testing.assert_close(target.sum(1), torch.ones(B))


def test_soft_targets_and_smoothing_values():
    labels = torch.tensor([0, 3, 5, 6])
    soft = one_hot_smooth(labels, K, 0.1)
    assert soft[0, 0].item() == pytest.approx(1 - 0.1 + 0.1 / K) and soft[0, 1].item() == pytest.approx(0.1 / K)
    torch.testing.assert_close(soft.sum(1), torch.ones(4))
    torch.testing.assert_close(one_hot_smooth(labels, K, 0.0), torch.nn.functional.one_hot(labels, K).float())
    mix = VideoMixup(num_classes=K)  # the recipe: mixup 0.8 / cutmix 1.0 / smoothing 0.1
    clips, _ = _batch()
    for seed in range(10):
        torch.manual_seed(seed)
        _, target = mix(clips, labels)
        torch.testing.assert_close(target.sum(1), torch.ones(B))
        assert target.min().item() >= 0.1 / K - 1e-6


@pytest.mark.parametrize("kwargs", [dict(mixup_alpha=0.0, cutmix_alpha=0.0), dict(prob=0.0)])
def test_no_mixing_returns_clips_and_smoothed_one_hot(kwargs):
    clips, labels = _batch()
    mix = VideoMixup(label_smoothing=0.1, num_classes=K, **kwargs)
    out, target = mix(clips, labels)
    assert torch.equal(out, clips) and mix.last_lam == 1.0 and mix.last_box is None
    torch.testing.assert_close(target, one_hot_smooth(labels, K, 0.1))


def test_draws_come_from_torch_rng_only():
    """The loop reseeds torch before every step; numpy's state must not matter (timm's Mixup uses numpy)."""
    clips, labels = _batch()
    mix = VideoMixup(num_classes=K)
    results = []
    for np_seed in (0, 1):
        np.random.seed(np_seed)
        torch.manual_seed(5)
        results.append(mix(clips, labels))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    lams = set()
    for seed in range(6):
        torch.manual_seed(seed)
        mix(clips, labels)
        lams.add(mix.last_lam)
    assert len(lams) >= 4  # CutMix lambdas are box areas: two seeds may give equal ones


def test_odd_batch_middle_clip_pairs_with_itself():
    clips, labels = _batch()
    clips, labels = clips[:3], labels[:3]
    mix = VideoMixup(mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.0, num_classes=K)
    torch.manual_seed(0)
    out, target = mix(clips, labels)
    torch.testing.assert_close(out[1], clips[1])
    torch.testing.assert_close(target[1], one_hot_smooth(labels[1:2], K)[0])
