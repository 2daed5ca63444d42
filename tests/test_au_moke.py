"""AUFormer MoKE adapters on a frozen encoder: docs/AU_METHODS.md#test-ids T-A1, T-A2, T-A3, T-A5, special tokens."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lgiformer  # noqa: F401
from lgiformer.au import build_au_loss
from lgiformer.models.moke import AUFormer, MoKEBlock, MoKEGroup, MoKELGIBlock, attach_moke
from lgiformer.layers.blocks import Block
from lgiformer.models import create_model

TINY = dict(img_size=32, num_frames=4, embed_dim=32, depth=2, num_heads=2)
A = 3


class ToyViT(nn.Module):
    """Encoder stand-in with a CLS token; its input is already a token tensor [B, 1 + T*h*w, C]."""

    def __init__(self, dim=16, depth=2, grid=(2, 3, 3)):
        super().__init__()
        self.embed_dim, self.grid_size, self.num_prefix_tokens = dim, grid, 1
        self.blocks = nn.ModuleList(Block(dim, 2) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward_features(self, x):
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)


def _vit():
    torch.manual_seed(0)
    return create_model("vit_tiny_patch16_160", global_pool="", **TINY).eval()


def test_zero_init_reproduces_frozen_vit_block_by_block():
    vit = _vit()
    ref = copy.deepcopy(vit)
    x = torch.randn(2, 3, 4, 32, 32)
    outs, refs = [], []
    attach_moke(vit, A)
    for blk in vit.blocks:
        blk.register_forward_hook(lambda m, i, o: outs.append(o))
    for blk in ref.blocks:
        blk.register_forward_hook(lambda m, i, o: refs.append(o))
    assert torch.allclose(vit.forward_features(x), ref.forward_features(x), atol=1e-6)
    assert len(outs) == len(refs) == 2 and all(torch.allclose(a, b, atol=1e-6) for a, b in zip(outs, refs))
    toy = ToyViT()
    toy_ref = copy.deepcopy(toy)
    attach_moke(toy, A)
    t = torch.randn(2, 1 + 18, 16)
    assert torch.allclose(toy.forward_features(t), toy_ref.forward_features(t), atol=1e-6)


def test_aux_logits_match_plain_head_at_zero_init_and_gradients_stay_in_adapters():
    vit = _vit()
    ref = copy.deepcopy(vit)
    model = AUFormer(vit, A, rates=torch.tensor([0.1, 0.3, 0.5]))
    x = torch.randn(2, 3, 4, 32, 32)
    out = model(x)
    plain = model.head(model.head_norm(ref.forward_features(x).mean(1)))
    assert torch.allclose(out["logits"], plain, atol=1e-6)
    assert out["aux"]["experts"].shape == (2, A)
    y = torch.randint(0, 2, (2, A)).float()
    build_au_loss("mdwa", rates=torch.tensor([0.1, 0.3, 0.5]))(out, y)["loss"].backward()
    enc_params = [p for n, p in model.encoder.named_parameters() if ".moke_" not in n]
    assert enc_params and all(p.grad is None and not p.requires_grad for p in enc_params)
    moke = {n: p for n, p in model.named_parameters() if ".moke_" in n}
    assert moke and all(p.grad is not None for p in moke.values())
    nonzero = {n for n, p in moke.items() if p.grad.abs().sum() > 0}
    assert nonzero and all(".out." in n for n in nonzero)
    assert any(".out." in n and n.endswith("weight") for n in nonzero)
    opt = torch.optim.SGD(model.trainable_parameters(), lr=0.1)
    opt.step()
    opt.zero_grad()
    build_au_loss("mdwa")(model(x), y)["loss"].backward()
    assert model.encoder.blocks[0].moke_att.stem.weight.grad.abs().sum() > 0
    assert sum(p.numel() for p in model.trainable_parameters()) < sum(p.numel() for p in model.parameters())


def _grad_window(fn, inp, centre):
    inp = inp.clone().requires_grad_()
    fn(inp)[..., centre, centre].sum().backward()
    nz = (inp.grad.abs().sum(dim=(0, 1)) > 0).nonzero()
    return (nz - centre).abs().max().item()


def test_mrf_and_ca_locality():
    torch.manual_seed(0)
    g = MoKEGroup(4, 2, hidden=3, zero_init=False)
    m = torch.randn(1, 6, 17, 17)
    assert _grad_window(g.mrf, m, 8) == 5  # 11 x 11
    assert _grad_window(g.ca, m, 8) == 1  # 3 x 3
    x = torch.randn(1, 8, 19, 19)
    assert _grad_window(lambda t: g.mrf(g.stem_forward(t)), x, 9) == 6  # 13 x 13 from the token grid
    # experts are independent: expert 0's output ignores expert 1's input
    xx = torch.randn(1, 2, 4, 5, 5, requires_grad=True)
    g(xx)[:, 0].sum().backward()
    assert bool((xx.grad[:, 1] == 0).all()) and xx.grad[:, 0].abs().sum() > 0


def test_special_tokens_use_centre_taps_and_ca_reduces_to_v():
    torch.manual_seed(0)
    g = MoKEGroup(4, 2, hidden=3, zero_init=False, ca_mode="dot")
    m = torch.randn(5, 6, 1, 1)
    assert torch.equal(g.ca(m), g.v(m))
    centre = F.conv2d(m, g.conv3.weight[:, :, 1:2, 1:2], g.conv3.bias, groups=2)
    assert torch.allclose(g.conv3(m), centre, atol=1e-6)
    dil = g.mrf_convs[2]
    assert torch.allclose(dil(m), F.conv2d(m, dil.weight[:, :, 1:2, 1:2], dil.bias, groups=2), atol=1e-6)


def test_expert_permutation_invariance():
    toy = ToyViT()
    state = attach_moke(toy, 4, zero_init=False)
    t = torch.randn(2, 19, 16)
    ref = toy.forward_features(t)
    ref_streams = state.k_mlp.detach().clone()
    perm = torch.tensor([2, 0, 3, 1])
    for blk in toy.blocks:
        blk.moke_att.permute_experts(perm)
        blk.moke_mlp.permute_experts(perm)
    out = toy.forward_features(t)
    assert torch.allclose(out, ref, atol=1e-5)
    # new expert i carries old expert perm[i]'s stream; the streams themselves differ per expert
    assert torch.allclose(state.k_mlp, ref_streams[:, perm], atol=1e-5)
    assert not torch.allclose(ref_streams[:, 0], ref_streams[:, 1])


def test_lgiformer_blocks_zero_init_equivalence_and_training():
    torch.manual_seed(0)
    enc = create_model("lgiformer_tiny_patch16_160", region_size=(1, 1, 2), global_pool="", **TINY).eval()
    ref = copy.deepcopy(enc)
    x = torch.randn(2, 3, 4, 32, 32)
    model = AUFormer(enc, A)
    assert isinstance(enc.blocks[0], MoKELGIBlock)
    out = model(x)
    assert torch.allclose(enc.forward_features(x), ref.forward_features(x), atol=1e-6)
    assert out["aux"]["experts"].shape == (2, A)
    assert model.state.k_mlp.shape == (2, A, enc.num_prefix_tokens + 8, 32)
    build_au_loss("mdwa")(out, torch.randint(0, 2, (2, A)).float())["loss"].backward()
    assert all(p.grad is None for n, p in enc.named_parameters() if ".moke_" not in n)
    assert enc.blocks[-1].moke_mlp.out.weight.grad.abs().sum() > 0
    # non-zero experts: the layout round trip keeps the encoder exact when the adapters are switched off again
    toks = torch.randn(2, enc.num_prefix_tokens + 8, 32)
    assert torch.equal(enc.blocks[0]._to_tokens(enc.blocks[0]._to_regions(toks)), toks)


def test_unsupported_blocks_and_double_attach_are_rejected():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([nn.Linear(4, 4)])
            self.embed_dim, self.grid_size = 4, (1, 1, 1)

    with pytest.raises(NotImplementedError, match="ViT"):
        attach_moke(Odd(), A)
    vit = _vit()
    attach_moke(vit, A)
    assert isinstance(vit.blocks[0], MoKEBlock)
    with pytest.raises(ValueError, match="already"):
        attach_moke(vit, A)


def test_auformer_options():
    vit = _vit()
    model = AUFormer(vit, A, expert_head="all_aus", head="mlp", unfreeze_norms=True, ca_mode="dot", hidden=16)
    out = model(torch.randn(2, 3, 4, 32, 32))
    assert out["aux"]["experts"].shape == (2, A, A)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "encoder.blocks.0.block.norm1.weight" in trainable
    assert "encoder.blocks.0.block.attn.q.weight" not in trainable
    parts = build_au_loss("mdwa")(out, torch.randint(0, 2, (2, A)).float())
    assert torch.isfinite(parts["loss"]) and "experts" in parts
