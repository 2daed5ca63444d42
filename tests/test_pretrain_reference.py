"""Pretraining as the reference does it (docs/REFERENCE.md, departures 1-3), the held-out baselines and the feature
monitor: each test compares with a plain computation of what the reference (or the definition) says."""
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from lgiformer.layers import Block
from lgiformer.masking import MaskGenerator, visible_count
from lgiformer.tasks.features import FeatureMonitor
from lgiformer.tasks.pretrain import (PretrainModelConfig, PretrainOptimConfig, load_pretrain_config,
                                      pretrain_model, pretrain_param_groups, split_heldout)
from lgiformer.tokens import TokenLayout

ROOT = Path(__file__).resolve().parents[1]
RECIPES = [ROOT / "pretrain" / "configs" / "voxceleb2_lgiformer_base.yaml", ROOT / "pretrain" / "configs" / "demo.yaml"]
# The reference's no-weight-decay list (run_mae_pretraining.py -> model.no_weight_decay()), matched against the
# pretraining model's full parameter names.
REFERENCE_SKIP = {"pos_embed", "cls_token", "mask_token", "lg_region_tokens"}


def small_model(**kwargs):
    m = PretrainModelConfig(name="lgiformer_tiny_patch16_160", img_size=96, num_frames=8, region_size=[2, 3, 6],
                            embed_dim=64, depth=2, num_heads=4, decoder_embed_dim=48, decoder_depth=2,
                            decoder_num_heads=4, **kwargs)
    m.validate()
    return pretrain_model(m)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipes_default_to_the_reference_choices(recipe):
    cfg = load_pretrain_config(str(recipe), [])
    assert (cfg.model.init, cfg.model.mask_rounding, cfg.optim.decay_region_tokens) == ("reference", "floor", True)
    plain = load_pretrain_config(None, [])
    assert (plain.model.init, plain.model.mask_rounding, plain.optim.decay_region_tokens) == ("reference", "floor",
                                                                                             True)


