"""AU losses and target transforms: docs/AU_METHODS.md#test-ids T-U1..U4, T-A4, T-B6 (KD), T-E1..E3, T-F1..F4."""
import math

import pytest
import torch
import torch.nn.functional as F

import lgiformer  # noqa: F401  (import fix for torchvision / timm)
from lgiformer.au.attention_guidance import h2p_loss, pattel_loss, prior_heatmaps
from lgiformer.au.label_targets import (RHLS, VALS, build_target_transform, rhls_alphas, rhls_targets, slot_targets,
                                        vals_targets, vls_targets)
from lgiformer.au.losses import bernoulli_kd, build_au_loss, masked_weighted_bce, mdwa_gamma, mdwa_loss, weighted_dice
from lgiformer.au.weights import inverse_frequency_weights, occurrence_rates, prior_bias

torch.manual_seed(0)


# ---- U1 / U2 ------------------------------------------------------------------------------------------------------
def test_inverse_frequency_weights_mean_one_and_strictly_decreasing():
    r = torch.tensor([0.02, 0.05, 0.1, 0.3, 0.6])
    w = inverse_frequency_weights(r)
    assert w.mean().item() == pytest.approx(1.0, abs=1e-6)
    assert bool((w[1:] < w[:-1]).all())
    assert inverse_frequency_weights(r, max_weight=2.0).max().item() <= 2.0


def test_occurrence_rates_count_only_valid_labels():
    y = torch.tensor([[1, 0], [1, 1], [0, 1], [1, 1]])
    v = torch.tensor([[1, 1], [1, 1], [1, 0], [0, 0]])
    assert occurrence_rates(y, v).tolist() == pytest.approx([2 / 3, 1 / 2])


def test_prior_bias_reproduces_rates():
    r = torch.tensor([0.01, 0.2, 0.5, 0.9])
    assert torch.allclose(torch.sigmoid(prior_bias(r)), r, atol=1e-6)


# ---- U3 -----------------------------------------------------------------------------------------------------------
def test_bce_parity_with_torch():
    z, y = torch.randn(6, 5), torch.randint(0, 2, (6, 5)).float()
    assert torch.allclose(masked_weighted_bce(z, y), F.binary_cross_entropy_with_logits(z, y), atol=1e-6)
    soft = torch.rand(6, 5)
    assert torch.allclose(masked_weighted_bce(z, soft, torch.ones(6, 5), torch.ones(5)),
                          F.binary_cross_entropy_with_logits(z, soft), atol=1e-6)


def test_bce_exact_zero_gradient_where_masked():
    z = torch.randn(4, 6, requires_grad=True)
    y = torch.randint(0, 2, (4, 6)).float()
    v = torch.rand(4, 6) > 0.5
    masked_weighted_bce(z, y, v, inverse_frequency_weights(torch.rand(6) * 0.5 + 0.01)).backward()
    assert bool((z.grad[~v] == 0).all())
    assert bool((z.grad[v] != 0).all())


def test_bce_all_invalid_batch_gives_zero_and_finite_grad():
    z = torch.randn(3, 4, requires_grad=True)
    loss = masked_weighted_bce(z, torch.ones(3, 4), torch.zeros(3, 4))
    loss.backward()
    assert loss.item() == 0.0 and bool(torch.isfinite(z.grad).all()) and bool((z.grad == 0).all())


# ---- U4 -----------------------------------------------------------------------------------------------------------
def test_dice_zero_at_perfect_prediction_and_masked_no_grad():
    y = torch.randint(0, 2, (5, 4)).float()
    z = (y * 2 - 1) * 60.0  # p == y in float32
    assert weighted_dice(z, y).item() == pytest.approx(0.0, abs=1e-6)
    assert weighted_dice(z, y, reduction="batch").item() == pytest.approx(0.0, abs=1e-6)
    zz = torch.randn(5, 4, requires_grad=True)
    v = torch.rand(5, 4) > 0.5
    for red in ("per_sample", "batch"):
        zz.grad = None
        weighted_dice(zz, y, v, torch.rand(4) + 0.5, reduction=red).backward()
        assert bool((zz.grad[~v] == 0).all())


# ---- MDWA (T-A4) --------------------------------------------------------------------------------------------------
def test_mdwa_reduces_to_bce():
    z, y = torch.randn(8, 5), torch.randint(0, 2, (8, 5)).float()
    g = mdwa_gamma(torch.rand(5), b_l=0.0, b_r=0.0)
    assert torch.allclose(mdwa_loss(z, y, gamma=g, margin=0.0), F.binary_cross_entropy_with_logits(z, y), atol=1e-6)


