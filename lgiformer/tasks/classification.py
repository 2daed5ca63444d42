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

    Multi-task DFER + AU: with ``au_loss`` (an AU loss module: ``(head output, targets, valid) -> {"loss", ...}``)
    the batch is ``(clips, labels, au [B, A], au_valid [B, A], ...)``, the model is called with ``with_au=True``
    and the loss is ``CE + au_weight * AU loss`` (``cls`` and ``au`` are logged too). Under mixup / cutmix the AU
    targets are mixed with the same lambda and partner as the clips (the area actually pasted, for cutmix), and an
    AU entry counts only where both clips have it annotated.
    """

    def __init__(self, num_classes: int, mixup: Callable | None = None, smoothing: float = 0.0,
                 au_loss: nn.Module | None = None, au_weight: float = 0.0) -> None:
        self.num_classes = num_classes
        self.mixup = mixup
        self.smoothing = smoothing
        self.au_loss, self.au_weight = au_loss, au_weight

    def __call__(self, model: nn.Module, batch, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        clips, labels = batch[0], batch[1]
        if device is None:
            device = next(model.parameters()).device
        clips = clips.to(device, non_blocking=True)
        labels = torch.as_tensor(labels).to(device, non_blocking=True)
        with_au = self.au_loss is not None
        if with_au:
            au, au_valid = (batch[2].to(device, non_blocking=True).float(),
                            batch[3].to(device, non_blocking=True).bool())
        if self.mixup is not None and self.training:
            clips, target = self.mixup(clips, labels)
            if with_au and self.mixup.last_lam < 1.0:
                lam = self.mixup.last_lam
                au, au_valid = lam * au + (1.0 - lam) * au.flip(0), au_valid & au_valid.flip(0)
        else:
            target = None
        out = model(clips, with_au=True) if with_au else model(clips)
        logits, au_out = out if with_au else (out, None)
        if target is not None:
            loss = soft_target_cross_entropy(logits, target)
        else:
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.smoothing)
        with torch.no_grad():
            acc = (logits.argmax(-1) == labels).float().mean()
        if not with_au:
            return {"loss": loss, "acc": acc}
        au_parts = self.au_loss(au_out, au, au_valid.float())
        return {"loss": loss + self.au_weight * au_parts["loss"], "cls": loss.detach(),
                "au": au_parts["loss"].detach(), "acc": acc}

    training = True  # the loop may switch mixup off for evaluation-style passes by setting this to False