# ---- departure 3: masked positions per window -------------------------------------------------------------------
@pytest.mark.parametrize("ratio", [0.75, 0.9])
@pytest.mark.parametrize("grid,region", [((4, 6, 6), (2, 3, 6)), ((8, 10, 10), (2, 5, 10))], ids=["demo", "base"])
def test_visible_positions_per_window_follow_the_reference_int(ratio, grid, region):
    layout = TokenLayout(grid, region)
    window = region[1] * region[2]
    masker = MaskGenerator(layout, "region_balanced", ratio)  # the default rounding
    mask = masker(3, generator=torch.Generator().manual_seed(1))
    raster = layout.to_raster(mask).view(3, *grid)[:, 0]
    t, h, w = grid
    per_window = (~raster).view(3, h // region[1], region[1], w // region[2], region[2]).sum((2, 4))
    assert bool((per_window == window - int(ratio * window)).all())


def test_rounding_choices_differ_where_the_issue_says():
    assert visible_count(18, 0.75, "floor") == 5 and visible_count(18, 0.75, "round") == 4
    assert visible_count(50, 0.75, "floor") == 13 and visible_count(50, 0.75, "round") == 12
    assert visible_count(18, 0.9, "floor") == visible_count(18, 0.9, "round") == 2
    assert small_model(mask_ratio=0.75).masker.num_visible_per_group == 5
    assert small_model(mask_ratio=0.75, mask_rounding="round").masker.num_visible_per_group == 4
    with pytest.raises(ValueError, match="rounding"):
        visible_count(18, 0.75, "ceil")


# ---- departure 1: initialisation ---------------------------------------------------------------------------------
def _uniform_bound_matches(weight: torch.Tensor, bound: float) -> None:
    w = weight.detach().flatten()
    assert float(w.abs().max()) <= bound * (1 + 1e-6)
    assert float(w.abs().max()) > 0.95 * bound, "a uniform draw of this size reaches close to its bound"
    assert float(w.std()) == pytest.approx(bound / math.sqrt(3), rel=0.08)


def test_reference_init_is_xavier_with_the_reference_module_shapes():
    torch.manual_seed(0)
    mae = small_model()
    decoder_qkv = set()
    for block in mae.decoder.modules():
        if isinstance(block, Block):  # the reference's plain ViT block: one fused qkv Linear
            q, kv = block.attn.q, block.attn.kv
            bound = math.sqrt(6 / (q.in_features + q.out_features + kv.out_features))
            for linear in (q, kv):
                _uniform_bound_matches(linear.weight, bound)
                decoder_qkv.add(id(linear))
    assert len(decoder_qkv) == 4
    linears = [m for m in (*mae.encoder.modules(), *mae.decoder.modules())
               if isinstance(m, nn.Linear) and id(m) not in decoder_qkv]
    assert len(linears) > 20
    for linear in linears:  # the LGI-Former's q and kv are separate Linears in the reference too
        _uniform_bound_matches(linear.weight, math.sqrt(6 / (linear.in_features + linear.out_features)))
        assert linear.bias is None or not linear.bias.any()
    norms = [m for m in mae.modules() if isinstance(m, nn.LayerNorm)]
    assert norms and all(bool((n.weight == 1).all() and (n.bias == 0).all()) for n in norms)
    # encoder_to_decoder: never re-initialised by the reference, so PyTorch's Linear default U(+-1/sqrt(fan_in))
    _uniform_bound_matches(mae.encoder_to_decoder.weight, 1 / math.sqrt(mae.encoder_to_decoder.in_features))
    # tokens: trunc_normal(std 0.02) truncated at one std (a std of 0.02 x 0.5396 for a normal cut at +-1 sigma)
    tokens = torch.cat((mae.encoder.lg_region_tokens.flatten(), mae.mask_token.flatten())).detach()
    assert float(tokens.abs().max()) <= 0.02 and float(tokens.std()) == pytest.approx(0.02 * 0.5396, rel=0.15)


def test_trunc_normal_init_keeps_the_finetuning_init():
    torch.manual_seed(0)
    mae = small_model(init="trunc_normal")
    weights = torch.cat([m.weight.detach().flatten() for m in mae.modules() if isinstance(m, nn.Linear)])
    assert float(weights.std()) == pytest.approx(0.02, rel=0.05)
    assert float(mae.encoder.lg_region_tokens.detach().std()) == pytest.approx(0.02, rel=0.25)


def test_importing_weights_into_the_autoencoder_keeps_the_encoder():
    from lgiformer.models import MaskedVideoAutoencoder, create_model

    encoder = create_model("lgiformer_tiny_patch16_160", img_size=96, num_frames=8, region_size=(2, 3, 6),
                           embed_dim=64, depth=1, num_heads=4, num_classes=0, global_pool="")
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    mae = MaskedVideoAutoencoder(encoder, 48, 1, 4)
    assert all(torch.equal(before[k], v) for k, v in mae.encoder.state_dict().items())


# ---- departure 2: weight decay on the representative tokens --------------------------------------------------------
@pytest.mark.parametrize("decay_region_tokens", [True, False])
def test_decayed_parameters_match_the_reference_rule(decay_region_tokens):
    mae = small_model()
    groups = pretrain_param_groups(mae, PretrainOptimConfig(decay_region_tokens=decay_region_tokens))
    names = {id(p): n for n, p in mae.named_parameters()}
    decayed = {names[id(p)] for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert all(g["weight_decay"] in (0.0, 0.05) for g in groups)
    # the reference's get_parameter_groups: 1-D, ".bias" and exact names in the skip list take no decay
    reference = {n for n, p in mae.named_parameters()
                 if not (p.ndim == 1 or n.endswith(".bias") or n in REFERENCE_SKIP)}
    assert "encoder.lg_region_tokens" in reference and "mask_token" not in reference
    expected = reference if decay_region_tokens else reference - {"encoder.lg_region_tokens"}
    assert decayed == expected


# ---- the held-out figures ----------------------------------------------------------------------------------------
def test_heldout_losses_equal_a_plain_computation():
    torch.manual_seed(0)
    mae = small_model().eval()
    clips = torch.randn(3, 3, 8, 96, 96)
    mask = mae.masker(3, generator=torch.Generator().manual_seed(0))
    per_clip = mae.heldout_losses(clips, mask)
    assert all(v.shape == (3,) for parts in per_clip.values() for v in parts.values())
    with torch.no_grad():
        assert float(per_clip["model"]["loss"][1]) == pytest.approx(float(mae(clips[1:2], mask[1:2])["loss"]),
                                                                    rel=1e-5)
    losses = {name: {k: float(v.mean()) for k, v in parts.items()} for name, parts in per_clip.items()}
    with torch.no_grad():
        assert losses["model"]["loss"] == pytest.approx(float(mae(clips, mask)["loss"]), rel=1e-5)
    target = mae.build_targets(clips)
    app = mae.target_sizes["appearance"]
    for part, cols in (("loss_appearance", slice(0, app)), ("loss_motion", slice(app, None))):
        t = target[..., cols]
        zero = float(torch.stack([t[b][mask[b]].square().mean() for b in range(3)]).mean())
        means = [t[b][~mask[b]].mean(0) for b in range(3)]
        visible = float(torch.stack([(t[b][mask[b]] - means[b]).square().mean() for b in range(3)]).mean())
        assert losses["zero"][part] == pytest.approx(zero, rel=1e-5)
        assert losses["visible_mean"][part] == pytest.approx(visible, rel=1e-5)
    assert losses["zero"]["loss"] == pytest.approx(0.5 * losses["zero"]["loss_appearance"]
                                                   + 0.5 * losses["zero"]["loss_motion"], rel=1e-6)


def test_split_heldout_takes_the_tail():
    videos = list(range(160))
    train, heldout = split_heldout(videos, 0.1)
    assert train == list(range(144)) and heldout == list(range(144, 160))
    assert split_heldout(videos, 0.0) == (videos, [])
    with pytest.raises(ValueError, match="no training video"):
        split_heldout([1], 0.5)


# ---- feature health -------------------------------------------------------------------------------------------
def test_feature_monitor_measures_the_first_training_forwards_of_each_epoch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 4))
    monitor = FeatureMonitor(model, {"hidden": (model[1], "input"), "out": (model[1], "output")}, batches=2)
    xs = [torch.randn(5, 3, 8) for _ in range(3)]
    for x in xs:  # the third forward is past the two sampled ones
        model(x)
    model.eval()
    model(torch.randn(5, 3, 8) * 100)  # evaluation forwards never count
    model.train()
    stats = monitor.epoch_stats()
    with torch.no_grad():
        hidden = torch.stack([model[0](x) for x in xs[:2]])
    assert stats["features/hidden_std"] == pytest.approx(float(hidden.std(unbiased=False)), rel=1e-4)
    assert stats["features/hidden_norm"] == pytest.approx(float(hidden.norm(dim=-1).mean()), rel=1e-4)
    assert set(stats) == {"features/hidden_std", "features/hidden_norm", "features/out_std", "features/out_norm"}
    model(xs[2])  # the next epoch samples again
    again = monitor.epoch_stats()
    with torch.no_grad():
        assert again["features/hidden_std"] == pytest.approx(float(model[0](xs[2]).std(unbiased=False)), rel=1e-4)
    monitor.close()
    model(xs[0])
    assert monitor.epoch_stats() == {}


def test_paper_recipe_reproduces_the_released_runs_learning_rate():
    """The released checkpoint's log peaks at 1.875e-4 with a floor scaled by the same 0.625: blr 3e-4 at a total
    batch of 160 (docs/REFERENCE.md#departure-4), which the recipe's 8 GPUs x 20 clips give."""
    cfg = load_pretrain_config(str(RECIPES[0]), [])
    total = cfg.run.batch_size * 8 * cfg.optim.accum_steps
    lr, min_lr, warmup_lr = cfg.optim.effective_lr(total)
    assert total == 160
    assert (lr, min_lr, warmup_lr) == pytest.approx((1.875e-4, 6.25e-6, 6.25e-7))