def test_mdwa_exact_zero_for_easy_negatives():
    p = torch.tensor([0.001, 0.01, 0.03, 0.0499])
    z = torch.logit(p).requires_grad_()
    loss = mdwa_loss(z, torch.zeros(4), gamma=1.0, margin=0.05)
    loss.backward()
    assert loss.item() == 0.0 and bool((z.grad == 0).all())


def test_mdwa_negative_gradient_peak_matches_figure():
    p = torch.linspace(0.001, 0.999, 9981, dtype=torch.float64)
    z = torch.logit(p).requires_grad_()
    (mdwa_loss(z, torch.zeros_like(z), gamma=1.0, margin=0.05) * z.numel()).backward()
    g = z.grad
    i = int(g.argmax())
    assert p[i].item() == pytest.approx(0.844, abs=0.005)
    assert g[i].item() == pytest.approx(0.715, abs=0.005)
    assert g[-1].item() < 0.03
    # The ME-GraphAU convention (detached focus) gives a different, lower curve.
    z2 = torch.logit(p).requires_grad_()
    (mdwa_loss(z2, torch.zeros_like(z2), gamma=1.0, margin=0.05, detach_focus=True) * z2.numel()).backward()
    assert z2.grad.max().item() < g.max().item()


def test_mdwa_positive_term_independent_of_margin_and_gamma():
    z = torch.randn(10)
    ref = mdwa_loss(z, torch.ones(10), gamma=0.0, margin=0.0)
    for gamma, m in ((1.0, 0.05), (2.0, 0.2), (0.5, 0.1)):
        assert torch.allclose(mdwa_loss(z, torch.ones(10), gamma=gamma, margin=m), ref)


def test_mdwa_no_nan_for_gamma_below_one():
    z = torch.logit(torch.tensor([0.01, 0.049, 0.05, 0.051, 0.5, 0.99])).requires_grad_()
    loss = mdwa_loss(z, torch.zeros(6), gamma=0.5, margin=0.05)
    loss.backward()
    assert torch.isfinite(loss) and bool(torch.isfinite(z.grad).all())
    assert z.grad[0].item() == 0.0 and z.grad[1].item() == 0.0


def test_mdwa_gamma_from_rates():
    g = mdwa_gamma(torch.tensor([0.05, 0.2, 0.5]), b_l=1.0, b_r=2.0)
    assert g.tolist() == pytest.approx([2.0, 1.0 + 0.3 / 0.45, 1.0])


def test_mdwa_loss_module_masks_and_uses_experts():
    rates = torch.tensor([0.1, 0.3, 0.5])
    loss_fn = build_au_loss("mdwa", rates=rates)
    z = torch.randn(4, 3, requires_grad=True)
    ex = torch.randn(4, 3, requires_grad=True)
    y = torch.randint(0, 2, (4, 3)).float()
    v = torch.tensor([[1, 0, 1]] * 4).bool()
    out = loss_fn({"logits": z, "aux": {"experts": ex}}, y, v)
    out["loss"].backward()
    assert set(out) == {"loss", "mdwa", "wdi", "experts"}
    assert bool((z.grad[:, 1] == 0).all()) and bool((ex.grad[:, 1] == 0).all())
    assert bool((ex.grad[:, 0] != 0).any())


# ---- KD (T-B6) ----------------------------------------------------------------------------------------------------
def test_kd_zero_at_equality_and_teacher_detached():
    t = torch.randn(4, 5, requires_grad=True)
    s = t.detach().clone().requires_grad_()
    kd = bernoulli_kd(s, t)
    assert kd.item() == pytest.approx(0.0, abs=1e-7)
    kd2 = bernoulli_kd(s + 0.5, t)
    kd2.backward()
    assert kd2.item() > 0 and t.grad is None and s.grad.abs().sum() > 0


# ---- smoothing (T-F1..F4) -----------------------------------------------------------------------------------------
def test_smoothing_identity_at_zero():
    y = torch.randint(0, 2, (6, 4)).float()
    assert torch.equal(vals_targets(y, 0.0, 0.0), y)
    assert torch.equal(vals_targets(y, 0.0, 0.0, "literal"), y)
    assert torch.equal(rhls_targets(y, torch.rand(4), beta=0.0), y)


def test_vals_equal_alphas_is_vls_under_halved_convention():
    y = torch.randint(0, 2, (6, 4)).float()
    assert torch.allclose(vals_targets(y, 0.1, 0.1), vls_targets(y, 0.1))
    assert not torch.allclose(vals_targets(y, 0.1, 0.1, "literal"), vls_targets(y, 0.1))


