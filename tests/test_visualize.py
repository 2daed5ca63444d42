"""``python -m lgiformer.visualize``: a pretraining release keeps its decoder and rebuilds the same autoencoder; the
reconstruction images are pixels that agree with the input where they must; the CLI writes the grid and the
animation, reports the losses the model gives, and refuses what it cannot show with one line."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from _cli import run
from lgiformer.models import build_pretrain_model, create_model
from lgiformer.models.release import DECODER_FILE, decoder_parts, load_masked_autoencoder, write_release
from lgiformer.visualize import ROW_TITLES, load_pretraining_model

ARGS = dict(img_size=32, num_frames=4, embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=16, decoder_depth=1,
            decoder_num_heads=2, mask_ratio=0.5, region_size=(1, 1, 2))
FIX = "tests/fixtures/mae_dfer_reference/lgiformer_tiny_pretrain.pth"


def _mae(seed=0):
    torch.manual_seed(seed)
    mae = build_pretrain_model("lgiformer_tiny_patch16_160", **ARGS).eval()
    with torch.no_grad():  # weights far from the init, so a wrong load would show
        for p in mae.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return mae


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    mae = _mae()
    out = write_release(mae.encoder, tmp_path_factory.mktemp("rel") / "release", task="pretrain",
                        source={"format": "test"}, data=dict(sampling_rate=1),
                        **decoder_parts(mae.decoder_args, mae.state_dict()))
    return mae, out


def test_the_release_keeps_the_decoder_beside_the_encoder_and_rebuilds_the_same_autoencoder(release):
    mae, out = release
    encoder_weights, decoder_weights = load_file(str(out / "model.safetensors")), load_file(str(out / DECODER_FILE))
    assert set(encoder_weights) == set(mae.encoder.state_dict())            # finetuning reads this file unchanged
    assert set(decoder_weights) == {k for k in mae.state_dict() if not k.startswith("encoder.")}
    config = json.loads((out / "config.json").read_text())
    assert config["decoder"] == json.loads(json.dumps(mae.decoder_args)) and "lgiformer.visualize" in \
        (out / "README.md").read_text()
    again = load_masked_autoencoder(out)
    assert not again.training
    for key, value in mae.state_dict().items():
        torch.testing.assert_close(again.state_dict()[key], value, rtol=0, atol=0)
    clips = torch.randn(2, 3, 4, 32, 32)
    mask = mae.masker(2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(again(clips, mask)["loss"], mae(clips, mask)["loss"], rtol=0, atol=0)


def test_reconstruction_images_are_the_input_where_they_must_be():
    mae = _mae()
    mean, std = mae.norm_mean.view(3, 1, 1, 1), mae.norm_std.view(3, 1, 1, 1)
    pixels = torch.rand(3, 4, 32, 32, generator=torch.Generator().manual_seed(2))  # a video, in [0, 1]
    clips = ((pixels - mean) / std)[None]
    mask = mae.masker(1, generator=torch.Generator().manual_seed(3))
    images = mae.reconstruction_images(clips, mask)
    video = images["input"]                                                  # [T, 3, H, W]
    torch.testing.assert_close(video, pixels.transpose(0, 1), atol=1e-6, rtol=0)
    # appearance = the first frame of each tubelet, motion = 0.5 + frame difference / 2, both in pixels
    torch.testing.assert_close(images["true_appearance"], video[0::2], atol=1e-5, rtol=0)
    torch.testing.assert_close(images["true_motion"], (0.5 + (video[1::2] - video[0::2]) / 2), atol=1e-5, rtol=0)
    # visible patches: the masked input and the predictions show the input; masked patches are black in the masked
    # input and predicted (not copied) in the reconstruction
    visible = (~mae.layout.to_raster(mask, dim=1)).view(2, 2, 2)            # (t', h, w)
    per_pixel = visible.repeat_interleave(2, 0).repeat_interleave(16, 1).repeat_interleave(16, 2)  # [T, H, W]
    assert 0 < int(visible.sum()) < visible.numel()
    assert torch.equal(images["masked"], video * per_pixel[:, None])
    shown = images["pred_appearance"].transpose(0, 1)[:, per_pixel[0::2]]
    torch.testing.assert_close(shown, video[0::2].transpose(0, 1)[:, per_pixel[0::2]], atol=1e-5, rtol=0)
    hidden = ~per_pixel[0::2]
    assert (images["pred_appearance"].transpose(0, 1)[:, hidden] - video[0::2].transpose(0, 1)[:, hidden]).abs().max() \
        > 0.05


def test_cli_writes_the_grid_and_the_animation_with_the_model_losses(release, tmp_path, media):
    mae, out = release
    frames = media.frames(4, 32)
    folder = media.folder(tmp_path / "clip", frames, ext="png")
    mp4 = media.mp4(tmp_path / "clip.mp4", media.frames(6, 32, seed=1))
    proc = run(["-m", "lgiformer.visualize", "--model", out, folder, mp4, "--out", tmp_path / "vis", "--json",
                "--seed", "5"], check=False)
    assert proc.returncode == 0, proc.stderr
    output = json.loads(proc.stdout)
    assert output["mask"] == dict(type="region_balanced", ratio=0.5, visible_tokens=4, tokens=8)
    assert output["sampling_rate"] == 1                                      # the release's
    first, second = output["results"]
    rows = ["input", "masked", "pred_appearance", "pred_motion", "true_motion"]
    assert [r for r in ROW_TITLES if r in rows] == rows
    grid = np.asarray(Image.open(first["png"]).convert("RGB"))
    cell = 4 * 32 + 2                                                        # 32 px frames enlarged 4 x, 2 px apart
    assert grid.shape == (len(rows) * cell, 150 + 4 * cell, 3) and first["sizes"]["png"] == [150 + 4 * cell, 5 * cell]
    # the top-left cell is the first frame as read (lossless PNG, no resizing at 32 px), each pixel drawn 4 x 4
    np.testing.assert_allclose(grid[:128, 150:278].astype(int), frames[0].repeat(4, 0).repeat(4, 1).astype(int), atol=1)
    gif = Image.open(first["gif"])
    assert gif.n_frames == 4 and gif.size == (5 * cell, 18 + 128)
    # the losses are the model's on this clip and this mask (seed 5), recomputed here
    clip = (torch.from_numpy(frames).float().div(255).permute(3, 0, 1, 2) - mae.norm_mean.view(3, 1, 1, 1)) / \
        mae.norm_std.view(3, 1, 1, 1)
    mask = mae.masker(1, generator=torch.Generator().manual_seed(5))
    want = mae.heldout_losses(clip[None], mask)
    for name in ("model", "visible_mean", "zero"):
        assert first["losses"][name]["loss"] == pytest.approx(float(want[name]["loss"][0]), abs=2e-3)
    assert second["losses"]["model"]["loss"] > 0 and Image.open(second["gif"]).n_frames == 4
    text = run(["-m", "lgiformer.visualize", "--model", out, folder, "--out", tmp_path / "text"], check=False)
    assert text.returncode == 0 and "this release" in text.stdout and "mean of the visible patches" in text.stdout


def test_a_reference_pretraining_checkpoint_is_shown_without_conversion(tmp_path, media):
    mae, settings = load_pretraining_model(FIX)
    assert mae.encoder.model_name.startswith("lgiformer") and settings["sampling_rate"] is None
    mp4 = media.mp4(tmp_path / "clip.mp4", media.frames(64, 160))  # 16 frames at stride 4
    proc = run(["-m", "lgiformer.visualize", "--model", FIX, mp4, "--out", tmp_path / "vis", "--json"], check=False)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)["results"][0]
    assert Image.open(result["gif"]).n_frames == 16 and result["losses"]["model"]["loss"] > 0


def test_what_cannot_be_shown_gets_one_line(release, tmp_path, media):
    _, out = release
    good = media.folder(tmp_path / "good", media.frames(4, 32), ext="png")
    (tmp_path / "notes.txt").write_text("not a video\n")
    missing = tmp_path / "nowhere.mp4"
    proc = run(["-m", "lgiformer.visualize", "--model", out, missing, tmp_path / "notes.txt", good,
                "--out", tmp_path / "vis"], check=False)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert lines[1].startswith(f"{missing}: error: ") and lines[2].startswith(f"{tmp_path / 'notes.txt'}: error: ")
    assert lines[3].startswith(f"{good}: ") and "2 of 3 inputs could not be read" in proc.stderr
    assert sorted(p.name for p in (tmp_path / "vis").iterdir()) == ["002_good.gif", "002_good.png"]

    classifier = write_release(create_model("lgiformer_tiny_patch16_160", num_classes=3, img_size=32, num_frames=4,
                                            embed_dim=32, depth=1, num_heads=2, region_size=(1, 1, 2)),
                               tmp_path / "dfer", task="dfer", source={"format": "test"})
    encoder_only = write_release(_mae().encoder, tmp_path / "enc", task="pretrain", source={"format": "test"})
    for model, words in ((classifier, "a dfer release"), (encoder_only, "without its decoder"),
                         (tmp_path / "none", "no such release folder"), (tmp_path / "notes.txt", "notes.txt")):
        proc = run(["-m", "lgiformer.visualize", "--model", model, good, "--out", tmp_path / "x"], check=False)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and words in proc.stderr and str(model) in proc.stderr
