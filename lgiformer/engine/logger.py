"""Run logging on rank 0: TensorBoard scalars and images, per-epoch JSON lines, a progress bar.

Statistics only ever average finite values; non-finite ones are counted instead (the reference averaged inf/NaN
grad norms into its epoch logs: docs/REFERENCE.md#defect-6).
"""
from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from pathlib import Path

import torch


class MeanMeter:
    """Running means of named scalars over finite values; ``nonfinite`` counts the rest. Tensors are kept as they are
    until a mean is read (a log step, the end of the epoch), so updating costs no host-device sync per step."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self._counts: dict[str, int] = defaultdict(int)
        self.nonfinite: dict[str, int] = defaultdict(int)
        self._pending: dict[str, list] = defaultdict(list)

    def update(self, **values: float | torch.Tensor | None) -> None:
        for key, value in values.items():
            if value is not None:
                self._pending[key].append(value)

    def _flush(self) -> None:
        for key, values in self._pending.items():
            tensors = [v for v in values if torch.is_tensor(v)]
            numbers = [float(v) for v in values if not torch.is_tensor(v)]
            if tensors:
                numbers += torch.stack([t.float().reshape(()) for t in tensors]).cpu().tolist()  # one sync per key
            for value in numbers:
                if math.isfinite(value):
                    self.sums[key] += value
                    self._counts[key] += 1
                else:
                    self.nonfinite[key] += 1
        self._pending.clear()

    @property
    def counts(self) -> dict[str, int]:
        self._flush()
        return self._counts

    def mean(self, key: str) -> float:
        self._flush()
        return self.sums[key] / self._counts[key] if self._counts[key] else float("nan")

    def means(self) -> dict[str, float]:
        self._flush()
        return {k: self.mean(k) for k in self._counts}


class RunLogger:
    def __init__(self, output_dir: str | Path, enabled: bool, tensorboard: bool = True) -> None:
        self.output_dir = Path(output_dir)
        self.enabled = enabled
        self.writer = None
        if enabled:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.output_dir / "tensorboard"))
        self._start = time.time()

    def purge_from(self, step: int) -> None:
        """Hide the TensorBoard events at ``step`` and later that an interrupted attempt of this run wrote (its steps
        after the checkpoint it resumes from, or steps in another batch layout): the resumed run logs them again, and
        without this its curves would run back over themselves (TensorBoard's ``purge_step``)."""
        if self.writer is None:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.writer.close()
        self.writer = SummaryWriter(str(self.output_dir / "tensorboard"), purge_step=step)

    def scalars(self, values: dict[str, float], step: int, prefix: str = "train/") -> None:
        if self.writer is None:
            return
        for key, value in values.items():
            if value is not None and math.isfinite(float(value)):
                self.writer.add_scalar(prefix + key, float(value), step)

    def images(self, frames: dict[str, torch.Tensor], step: int, prefix: str = "reconstruction") -> Path | None:
        """One grid (rows = input / masked / predictions, columns = frames) to TensorBoard and a PNG."""
        if not self.enabled:
            return None
        from torchvision.utils import make_grid, save_image

        rows = [f.float().cpu() for f in frames.values()]
        t = min(r.shape[0] for r in rows)
        grid = make_grid(torch.cat([r[:t] for r in rows]), nrow=t, padding=2, pad_value=1.0)
        path = self.output_dir / "images" / f"{prefix}_step{step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(grid, str(path))
        if self.writer is not None:
            self.writer.add_image(prefix, grid, step)
        return path

    def figure(self, tag: str, fig, step: int) -> None:
        if self.writer is not None:
            self.writer.add_figure(tag, fig, step)

    def jsonl(self, record: dict, name: str = "log.jsonl") -> None:
        if not self.enabled:
            return
        record = {"time": round(time.time() - self._start, 1), **_finite(record)}
        with open(self.output_dir / name, "a") as f:
            f.write(json.dumps(record, default=_plain) + "\n")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _finite(value):
    """NaN / inf become null: JSON has no such numbers, and a reader must not average them."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _plain(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)
