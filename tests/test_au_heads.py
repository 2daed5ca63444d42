"""AU heads on random tokens: prediction modes, docs/AU_METHODS.md#test-ids T-C1..C4, T-E4, T-B1..B7, T-D1..D6."""
import pytest
import torch

import lgiformer  # noqa: F401
from lgiformer.au import build_au_loss, prior_bias
from lgiformer.au.losses import masked_weighted_bce, weighted_dice
from lgiformer.heads import (AttentionDropBlock, CrossAttention, FanTransInference, LabelTokenHead, LinearAUHead,
                             MonetHead, build_au_head, list_au_heads, split_tokens, topk_column_sum)
from lgiformer.layers.blocks import Block

C, A = 16, 4


def tokens(b=2, n_special=3, grid=(2, 3, 3), c=C, seed=0):
    g = torch.Generator().manual_seed(seed)
    t, h, w = grid
    return torch.randn(b, n_special + t * h * w, c, generator=g)


# ---- prediction modes ---------------------------------------------------------------------------------------------
def test_split_tokens_removes_special_tokens_before_reshape():
    x = tokens()
    special, grid = split_tokens(x, 3, 2, 3, 3)
    assert special.shape == (2, 3, C) and grid.shape == (2, 2, 3, 3, C)
    assert torch.equal(grid[:, 1, 2, 0], x[:, 3 + 1 * 9 + 2 * 3 + 0])
    with pytest.raises(ValueError, match="n_special"):
        split_tokens(x, 2, 2, 3, 3)


# ---- linear baseline ----------------------------------------------------------------------------------------------
def test_linear_head_modes_and_prior_bias():
    rates = torch.tensor([0.1, 0.2, 0.3, 0.4])
    head = LinearAUHead(C, A, rates=rates)
    nn_zero(head.fc.weight)
    out = head(tokens(), grid=(2, 3, 3), n_special=3)
    assert out["logits"].shape == (2, A)
    assert torch.allclose(torch.sigmoid(out["logits"]), rates.expand(2, -1), atol=1e-6)
    dense = LinearAUHead(C, A, mode="dense")
    assert dense(tokens(), grid=(2, 3, 3), n_special=3)["logits"].shape == (2, 2, A)


def nn_zero(p):
    with torch.no_grad():
        p.zero_()


# ---- label-token head (T-C1..C4, T-E4) ----------------------------------------------------------------------------
def test_label_token_shapes_clip_dense_and_image():
    head = LabelTokenHead(C, A, dim=16, num_heads=4).eval()
    out = head(tokens(), grid=(2, 3, 3), n_special=3)
    assert out["logits"].shape == (2, A) and out["attn"].shape == (2, 4, A, 18)
    assert out["attn_all"].shape == (2, 2, 4, A, 18)
    dense = LabelTokenHead(C, A, dim=16, num_heads=4, mode="dense").eval()
    out = dense(tokens(), grid=(2, 3, 3), n_special=3)
    assert out["logits"].shape == (2, 2, A) and out["attn"].shape == (4, 4, A, 9)
    img = LabelTokenHead(C, A, dim=16, num_heads=4, mode="image", pos_embed="sincos2d", keys="all").eval()
    assert img(tokens(n_special=1, grid=(1, 3, 3)), grid=(1, 3, 3), n_special=1)["logits"].shape == (2, A)
    mttc = LabelTokenHead(C, A, dim=16, num_heads=4, variant="mttc", token_self_attn=True, patch_self_attn=1)
    assert mttc(tokens(), grid=(2, 3, 3), n_special=3)["logits"].shape == (2, A)


def test_label_token_attention_rows_sum_to_one_and_padding_gets_zero_weight():
    head = LabelTokenHead(C, A, dim=16, num_heads=4, patch_self_attn=1).eval()
    pad = torch.zeros(2, 18, dtype=torch.bool)
    pad[:, -5:] = True
    x = tokens()
    out = head(x, grid=(2, 3, 3), n_special=3, key_padding_mask=pad)
    attn = out["attn_all"]
    assert torch.allclose(attn.sum(-1), torch.ones_like(attn.sum(-1)), atol=1e-6)
    assert bool((attn[..., -5:] == 0).all())
    x2 = x.clone()
    x2[:, -5:] += 100.0  # padded keys do not influence the logits
    assert torch.allclose(head(x2, grid=(2, 3, 3), n_special=3, key_padding_mask=pad)["logits"], out["logits"],
                          atol=1e-5)


