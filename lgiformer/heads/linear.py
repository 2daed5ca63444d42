"""The pooled linear AU head (docs/AU_METHODS.md#linear-head): the baseline every other head is compared with."""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
from timm.layers import trunc_normal_
from torch import nn

from lgiformer.au.weights import prior_bias
from lgiformer.heads.common import check_grid, check_mode, split_tokens

Tensor = torch.Tensor


class LinearAUHead(nn.Module):
    """Baseline: pooled features -> LayerNorm -> dropout -> Linear(C, A).

    ``pool``: "local" (mean of the local tokens; per slot in dense mode), "special" (mean of the special tokens,
    clip mode only) or "all" (mean of all tokens, clip mode only). A ``pooled`` vector passed to ``forward`` is used
    as is (clip mode)."""

    def __init__(self, embed_dim: int, num_aus: int, pool: str = "local", mode: str = "clip", norm: bool = True,
                 dropout: float = 0.0, rates: Optional[Tensor] = None) -> None:
        super().__init__()
        if pool not in ("local", "special", "all"):
            raise ValueError(f"pool must be 'local', 'special' or 'all', got {pool!r}")
        self.mode = check_mode(mode)
        if mode == "dense" and pool != "local":
            raise ValueError("dense mode pools the local tokens of each slot; use pool='local'")
        self.pool = pool
        self.norm = nn.LayerNorm(embed_dim) if norm else nn.Identity()
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(embed_dim, num_aus)
        trunc_normal_(self.fc.weight, std=0.02)
        nn.init.zeros_(self.fc.bias)
        if rates is not None:
            self.init_prior_bias(rates)

    def init_prior_bias(self, rates: Tensor) -> None:
        """U2: ``sigmoid(bias) == r`` at step 0."""
        with torch.no_grad():
            self.fc.bias.copy_(prior_bias(rates))

    def forward(self, tokens: Tensor, pooled: Optional[Tensor] = None, *, grid: Sequence[int], n_special: int = 0,
                **_: object) -> Dict:
        if pooled is None:
            t, h, w = check_grid(grid)
            special, g = split_tokens(tokens, n_special, t, h, w)
            if self.mode == "dense":
                pooled = g.mean(dim=(2, 3))  # [B, T', C]
            elif self.pool == "local":
                pooled = g.mean(dim=(1, 2, 3))
            elif self.pool == "special":
                if n_special == 0:
                    raise ValueError("pool='special' needs special tokens (n_special > 0)")
                pooled = special.mean(1)
            else:
                pooled = tokens.mean(1)
        return {"logits": self.fc(self.drop(self.norm(pooled))), "aux": {}}
