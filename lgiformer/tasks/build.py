"""Build the finetuning model: the architecture from the release (if the start point is one) or the recipe, with
the recipe's classes and regularisation, then the pretrained weights through :func:`load_pretrained`."""
from __future__ import annotations

import logging
import os

from torch import nn

from lgiformer.models import create_model
from lgiformer.tasks.pretrained import LoadReport, load_pretrained, release_model_args

log = logging.getLogger(__name__)

# Architecture keys a release's model_args may fix; finetuning choices (classes, pooling, drop path) come from
# the recipe.
_ARCH_KEYS = ("img_size", "patch_size", "num_frames", "tubelet_size", "in_chans", "embed_dim", "depth", "num_heads",
              "mlp_ratio", "qkv_bias", "region_size", "norm_eps")


def build_classifier(model_name: str, num_classes: int, pretrained: str | os.PathLike | None = None,
                     global_pool: str | None = None, drop_path_rate: float = 0.0, **model_kwargs
                     ) -> tuple[nn.Module, LoadReport]:
    """(model, load report). With a release as ``pretrained`` its ``model_name`` and architecture win over the
    recipe's (a mismatch is logged), so a user never has to repeat the encoder's sizes."""
    release = release_model_args(pretrained)
    if release.get("model_name"):
        if release["model_name"] != model_name:
            log.warning("model %s from the release replaces the recipe's %s", release["model_name"], model_name)
        model_name = release["model_name"]
        arch = {k: v for k, v in release.get("model_args", {}).items() if k in _ARCH_KEYS}
        clash = {k: (v, arch[k]) for k, v in model_kwargs.items() if k in arch and v != arch[k]}
        if clash:
            log.warning("the release fixes %s (recipe value, release value)", clash)
        model_kwargs = {**model_kwargs, **arch}
    if global_pool is None:
        global_pool = "region" if model_name.startswith("lgiformer") else "avg"
    model = create_model(model_name, num_classes=num_classes, global_pool=global_pool, drop_path_rate=drop_path_rate,
                         **model_kwargs)
    report = load_pretrained(model, pretrained)
    return model, report
