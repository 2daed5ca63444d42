import pytest
import torch

from lgiformer.models import build_pretrain_model
from lgiformer.targets import build_targets

MEAN, STD = torch.tensor([0.4, 0.5, 0.6]), torch.tensor([0.2, 0.25, 0.3])


def _hand_targets(clips):
    """Plain loops over tokens and channels, as the reference describes the targets."""
    video = clips * STD.view(1, 3, 1, 1, 1) + MEAN.view(1, 3, 1, 1, 1)
    b, c, t, h, w = video.shape
    rows = []
    for bi in range(b):
        tokens = []
        for ti in range(0, t, 2):
            for hi in range(0, h, 4):
                for wi in range(0, w, 4):
                    cube = video[bi, :, ti:ti + 2, hi:hi + 4, wi:wi + 4]  # [c, 2, 4, 4]
                    app, mot = torch.empty(4, 4, c), torch.empty(4, 4, c)
                    for ci in range(c):
                        x = cube[ci]
                        z = (x - x.mean()) / (x.std(unbiased=True) + 1e-6)
                        app[:, :, ci] = z[0]
                        mot[:, :, ci] = z[1] - z[0]
                    tokens.append(torch.cat([app.flatten(), mot.flatten()]))
        rows.append(torch.stack(tokens))
    return torch.stack(rows)


def test_targets_equal_hand_computation_and_motion_is_scaled_difference():
    torch.manual_seed(0)
    clips = torch.randn(2, 3, 4, 8, 8)
    got = build_targets(clips, MEAN, STD, tubelet_size=2, patch_size=4)
    torch.testing.assert_close(got, _hand_targets(clips), atol=1e-5, rtol=1e-5)
    # motion == (f1 - f0) / std of the tubelet, per channel
    video = clips * STD.view(1, 3, 1, 1, 1) + MEAN.view(1, 3, 1, 1, 1)
    cube = video[0, 1, 0:2, 0:4, 0:4]
    motion = got[0, 0, 48:].view(4, 4, 3)[:, :, 1]
    torch.testing.assert_close(motion, (cube[1] - cube[0]) / (cube.std(unbiased=True) + 1e-6), atol=1e-5,
                               rtol=1e-5)


@pytest.mark.parametrize("weight", [0.5, 0.2])
def test_loss_is_weighted_sum_of_appearance_and_motion(weight):
    torch.manual_seed(0)
    mae = build_pretrain_model("lgiformer_tiny_patch16_160", img_size=32, num_frames=4, region_size=(1, 1, 2),
                               depth=1, embed_dim=32, num_heads=2, decoder_embed_dim=16, decoder_depth=1,
                               decoder_num_heads=2, mask_ratio=0.5, motion_weight=weight)
    out = mae(torch.randn(2, 3, 4, 32, 32))
    expected = (1 - weight) * out["loss_appearance"] + weight * out["loss_motion"]
    torch.testing.assert_close(out["loss"], expected)


def test_target_switches():
    clips = torch.randn(1, 3, 4, 8, 8)
    app = build_targets(clips, MEAN, STD, 2, 4, parts=("appearance",))
    both = build_targets(clips, MEAN, STD, 2, 4)
    assert torch.equal(app, both[..., :48])
    pixel = build_targets(clips, MEAN, STD, 2, 4, parts=("pixel",))
    assert pixel.shape[-1] == 96
    with pytest.raises(ValueError, match="subset"):
        build_targets(clips, MEAN, STD, 2, 4, parts=("depth",))
