"""AUFormer MoKE adapters on a frozen encoder (docs/AU_METHODS.md#moke-adapters).

:func:`attach_moke` freezes an encoder and replaces each ``encoder.blocks[l]`` by a :class:`MoKEBlock` that calls
the block's own (frozen) ``norm1 / attn / norm2 / mlp`` and adds two groups of A "Mixture-of-Knowledge Experts"
(one expert per AU), wired as in the AUFormer figure::

    u = LN1(x);  K_att_i = MoKE_att_i(u + K_mlp_prev_i);  x' = x + MHSA(u) + mean_i K_att_i
    v = LN2(x'); K_mlp_i = MoKE_mlp_i(v + K_att_i);       x  = x' + MLP(v) + mean_i K_mlp_i

Each expert carries its own stream ``[B, N, C]`` from block to block (kept in a shared :class:`MoKEState`). The
experts of a group run together as grouped convolutions (``groups = A``). Patch tokens are processed per temporal
slot as ``[B*T', C, h, w]`` maps; special tokens (CLS / registers) as 1x1 maps, where every convolution reduces to its
centre tap and the context attention to V. The last 1x1 convolution is zero-initialised, so at step 0 the wrapped
encoder is exactly the frozen one.

Supported encoders: blocks that map a plain tensor ``[B, N, C] -> [B, N, C]`` and expose ``norm1``, ``attn``,
``norm2``, ``mlp`` (the VideoMAE ViT of ``lgiformer.models.vit`` and timm ViT blocks), and LGI-Former blocks
(``s [B, R, 1+M, C] -> s``, see :class:`MoKELGIBlock`; needs ``encoder.layout``). Anything else raises
NotImplementedError. Inputs must be full clips (no token masking). Gradient checkpointing of the encoder must be off
(the expert streams are passed between blocks as side state). Load pretrained weights *before* attaching: the
wrapped blocks hold the original block as ``.block`` (state-dict keys gain a ``block.`` level).

:class:`AUFormer` bundles the wrapped encoder, the main head (``LN -> Linear(C, A)`` on CLS; on the mean of the
representative tokens for LGI-Former; on the token mean when the encoder has no special token [ENG]) and the
training-only expert heads (``Linear(C, 1)`` on each expert's last stream, ``expert_head="own_au"``; or
``Linear(C, A)`` per expert, ``"all_aus"``).
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lgiformer.au.weights import prior_bias

Tensor = torch.Tensor

__all__ = ["MoKEGroup", "MoKEState", "MoKEBlock", "MoKELGIBlock", "attach_moke", "AUFormer"]


class MoKEGroup(nn.Module):
    """A group of ``num_experts`` MoKE operators ``C -> C`` with hidden width ``hidden`` (c, default 8).

    Input and output ``[N, E, C, h, w]`` (expert e reads its own input). Internals: stem ``GELU(1x1 C->c)``
    then ``3x3 c->c`` gives ``M''``; MRF = ``1x1 (3c->c)`` over 3x3 convs with dilations (1, 3, 5); CA = 3x3
    local context attention (``ca_mode="channelwise"``: per-channel softmax over the 9 neighbours of ``Q_u * K_v``;
    ``"dot"``: one score ``<Q_u, K_v>/sqrt(c)`` per neighbour); output ``1x1 (c->C)`` of ``GELU(M'' + MRF + CA)``,
    zero-initialised."""

    def __init__(self, dim: int, num_experts: int, hidden: int = 8, dilations: Sequence[int] = (1, 3, 5),
                 ca_mode: str = "channelwise", zero_init: bool = True) -> None:
        super().__init__()
        if ca_mode not in ("channelwise", "dot"):
            raise ValueError(f"ca_mode must be 'channelwise' or 'dot', got {ca_mode!r}")
        e, c = num_experts, hidden
        self.num_experts, self.dim, self.hidden, self.ca_mode = e, dim, hidden, ca_mode
        self.dilations = tuple(dilations)
        self.stem = nn.Conv2d(e * dim, e * c, 1, groups=e)
        self.conv3 = nn.Conv2d(e * c, e * c, 3, padding=1, groups=e)
        self.mrf_convs = nn.ModuleList(nn.Conv2d(e * c, e * c, 3, padding=r, dilation=r, groups=e)
                                       for r in self.dilations)
        self.mrf_fuse = nn.Conv2d(len(self.dilations) * e * c, e * c, 1, groups=e)
        self.q, self.k, self.v = (nn.Conv2d(e * c, e * c, 1, groups=e) for _ in range(3))
        self.out = nn.Conv2d(e * c, e * dim, 1, groups=e)
        if zero_init:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    # ---- operators (public for the locality tests) ----------------------------------------------------------------
    def stem_forward(self, x: Tensor) -> Tensor:
        """``[N, E*C, h, w] -> M'' [N, E*c, h, w]``."""
        return self.conv3(F.gelu(self.stem(x)))

    def mrf(self, m: Tensor) -> Tensor:
        n, _, h, w = m.shape
        e, c = self.num_experts, self.hidden
        branches = torch.stack([conv(m).view(n, e, c, h, w) for conv in self.mrf_convs], 2)  # [N, E, R, c, h, w]
        return self.mrf_fuse(branches.reshape(n, -1, h, w))  # channels grouped per expert for groups=E

    def ca(self, m: Tensor) -> Tensor:
        n, _, h, w = m.shape
        e, c = self.num_experts, self.hidden
        q, k, v = self.q(m), self.k(m), self.v(m)
        if h * w == 1:  # special token as a 1x1 map: only the centre is a real neighbour
            return v
        kn = F.unfold(k, 3, padding=1).view(n, e, c, 9, h, w)
        vn = F.unfold(v, 3, padding=1).view(n, e, c, 9, h, w)
        q = q.view(n, e, c, 1, h, w)
        if self.ca_mode == "channelwise":
            a = (q * kn).softmax(dim=3)
        else:
            a = ((q * kn).sum(2, keepdim=True) / self.hidden ** 0.5).softmax(dim=3)
        return (a * vn).sum(3).reshape(n, e * c, h, w)

    def forward(self, x: Tensor) -> Tensor:
        n, e, cdim, h, w = x.shape
        m = self.stem_forward(x.reshape(n, e * cdim, h, w))
        out = self.out(F.gelu(m + self.mrf(m) + self.ca(m)))
        return out.view(n, e, cdim, h, w)

    @torch.no_grad()
    def permute_experts(self, perm: Tensor) -> None:
        """Reorder the experts (group axis of every convolution); used to check the merge is a mean."""
        for conv in (self.stem, self.conv3, *self.mrf_convs, self.mrf_fuse, self.q, self.k, self.v, self.out):
            wt = conv.weight.view(self.num_experts, -1, *conv.weight.shape[1:])
            conv.weight.copy_(wt[perm].reshape_as(conv.weight))
            b = conv.bias.view(self.num_experts, -1)
            conv.bias.copy_(b[perm].reshape_as(conv.bias))


class MoKEState:
    """Side state shared by the wrapped blocks of one encoder: the previous block's MLP-expert streams."""

    def __init__(self) -> None:
        self.k_mlp: Optional[Tensor] = None


