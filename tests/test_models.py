import pytest
import torch

from lgiformer.models import build_pretrain_model, create_model
from lgiformer.optim import param_groups

TINY = dict(img_size=32, num_frames=4, embed_dim=32, depth=2, num_heads=2)


@pytest.mark.parametrize("pool", ["region", "local", "all", "spatial"])
def test_lgiformer_shapes_finetune_mode(pool):
    model = create_model("lgiformer_tiny_patch16_160", num_classes=5, region_size=(1, 1, 2), global_pool=pool, **TINY)
    x = torch.randn(2, 3, 4, 32, 32)
    feats = model.forward_features(x)
    assert feats.shape == (2, 4 + 8, 32)  # 4 regions of 2 tokens
    assert model.num_prefix_tokens == 4 and model.grid_size == (2, 2, 2)
    assert model(x).shape == (2, 5)


def test_lgiformer_visible_token_mode_keeps_ten_per_region_at_base_layout():
    mae = build_pretrain_model("lgiformer_tiny_patch16_160", embed_dim=32, depth=1, num_heads=2,
                               decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
    seen = {}
    def record(module, args):
        seen["shape"] = args[0].shape

    mae.encoder.blocks[0].register_forward_pre_hook(record)
    x = torch.randn(1, 3, 16, 160, 160)
    mask = mae.masker(1)
    feats = mae.encoder.forward_features(x, mask)
    assert seen["shape"] == (1, 8, 1 + 10, 32), "8 regions x (1 representative + 10 visible tokens)"
    assert feats.shape == (1, 8 + 80, 32)


def test_lgiformer_rejects_unbalanced_mask():
    model = create_model("lgiformer_tiny_patch16_160", region_size=(1, 1, 2), global_pool="", **TINY)
    mask = torch.zeros(1, 8, dtype=torch.bool)
    mask[0, :3] = True
    with pytest.raises(ValueError, match="region_balanced"):
        model.forward_features(torch.randn(1, 3, 4, 32, 32), mask)


def test_finetune_features_are_raster_ordered():
    """Local tokens come back in raster order: a patch change moves only its own token's first-layer input."""
    model = create_model("lgiformer_tiny_patch16_160", region_size=(1, 1, 2), **{**TINY, "depth": 0})
    x = torch.randn(1, 3, 4, 32, 32)
    base = model.forward_features(x)
    y = x.clone()
    y[:, :, 2:4, 16:32, 0:16] += 1.0  # raster token (t=1, h=1, w=0) -> index 1*4 + 1*2 + 0 = 6
    changed = (model.forward_features(y) - base).abs().sum(-1)[0, model.num_prefix_tokens:]
    assert changed.nonzero().flatten().tolist() == [6]


@pytest.mark.parametrize("name", ["lgiformer_tiny_patch16_160", "vit_tiny_patch16_160"])
def test_spatial_pool_is_a_per_position_time_average_that_keeps_where(name, tmp_path):
    kwargs = dict(region_size=(1, 1, 2)) if name.startswith("lgi") else {}
    model = create_model(name, num_classes=5, global_pool="spatial", **TINY, **kwargs).eval()
    x = torch.randn(2, 3, 4, 32, 32)
    tokens = model.forward_features(x)
    local = tokens[:, model.num_prefix_tokens:]  # raster (t, h, w): 2 x 2 x 2 tokens
    # Plain computation: mean over t per (h, w), LayerNorm per position, concatenated in raster (h, w) order.
    by_time = local.view(2, 2, 4, 32)
    expected = torch.cat([model.fc_norm((by_time[:, 0, p] + by_time[:, 1, p]) / 2) for p in range(4)], dim=1)
    pooled = model.forward_head(tokens, pre_logits=True)
    torch.testing.assert_close(pooled, expected)
    assert model.head.in_features == model.head_hidden_size == 4 * 32
    # Where matters: swapping two positions' tokens changes the output, which the mean pool ignores.
    swapped = local.view(2, 2, 4, 32)[:, :, [1, 0, 2, 3]].reshape(2, 8, 32)
    swapped = torch.cat((tokens[:, :model.num_prefix_tokens], swapped), dim=1)
    assert not torch.allclose(model.forward_head(swapped, pre_logits=True), pooled)
    mean_pool = create_model(name, num_classes=5, global_pool="local" if kwargs else "avg", **TINY, **kwargs).eval()
    torch.testing.assert_close(mean_pool.forward_head(swapped), mean_pool.forward_head(tokens))
    # The pooling travels with the weights: a release rebuilds the same head and the same outputs.
    from lgiformer.models.release import load_release, write_release

    write_release(model, tmp_path / "rel", task="dfer", source={"format": "test"})
    torch.testing.assert_close(load_release(tmp_path / "rel").eval()(x), model(x))
    # And a pooled classifier can be switched to it (the head is rebuilt for the wider input).
    other = create_model(name, num_classes=5, **TINY, **kwargs)
    other.reset_classifier(3, "spatial")
    assert other.head.in_features == 4 * 32 and other.model_args["global_pool"] == "spatial"
    assert other(x).shape == (2, 3)


@pytest.mark.parametrize("name", ["lgiformer_tiny_patch16_160", "vit_tiny_patch16_160"])
def test_label_token_head_is_one_query_per_class_over_the_local_tokens(name, tmp_path):
    from lgiformer.heads import LabelTokenHead
    from lgiformer.models.release import load_release, write_release

    kwargs = dict(region_size=(1, 1, 2)) if name.startswith("lgi") else {}
    head_args = dict(dim=16, depth=1, num_heads=2, dropout=0.0)
    model = create_model(name, num_classes=5, global_pool="label_token", head_args=head_args, **TINY,
                         **kwargs).eval()
    x = torch.randn(2, 3, 4, 32, 32)
    tokens = model.forward_features(x)
    r = model.num_prefix_tokens
    # Plain composition: the AU library's label-token head, 5 queries, on the fc_norm-ed local tokens only.
    plain = LabelTokenHead(32, 5, mode="clip", **{**head_args, "token_self_attn": False})
    plain.load_state_dict(model.head.state_dict())
    plain.eval()
    expected = plain(model.fc_norm(tokens)[:, r:], grid=model.grid_size, n_special=0)["logits"]
    torch.testing.assert_close(model(x), expected)
    assert isinstance(model.head, LabelTokenHead) and model.head.label_tokens.shape == (5, 16)
    # Attention pooling without an added position table is blind to the order of the keys, unlike "spatial".
    perm = torch.randperm(tokens.shape[1] - r)
    shuffled = torch.cat((tokens[:, :r], tokens[:, r:][:, perm]), dim=1)
    torch.testing.assert_close(model.forward_head(shuffled), model.forward_head(tokens))
    # Queries decay-free and at the head's lr (layer decay's last group, scale 1).
    assert "head.label_tokens" in model.no_weight_decay()
    groups = param_groups(model, 0.05, layer_decay=0.75)
    queries = next(g for g in groups if any(p is model.head.label_tokens for p in g["params"]))
    assert queries["weight_decay"] == 0.0 and queries["lr_scale"] == 1.0
    # The head and its resolved arguments travel with the weights.
    write_release(model, tmp_path / "rel", task="dfer", source={"format": "test"})
    loaded = load_release(tmp_path / "rel")
    assert loaded.model_args["head_args"] == {**head_args, "token_self_attn": False}
    torch.testing.assert_close(loaded(x), model(x))
    # A pooled classifier can switch to it and back.
    other = create_model(name, num_classes=5, **TINY, **kwargs)
    other.reset_classifier(3, "label_token")
    assert other(x).shape == (2, 3) and other.model_args["head_args"]["dim"] == 256  # AU_METHODS.md defaults
    other.reset_classifier(3, "spatial")
    assert "head_args" not in other.model_args and other(x).shape == (2, 3)
    with pytest.raises(ValueError, match=r"\['size'\] are not settable.*accepted: dim, depth"):
        create_model(name, num_classes=5, global_pool="label_token", head_args={"size": 3}, **TINY, **kwargs)
    with pytest.raises(ValueError, match="head_args are for global_pool='label_token'"):
        create_model(name, num_classes=5, head_args={"dim": 8}, **TINY, **kwargs)


@pytest.mark.parametrize("name", ["vit_tiny_patch16_160", "vit_small_patch16_160"])
def test_vit_shapes(name):
    model = create_model(name, num_classes=3, img_size=32, num_frames=4, depth=1)
    x = torch.randn(2, 3, 4, 32, 32)
    assert model.forward_features(x).shape == (2, 8, model.embed_dim)
    assert model(x).shape == (2, 3)
    with pytest.raises(ValueError, match="'region', 'local' and 'all' are LGI-Former poolings"):
        create_model(name, num_classes=3, img_size=32, num_frames=4, depth=1, global_pool="region")


@pytest.mark.parametrize("encoder,mask_type", [("lgiformer_tiny_patch16_160", "region_balanced"),
                                               ("vit_tiny_patch16_160", "tube"),
                                               ("vit_tiny_patch16_160", "random")])
def test_pretrain_model_shapes_and_gradients(encoder, mask_type):
    kwargs = dict(region_size=(1, 1, 2)) if encoder.startswith("lgi") else {}
    mae = build_pretrain_model(encoder, img_size=32, num_frames=4, embed_dim=32, depth=1, num_heads=2,
                               decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2, mask_type=mask_type,
                               mask_ratio=0.5, **kwargs)
    x = torch.randn(2, 3, 4, 32, 32)
    mask = mae.masker(2)
    pred = mae.predict(x, mask)
    assert pred.shape == (2, int(mask[0].sum()), 2 * 16 * 16 * 3)
    out = mae(x, mask)
    assert set(out) == {"loss", "loss_appearance", "loss_motion"}
    out["loss"].backward()
    assert mae.mask_token.grad.abs().sum() > 0
    if encoder.startswith("lgi"):
        assert mae.encoder.lg_region_tokens.grad.abs().sum() > 0
    images = mae.reconstruction_images(x)
    assert images["input"].shape == (4, 3, 32, 32) and images["pred_motion"].shape == (2, 3, 32, 32)
    assert all(0 <= float(v.min()) and float(v.max()) <= 1 for v in images.values())


@pytest.mark.parametrize("mask_type", ["tube", "random"])
def test_lgiformer_with_regions_refuses_masks_that_unbalance_them(mask_type):
    """Caught when the model is built, not at the first training step after the data has loaded."""
    args = dict(img_size=32, num_frames=4, embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=16, decoder_depth=1,
                decoder_num_heads=2, mask_ratio=0.5, mask_type=mask_type)
    with pytest.raises(ValueError, match="needs mask_type='region_balanced'"):
        build_pretrain_model("lgiformer_tiny_patch16_160", region_size=(1, 1, 2), **args)
    # One region (the whole grid) has no balance to keep: any mask works.
    mae = build_pretrain_model("lgiformer_tiny_patch16_160", region_size=(2, 2, 2), **args)
    assert mae(torch.randn(2, 3, 4, 32, 32))["loss"].isfinite()


def test_decoder_positions_follow_token_identity():
    """docs/REFERENCE.md#defect-1: each masked prediction must depend on its own token's decoder position."""
    mae = build_pretrain_model("lgiformer_tiny_patch16_160", img_size=32, num_frames=4, embed_dim=32, depth=1,
                               num_heads=2, region_size=(1, 1, 2), decoder_embed_dim=16, decoder_depth=0,
                               decoder_num_heads=2, mask_ratio=0.5).eval()
    x = torch.randn(1, 3, 4, 32, 32)
    mask = mae.masker(1)
    # With no decoder blocks each prediction is head(norm(mask_token + pos[token])): check against the table.
    pred = mae.predict(x, mask)
    pos = mae.decoder_pos_embed[mask[0]]
    expected = mae.decoder.head(mae.decoder.norm(mae.mask_token[0] + pos))
    torch.testing.assert_close(pred[0], expected)
    # And the table itself is the raster sinusoid reordered by the one layout.
    from lgiformer.tokens import sinusoid_table
    torch.testing.assert_close(mae.layout.to_raster(mae.decoder_pos_embed, dim=0), sinusoid_table(8, 16))


def test_weight_decay_groups_exclude_what_they_must():
    mae = build_pretrain_model("lgiformer_tiny_patch16_160", img_size=32, num_frames=4, embed_dim=32, depth=1,
                               num_heads=2, region_size=(1, 1, 2), decoder_embed_dim=16, decoder_depth=1,
                               decoder_num_heads=2, mask_ratio=0.5)
    names = {id(p): n for n, p in mae.named_parameters()}
    groups = param_groups(mae, weight_decay=0.05)
    no_decay = {names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    decay = {names[id(p)] for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert {"mask_token", "encoder.lg_region_tokens"} <= no_decay
    assert all(n.endswith("bias") or "norm" in n or n in {"mask_token", "encoder.lg_region_tokens"}
               for n in no_decay)
    assert "encoder.blocks.0.first_attn.q.weight" in decay and "decoder.head.weight" in decay
    assert not any("norm" in n or n.endswith("bias") for n in decay)


def test_layer_decay_groups_scale_by_depth():
    model = create_model("lgiformer_tiny_patch16_160", num_classes=3, region_size=(1, 1, 2), **TINY)
    groups = param_groups(model, 0.05, layer_decay=0.5)
    names = {id(p): n for n, p in model.named_parameters()}
    scale = {names[id(p)]: g["lr_scale"] for g in groups for p in g["params"]}
    assert scale["head.weight"] == 1.0
    assert scale["blocks.1.mlp.fc1.weight"] == 0.5
    assert scale["blocks.0.mlp.fc1.weight"] == 0.25
    assert scale["patch_embed.proj.weight"] == 0.125 and scale["lg_region_tokens"] == 0.125


def test_base_sizes():
    model = create_model("lgiformer_base_patch16_160", num_classes=7)
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - 84.88e6) / 84.88e6 < 0.01
    assert (model.embed_dim, len(model.blocks), model.layout.region) == (512, 16, (2, 5, 10))


def test_param_groups_merge_identical_hyperparameters_and_keep_every_parameter_once():
    from lgiformer.optim import merge_identical_groups

    model = create_model("lgiformer_tiny_patch16_160", num_classes=3, region_size=(1, 1, 2), **TINY)
    every = [id(p) for p in model.parameters()]
    for wd, ld, expected in [(0.05, None, 2), (0.0, None, 1), (0.05, 0.5, None), (0.0, 0.5, None)]:
        groups = param_groups(model, wd, layer_decay=ld)
        ids = [id(p) for g in groups for p in g["params"]]
        assert sorted(ids) == sorted(every) and len(ids) == len(set(ids))
        keys = [(g["lr_scale"], g["weight_decay"]) for g in groups]
        assert len(keys) == len(set(keys)), "no two groups share their hyperparameters"
        if expected is not None:
            assert len(groups) == expected
    # Layer decay: one group per (scale, decay) pair; without weight decay the decay/no-decay split disappears.
    scales = {g["lr_scale"] for g in param_groups(model, 0.05, layer_decay=0.5)}
    assert len(param_groups(model, 0.0, layer_decay=0.5)) == len(scales)
    a, b, c = (torch.nn.Parameter(torch.zeros(1)) for _ in range(3))
    merged = merge_identical_groups([{"params": [a], "lr_scale": 0.5, "weight_decay": 0.0},
                                     {"params": [b], "lr_scale": 1.0, "weight_decay": 0.0},
                                     {"params": [c], "lr_scale": 0.5, "weight_decay": 0.0}])
    assert [[id(p) for p in g["params"]] for g in merged] == [[id(a), id(c)], [id(b)]]
    assert [g["lr_scale"] for g in merged] == [0.5, 1.0]
