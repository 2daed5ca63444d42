"""MONET (docs/AU_METHODS.md#monet): a softmax mixture over M fixed task orders of a chain of per-AU GRU cells.
It reads the labels while training (teacher forcing), so it declares ``wants_labels``."""
from __future__ import annotations

import itertools
import math
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lgiformer.au.weights import prior_bias
from lgiformer.heads.common import (check_grid, check_mode, split_tokens, unflatten_lead)

Tensor = torch.Tensor


class MonetHead(nn.Module):
    """Multi-order network head (docs/AU_METHODS.md#monet). ``mode="dense"`` runs the chain per slot on the slot's mean
    token (``aux`` then has ``B*T'`` rows; :class:`lgiformer.au.losses.MonetLoss` flattens ``y`` to match).

    ``h0 = Linear(C, H)(pooled)``; task cell i is a GRU cell (input = previous task's label, ``y^0 = 0``) plus
    ``Linear(H, 1)``; all T = A cells are stacked as ``[T, ...]`` tensors and each step runs one einsum over the
    unrolled orders. ``orders``: ``[M, T]`` buffer of permutations (all T! if ``num_orders >= T!``, else sampled
    uniformly with ``seed``); ``order_logits`` ``u [M]``, ``pi = softmax(u)``.

    Training (``self.training`` and ``y`` given): teacher forcing; order dropout keeps ``keep_orders = k`` orders
    (one subset for the batch, or per example with ``per_example_dropout``), ``pi~`` renormalised over them. Returns
    ``aux = {"order_logits": [B, K, A] (AU-indexed), "order_log_weights": [K] or [B, K]}`` for
    :class:`lgiformer.au.losses.MonetLoss`, and ``logits`` = logit of the ``pi~``-mixture of teacher-forced
    probabilities. Inference: sample ``num_sampled_orders = R`` orders from ``pi``, ``num_rollouts = L``
    Bernoulli trajectories each, average the probabilities; ``mean_field=True`` [ENG] takes the argmax order and feeds
    ``p`` instead of samples. ``label_embedding="three_way"`` [ENG] feeds a one-hot {start, 0, 1} input.
    Order warm-up: :meth:`set_order_warmup` freezes ``u``; :meth:`param_groups` gives it its own lr."""

    wants_labels = True  # teacher forcing: the model passes ``y`` while training

    def __init__(self, embed_dim: int, num_aus: int, hidden: int = 64, num_orders: int = 512, keep_orders: int = 128,
                 pool: str = "local", per_example_dropout: bool = False, label_embedding: str = "scalar",
                 num_rollouts: int = 20, num_sampled_orders: int = 4, mean_field: bool = False,
                 orders: Optional[Tensor] = None, seed: int = 0, mode: str = "clip",
                 rates: Optional[Tensor] = None) -> None:
        super().__init__()
        self.mode = check_mode(mode)
        if mode == "dense" and pool != "local":
            raise ValueError("dense mode pools the local tokens of each slot; use pool='local'")
        if pool not in ("local", "special", "all"):
            raise ValueError(f"pool must be 'local', 'special' or 'all', got {pool!r}")
        if label_embedding not in ("scalar", "three_way"):
            raise ValueError(f"label_embedding must be 'scalar' or 'three_way', got {label_embedding!r}")
        t = num_aus
        if orders is None:
            orders = self._make_orders(t, num_orders, seed)
        orders = torch.as_tensor(orders, dtype=torch.long)
        if orders.dim() != 2 or orders.shape[1] != t or not bool(
                (orders.sort(1).values == torch.arange(t)).all()):
            raise ValueError(f"orders must be [M, {t}] permutations of 0..{t - 1}")
        self.register_buffer("orders", orders)
        self.num_aus, self.hidden, self.pool = t, hidden, pool
        self.keep_orders, self.per_example_dropout = keep_orders, per_example_dropout
        self.label_embedding = label_embedding
        self.num_rollouts, self.num_sampled_orders, self.mean_field = num_rollouts, num_sampled_orders, mean_field
        self.proj = nn.Linear(embed_dim, hidden)
        self.order_logits = nn.Parameter(torch.zeros(orders.shape[0]))
        n_in = 1 if label_embedding == "scalar" else 3
        bound = 1.0 / math.sqrt(hidden)
        self.w_ih = nn.Parameter(torch.empty(t, 3 * hidden, n_in).uniform_(-bound, bound))
        self.w_hh = nn.Parameter(torch.empty(t, 3 * hidden, hidden).uniform_(-bound, bound))
        self.b_ih = nn.Parameter(torch.empty(t, 3 * hidden).uniform_(-bound, bound))
        self.b_hh = nn.Parameter(torch.empty(t, 3 * hidden).uniform_(-bound, bound))
        self.out_w = nn.Parameter(torch.empty(t, hidden).uniform_(-bound, bound))
        self.out_b = nn.Parameter(torch.zeros(t))
        if rates is not None:
            self.init_prior_bias(rates)

    @staticmethod
    def _make_orders(t: int, m: int, seed: int) -> Tensor:
        if math.factorial(t) <= m:
            return torch.tensor(list(itertools.permutations(range(t))), dtype=torch.long)
        gen = torch.Generator().manual_seed(seed)
        return torch.stack([torch.randperm(t, generator=gen) for _ in range(m)])

    @property
    def num_orders(self) -> int:
        return self.orders.shape[0]

    def init_prior_bias(self, rates: Tensor) -> None:
        """U2 on each task's output bias."""
        with torch.no_grad():
            self.out_b.copy_(prior_bias(rates))

    def set_order_warmup(self, active: bool) -> None:
        """Order warm-up (AU_METHODS.md#monet-training): while active, ``u`` gets no gradient and stays unchanged."""
        self.order_logits.requires_grad_(not active)
        if active:
            self.order_logits.grad = None

    def param_groups(self, lr: float = 1e-4, weight_decay: float = 1e-4, order_lr: float = 5e-3) -> list[dict]:
        """Two groups (AU_METHODS.md#monet-training): order selector ``u`` (Adam, constant lr, no decay), the rest."""
        rest = [p for n, p in self.named_parameters() if n != "order_logits"]
        return [dict(params=rest, lr=lr, weight_decay=weight_decay),
                dict(params=[self.order_logits], lr=order_lr, weight_decay=0.0, name="monet_orders")]

    # ---- core unroll --------------------------------------------------------------------------------------------
    def _input(self, prev: Optional[Tensor], shape) -> Tensor:
        if self.label_embedding == "scalar":
            return (torch.zeros(shape, device=self.w_ih.device) if prev is None else prev).unsqueeze(-1)
        if prev is None:
            return F.one_hot(torch.zeros(shape, dtype=torch.long, device=self.w_ih.device), 3).float()
        return torch.stack((torch.zeros_like(prev), 1.0 - prev, prev), -1)  # soft for mean field

    def _step(self, h: Tensor, x: Tensor, task: Tensor) -> tuple[Tensor, Tensor]:
        """One GRU step for every unrolled order. ``h [B, K, H]``, ``x [B, K, in]``, ``task [K]`` -> (h', logit)."""
        gi = torch.einsum("bki,kgi->bkg", x, self.w_ih[task]) + self.b_ih[task]
        gh = torch.einsum("bkh,kgh->bkg", h, self.w_hh[task]) + self.b_hh[task]
        i_r, i_z, i_n = gi.chunk(3, -1)
        h_r, h_z, h_n = gh.chunk(3, -1)
        r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        h = (1.0 - z) * n + z * h
        return h, (h * self.out_w[task]).sum(-1) + self.out_b[task]

    def unroll(self, h0: Tensor, perms: Tensor, y: Optional[Tensor] = None, feed: str = "teacher",
               generator: Optional[torch.Generator] = None) -> Tensor:
        """Run the chain along ``perms [K, T]`` from ``h0 [B, H]``; returns AU-indexed logits ``[B, K, A]``.
        ``feed``: "teacher" (previous ground-truth label, needs ``y [B, A]``), "sample" (Bernoulli) or "mean"."""
        b, k = h0.shape[0], perms.shape[0]
        h = h0.unsqueeze(1).expand(b, k, -1)
        prev: Optional[Tensor] = None
        steps = []
        for s in range(perms.shape[1]):
            task = perms[:, s]
            h, o = self._step(h, self._input(prev, (b, k)), task)
            steps.append(o)
            if feed == "teacher":
                prev = y.float()[:, task]
            elif feed == "sample":
                prev = torch.bernoulli(torch.sigmoid(o).detach(), generator=generator)
            else:
                prev = torch.sigmoid(o)
        step_logits = torch.stack(steps, -1)  # [B, K, T] in step order
        inv = perms.argsort(dim=1)
        return step_logits.gather(2, inv.unsqueeze(0).expand(b, -1, -1))

    def _pooled(self, tokens: Tensor, pooled: Optional[Tensor], grid, n_special: int) -> Tensor:
        if pooled is not None:
            return pooled
        if self.pool == "all":
            return tokens.mean(1)
        if self.pool == "special":
            if n_special == 0:
                raise ValueError("pool='special' needs n_special > 0")
            return tokens[:, :n_special].mean(1)
        t, h, w = check_grid(grid)
        g = split_tokens(tokens, n_special, t, h, w)[1]
        return g.mean(dim=(2, 3)).flatten(0, 1) if self.mode == "dense" else g.mean(dim=(1, 2, 3))

    def forward(self, tokens: Tensor, pooled: Optional[Tensor] = None, *, grid: Sequence[int] = None,
                n_special: int = 0, y: Optional[Tensor] = None, generator: Optional[torch.Generator] = None,
                **_: object) -> Dict:
        h0 = self.proj(self._pooled(tokens, pooled, grid, n_special))
        lead = (tokens.shape[0], -1) if self.mode == "dense" and pooled is None else (h0.shape[0],)
        if y is not None:
            y = y.reshape(h0.shape[0], -1)  # dense mode: [B, T', A] -> [B*T', A]
        out = self._forward(h0, y, generator)
        out["logits"], out["probs"] = (unflatten_lead(out[k], lead) for k in ("logits", "probs"))
        return out

    def _forward(self, h0: Tensor, y: Optional[Tensor], generator: Optional[torch.Generator]) -> Dict:
        b, m = h0.shape[0], self.num_orders
        if self.training and y is not None:
            k = min(self.keep_orders, m)
            if k < m and not self.per_example_dropout:
                idx = torch.randperm(m, device=h0.device, generator=generator)[:k].sort().values
                logw = torch.log_softmax(self.order_logits[idx], 0)
                order_logits = self.unroll(h0, self.orders[idx], y)
            else:
                order_logits = self.unroll(h0, self.orders, y)
                if k < m:  # per-example subsets: every order is unrolled, the dropped ones get -inf
                    keep = torch.rand(b, m, device=h0.device, generator=generator).argsort(1) < k
                    logw = torch.log_softmax(self.order_logits.masked_fill(~keep, float("-inf")), 1)
                else:
                    logw = torch.log_softmax(self.order_logits, 0)
            lw = logw if logw.dim() == 2 else logw.unsqueeze(0)
            p_mix = (lw.exp().unsqueeze(-1) * torch.sigmoid(order_logits)).sum(1)
            aux = {"order_logits": order_logits, "order_log_weights": logw}
            return {"logits": torch.logit(p_mix.clamp(1e-6, 1 - 1e-6)), "probs": p_mix, "aux": aux}
        probs = self.predict_proba(h0, generator)
        return {"logits": torch.logit(probs.clamp(1e-6, 1 - 1e-6)), "probs": probs, "aux": {}}

    def predict_proba(self, h0: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """docs/AU_METHODS.md#monet-inference: mean of the per-AU probabilities over ``R * L`` sampled rollouts."""
        if self.mean_field:
            best = self.order_logits.argmax().view(1)
            return torch.sigmoid(self.unroll(h0, self.orders[best], feed="mean")).mean(1)
        pi = torch.softmax(self.order_logits.detach(), 0)
        sel = torch.multinomial(pi, self.num_sampled_orders, replacement=True, generator=generator)
        perms = self.orders[sel].repeat_interleave(self.num_rollouts, dim=0)  # [R*L, T]
        return torch.sigmoid(self.unroll(h0, perms, feed="sample", generator=generator)).mean(1)