def test_label_token_permutation_equivariance():
    head = LabelTokenHead(C, A, dim=16, num_heads=4, per_label_classifier=False).eval()
    x = tokens()
    ref = head(x, grid=(2, 3, 3), n_special=3)["logits"]
    perm = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        head.label_tokens.copy_(head.label_tokens[perm])
    out = head(x, grid=(2, 3, 3), n_special=3)["logits"]
    assert torch.allclose(out, ref[:, perm], atol=1e-5)


def test_label_token_masking_through_head():
    head = LabelTokenHead(C, A, dim=16, num_heads=4, rates=torch.tensor([0.1, 0.3, 0.5, 0.2]))
    x = tokens().requires_grad_()
    out = head(x, grid=(2, 3, 3), n_special=3)
    out["logits"].retain_grad()
    y = torch.randint(0, 2, (2, A)).float()
    v = torch.tensor([[1, 0, 1, 1], [1, 0, 0, 1]]).bool()
    loss = masked_weighted_bce(out["logits"], y, v) + 0.5 * weighted_dice(out["logits"], y, v)
    loss.backward()
    assert bool((out["logits"].grad[~v] == 0).all())
    assert head.cls_bias.grad[1].item() == 0.0
    # an all-masked batch: zero loss, finite gradients
    head.zero_grad()
    out = head(x, grid=(2, 3, 3), n_special=3)
    loss = build_au_loss("wbce", dice_weight=0.5)(out, y, torch.zeros(2, A))["loss"]
    loss.backward()
    assert loss.item() == 0.0 and all(torch.isfinite(p.grad).all() for p in head.parameters() if p.grad is not None)


def test_label_token_prior_bias_init():
    rates = torch.tensor([0.05, 0.2, 0.6, 0.9])
    head = LabelTokenHead(C, A, dim=16, num_heads=4, rates=rates).eval()
    nn_zero(head.cls_weight)
    p = torch.sigmoid(head(tokens(), grid=(2, 3, 3), n_special=3)["logits"])
    assert torch.allclose(p, rates.expand(2, -1), atol=1e-6)


def test_parsing_bias_lambda_zero_is_vanilla_and_bias_is_query_independent():
    torch.manual_seed(0)
    ca = CrossAttention(16, 4, parsing_classes=3, parsing_lambda=0.0)
    t, x = torch.randn(2, A, 16), torch.randn(2, 9, 16)
    parsing = torch.rand(2, 9, 3)
    _, p0 = ca(t, x, parsing=parsing)
    _, p_none = ca(t, x)
    assert torch.equal(p0, p_none)
    ca.parsing_lambda = 0.1
    bias = ca.parsing_bias(parsing)  # [B, H, n]
    assert bias.shape == (2, 4, 9)
    assert bool((bias[:, 3] == 0).all())  # head 3 has no class (3 classes on 4 heads)
    # the bias depends only on the class fractions (scale-free) and is the same for every AU token
    assert torch.allclose(ca.parsing_bias(parsing * 3.0), bias, atol=1e-6)
    _, p1 = ca(t, x, parsing=parsing)
    q = ca.q(t).view(2, A, 4, 4).transpose(1, 2)
    k = ca.k(x).view(2, 9, 4, 4).transpose(1, 2)
    expected = ((q @ k.transpose(-2, -1)) + 0.1 * bias.unsqueeze(2)) / ((0.01 + 1) * 4) ** 0.5
    assert torch.allclose(p1, expected.softmax(-1), atol=1e-6)


# ---- FAN-Trans (T-B1..B7) -----------------------------------------------------------------------------------------
def test_attention_drop_block_with_open_mask_is_a_standard_block():
    torch.manual_seed(0)
    blk = AttentionDropBlock(16, 4, num_tokens=A).eval()
    ref = Block(16, 4).eval()
    missing, unexpected = ref.load_state_dict(blk.state_dict(), strict=False)
    assert not missing and unexpected == ["drop_logits"]
    x = torch.randn(2, A, 16)
    assert torch.allclose(blk(x), ref(x), atol=1e-6)


def test_attention_drop_mask_binary_at_eval_and_blocks_value_path():
    torch.manual_seed(0)
    blk = AttentionDropBlock(16, 4, num_tokens=A).eval()
    with torch.no_grad():
        blk.drop_logits[0, 2] = -3.0
    m = blk.key_mask()
    assert set(m.unique().tolist()) <= {0.0, 1.0} and m[0, 2].item() == 0.0
    # Isolate the value path: with zero q/k projections every key scores the same, so token 2 can reach the
    # output only through V_2, which the closed column M_2 = 0 removes.
    with torch.no_grad():
        blk.attn.q.weight.zero_()
        blk.attn.kv.weight[:16].zero_()
        blk.attn.q_bias.zero_()
    u = torch.randn(2, A, 16, requires_grad=True)
    blk._masked_attention(u).sum().backward()
    assert bool((u.grad[:, 2] == 0).all()) and u.grad[:, 0].abs().sum() > 0
    u2 = u.detach().clone()
    u2[:, 2] += 10.0
    assert torch.allclose(blk._masked_attention(u2), blk._masked_attention(u.detach()), atol=1e-6)


