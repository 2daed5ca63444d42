"""Video classification as a task object for the shared training loop: a batch in, a dict of losses out.

The loop owns everything else (device placement of the model, autocast, backward, DeepSpeed step, logging); the
task only moves the batch, applies mixup / cutmix (soft targets) and computes the loss:
soft-target cross-entropy with mixup, label-smoothing cross-entropy without it (the reference recipe).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


def soft_target_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


class ClassificationTask:
    """``task(model, batch) -> {"loss": ..., "acc": ...}``; batch = (clips [B, 3, T, H, W], labels [B], ...).

    mixup: a callable ``(clips, labels) -> (clips, soft_targets)`` (the data package's ``VideoMixup``) or None.
    ``acc`` is the hard-label accuracy of the batch (before mixup) and is logged only, never back-propagated.
    """

    def __init__(self, num_classes: int, mixup: Callable | None = None, smoothing: float = 0.0) -> None:
        self.num_classes = num_classes
        self.mixup = mixup
        self.smoothing = smoothing

    def __call__(self, model: nn.Module, batch, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        clips, labels = batch[0], batch[1]
        if device is None:
            device = next(model.parameters()).device
        clips = clips.to(device, non_blocking=True)
        labels = torch.as_tensor(labels).to(device, non_blocking=True)
        if self.mixup is not None and self.training:
            clips, target = self.mixup(clips, labels)
            logits = model(clips)
            loss = soft_target_cross_entropy(logits, target)
        else:
            logits = model(clips)
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.smoothing)
        with torch.no_grad():
            acc = (logits.argmax(-1) == labels).float().mean()
        return {"loss": loss, "acc": acc}

    training = True  # the loop may switch mixup off for evaluation-style passes by setting this to False