def test_rhls_smooths_only_majority_class_and_balances_at_beta_one():
    f = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9])
    a_pos, a_neg = rhls_alphas(f, beta=1.0)
    assert bool((a_pos[:2] == 0).all()) and bool((a_neg[3:] == 0).all())
    assert a_pos[2].item() == pytest.approx(0, abs=1e-6) and a_neg[2].item() == pytest.approx(0, abs=1e-6)
    # Dataset with exactly these rates: the mean halved target is 0.5 for every AU.
    n = 1000
    y = (torch.arange(n).unsqueeze(1) < (f * n).round().unsqueeze(0)).float()
    assert torch.allclose(rhls_targets(y, occurrence_rates(y), beta=1.0).mean(0), torch.full((5,), 0.5), atol=1e-5)
    # The printed (literal) form reaches 0.5 at beta = 0.5 instead.
    assert torch.allclose(rhls_targets(y, occurrence_rates(y), 0.5, "literal").mean(0), torch.full((5,), 0.5),
                          atol=1e-5)


def test_smoothed_loss_is_bce_on_smoothed_targets_and_keeps_masking():
    rates = torch.tensor([0.1, 0.4, 0.8])
    z = torch.randn(5, 3, requires_grad=True)
    y = torch.randint(0, 2, (5, 3)).float()
    v = torch.rand(5, 3) > 0.3
    loss_fn = build_au_loss("wbce", target_transform={"name": "rhls", "beta": 0.25}, rates=rates)
    out = loss_fn({"logits": z}, y, v)
    y_t = RHLS(rates, 0.25)(y)
    assert torch.allclose(out["loss"], masked_weighted_bce(z, y_t, v))
    out["loss"].backward()
    assert bool((z.grad[~v] == 0).all())
    assert isinstance(build_target_transform("vals"), VALS) and build_target_transform("none") is None
    with pytest.raises(ValueError):
        VALS(ls_convention="other")


def test_slot_targets_rules():
    y = torch.tensor([[[0], [1], [1], [1], [1], [0]]]).float()  # T=6, tubelet 3
    assert slot_targets(y, 3, "first")[0].flatten().tolist() == [0, 1]
    assert slot_targets(y, 3, "any")[0].flatten().tolist() == [1, 1]
    assert slot_targets(y, 3, "majority")[0].flatten().tolist() == [1, 1]
    y2 = torch.tensor([[[1], [0], [0]]]).float()
    assert slot_targets(y2, 3, "majority")[0].flatten().tolist() == [0]


# ---- guidance (T-E1..E3) ------------------------------------------------------------------------------------------
def test_prior_heatmaps_normalised_peaked_and_one_hot_limit():
    centres = torch.tensor([[[[44.0, 28.0]], [[12.0, 60.0]]]])  # [B=1, P=2, K=1, 2] on a 64x64 image
    hm = prior_heatmaps(centres, (8, 8), (64, 64), sigma=1.0)
    assert hm.shape == (1, 2, 64)
    assert torch.allclose(hm.sum(-1), torch.ones(1, 2))
    assert int(hm[0, 0].argmax()) == 5 * 8 + 3 and int(hm[0, 1].argmax()) == 1 * 8 + 7
    sharp = prior_heatmaps(centres, (8, 8), (64, 64), sigma=1e-3)
    assert sharp.max(-1).values.min().item() == pytest.approx(1.0, abs=1e-6)
    # mono-prior with a padded centre: the mask drops it
    mono = torch.tensor([[[[44.0, 28.0], [0.0, 0.0]]]])
    hm2 = prior_heatmaps(mono, (8, 8), (64, 64), centre_mask=torch.tensor([[[True, False]]]))
    assert torch.allclose(hm2, hm[:, :1])


def test_pattel_is_cross_entropy_minimised_at_prior():
    b, h, a, n = 2, 4, 3, 6
    prior = torch.softmax(torch.randn(b, a, n), -1)
    logits = torch.randn(b, h, a, n)
    logits[:, 0] = prior.log()  # f = 0.25 -> only head 0 is constrained
    logits.requires_grad_()
    loss = pattel_loss(logits.softmax(-1), prior, f=0.25)
    ce = -(prior * prior.log()).sum() / b
    assert loss.item() == pytest.approx(ce.item(), rel=1e-5)
    loss.backward()
    assert logits.grad.abs().max().item() < 1e-5  # stationary at A = h, free heads untouched
    other = pattel_loss(torch.softmax(torch.randn(b, h, a, n), -1), prior, f=0.25)
    assert other.item() > loss.item()