def test_attention_drop_straight_through_gradient():
    blk = AttentionDropBlock(16, 4, num_tokens=A, per_head=True).train()
    blk(torch.randn(2, A, 16)).pow(2).sum().backward()
    assert blk.drop_logits.grad is not None and blk.drop_logits.grad.abs().sum() > 0
    assert torch.equal(blk.key_mask(), torch.ones(4, A))  # forward value is exactly binary


def test_topk_reduces_to_column_sum_and_max_and_routes_gradient():
    s = torch.randn(3, A, A, requires_grad=True)
    assert torch.allclose(topk_column_sum(s, A), s.sum(1))
    assert torch.allclose(topk_column_sum(s, 1), s.max(1).values)
    topk_column_sum(s, 2).sum().backward()
    top2 = s.detach().topk(2, dim=1).indices
    mask = torch.zeros_like(s).scatter(1, top2, 1.0)
    assert torch.equal(s.grad, mask)


def test_fantrans_gate_convex_teacher_between_students_and_kd():
    torch.manual_seed(0)
    head = build_au_head("fantrans_okd", embed_dim=C, num_aus=A, grid=(2, 3, 3), dim=16, depth=1)
    out = head(tokens(), grid=(2, 3, 3), n_special=3)
    aux = out["aux"]
    assert torch.allclose(aux["gate"].sum(1), torch.ones(2, A), atol=1e-6)
    lo, hi = torch.minimum(aux["o2o"], aux["o2m"]), torch.maximum(aux["o2o"], aux["o2m"])
    assert bool((aux["teacher"] >= lo - 1e-6).all() and (aux["teacher"] <= hi + 1e-6).all())
    assert torch.equal(out["logits"], aux["o2m"])
    y = torch.randint(0, 2, (2, A)).float()
    # KD term alone: no gradient to the gate (teacher detached)
    kd = build_au_loss("kd_bernoulli")(out, y)["loss"]
    kd.backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in head.gate.parameters())
    # lambda = 0: the OKD loss equals the classification part
    parts0 = build_au_loss("okd", kd_weight=0.0)(out, y)
    assert torch.allclose(parts0["loss"], parts0["bce_o2o"] + parts0["bce_o2m"] + parts0["bce_teacher"])
    parts = build_au_loss("okd")(out, y)
    assert torch.allclose(parts["loss"], parts0["loss"] + 0.2 * parts["kd"])


def test_fantrans_export_holds_one_branch_only():
    torch.manual_seed(0)
    head = FanTransOKDHeadFactory()
    x = tokens()
    ref = head.eval()(x, grid=(2, 3, 3), n_special=3)["logits"]
    inf = head.export_for_inference()
    assert isinstance(inf, FanTransInference)
    names = [n for n, _ in inf.named_parameters()]
    assert not any(n.startswith(("t1.", "gate.")) for n in names)
    n_head = sum(p.numel() for p in head.parameters())
    n_inf = sum(p.numel() for p in inf.parameters())
    n_t1_gate = sum(p.numel() for p in head.t1.parameters()) + sum(p.numel() for p in head.gate.parameters())
    assert n_inf == n_head - n_t1_gate
    inf.train()  # hard masks even in train mode
    assert torch.allclose(inf(x, grid=(2, 3, 3), n_special=3)["logits"], ref, atol=1e-6)
    dense = build_au_head("fantrans_okd", embed_dim=C, num_aus=A, grid=(2, 3, 3), mode="dense", dim=16, depth=1)
    assert dense(x, grid=(2, 3, 3), n_special=3)["aux"]["teacher"].shape == (2, 2, A)


def FanTransOKDHeadFactory():
    return build_au_head("fantrans_okd", embed_dim=C, num_aus=A, grid=(2, 3, 3), dim=16, depth=2)


# ---- MONET (T-D1..D5) ---------------------------------------------------------------------------------------------
def _monet(**kw):
    torch.manual_seed(0)
    kw.setdefault("hidden", 8)
    return MonetHead(C, 3, **kw)