class MoKEBlock(nn.Module):
    """A frozen ViT block and its two MoKE groups (AU_METHODS.md#moke-wiring). ``index`` 0 starts the expert streams."""

    def __init__(self, block: nn.Module, index: int, state: MoKEState, dim: int, num_experts: int,
                 grid: Sequence[int], n_special: int, **group_kwargs) -> None:
        super().__init__()
        self.block, self.index, self.state = block, index, state
        self.grid, self.n_special = tuple(grid), n_special
        self.moke_att = MoKEGroup(dim, num_experts, **group_kwargs)
        self.moke_mlp = MoKEGroup(dim, num_experts, **group_kwargs)

    def _run(self, group: MoKEGroup, inp: Tensor) -> Tensor:
        """``inp [B, E, N, C]`` -> ``[B, E, N, C]``: patch tokens per slot as maps, special tokens as 1x1 maps."""
        b, e, n, c = inp.shape
        t, h, w = self.grid
        ns = self.n_special
        if n != ns + t * h * w:
            raise ValueError(f"MoKE expects {ns} + {t}*{h}*{w} tokens, got {n} (masked / visible-token inputs are "
                             f"not supported)")
        loc = inp[:, :, ns:].reshape(b, e, t, h, w, c).permute(0, 2, 1, 5, 3, 4).reshape(b * t, e, c, h, w)
        loc = group(loc).view(b, t, e, c, h, w).permute(0, 2, 1, 4, 5, 3).reshape(b, e, t * h * w, c)
        if ns == 0:
            return loc
        sp = inp[:, :, :ns].permute(0, 2, 1, 3).reshape(b * ns, e, c, 1, 1)
        sp = group(sp).view(b, ns, e, c).permute(0, 2, 1, 3)
        return torch.cat((sp, loc), 2)

    def forward(self, x: Tensor) -> Tensor:
        blk = self.block
        ls1, ls2 = getattr(blk, "ls1", nn.Identity()), getattr(blk, "ls2", nn.Identity())
        dp = getattr(blk, "drop_path", nn.Identity())
        dp1, dp2 = getattr(blk, "drop_path1", dp), getattr(blk, "drop_path2", dp)
        e = self.moke_att.num_experts
        u = blk.norm1(x)
        prev = self.state.k_mlp if self.index > 0 else None
        inp = u.unsqueeze(1).expand(-1, e, -1, -1) if prev is None else u.unsqueeze(1) + prev
        k_att = self._run(self.moke_att, inp)
        x = x + dp1(ls1(blk.attn(u))) + k_att.mean(1)
        v = blk.norm2(x)
        k_mlp = self._run(self.moke_mlp, v.unsqueeze(1) + k_att)
        self.state.k_mlp = k_mlp
        return x + dp2(ls2(blk.mlp(v))) + k_mlp.mean(1)