def test_h2p_ignores_unassigned_heads():
    b, h, a, n, p = 2, 4, 3, 5, 2
    logits = torch.randn(b, h, a, n, requires_grad=True)
    priors = torch.softmax(torch.randn(b, p, n), -1)
    m = torch.tensor([[1.0, 0], [0, 1], [0, 0], [1, 1]])
    loss = h2p_loss(logits.softmax(-1), priors, m)
    loss.backward()
    assert bool((logits.grad[:, 2] == 0).all()) and logits.grad[:, 0].abs().sum() > 0
    # closed form for head 0 / prior 0 alone
    m0 = torch.zeros(h, p)
    m0[0, 0] = 1
    ref = -(priors[:, 0].unsqueeze(1) * logits.softmax(-1)[:, 0].log()).sum() / h / b
    assert h2p_loss(logits.softmax(-1), priors, m0).item() == pytest.approx(ref.item(), rel=1e-5)
    assert math.isfinite(h2p_loss(logits.softmax(-1), priors, torch.zeros(h, p)).item())


def test_loss_registry_names():
    for name in ("wbce", "mdwa", "dice", "kd_bernoulli", "pattel", "h2p", "okd", "monet"):
        assert build_au_loss(name) is not None
    with pytest.raises(ValueError, match="unknown AU loss"):
        build_au_loss("nope")


def test_au_centres_from_68_landmarks_and_prior_layouts():
    from lgiformer.au.priors import au_centres_68, clip_priors, slot_priors, unique_centres
    lm = torch.zeros(1, 68, 2)
    lm[0, :, 0] = torch.arange(68).float()  # x = index
    lm[0, :, 1] = 100.0  # y
    lm[0, 39] = torch.tensor([40.0, 100.0])
    lm[0, 42] = torch.tensor([60.0, 100.0])  # scale = 20 px
    c = au_centres_68(lm, [1, 4, 12])
    assert c.shape == (1, 3, 2, 2)
    assert c[0, 0, 0].tolist() == pytest.approx([90.0, 21.0])  # 1/2 scale above landmark 21: (row, col)
    assert c[0, 1, 1].tolist() == pytest.approx([100 + 20 / 3, 24.0])
    assert torch.allclose(c[0, 2], torch.tensor([[100.0, 48.0], [100.0, 54.0]]))
    bp4d = (1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24)
    groups, index = unique_centres(bp4d)
    # the table's shared lip-corner (12/14/15) and lip-centre (23/24) rules leave 9 locations (TH counts 10)
    assert len(groups) == 9 and index[6] == index[7] == index[8] and index[10] == index[11]
    with pytest.raises(ValueError):
        au_centres_68(lm, [99])
    frames = torch.softmax(torch.randn(2, 4, 3, 9), -1)
    slots = slot_priors(frames, 2)
    assert slots.shape == (2, 2, 3, 9) and torch.allclose(slots[:, 1], frames[:, 2:].mean(1))
    clip = clip_priors(slots)
    assert clip.shape == (2, 3, 18) and torch.allclose(clip.sum(-1), torch.ones(2, 3))
    assert torch.allclose(clip[:, :, 9:] * 2, slots[:, 1])


def test_label_validity_and_dataset_union():
    from lgiformer.au import BP4D_AUS, DISFA_AUS, UNION_AUS
    from lgiformer.au.labels import binarize_intensity, labels_and_validity, to_union, union_validity
    y, v = labels_and_validity(torch.tensor([[1, 0, -1], [-1, 1, 1]]))
    assert y.tolist() == [[1, 0, 0], [0, 1, 1]] and v.tolist() == [[True, True, False], [False, True, True]]
    assert binarize_intensity(torch.tensor([0, 1, 2, 5])).tolist() == [0, 0, 1, 1]
    vd = union_validity(DISFA_AUS, UNION_AUS)
    assert int(vd.sum()) == 8 and len(UNION_AUS) == 15
    assert not bool(union_validity(BP4D_AUS, UNION_AUS)[UNION_AUS.index(25)])
    yd = torch.ones(2, 8)
    y_u, v_u = to_union(yd, torch.ones(2, 8, dtype=torch.bool), DISFA_AUS, UNION_AUS)
    assert torch.equal(v_u[0], vd) and torch.equal(y_u[0], vd.float())
    # masked union AUs get exactly zero gradient through the loss
    z = torch.randn(2, 15, requires_grad=True)
    masked_weighted_bce(z, y_u, v_u).backward()
    assert bool((z.grad[:, ~vd] == 0).all())
