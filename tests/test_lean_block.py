"""The lean LGI block and encoder compute today's function: compared with a frozen copy of the block as it was
before the change (``benchmarks/_baseline_lgi.py``), same weights, fp32, to 1e-5."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._baseline_lgi import BaselineLGIBlock, baseline_lgiformer_from  # noqa: E402
from lgiformer.masking import MaskGenerator  # noqa: E402
from lgiformer.models import create_model  # noqa: E402
from lgiformer.models.lgiformer import LGIBlock  # noqa: E402

SMALL = dict(img_size=32, num_frames=4, embed_dim=48, depth=2, num_heads=4, region_size=(1, 2, 2))
TOL = dict(atol=1e-5, rtol=1e-5)


def _randomise(module: torch.nn.Module) -> None:
    """Non-trivial values everywhere (biases and norms start at 0 and 1), so every parameter matters."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.1)


def _pair(drop_path: float = 0.0) -> tuple[BaselineLGIBlock, LGIBlock]:
    ours = LGIBlock(32, 4, drop_path=drop_path)
    _randomise(ours)
    base = BaselineLGIBlock(32, 4, drop_path=drop_path)
    base.load_state_dict(ours.state_dict(), strict=True)
    return base, ours


def _grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad for n, p in module.named_parameters()}


@pytest.mark.parametrize("training", [True, False])
def test_block_matches_todays_block_outputs_and_gradients(training):
    base, ours = _pair()
    base.train(training), ours.train(training)
    s = torch.randn(3, 4, 1 + 5, 32)
    s_base, s_ours = s.clone().requires_grad_(), s.clone().requires_grad_()
    out_base, out_ours = base(s_base), ours(s_ours)
    torch.testing.assert_close(out_ours, out_base, **TOL)
    weights = torch.randn_like(out_base)
    (out_base * weights).sum().backward()
    (out_ours * weights).sum().backward()
    torch.testing.assert_close(s_ours.grad, s_base.grad, **TOL)
    expected = _grads(base)
    for name, grad in _grads(ours).items():
        torch.testing.assert_close(grad, expected[name], **TOL, msg=name)


def test_block_draws_drop_path_masks_in_todays_order():
    """With drop path on, the same seed drops the same samples in the same steps as today's block."""
    base, ours = _pair(drop_path=0.5)
    s = torch.randn(8, 4, 1 + 5, 32)
    torch.manual_seed(3)
    out_base = base.train()(s)
    torch.manual_seed(3)
    out_ours = ours.train()(s)
    torch.testing.assert_close(out_ours, out_base, **TOL)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("masked,pool", [(False, ""), (True, ""), (False, "region")])
def test_encoder_matches_todays_encoder(masked, training, pool):
    kw = dict(num_classes=0, global_pool="") if not pool else dict(num_classes=5, global_pool=pool)
    ours = create_model("lgiformer_tiny_patch16_160", **kw, **SMALL)
    _randomise(ours)
    base = baseline_lgiformer_from(ours)
    ours.train(training), base.train(training)
    x = torch.randn(2, 3, 4, 32, 32)
    mask = MaskGenerator(ours.layout, "region_balanced", 0.5)(2) if masked else None
    run = (lambda m: m(x)) if pool else (lambda m: m.forward_features(x, mask))
    out_base, out_ours = run(base), run(ours)
    torch.testing.assert_close(out_ours, out_base, **TOL)
    weights = torch.randn_like(out_base)
    (out_base * weights).sum().backward()
    (out_ours * weights).sum().backward()
    expected = _grads(base)
    for name, grad in _grads(ours).items():
        torch.testing.assert_close(grad, expected[name], **TOL, msg=name)


def test_encoder_with_grad_checkpointing_matches():
    ours = create_model("lgiformer_tiny_patch16_160", num_classes=0, global_pool="", **SMALL)
    _randomise(ours)
    base = baseline_lgiformer_from(ours)
    ours.set_grad_checkpointing(True)
    x = torch.randn(2, 3, 4, 32, 32)
    ours(x).square().mean().backward()
    base(x).square().mean().backward()
    expected = _grads(base)
    for name, grad in _grads(ours).items():
        torch.testing.assert_close(grad, expected[name], **TOL, msg=name)


def test_state_dict_names_and_order_are_todays():
    ours = create_model("lgiformer_tiny_patch16_160", num_classes=3, **SMALL)
    base = baseline_lgiformer_from(ours)
    assert list(ours.state_dict()) == list(base.state_dict())
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in base.named_parameters()]
    attn = ours.blocks[0].first_attn
    assert {n for n, _ in attn.named_parameters()} == {"q.weight", "kv.weight", "q_bias", "v_bias", "proj.weight",
                                                        "proj.bias"}
    assert "k_bias" not in attn.state_dict() and torch.equal(attn.k_bias, torch.zeros(48))


def test_unbalanced_mask_is_still_refused():
    ours = create_model("lgiformer_tiny_patch16_160", num_classes=0, global_pool="", **SMALL)
    mask = MaskGenerator(ours.layout, "region_balanced", 0.5)(2)
    mask[0, 0] = ~mask[0, 0]
    with pytest.raises(ValueError, match="region_balanced"):
        ours.forward_features(torch.randn(2, 3, 4, 32, 32), mask)


def test_base_size_encoder_matches_todays_encoder():
    """LGI-Former-B at its real size (16 x 160 x 160, 16 blocks, regions 2 x 5 x 10), eval, both output layouts."""
    torch.manual_seed(0)
    ours = create_model("lgiformer_base_patch16_160", num_classes=0, global_pool="").eval()
    base = baseline_lgiformer_from(ours)
    x = torch.randn(1, 3, 16, 160, 160)
    mask = MaskGenerator(ours.layout, "region_balanced", 0.9)(1)
    with torch.no_grad():
        torch.testing.assert_close(ours.forward_features(x), base.forward_features(x), **TOL)
        torch.testing.assert_close(ours.forward_features(x, mask), base.forward_features(x, mask), **TOL)
