"""transformers VideoMAE <-> our VideoViT: same outputs both ways (small random models)."""
import pytest
import torch

import lgiformer  # noqa: F401
from lgiformer.convert import main as convert_main
from lgiformer.interop import (compare_with_transformers, export_hf_videomae, import_hf_videomae, load_release)
from lgiformer.models import create_model
from lgiformer.tokens import sinusoid_table

transformers = pytest.importorskip("transformers")

SMALL = dict(image_size=32, num_frames=4, tubelet_size=2, patch_size=16, hidden_size=64, num_hidden_layers=2,
             num_attention_heads=4, intermediate_size=256, qkv_bias=True, layer_norm_eps=1e-6)


def _random_hf(cls, **extra):
    torch.manual_seed(0)
    model = cls(transformers.VideoMAEConfig(**SMALL, **extra)).eval()
    with torch.no_grad():  # move away from the init (zero biases, unit norms) so every weight matters
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def _clips():
    return torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(3))


def test_position_table_is_the_same_sinusoid():
    from transformers.models.videomae.modeling_videomae import get_sinusoid_encoding_table

    torch.testing.assert_close(get_sinusoid_encoding_table(8, 64)[0], sinusoid_table(8, 64), rtol=0, atol=1e-6)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_hf_classifier_to_ours_same_logits(tmp_path, attn):
    hf = _random_hf(transformers.VideoMAEForVideoClassification, num_labels=5, use_mean_pooling=True)
    hf.save_pretrained(tmp_path / "hf")
    imported = import_hf_videomae(tmp_path / "hf")
    model = imported.model
    assert model.num_classes == 5 and model.model_args["num_heads"] == 4 and not imported.left_at_init
    x = _clips()
    hf = transformers.VideoMAEForVideoClassification.from_pretrained(tmp_path / "hf", attn_implementation=attn)
    with torch.no_grad():
        ref = hf.eval()(pixel_values=x.permute(0, 2, 1, 3, 4)).logits
        torch.testing.assert_close(model(x), ref, rtol=0, atol=1e-4)


def test_ours_to_hf_and_back_via_cli(tmp_path, capsys):
    ours = create_model("vit_small_patch16_160", img_size=32, num_frames=4, embed_dim=64, depth=2, num_heads=4,
                        num_classes=3)
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.1 * torch.randn_like(p))
    from lgiformer.models.release import write_release

    write_release(ours.eval(), tmp_path / "rel", task="dfer", source={"format": "test"}, notes="")
    assert convert_main(["export-hf", "--input", str(tmp_path / "rel"), "--output", str(tmp_path / "hf"),
                         "--labels", "a,b,c"]) == 0
    hf = transformers.AutoModelForVideoClassification.from_pretrained(tmp_path / "hf", attn_implementation="eager")
    assert hf.config.id2label[2] == "c"
    x = _clips()
    with torch.no_grad():
        torch.testing.assert_close(hf.eval()(pixel_values=x.permute(0, 2, 1, 3, 4)).logits, ours(x),
                                   rtol=0, atol=1e-4)
    assert convert_main(["hf-videomae", "--input", str(tmp_path / "hf"), "--output", str(tmp_path / "back")]) == 0
    assert "ours vs transformers: max abs diff" in capsys.readouterr().out
    back = load_release(tmp_path / "back")
    with torch.no_grad():
        torch.testing.assert_close(back(x), ours(x), rtol=0, atol=1e-6)
    assert convert_main(["export-hf", "--input", str(tmp_path / "back"), "--output", str(tmp_path / "hf2")]) == 0
    assert transformers.AutoConfig.from_pretrained(tmp_path / "hf2").id2label == {0: "a", 1: "b", 2: "c"}


@pytest.mark.parametrize("mean_pooling", [True, False])
def test_hf_base_model_round_trip(tmp_path, mean_pooling):
    hf = _random_hf(transformers.VideoMAEModel, use_mean_pooling=mean_pooling)
    hf.save_pretrained(tmp_path / "hf")
    model = import_hf_videomae(tmp_path / "hf").model
    assert model.model_args["global_pool"] == ("avg" if mean_pooling else "")
    x = _clips()
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), hf(pixel_values=x.permute(0, 2, 1, 3, 4))
                                   .last_hidden_state, rtol=0, atol=1e-4)
    assert export_hf_videomae(model, tmp_path / "again") <= 1e-4


def test_hf_pretraining_gives_the_encoder(tmp_path):
    hf = _random_hf(transformers.VideoMAEForPreTraining, use_mean_pooling=False, decoder_hidden_size=32,
                    decoder_num_hidden_layers=1, decoder_num_attention_heads=2, decoder_intermediate_size=64)
    hf.save_pretrained(tmp_path / "hf")
    imported = import_hf_videomae(tmp_path / "hf")
    assert imported.source["kind"] == "pretraining" and any(k.startswith("decoder.") for k in imported.dropped)
    assert compare_with_transformers(tmp_path / "hf", imported.model, _clips()) <= 1e-4
    tokens = import_hf_videomae(tmp_path / "hf", global_pool="").model  # keeps the final layernorm
    x = _clips()
    with torch.no_grad():
        ref = hf.videomae(pixel_values=x.permute(0, 2, 1, 3, 4)).last_hidden_state
        torch.testing.assert_close(tokens(x), ref, rtol=0, atol=1e-4)


def test_lgiformer_has_no_transformers_equivalent(tmp_path):
    model = create_model("lgiformer_tiny_patch16_160", img_size=32, num_frames=4, embed_dim=64, depth=1,
                         num_heads=1, region_size=(1, 1, 2))
    with pytest.raises(ValueError, match="only VideoViT"):
        export_hf_videomae(model, tmp_path / "hf")
