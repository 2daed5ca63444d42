"""load_pretrained: which keys were loaded, new and ignored, from our release and from reference checkpoints."""
from pathlib import Path

import pytest
import torch

import lgiformer  # noqa: F401
from lgiformer.models import create_model
from lgiformer.interop.pretrained import load_pretrained

FIXTURES = Path(__file__).parent / "fixtures" / "mae_dfer_reference"
TINY = dict(embed_dim=32, depth=1, num_heads=2, img_size=32, num_frames=4, region_size=(2, 1, 2))


def _save_release(model, out):
    from lgiformer.models.release import write_release

    return write_release(model, out, task="pretrain" if not model.num_classes else "dfer", source={"format": "test"})


def test_from_our_release(tmp_path):
    encoder = create_model("lgiformer_tiny_patch16_160", num_classes=0, global_pool="", **TINY)  # as pretrained
    _save_release(encoder, tmp_path / "rel")
    model = create_model("lgiformer_tiny_patch16_160", num_classes=3, **TINY)
    report = load_pretrained(model, tmp_path / "rel")
    assert report.format == "release"
    assert set(report.new) == {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"}
    assert set(report.ignored) == {"norm.weight", "norm.bias"}
    assert set(report.loaded) == set(model.state_dict()) - set(report.new)
    assert torch.equal(model.blocks[0].mlp.fc1.weight, encoder.blocks[0].mlp.fc1.weight)
    assert "4 new" in report.summary()


def test_head_of_other_classes_is_new(tmp_path):
    finetuned = create_model("lgiformer_tiny_patch16_160", num_classes=7, **TINY)
    _save_release(finetuned, tmp_path / "rel")
    model = create_model("lgiformer_tiny_patch16_160", num_classes=11, **TINY)
    report = load_pretrained(model, tmp_path / "rel" / "model.safetensors")
    assert set(report.new) == {"head.weight", "head.bias"}
    assert "new classes" in report.ignored["head.weight"]
    same = create_model("lgiformer_tiny_patch16_160", num_classes=7, **TINY)
    assert load_pretrained(same, tmp_path / "rel").new == []


def test_wrong_encoder_is_an_error(tmp_path):
    _save_release(create_model("lgiformer_tiny_patch16_160", num_classes=0, global_pool="", **TINY), tmp_path / "r")
    other = create_model("lgiformer_tiny_patch16_160", num_classes=3, **{**TINY, "embed_dim": 64})
    with pytest.raises(ValueError, match="do not fit"):
        load_pretrained(other, tmp_path / "r")


def test_random_init():
    model = create_model("lgiformer_tiny_patch16_160", num_classes=3, **TINY)
    report = load_pretrained(model, None)
    assert report.format == "random" and report.loaded == [] and set(report.new) == set(model.state_dict())


@pytest.mark.skipif(not FIXTURES.is_dir(), reason="reference fixtures not present")
def test_reference_checkpoints():
    from lgiformer.interop import load_checkpoint

    args = dict(embed_dim=128, depth=2, num_heads=4)
    model = create_model("lgiformer_tiny_patch16_160", num_classes=7, **args).eval()
    report = load_pretrained(model, FIXTURES / "lgiformer_tiny_finetuned.pth")
    assert report.format == "mae_dfer_finetuned" and report.new == [] and report.ignored == {}
    io = load_checkpoint(FIXTURES / "lgiformer_tiny_finetuned_io.pt")
    with torch.no_grad():
        assert torch.allclose(model(io["input"]), io["logits"], atol=1e-4)

    model = create_model("lgiformer_tiny_patch16_160", num_classes=7, **args)
    report = load_pretrained(model, FIXTURES / "lgiformer_tiny_pretrain.pth")
    assert report.format == "mae_dfer_pretrain"
    assert set(report.new) == {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"}
    assert report.ignored["mask_token"] == "pretraining only" and report.ignored["norm.weight"] == "not in this model"
    assert any(k.startswith("decoder.") for k in report.ignored)
