import torch

from lgiformer.layers import Attention


def _explicit(attn: Attention, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """Plain softmax(QK^T / sqrt(d)) V with the reference parameterisation (zero key bias)."""
    h, d = attn.num_heads, attn.head_dim
    q = x @ attn.q.weight.T + attn.q_bias
    k_w, v_w = attn.kv.weight.chunk(2)
    k = context @ k_w.T
    v = context @ v_w.T + attn.v_bias
    split = lambda t: t.view(*t.shape[:-1], h, d).transpose(1, 2)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    weights = torch.softmax(q @ k.transpose(-1, -2) / d ** 0.5, dim=-1)
    return attn.proj((weights @ v).transpose(1, 2).reshape(x.shape[0], x.shape[1], h * d))


def test_sdpa_self_and_cross_attention_match_explicit_computation():
    torch.manual_seed(0)
    attn = Attention(32, num_heads=4).eval()
    torch.nn.init.normal_(attn.q_bias)
    torch.nn.init.normal_(attn.v_bias)
    x, ctx = torch.randn(3, 7, 32), torch.randn(3, 5, 32)
    torch.testing.assert_close(attn(x), _explicit(attn, x, x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attn(x, ctx), _explicit(attn, x, ctx), atol=1e-5, rtol=1e-5)
    attn.fused_attn = False
    torch.testing.assert_close(attn(x, ctx), _explicit(attn, x, ctx), atol=1e-5, rtol=1e-5)


def test_key_bias_is_zero_and_not_a_parameter():
    attn = Attention(16, num_heads=2)
    names = {n for n, _ in attn.named_parameters()}
    assert names == {"q.weight", "kv.weight", "q_bias", "v_bias", "proj.weight", "proj.bias"}
    torch.nn.init.normal_(attn.v_bias)
    _, kv_bias = attn._biases()
    assert torch.equal(kv_bias[:16], torch.zeros(16)), "the key bias is fixed at zero"
    assert torch.equal(kv_bias[16:], attn.v_bias)
