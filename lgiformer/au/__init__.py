"""Facial action unit (AU) detection on encoder tokens: heads, losses, adapters and metrics
(docs/AU_METHODS.md). Everything here is a pure module on ``forward_features`` tokens; the training entry point
wires them together::

    from lgiformer.au import build_au_head, build_au_loss
    head = build_au_head("label_token", embed_dim=encoder.embed_dim, num_aus=12, rates=train_rates)
    loss_fn = build_au_loss("wbce", rates=train_rates, au_weighting="inverse_freq",
                            target_transform={"name": "vals", "alpha_neg": 0.5})
    out = head(encoder.forward_features(x), grid=encoder.grid_size, n_special=encoder.num_prefix_tokens)
    loss = loss_fn(out, y, valid)["loss"]
"""
from lgiformer.au.common import frame_to_tubelet, split_tokens
from lgiformer.au.heads import (AttentionDropBlock, FanTransInference, FanTransOKDHead, LabelTokenHead,
                                LinearAUHead, MonetHead, build_au_head, list_au_heads, register_au_head,
                                topk_column_sum)
from lgiformer.au.losses import (RHLS, VALS, VLS, build_au_loss, build_target_transform, inverse_frequency_weights,
                                 list_au_losses, occurrence_rates, prior_bias, prior_heatmaps, register_au_loss,
                                 slot_targets)
from lgiformer.au.labels import binarize_intensity, labels_and_validity, to_union, union_validity
from lgiformer.au.metrics import auc_per_au, cross_fold_f1, fold_f1, moving_average, slots_to_frames, smooth_by_video
from lgiformer.au.moke import AUFormer, MoKEBlock, MoKEGroup, attach_moke
from lgiformer.au.priors import au_centres_68, clip_priors, slot_priors, unique_centres

__all__ = [
    "split_tokens", "frame_to_tubelet",
    "LinearAUHead", "LabelTokenHead", "FanTransOKDHead", "FanTransInference", "AttentionDropBlock", "MonetHead",
    "topk_column_sum", "build_au_head", "list_au_heads", "register_au_head",
    "build_au_loss", "list_au_losses", "register_au_loss", "build_target_transform", "VLS", "VALS", "RHLS",
    "occurrence_rates", "inverse_frequency_weights", "prior_bias", "prior_heatmaps", "slot_targets",
    "fold_f1", "cross_fold_f1", "auc_per_au", "moving_average", "smooth_by_video", "slots_to_frames",
    "AUFormer", "MoKEBlock", "MoKEGroup", "attach_moke",
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
