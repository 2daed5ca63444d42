"""Per-step schedules as arrays (one value per optimiser step), applied to every parameter group.

The learning rate is linear warmup then half-cosine; weight decay follows a cosine from its start to its end value
(constant when they are equal). Groups carry ``lr_scale`` (layer decay) and groups without weight decay stay at 0.
"""
from __future__ import annotations

import math

import numpy as np
from torch.optim import Optimizer


def cosine_schedule(base: float, final: float, total_steps: int, warmup_steps: int = 0,
                    warmup_start: float = 0.0) -> np.ndarray:
    total_steps = max(int(total_steps), 1)
    warmup_steps = min(max(int(warmup_steps), 0), total_steps)
    warm = np.linspace(warmup_start, base, warmup_steps, endpoint=False) if warmup_steps else np.zeros(0)
    rest = total_steps - warmup_steps
    steps = np.arange(rest)
    cos = final + 0.5 * (base - final) * (1 + np.cos(math.pi * steps / max(rest, 1)))
    return np.concatenate([warm, cos]).astype(np.float64)


def apply_schedule(optimizer: Optimizer, lr: float, weight_decay: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
        if group.get("weight_decay", 0.0) > 0.0 or group.get("decayed", False):
            group["decayed"] = True  # remember: the group takes weight decay even when the schedule passes 0
            group["weight_decay"] = weight_decay