def test_monet_single_order_is_the_chain_loss():
    head = _monet(orders=torch.tensor([[2, 0, 1]])).train()
    x, y = tokens(), torch.randint(0, 2, (2, 3)).float()
    out = head(x, grid=(2, 3, 3), n_special=3, y=y)
    loss = build_au_loss("monet", dice_weight=0.5)(out, y)["loss"]
    z = out["aux"]["order_logits"][:, 0]
    bce = torch.nn.functional.binary_cross_entropy_with_logits(z, y, reduction="none").sum(1)
    p = torch.sigmoid(z)
    dice = (1 - (2 * y * p + 1) / (y * y + p * p + 1)).sum(1)
    assert torch.allclose(loss, (bce + 0.5 * dice).mean(), atol=1e-6)
    # teacher forcing: step t of the order feeds the ground truth of the previous task
    h0 = head.proj(split_tokens(x, 3, 2, 3, 3)[1].mean(dim=(1, 2, 3)))
    y_alt = y.clone()
    y_alt[:, 1] = 1 - y_alt[:, 1]  # task 1 is last in the order: changing its label changes nothing
    assert torch.equal(head.unroll(h0, head.orders, y_alt), head.unroll(h0, head.orders, y))


def test_monet_mixture_bounds_and_closed_form_gradient():
    head = _monet(num_orders=6, keep_orders=6).train()
    with torch.no_grad():
        head.order_logits.copy_(torch.randn(6))
    x, y = tokens(), torch.randint(0, 2, (2, 3)).float()
    out = head(x, grid=(2, 3, 3), n_special=3, y=y)
    loss_fn = build_au_loss("monet")
    per = loss_fn.per_order(out["aux"]["order_logits"], y)  # [B, M]
    logw = out["aux"]["order_log_weights"]
    lb = -torch.logsumexp(logw - per, 1)
    assert bool((per.min(1).values <= lb + 1e-5).all())
    assert bool((lb.unsqueeze(1) <= per - logw + 1e-5).all())
    for b in range(2):
        head.zero_grad()
        out = head(x, grid=(2, 3, 3), n_special=3, y=y)
        per_b = loss_fn.per_order(out["aux"]["order_logits"], y)[b]
        l_b = -torch.logsumexp(out["aux"]["order_log_weights"] - per_b, 0)
        l_b.backward()
        pi = torch.softmax(head.order_logits.detach(), 0)
        expected = pi * (1 - torch.exp(l_b.detach() - per_b.detach()))
        assert torch.allclose(head.order_logits.grad, expected, atol=1e-5)


def test_monet_warmup_dropout_and_eval_weights():
    head = _monet(num_orders=6, keep_orders=2).train()
    x, y = tokens(), torch.randint(0, 2, (2, 3)).float()
    opt = torch.optim.AdamW(head.param_groups(lr=1e-2))
    head.set_order_warmup(True)
    u0 = head.order_logits.detach().clone()
    build_au_loss("monet")(head(x, grid=(2, 3, 3), n_special=3, y=y), y)["loss"].backward()
    opt.step()
    assert torch.equal(head.order_logits.detach(), u0)
    head.set_order_warmup(False)
    # shared order dropout: only k orders unrolled, dropped orders get zero gradient
    opt.zero_grad()
    out = head(x, grid=(2, 3, 3), n_special=3, y=y)
    assert out["aux"]["order_logits"].shape == (2, 2, 3)
    assert torch.allclose(out["aux"]["order_log_weights"].exp().sum(), torch.tensor(1.0))
    build_au_loss("monet")(out, y)["loss"].backward()
    assert int((head.order_logits.grad != 0).sum()) == 2
    # per-example dropout: dropped orders have pi~ = 0 and zero gradient
    head.per_example_dropout = True
    head.zero_grad()
    out = head(x, grid=(2, 3, 3), n_special=3, y=y)
    w = out["aux"]["order_log_weights"].exp()
    assert w.shape == (2, 6) and bool(((w > 0).sum(1) == 2).all())
    # eval: full pi, sampled rollouts give probabilities
    head.eval()
    g = torch.Generator().manual_seed(0)
    ev = head(x, grid=(2, 3, 3), n_special=3, generator=g)
    assert ev["probs"].shape == (2, 3) and bool(((ev["probs"] >= 0) & (ev["probs"] <= 1)).all())
    head.mean_field = True
    assert head(x, grid=(2, 3, 3), n_special=3)["logits"].shape == (2, 3)


