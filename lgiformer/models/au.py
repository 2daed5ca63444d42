"""Models that put AU heads on an encoder: :class:`AUModel` (encoder + AU head, AU detection) and
:class:`ExpressionAUModel` (the expression classifier + an auxiliary AU head on the same tokens, DFER + AU).

Each records ``model_name`` and ``model_args`` (its encoder's name and arguments, the head's name and arguments) at
construction, so a release rebuilds it with :func:`lgiformer.models.build_model`; heads are built by name from
:mod:`lgiformer.heads`.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Mapping, Optional

import torch
from torch import nn

from lgiformer.au.weights import prior_bias
from lgiformer.heads import au_head_arguments, build_au_head, head_no_weight_decay
from lgiformer.models.moke import attach_moke

log = logging.getLogger(__name__)

# model_args that describe a classifier's head, not its encoder: dropped to rebuild the bare encoder.
CLASSIFIER_ARGS = ("num_classes", "global_pool", "head_args")
MOKE_KEYS = ("hidden", "dilations", "ca_mode", "unfreeze_norms", "expert_head")


def _prefixed(regex: str, prefix: str) -> str:
    return "^" + prefix + regex[1:] if regex.startswith("^") else prefix + regex


def prefixed_groups(groups: dict, prefix: str) -> dict:
    """A timm ``group_matcher`` dict of a submodule, with every regex moved under ``prefix`` (``encoder.``, ...)."""
    return {key: _prefixed(value, prefix) if isinstance(value, str) else [(_prefixed(r, prefix), o) for r, o in value]
            for key, value in groups.items()}


def au_probs(out: Dict) -> torch.Tensor:
    """Per-AU probabilities from an AU head's output dict (heads that output ``probs`` give them), float32."""
    return (out["probs"] if "probs" in out else torch.sigmoid(out["logits"].float())).float()


def encoder_spec(encoder: nn.Module) -> dict[str, Any]:
    return dict(model_name=encoder.model_name, model_args=dict(encoder.model_args))


def au_head_inputs(name: str, encoder: nn.Module, num_aus: int, dense: bool, head_args: Mapping[str, Any]
                   ) -> dict[str, Any]:
    """The keyword arguments of AU head ``name`` on ``encoder``: what the encoder fixes (width, grid, mode), then
    ``head_args``. Keys the head does not take (a recipe's ``head_args`` with another ``au.head``) are dropped with
    a warning."""
    kwargs: dict[str, Any] = dict(embed_dim=int(encoder.embed_dim), num_aus=num_aus, mode="dense" if dense else "clip")
    if name == "fantrans_okd":
        kwargs["grid"] = tuple(encoder.grid_size)
    accepted = au_head_arguments(name)
    args = dict(head_args)
    if accepted is not None:
        unknown = sorted(k for k in args if k not in accepted)
        if unknown:
            log.warning("au.head_args %s are not arguments of the %s head: ignored", unknown, name)
            args = {k: v for k, v in args.items() if k in accepted}
    return {**kwargs, **args}


