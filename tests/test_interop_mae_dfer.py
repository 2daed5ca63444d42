"""Equivalence with the reference MAE-DFER implementation on its own checkpoints (fixtures made by the reference)."""
import json
from pathlib import Path

import pytest
import torch

import lgiformer  # noqa: F401
from lgiformer.convert import main as convert_main
from lgiformer.interop import import_mae_dfer, load_checkpoint, load_release

FIX = Path(__file__).parent / "fixtures" / "mae_dfer_reference"
CFG = json.loads((FIX / "config.json").read_text())


@pytest.fixture(scope="module")
def clips():
    return torch.load(FIX / "lgiformer_tiny_finetuned_io.pt", weights_only=True)["input"]


def test_finetuned_logits_match_reference_via_cli_and_release(tmp_path, clips, capsys):
    heads = CFG["finetuned"]["num_heads"]
    rc = convert_main(["mae-dfer", "--input", str(FIX / "lgiformer_tiny_finetuned.pth"), "--output",
                       str(tmp_path / "rel"), "--num-heads", str(heads)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "num_heads=4 (given)" in out and "region_size=(2, 5, 10)" in out and "7 classes" in out
    model = load_release(tmp_path / "rel")
    assert not model.training and model.model_args["global_pool"] == "region"
    expected = torch.load(FIX / "lgiformer_tiny_finetuned_io.pt", weights_only=True)["logits"]
    with torch.no_grad():
        logits = model(clips)
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-4)


def test_pretraining_pooled_features_match_reference(clips):
    imported = import_mae_dfer(FIX / "lgiformer_tiny_pretrain.pth", num_heads=CFG["pretrain"]["encoder_num_heads"])
    model = imported.model
    assert model.num_classes == 0 and imported.source["kind"] == "pretraining"
    assert "encoder.norm.weight" in imported.dropped and "mask_token" in imported.dropped
    assert imported.left_at_init == ["fc_norm.weight", "fc_norm.bias"]
    expected = torch.load(FIX / "lgiformer_tiny_pretrain_io.pt", weights_only=True)["pooled_features"]
    with torch.no_grad():
        pooled = model(clips)
    torch.testing.assert_close(pooled, expected, rtol=0, atol=1e-4)


def test_release_records_source_and_assumptions(tmp_path):
    imported = import_mae_dfer(FIX / "lgiformer_tiny_finetuned.pth", num_heads=4)
    assert imported.source["reference_args"]["nb_classes"] == 7 and imported.source["epoch"] == 99
    assert any("args say 512, the weights say 128" in a for a in imported.assumptions)
    from lgiformer.interop import write_imported

    write_imported(imported, tmp_path / "rel")
    config = json.loads((tmp_path / "rel" / "config.json").read_text())
    assert config["source"]["sha256"] == imported.source["sha256"]
    assert "num_heads=4" in (tmp_path / "rel" / "README.md").read_text()


def test_pretraining_checkpoint_as_whole_autoencoder(clips):
    from lgiformer.interop import import_pretraining_model

    cfg = CFG["pretrain"]
    mae, imported = import_pretraining_model(FIX / "lgiformer_tiny_pretrain.pth", num_heads=cfg["encoder_num_heads"],
                                             decoder_num_heads=cfg["decoder_num_heads"])
    raw = load_checkpoint(FIX / "lgiformer_tiny_pretrain.pth")["model"]
    ours = mae.state_dict()
    for key, value in raw.items():  # every reference weight is used, unchanged (decoder qkv split into q / kv)
        if key.endswith("attn.qkv.weight"):
            torch.testing.assert_close(torch.cat((ours[key.replace("qkv", "q")], ours[key.replace("qkv", "kv")])),
                                       value)
        else:
            torch.testing.assert_close(ours[key], value)
    assert mae.decoder_args["decoder_depth"] == cfg["decoder_depth"] and mae.target_sizes["motion"] == 768
    torch.manual_seed(0)
    with torch.no_grad():
        assert torch.isfinite(mae(clips[:1])["loss"])