def test_monet_prior_bias_with_zeroed_cells():
    rates = torch.tensor([0.1, 0.4, 0.7])
    head = _monet(num_orders=6, rates=rates).eval()
    nn_zero(head.out_w)
    g = torch.Generator().manual_seed(0)
    probs = head(tokens(), grid=(2, 3, 3), n_special=3, generator=g)["probs"]
    assert torch.allclose(probs, rates.expand(2, -1), atol=1e-5)


def test_head_registry():
    assert set(list_au_heads()) >= {"linear", "label_token", "fantrans_okd", "monet"}
    with pytest.raises(ValueError, match="unknown AU head"):
        build_au_head("nope")
    assert torch.allclose(prior_bias(torch.tensor([0.5])), torch.zeros(1))


def test_monet_toy_recovers_the_identity_order():
    """T-D6: task t labels x1 by the parity of its interval among 2^t; coarse-to-fine is the easy order."""
    def toy(n, g):
        x = torch.rand(n, 2, generator=g) * 2 - 1
        ys = [((torch.floor((x[:, 0] + 1) / 2 * 2 ** t)) % 2 == 0).float() for t in (1, 2, 3)]
        return x, torch.stack(ys, 1)

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    head = MonetHead(2, 3, hidden=32, num_orders=6, keep_orders=6).train()
    assert head.orders[0].tolist() == [0, 1, 2]
    loss_fn = build_au_loss("monet", dice_weight=0.0)
    opt = torch.optim.Adam(head.param_groups(lr=1e-2, weight_decay=0.0, order_lr=2e-2))
    for _ in range(250):
        x, y = toy(256, g)
        loss = loss_fn(head(x, x, y=y), y)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    pi = torch.softmax(head.order_logits.detach(), 0)
    assert int(pi.argmax()) == 0 and pi[0].item() > 0.5


@pytest.mark.parametrize("name", ["lgiformer_tiny_patch16_160", "vit_tiny_patch16_160"])
def test_heads_run_on_real_encoder_tokens(name):
    from lgiformer.models import create_model
    kw = dict(region_size=(1, 1, 2)) if name.startswith("lgi") else {}
    enc = create_model(name, img_size=32, num_frames=4, embed_dim=32, depth=1, num_heads=2, global_pool="", **kw)
    feats = enc.forward_features(torch.randn(2, 3, 4, 32, 32))
    ctx = dict(grid=enc.grid_size, n_special=enc.num_prefix_tokens)
    for head_name, cfg in (("linear", {}), ("label_token", dict(dim=16, num_heads=2)),
                           ("fantrans_okd", dict(grid=enc.grid_size, dim=16, depth=1)), ("monet", dict(hidden=8))):
        head = build_au_head(head_name, embed_dim=enc.embed_dim, num_aus=A, **cfg).eval()
        assert head(feats, **ctx)["logits"].shape == (2, A), head_name
    dense = build_au_head("label_token", embed_dim=32, num_aus=A, dim=16, num_heads=2, mode="dense").eval()
    assert dense(feats, **ctx)["logits"].shape == (2, enc.grid_size[0], A)


def test_monet_dense_mode():
    head = MonetHead(C, A, hidden=8, num_orders=8, keep_orders=4, mode="dense").train()
    y = torch.randint(0, 2, (2, 2, A)).float()
    out = head(tokens(), grid=(2, 3, 3), n_special=3, y=y)
    assert out["logits"].shape == (2, 2, A) and out["aux"]["order_logits"].shape == (4, 4, A)
    loss = build_au_loss("monet")(out, y, torch.ones(2, 2, A))["loss"]
    assert torch.isfinite(loss)
    assert head.eval()(tokens(), grid=(2, 3, 3), n_special=3)["probs"].shape == (2, 2, A)


def test_attention_drop_ablation_variants():
    torch.manual_seed(0)
    x = torch.randn(2, A, 16)
    full = AttentionDropBlock(16, 4, num_tokens=A, drop_mode="full").eval()
    ref = Block(16, 4).eval()
    ref.load_state_dict(full.state_dict(), strict=False)
    assert torch.allclose(full(x), ref(x), atol=1e-6)
    row = AttentionDropBlock(16, 4, num_tokens=A, drop_mode="row", drop_ratio=0.25)
    probs = torch.softmax(torch.randn(2, 4, A, A), -1)
    m = row._similarity_mask(probs, -1)
    assert bool((m.sum(-1) == A - 1).all())
    assert bool((m.gather(-1, probs.argmin(-1, keepdim=True)) == 0).all())
    col = AttentionDropBlock(16, 4, num_tokens=A, drop_mode="column")
    assert bool((col._similarity_mask(probs, -2).sum(-2) == A - 1).all())
    assert row(x).shape == col(x).shape == x.shape
