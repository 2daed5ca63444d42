"""Facial action unit (AU) detection, the parts that are not modules on the encoder: losses and their weights,
label smoothing, attention guidance, metrics, label handling and landmark priors (docs/AU_METHODS.md). The heads
that read encoder tokens are in :mod:`lgiformer.heads`, the MoKE adapters in :mod:`lgiformer.models.moke`::

    from lgiformer.au import build_au_loss
    from lgiformer.heads import build_au_head
    head = build_au_head("label_token", embed_dim=encoder.embed_dim, num_aus=12, rates=train_rates)
    loss_fn = build_au_loss("wbce", rates=train_rates, au_weighting="inverse_freq",
                            target_transform={"name": "vals", "alpha_neg": 0.5})
    out = head(encoder.forward_features(x), grid=encoder.grid_size, n_special=encoder.num_prefix_tokens)
    loss = loss_fn(out, y, valid)["loss"]
"""
from lgiformer.au.attention_guidance import H2PLoss, PAtteLLoss, h2p_loss, pattel_loss, prior_heatmaps
from lgiformer.au.label_targets import RHLS, VALS, VLS, build_target_transform, slot_targets
from lgiformer.au.labels import binarize_intensity, labels_and_validity, to_union, union_validity
from lgiformer.au.losses import build_au_loss, list_au_losses, register_au_loss
from lgiformer.au.metrics import auc_per_au, cross_fold_f1, fold_f1, moving_average, slots_to_frames, smooth_by_video
from lgiformer.au.priors import au_centres_68, clip_priors, slot_priors, unique_centres
from lgiformer.au.weights import inverse_frequency_weights, occurrence_rates, prior_bias

__all__ = [
    "build_au_loss", "list_au_losses", "register_au_loss", "build_target_transform", "VLS", "VALS", "RHLS",
    "occurrence_rates", "inverse_frequency_weights", "prior_bias", "prior_heatmaps", "slot_targets",
    "PAtteLLoss", "H2PLoss", "pattel_loss", "h2p_loss",
    "fold_f1", "cross_fold_f1", "auc_per_au", "moving_average", "smooth_by_video", "slots_to_frames",
    "labels_and_validity", "binarize_intensity", "union_validity", "to_union",
    "au_centres_68", "unique_centres", "slot_priors", "clip_priors",
    "BP4D_AUS", "DISFA_AUS", "ABAW_AUS", "UNION_AUS", "DISFA_POSITIVE_INTENSITY",
]

# AU sets of the evaluation protocols (docs/AU_METHODS.md#au-sets).
BP4D_AUS = (1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24)
DISFA_AUS = (1, 2, 4, 6, 9, 12, 25, 26)
ABAW_AUS = (1, 2, 4, 6, 7, 10, 12, 15, 23, 24, 25, 26)
UNION_AUS = (1, 2, 4, 6, 7, 9, 10, 12, 14, 15, 17, 23, 24, 25, 26)
DISFA_POSITIVE_INTENSITY = 2  # intensity >= 2 is positive (docs/AU_METHODS.md#disfa-threshold)