class AUModel(nn.Module):
    """Encoder + AU head. ``forward(clips, y=None) -> the head's output dict`` (``logits`` ``[B, A]`` or
    ``[B, T', A]``, ``aux``, ...); ``y`` is passed to heads that read labels while training (``wants_labels``).

    ``moke``: attach MoKE adapters (docs/AU_METHODS.md#moke-adapters) to the encoder (which freezes it) and add the
    training-only expert heads (``Linear(C, 1)`` per AU on the pooled last expert stream, ``aux["experts"]`` for the
    MDWA loss; clip mode only). ``freeze_encoder``: the encoder gets no gradient. ``no_weight_decay`` /
    ``group_matcher`` delegate to the encoder (names prefixed ``encoder.``), so :func:`lgiformer.optim.param_groups`
    applies layer decay to the encoder blocks and the full lr to the head. ``rates`` initialise the head's final
    bias (U2)."""

    def __init__(self, encoder: nn.Module, head: str, head_args: Optional[Dict[str, Any]] = None, *, num_aus: int,
                 freeze_encoder: bool = False, moke: bool = False, moke_args: Optional[Dict[str, Any]] = None,
                 dense: bool = False, rates: Optional[torch.Tensor] = None) -> None:
        super().__init__()
        head_args = dict(head_args or {})
        moke_args = {k: v for k, v in (moke_args or {}).items() if k in MOKE_KEYS}
        self.model_name = "au_model"
        self.model_args = dict(encoder=encoder_spec(encoder), head=head, head_args=head_args, num_aus=num_aus,
                               freeze_encoder=freeze_encoder, moke=moke, moke_args=moke_args, dense=dense)
        self.encoder = encoder
        self.head = build_au_head(head, **au_head_inputs(head, encoder, num_aus, dense, head_args))
        self.num_aus, self.dense, self.moke = num_aus, dense, moke
        self.grid = tuple(int(g) for g in encoder.grid_size)
        self.n_special = int(getattr(encoder, "num_prefix_tokens", 0))
        self.wants_labels = bool(getattr(self.head, "wants_labels", False))
        self.moke_state = None
        if moke:
            args = dict(moke_args)
            if args.pop("expert_head", "own_au") != "own_au":
                raise ValueError("au.head_args.moke_expert_head: only 'own_au' is supported in the AU task")
            self.moke_state = attach_moke(encoder, num_aus, **args)
            self.expert_weight = nn.Parameter(torch.zeros(num_aus, int(encoder.embed_dim)))
            nn.init.trunc_normal_(self.expert_weight, std=0.02)
            self.expert_bias = nn.Parameter(torch.zeros(num_aus))
        if freeze_encoder:
            self.encoder.requires_grad_(False)
        if rates is not None:
            self.init_prior_bias(rates)

    def init_prior_bias(self, rates: torch.Tensor) -> None:
        """U2 on the head (and on the MoKE expert heads)."""
        if hasattr(self.head, "init_prior_bias"):
            self.head.init_prior_bias(rates)
        if self.moke:
            with torch.no_grad():
                self.expert_bias.copy_(prior_bias(rates))

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        skip = {f"encoder.{k}" for k in (self.encoder.no_weight_decay() if hasattr(self.encoder, "no_weight_decay")
                                         else ())}
        return skip | head_no_weight_decay(self.head, "head.")

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """The encoder's groups under ``encoder.``; the head (unmatched) lands in the last group (lr scale 1)."""
        return prefixed_groups(self.encoder.group_matcher(coarse), r"encoder\.")

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if self.moke and enable:
            raise ValueError("gradient checkpointing cannot be used with MoKE adapters (au.moke)")
        self.encoder.set_grad_checkpointing(enable)

    def forward(self, clips: torch.Tensor, y: Optional[torch.Tensor] = None) -> Dict:
        tokens = self.encoder.forward_features(clips)
        kwargs: Dict[str, Any] = dict(grid=self.grid, n_special=self.n_special)
        if self.wants_labels and y is not None and self.training:
            kwargs["y"] = y
        out = dict(self.head(tokens, **kwargs))
        if self.moke and not self.dense and self.moke_state is not None and self.moke_state.k_mlp is not None:
            k = self.moke_state.k_mlp  # [B, A, N, C]
            pooled = k[:, :, :self.n_special].mean(2) if self.n_special else k.mean(2)
            experts = (pooled * self.expert_weight).sum(-1) + self.expert_bias
            out["aux"] = {**(out.get("aux") or {}), "experts": experts}
        return out


class ExpressionAUModel(nn.Module):
    """``classifier`` (a pooled encoder with its expression head) + an AU head on its tokens.

    ``model(clips)`` returns the expression logits, exactly as the plain classifier does, so validation, testing and
    prediction treat it as a classifier; ``model(clips, with_au=True)`` also returns the AU head's output dict
    (``logits`` ``[B, A]``, ...), which the training step and the AU metrics read. A pooled classifier's
    ``forward_features`` skips the encoder's final norm (the pooled features get ``fc_norm`` instead), so the AU
    branch has its own LayerNorm, the one an unpooled encoder would apply."""

    def __init__(self, classifier: nn.Module, au_head: str, au_head_args: Optional[Dict[str, Any]] = None, *,
                 num_aus: int, rates: torch.Tensor | None = None) -> None:
        super().__init__()
        if not getattr(classifier, "global_pool", ""):
            raise ValueError("ExpressionAUModel needs a pooled classifier (global_pool set)")
        au_head_args = dict(au_head_args or {})
        self.model_name = "expression_au_model"
        self.model_args = dict(classifier=encoder_spec(classifier), au_head=au_head, au_head_args=au_head_args,
                               num_aus=num_aus)
        self.classifier, self.num_aus = classifier, num_aus
        self.au_head = build_au_head(au_head, **au_head_inputs(au_head, classifier, num_aus, False, au_head_args))
        self.au_norm = nn.LayerNorm(int(classifier.embed_dim), eps=classifier.model_args.get("norm_eps", 1e-6))
        self.grid = tuple(int(g) for g in classifier.grid_size)
        self.n_special = int(getattr(classifier, "num_prefix_tokens", 0))
        if rates is not None and hasattr(self.au_head, "init_prior_bias"):
            self.au_head.init_prior_bias(rates)

    def forward(self, clips: torch.Tensor, with_au: bool = False):
        tokens = self.classifier.forward_features(clips)
        logits = self.classifier.forward_head(tokens)
        if not with_au:
            return logits
        return logits, dict(self.au_head(self.au_norm(tokens), grid=self.grid, n_special=self.n_special))

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        skip = {f"classifier.{k}" for k in self.classifier.no_weight_decay()}
        return skip | head_no_weight_decay(self.au_head, "au_head.")

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """The encoder's layer-decay groups under ``classifier.``; both heads and ``au_norm`` (unmatched) land in
        the last group (lr scale 1)."""
        return prefixed_groups(self.classifier.group_matcher(coarse), r"classifier\.")

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.classifier.set_grad_checkpointing(enable)


# The composite architectures by name, and the model_args key that holds their encoder's spec.
COMPOSITES = {"au_model": (AUModel, "encoder"), "expression_au_model": (ExpressionAUModel, "classifier")}