def _is_lgi_block(block: nn.Module) -> bool:
    return all(hasattr(block, a) for a in ("first_attn", "second_attn", "third_attn", "norm2", "mlp"))


def _check_block(block: nn.Module, encoder: nn.Module) -> str:
    if _is_lgi_block(block):
        if not hasattr(encoder, "layout"):
            raise NotImplementedError("MoKE on LGI-Former blocks needs the encoder's token layout (encoder.layout)")
        return "lgi"
    missing = [a for a in ("norm1", "attn", "norm2", "mlp") if not hasattr(block, a)]
    if missing:
        raise NotImplementedError(
            f"MoKE supports ViT blocks ([B, N, C] -> [B, N, C] with norm1/attn/norm2/mlp) and LGI-Former blocks; "
            f"{type(block).__name__} lacks {missing}")
    return "vit"


class MoKELGIBlock(MoKEBlock):
    """MoKE around an LGI-Former block (``s [B, R, 1+M, C] -> s``) [ENG, AU_METHODS.md#moke-wiring]: the block's local,
    global and local-global attentions form the "MHSA" part (its input norm ``first_attn_norm0`` plays LN1), its
    FFN the "MLP" part. Expert streams live in token layout (R representative tokens first, then the local tokens
    in raster order, as ``forward_features`` returns them), so the 2-D operators see the real (h, w) grid; their
    means are mapped back to the region layout before being added."""

    def __init__(self, block: nn.Module, index: int, state: MoKEState, dim: int, num_experts: int, layout,
                 **group_kwargs) -> None:
        super().__init__(block, index, state, dim, num_experts, layout.grid, layout.num_regions, **group_kwargs)
        self.layout = layout

    def _to_tokens(self, s: Tensor) -> Tensor:
        """``[..., R, 1+M, C]`` -> ``[..., R + N, C]``."""
        rep, local = s[..., 0, :], s[..., 1:, :].flatten(-3, -2)
        return torch.cat((rep, self.layout.to_raster(local, dim=local.dim() - 2)), -2)

    def _to_regions(self, x: Tensor) -> Tensor:
        r = self.layout.num_regions
        rep, local = x[..., :r, :], x[..., r:, :]
        local = self.layout.to_region_major(local, dim=local.dim() - 2).unflatten(-2, (r, -1))
        return torch.cat((rep.unsqueeze(-2), local), -2)

    def _attention_part(self, s: Tensor) -> Tensor:
        blk = self.block
        dp = blk.drop_path
        b, r, n, c = s.shape
        s = s + dp(blk.first_attn(blk.first_attn_norm0(s).view(b * r, n, c)).view(b, r, n, c))
        rep, local = s[:, :, 0], s[:, :, 1:]
        rep = rep + dp(blk.second_attn(blk.second_attn_norm0(rep)))
        cross = blk.third_attn(blk.third_attn_norm0(local).reshape(b, r * (n - 1), c), blk.third_attn_norm1(rep))
        local = local + dp(cross.view(b, r, n - 1, c))
        return torch.cat((rep.unsqueeze(2), local), dim=2)

    def forward(self, s: Tensor) -> Tensor:
        blk = self.block
        e = self.moke_att.num_experts
        u = self._to_tokens(blk.first_attn_norm0(s))
        prev = self.state.k_mlp if self.index > 0 else None
        inp = u.unsqueeze(1).expand(-1, e, -1, -1) if prev is None else u.unsqueeze(1) + prev
        k_att = self._run(self.moke_att, inp)
        s = self._attention_part(s) + self._to_regions(k_att.mean(1))
        v = blk.norm2(s)
        k_mlp = self._run(self.moke_mlp, self._to_tokens(v).unsqueeze(1) + k_att)
        self.state.k_mlp = k_mlp
        return s + blk.drop_path(blk.mlp(v)) + self._to_regions(k_mlp.mean(1))


