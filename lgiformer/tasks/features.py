"""Feature health: how large a model's features are, measured on a few training forwards of every epoch.

A pretraining run whose reconstruction loss barely moves can still change its encoder a lot: the demo's encoder
tokens grew from std 0.77 at init to 7.7 (docs/RESULTS.md, "The demo"), which no loss curve shows. So every task
names a few places in its model (``sites``: the encoder's tokens before its final norm, the decoder's output, the
head's input) and :class:`FeatureMonitor` records, on the first ``batches`` training forwards of each epoch, the
standard deviation of all their values and the mean L2 norm of their token (or pooled) vectors. The hooks read
what the forward computes anyway; nothing is run again. Values are averaged over the sampled forwards and over
processes (every process samples the same number of equal-sized batches), logged as ``features/<site>_std`` and
``features/<site>_norm``, and summarised in the release's model card (first and last epoch).
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import nn

from lgiformer.distributed import all_reduce_mean
from lgiformer.models import VideoEncoder

PREFIX = "features/"


def find_encoder(model: nn.Module) -> VideoEncoder:
    """The video encoder inside ``model`` (the model itself for a classifier)."""
    for module in model.modules():
        if isinstance(module, VideoEncoder):
            return module
    raise ValueError(f"{type(model).__name__} holds no VideoEncoder")


class FeatureMonitor:
    """Records the features at ``sites`` (name -> (module, "input" | "output")) on the first ``batches`` forwards of
    ``model`` in training mode after each :meth:`epoch_stats` (validation and evaluation forwards are not counted)."""

    def __init__(self, model: nn.Module, sites: Mapping[str, tuple[nn.Module, str]], batches: int = 4) -> None:
        self.batches, self.remaining, self.recording = batches, batches, False
        self.values: dict[str, list[torch.Tensor]] = {name: [] for name in sites}
        self.handles = [model.register_forward_pre_hook(self._start), model.register_forward_hook(self._stop)]
        for name, (module, where) in sites.items():
            if where == "input":
                self.handles.append(module.register_forward_pre_hook(
                    lambda m, args, name=name: self._record(name, args[0])))
            elif where == "output":
                self.handles.append(module.register_forward_hook(
                    lambda m, args, out, name=name: self._record(name, out)))
            else:
                raise ValueError(f"site {name}: where must be 'input' or 'output', got {where!r}")

    def _start(self, module: nn.Module, args: Any) -> None:
        self.recording = module.training and self.remaining > 0
        self.remaining -= int(self.recording)

    def _stop(self, module: nn.Module, args: Any, out: Any) -> None:
        self.recording = False

    def _record(self, name: str, x: Any) -> None:
        if not self.recording or not torch.is_tensor(x):
            return
        x = x.detach().float()
        self.values[name].append(torch.stack((x.mean(), x.square().mean(), x.norm(dim=-1).mean())).cpu())

    def epoch_stats(self) -> dict[str, float]:
        """``features/<site>_std`` and ``_norm`` over this epoch's sampled forwards (all processes: call it on every
        process), then start sampling the next epoch. Empty when nothing was sampled."""
        out: dict[str, float] = {}
        for name, values in self.values.items():
            if not values:
                continue
            mean, square, norm = (all_reduce_mean(v) for v in torch.stack(values).mean(0))
            out[f"{PREFIX}{name}_std"] = math.sqrt(max(square - mean * mean, 0.0))
            out[f"{PREFIX}{name}_norm"] = norm
            values.clear()
        self.remaining = self.batches
        return out

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def feature_summary(records: list[dict]) -> dict[str, dict[str, float]]:
    """``{site: {std_first, std_last, norm_first, norm_last}}`` from a run's epoch records."""
    have = [r for r in records if any(k.startswith(PREFIX) for k in r)]
    if not have:
        return {}
    first, last = have[0], have[-1]
    out: dict[str, dict[str, float]] = {}
    for key in (k for k in last if k.startswith(PREFIX)):  # the sites' own order
        site, _, stat = key[len(PREFIX):].rpartition("_")
        entry = out.setdefault(site, {})
        entry[f"{stat}_first"], entry[f"{stat}_last"] = first.get(key), last[key]
    out = {site: dict(sorted(v.items())) for site, v in out.items()}  # norm_first, norm_last, std_first, std_last
    return dict(out, epochs=dict(first=first.get("epoch"), last=last.get("epoch")))


def feature_card(summary: Mapping[str, Any], meaning: Mapping[str, str]) -> str:
    """The model card's feature-health section: one row per site (``meaning`` says what each one is)."""
    epochs = summary.get("epochs", {})
    lines = [f"Standard deviation of the values and mean L2 norm of the token (or pooled) vectors, on the first "
             f"training batches of epoch {epochs.get('first')} and of epoch {epochs.get('last')} "
             "(lgiformer/tasks/features.py).", "",
             "| features | what | std, first -> last epoch | mean norm, first -> last epoch |", "|---|---|---|---|"]
    for site, stats in summary.items():
        if site == "epochs":
            continue
        lines.append(f"| {site} | {meaning.get(site, '')} | {stats.get('std_first', math.nan):.3g} -> "
                     f"{stats.get('std_last', math.nan):.3g} | {stats.get('norm_first', math.nan):.3g} -> "
                     f"{stats.get('norm_last', math.nan):.3g} |")
    return "\n".join(lines)
