"""Where a classifier looks: a heat map over the clip's tubelet grid for the predicted class, drawn over the frames.

Two sources, chosen by the model: with the label-token head (``global_pool: label_token``) the cross-attention of
the predicted class's query over the local tokens, averaged over heads (what the head actually reads); with any other
head a gradient map, ``relu(sum_c dlogit/dx * x)`` per token of the patch embedding (Grad-CAM on the input tokens:
how much each tubelet's embedding pushes the predicted logit up, through every block; the output tokens would not do,
since the paper's head reads only the representative tokens). Both give one value per (t', h, w) token, upsampled to
the frames. A map shows correlation, not cause: read it as a check that the model looks at the face.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn


def classifier_of(model: nn.Module) -> nn.Module:
    """The encoder-with-head inside a release's model (a DFER + AU model wraps its classifier)."""
    return getattr(model, "classifier", model)


def token_heat(model: nn.Module, clip: torch.Tensor, class_index: int | None = None) -> tuple[torch.Tensor, int, str]:
    """``(heat [T', h, w] in [0, 1], class index, method)`` for one clip ``[3, T, H, W]`` (normalised)."""
    model = classifier_of(model).eval()
    layout, n_special = model.layout, int(model.num_prefix_tokens)
    t, h, w = layout.grid
    x = clip.unsqueeze(0)
    if model.global_pool == "label_token":
        with torch.no_grad():
            tokens = model.fc_norm(model.forward_features(x))
            out = model.head(tokens, grid=layout.grid, n_special=n_special)
        index = int(out["logits"][0].argmax()) if class_index is None else class_index
        attn = out["attn"][0, :, index].mean(0)          # [n_keys], averaged over heads
        heat, method = attn[-t * h * w:], "label-token attention"
    else:
        embedded: list[torch.Tensor] = []
        hook = model.patch_embed.register_forward_hook(lambda module, args, out: embedded.append(out))
        try:
            logits = model(x)
        finally:
            hook.remove()
        index = int(logits[0].argmax()) if class_index is None else class_index
        grad, = torch.autograd.grad(logits[0, index], embedded[0])   # raster (t, h, w) order
        heat, method = F.relu((grad[0] * embedded[0][0]).sum(-1)), "gradient x embedding"
    heat = heat.detach().float().reshape(t, h, w)
    heat = heat - heat.min()
    return heat / heat.max().clamp_min(1e-12), index, method


def overlay(clip: torch.Tensor, heat: torch.Tensor, mean: Sequence[float], std: Sequence[float],
            alpha: float = 0.5) -> np.ndarray:
    """uint8 image: the first frame of each tubelet (top row) and the same frames with ``heat`` in jet colours
    (bottom row)."""
    from matplotlib import colormaps  # deferred: matplotlib only for drawing

    c, frames_n, height, width = clip.shape
    t = heat.shape[0]
    frames = clip[:, ::frames_n // t][:, :t].float()
    frames = frames * torch.tensor(std).view(-1, 1, 1, 1) + torch.tensor(mean).view(-1, 1, 1, 1)
    frames = frames.clamp(0, 1).permute(1, 2, 3, 0).numpy()                                # [t, H, W, 3]
    big = F.interpolate(heat[:, None], size=(height, width), mode="bilinear", align_corners=False)[:, 0].numpy()
    colours = colormaps["jet"](big)[..., :3]
    mixed = (1 - alpha) * frames + alpha * colours
    rows = [np.concatenate(list(frames), axis=1), np.concatenate(list(mixed), axis=1)]
    return (np.concatenate(rows, axis=0) * 255).round().astype(np.uint8)


def explain_clip(model: nn.Module, clip: torch.Tensor, out_path: str | Path, mean: Sequence[float],
                 std: Sequence[float], class_index: int | None = None) -> dict:
    """Write the overlay of ``clip`` to ``out_path`` (PNG); returns what was drawn."""
    heat, index, method = token_heat(model, clip, class_index)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(overlay(clip, heat, mean, std)).save(out_path)
    return dict(path=str(out_path), class_index=index, method=method)