def attach_moke(encoder: nn.Module, num_aus: int, hidden: int = 8, dilations: Sequence[int] = (1, 3, 5),
                ca_mode: str = "channelwise", unfreeze_norms: bool = False, zero_init: bool = True) -> MoKEState:
    """Freeze ``encoder`` and wrap every block in ``encoder.blocks`` with MoKEs (in place). Returns the shared
    :class:`MoKEState`; after a forward pass ``state.k_mlp`` holds the last block's expert streams ``[B, A, N, C]``.
    ``unfreeze_norms`` [ENG] keeps the encoder's LayerNorms trainable."""
    if not hasattr(encoder, "blocks"):
        raise TypeError("attach_moke needs an encoder with a .blocks ModuleList")
    kinds = set()
    for blk in encoder.blocks:
        if isinstance(blk, MoKEBlock):
            raise ValueError("encoder already has MoKE adapters")
        kinds.add(_check_block(blk, encoder))
    if getattr(encoder, "grad_checkpointing", False):
        raise ValueError("turn off gradient checkpointing before attaching MoKE (expert streams are side state)")
    encoder.requires_grad_(False)
    if unfreeze_norms:
        for m in encoder.modules():
            if isinstance(m, nn.LayerNorm):
                m.requires_grad_(True)
    grid = tuple(encoder.grid_size)
    n_special = int(getattr(encoder, "num_prefix_tokens", 0))
    dim = int(encoder.embed_dim)
    state = MoKEState()
    group = dict(hidden=hidden, dilations=dilations, ca_mode=ca_mode, zero_init=zero_init)
    for i in range(len(encoder.blocks)):
        if "lgi" in kinds:
            encoder.blocks[i] = MoKELGIBlock(encoder.blocks[i], i, state, dim, num_aus, encoder.layout, **group)
        else:
            encoder.blocks[i] = MoKEBlock(encoder.blocks[i], i, state, dim, num_aus, grid, n_special, **group)
    return state


class AUFormer(nn.Module):
    """Frozen encoder + MoKEs + main head (+ training-only expert heads). ``forward(x)`` takes the encoder's input
    (a clip) and returns ``{"logits": [B, A], "aux": {"experts": [B, A] (own_au) or [B, A, A] (all_aus)}}`` for
    :class:`lgiformer.au.losses.MDWALoss`. ``head``: "linear" (``LN -> Linear(C, A)``) or "mlp" (2 layers) [ENG]."""

    def __init__(self, encoder: nn.Module, num_aus: int, hidden: int = 8, dilations: Sequence[int] = (1, 3, 5),
                 ca_mode: str = "channelwise", expert_head: str = "own_au", head: str = "linear",
                 unfreeze_norms: bool = False, rates: Optional[Tensor] = None) -> None:
        super().__init__()
        if expert_head not in ("own_au", "all_aus"):
            raise ValueError(f"expert_head must be 'own_au' or 'all_aus', got {expert_head!r}")
        if head not in ("linear", "mlp"):
            raise ValueError(f"head must be 'linear' or 'mlp', got {head!r}")
        self.state = attach_moke(encoder, num_aus, hidden, dilations, ca_mode, unfreeze_norms)
        self.encoder = encoder
        c = int(encoder.embed_dim)
        self.n_special = int(getattr(encoder, "num_prefix_tokens", 0))
        self.expert_head = expert_head
        self.head_norm = nn.LayerNorm(c)
        self.head = nn.Linear(c, num_aus) if head == "linear" else nn.Sequential(
            nn.Linear(c, c), nn.GELU(), nn.Linear(c, num_aus))
        n_out = 1 if expert_head == "own_au" else num_aus
        self.expert_weight = nn.Parameter(torch.zeros(num_aus, n_out, c))
        nn.init.trunc_normal_(self.expert_weight, std=0.02)
        self.expert_bias = nn.Parameter(torch.zeros(num_aus, n_out))
        if rates is not None:
            self.init_prior_bias(rates)

    def init_prior_bias(self, rates: Tensor) -> None:
        b = prior_bias(rates)
        with torch.no_grad():
            last = self.head if isinstance(self.head, nn.Linear) else self.head[-1]
            last.bias.copy_(b)
            self.expert_bias.copy_(b.view(-1, 1) if self.expert_head == "own_au" else b.expand_as(self.expert_bias))

    def _pool(self, x: Tensor) -> Tensor:
        """Mean of the special tokens (CLS for a ViT with one; the R representative tokens for LGI-Former) or,
        without special tokens, the mean of all tokens [ENG]. ``x [..., N, C]``."""
        return x[..., :self.n_special, :].mean(-2) if self.n_special else x.mean(-2)

    def forward(self, x: Tensor) -> Dict:
        tokens = self.encoder.forward_features(x)
        logits = self.head(self.head_norm(self._pool(tokens)))
        streams = self._pool(self.state.k_mlp)  # [B, A, C]
        experts = torch.einsum("bec,eoc->beo", streams, self.expert_weight) + self.expert_bias
        experts = experts.squeeze(-1) if self.expert_head == "own_au" else experts
        return {"logits": logits, "aux": {"experts": experts}}

    def trainable_parameters(self):
        return [p for p in self.parameters() if p.requires_grad]
