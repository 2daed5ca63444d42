"""Architecture inference from weights, and the VideoMAE .pth layout (fused qkv, pretraining encoder.*)."""
import argparse

import pytest
import torch

import lgiformer  # noqa: F401
from lgiformer.convert import main as convert_main
from lgiformer.interop import import_mae_dfer, import_videomae, load_release
from lgiformer.interop.infer import infer_heads
from lgiformer.models import create_model

SMALL = dict(img_size=32, num_frames=4)


def _clips(n=2):
    return torch.randn(n, 3, 4, 32, 32, generator=torch.Generator().manual_seed(1))


def _perturb(model):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def _to_videomae(sd):
    """Our VideoViT names -> VideoMAE's fused qkv layout."""
    out = {}
    for k, v in sd.items():
        if k.endswith("attn.q.weight"):
            out[k.replace("q.weight", "qkv.weight")] = torch.cat((v, sd[k.replace("q.weight", "kv.weight")]))
        elif not k.endswith("attn.kv.weight"):
            out[k] = v
    return out


@pytest.mark.parametrize("width,heads", [(384, 6), (512, 8), (768, 12), (1024, 16), (1280, 16), (1408, 16),
                                         (192, 3), (256, 4)])
def test_head_count_from_width(width, heads):
    assert infer_heads(width)[0] == heads
    assert infer_heads(width, 2)[0] == 2


def test_head_count_needs_help_when_width_is_odd():
    with pytest.raises(ValueError, match="--num-heads"):
        infer_heads(200)


def test_lgiformer_architecture_is_inferred_from_weights_and_args(tmp_path):
    ref = _perturb(create_model("lgiformer_tiny_patch16_160", embed_dim=128, depth=3, num_heads=2, num_classes=5,
                                mlp_ratio=2.0, region_size=(1, 1, 2), **SMALL))
    args = argparse.Namespace(model="vit_base_dim512_no_depth_patch16_160", input_size=32, num_frames=4,
                              nb_classes=5, lg_region_size=[1, 1, 2], lg_classify_token_type="region")
    torch.save({"model": ref.state_dict(), "epoch": 7, "args": args}, tmp_path / "ft.pth")
    imported = import_mae_dfer(tmp_path / "ft.pth")
    got = imported.model.model_args
    for key in ("embed_dim", "depth", "num_heads", "num_classes", "mlp_ratio", "region_size", "img_size",
                "num_frames", "tubelet_size", "patch_size", "qkv_bias", "global_pool"):
        assert got[key] == ref.model_args[key], key
    text = "\n".join(imported.assumptions)
    assert "num_heads=2: not stored in the weights" in text
    assert "region_size=(1, 1, 2) (from the checkpoint's args)" in text
    x = _clips()
    with torch.no_grad():
        torch.testing.assert_close(imported.model(x), ref(x), rtol=0, atol=1e-5)


def test_lgiformer_region_count_mismatch_is_explained(tmp_path):
    ref = create_model("lgiformer_tiny_patch16_160", embed_dim=64, depth=1, num_heads=1, region_size=(1, 1, 2),
                       **SMALL)
    torch.save({"model": ref.state_dict()}, tmp_path / "m.pth")  # no args: defaults 16 x 160, regions 2 x 5 x 10
    with pytest.raises(ValueError, match="region"):
        import_mae_dfer(tmp_path / "m.pth")
    imported = import_mae_dfer(tmp_path / "m.pth", img_size=32, num_frames=4, region_size=(1, 1, 2))
    assert imported.model.layout.num_regions == 4


def test_videomae_finetuned_pth_with_fused_qkv(tmp_path, capsys):
    ref = _perturb(create_model("vit_small_patch16_160", embed_dim=64, depth=2, num_heads=1, num_classes=3, **SMALL))
    args = argparse.Namespace(model="vit_base_patch16_224", input_size=32, num_frames=4, nb_classes=3)
    torch.save({"module": _to_videomae(ref.state_dict()), "args": args}, tmp_path / "vm.pth")
    rc = convert_main(["videomae", "--input", str(tmp_path / "vm.pth"), "--output", str(tmp_path / "rel")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "state dict under 'module'" in out and "num_heads=1: not stored" in out
    model = load_release(tmp_path / "rel")
    assert model.model_args["num_heads"] == 1 and model.num_classes == 3
    x = _clips()
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=0, atol=1e-5)


def test_videomae_pretraining_pth_gives_the_encoder(tmp_path):
    enc = _perturb(create_model("vit_small_patch16_160", embed_dim=64, depth=2, num_heads=1, global_pool="",
                                **SMALL))
    sd = {f"encoder.{k}": v for k, v in _to_videomae(enc.state_dict()).items()}
    sd.update({"mask_token": torch.zeros(1, 1, 32), "encoder_to_decoder.weight": torch.zeros(32, 64),
               "decoder.blocks.0.attn.qkv.weight": torch.zeros(96, 32), "decoder.head.weight": torch.zeros(1536, 32)})
    torch.save({"model": sd}, tmp_path / "pt.pth")
    pooled = import_videomae(tmp_path / "pt.pth", img_size=32, num_frames=4)
    assert pooled.model.model_args["global_pool"] == "avg" and pooled.model.num_classes == 0
    assert "encoder.norm.weight" in pooled.dropped
    tokens = import_videomae(tmp_path / "pt.pth", img_size=32, num_frames=4, global_pool="")
    x = _clips()
    with torch.no_grad():
        torch.testing.assert_close(tokens.model(x), enc(x), rtol=0, atol=1e-5)
        feats = enc.blocks[1](enc.blocks[0](enc.patch_embed(x) + enc.pos_embed)).mean(1)
        torch.testing.assert_close(pooled.model(x), torch.nn.functional.layer_norm(feats, (64,), eps=1e-6),
                                   rtol=0, atol=1e-5)


def test_wrong_family_and_unsupported_layouts_are_refused(tmp_path):
    lgi = create_model("lgiformer_tiny_patch16_160", embed_dim=64, depth=1, num_heads=1, region_size=(1, 1, 2),
                       **SMALL)
    torch.save({"model": lgi.state_dict()}, tmp_path / "lgi.pth")
    with pytest.raises(ValueError, match="mae-dfer"):
        import_videomae(tmp_path / "lgi.pth")
    vit = create_model("vit_small_patch16_160", embed_dim=64, depth=1, num_heads=1, num_classes=2, **SMALL)
    sd = _to_videomae(vit.state_dict())
    first_token = {k: v for k, v in sd.items() if not k.startswith("fc_norm")}
    first_token.update({"norm.weight": torch.ones(64), "norm.bias": torch.zeros(64)})
    torch.save({"model": first_token}, tmp_path / "cls.pth")
    with pytest.raises(ValueError, match="use_mean_pooling=False"):
        import_videomae(tmp_path / "cls.pth", img_size=32, num_frames=4)
    torch.save({"model": {**sd, "pos_embed": torch.randn(1, 8, 64)}}, tmp_path / "learned.pth")
    with pytest.raises(ValueError, match="learned position table"):
        import_videomae(tmp_path / "learned.pth", img_size=32, num_frames=4)
