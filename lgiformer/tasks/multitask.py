"""Multi-task DFER + AU: the expression classifier with an auxiliary AU head on the same encoder tokens.

``model(clips)`` returns the expression logits, exactly as the plain classifier does, so validation, testing,
releases and ``lgiformer.predict`` need nothing new; ``model(clips, with_au=True)`` also returns the AU head's
output dict (``logits`` ``[B, A]``, ...), which the training step and the AU metrics read.

A pooled classifier's ``forward_features`` skips the encoder's final norm (the pooled features get ``fc_norm``
instead), so the AU branch has its own LayerNorm, the one an unpooled encoder would apply. :func:`export_au_model`
uses that to write the AU branch as a plain :class:`~lgiformer.engine.finetune_au.AUModel` (encoder + AU head)
that ``load_au_model`` rebuilds and that gives the same AU probabilities.
"""
from __future__ import annotations

import torch
from torch import nn

from lgiformer.au.heads import head_no_weight_decay
from lgiformer.engine.finetune_au import CLASSIFIER_ARGS, AUModel, au_probs, prefixed_groups

__all__ = ["ExpressionAUModel", "au_probs", "export_au_model"]

# Keys of a pooled classifier that an unpooled, head-less encoder does not have.
_CLASSIFIER_ONLY = ("head.", "fc_norm.")


class ExpressionAUModel(nn.Module):
    """``classifier`` (a pooled encoder with its expression head) + ``au_head`` on its tokens."""

    def __init__(self, classifier: nn.Module, au_head: nn.Module, num_aus: int,
                 rates: torch.Tensor | None = None) -> None:
        super().__init__()
        if not getattr(classifier, "global_pool", ""):
            raise ValueError("ExpressionAUModel needs a pooled classifier (global_pool set)")
        self.classifier, self.au_head, self.num_aus = classifier, au_head, num_aus
        self.au_norm = nn.LayerNorm(int(classifier.embed_dim), eps=classifier.model_args.get("norm_eps", 1e-6))
        self.grid = tuple(int(g) for g in classifier.grid_size)
        self.n_special = int(getattr(classifier, "num_prefix_tokens", 0))
        self.model_name, self.model_args = classifier.model_name, classifier.model_args
        if rates is not None and hasattr(au_head, "init_prior_bias"):
            au_head.init_prior_bias(rates)

    def forward(self, clips: torch.Tensor, with_au: bool = False):
        tokens = self.classifier.forward_features(clips)
        logits = self.classifier.forward_head(tokens)
        if not with_au:
            return logits
        return logits, dict(self.au_head(self.au_norm(tokens), grid=self.grid, n_special=self.n_special))

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        skip = {f"classifier.{k}" for k in self.classifier.no_weight_decay()}
        skip |= head_no_weight_decay(self.au_head, "au_head.")
        return skip

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """The encoder's layer-decay groups under ``classifier.``; both heads and ``au_norm`` (unmatched) land in
        the last group (lr scale 1)."""
        return prefixed_groups(self.classifier.group_matcher(coarse), r"classifier\.")

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.classifier.set_grad_checkpointing(enable)


def export_au_model(model: ExpressionAUModel) -> AUModel:
    """The AU branch as an :class:`AUModel`: an unpooled encoder holding the classifier's encoder weights and the
    AU branch's norm as its final ``norm``, with the same AU head (shared, not copied)."""
    from lgiformer.models import create_model

    args = {k: v for k, v in model.classifier.model_args.items() if k not in CLASSIFIER_ARGS}
    encoder = create_model(model.model_name, num_classes=0, global_pool="", **args)
    state = {k: v for k, v in model.classifier.state_dict().items() if not k.startswith(_CLASSIFIER_ONLY)}
    state.update({f"norm.{k}": v for k, v in model.au_norm.state_dict().items()})
    encoder.load_state_dict(state)  # strict: every encoder weight comes from the classifier
    return AUModel(encoder, model.au_head, num_aus=model.num_aus).eval()
