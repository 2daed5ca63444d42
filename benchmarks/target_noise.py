"""How much of the pretraining targets is noise? A diagnostic for the synthetic unlabeled clips.

    python benchmarks/target_noise.py --clips 30 --face-zoom 1.6

Each clip is rendered twice from the same random draws: once as the data set stores it (sensor noise, then H.264 at
the generator's ``crf``, decoded again) and once clean (no sensor noise, no codec). Both go through the same
resize and the MAE-DFER targets (per-token normalised appearance and frame difference). The mean squared difference
between the two, over the variance of the stored clip's targets, is the share of each target that no model can
predict: the floor of its reconstruction loss. It answers whether a loss that stays at its variance is stuck on
noise or on signal.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lgiformer.data import synthetic  # noqa: E402  (first: lgiformer sets up torchvision before timm imports it)
from lgiformer.data.readers import read_frames  # noqa: E402
from lgiformer.targets import build_targets  # noqa: E402
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD  # noqa: E402

MEAN, STD = torch.tensor(IMAGENET_DEFAULT_MEAN), torch.tensor(IMAGENET_DEFAULT_STD)


def to_clip(frames: np.ndarray, num_frames: int, stride: int, size: int) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> normalised [1, 3, num_frames, size, size]: the first window, resized as a whole."""
    x = torch.from_numpy(np.ascontiguousarray(frames[: num_frames * stride: stride])).float().div(255)
    x = F.interpolate(x.permute(3, 0, 1, 2), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return ((x - MEAN.view(3, 1, 1, 1)) / STD.view(3, 1, 1, 1)).unsqueeze(0)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=30)
    p.add_argument("--face-zoom", type=float, default=1.6)
    p.add_argument("--size", type=int, default=96, help="model input size (the clip is resized to it)")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--stride", type=int, default=4)
    a = p.parse_args(argv)
    opts = synthetic.SyntheticOptions(face_zoom=a.face_zoom)
    sums = {"appearance": np.zeros(2), "motion": np.zeros(2)}  # [noise, variance]
    parts = {"appearance": slice(0, 768), "motion": slice(768, 1536)}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(a.clips):
            rng = np.random.default_rng([opts.seed, i])
            identity = synthetic.Identity.sample(rng)
            expression = synthetic.CLASSES[i % len(synthetic.CLASSES)]
            state = rng.bit_generator.state
            stored, _ = synthetic.render_clip(identity, expression, opts.num_frames, opts.size, rng, talking=i % 2 == 0,
                                              zoom=opts.face_zoom)
            rng.bit_generator.state = state  # the same draws; render_clip only adds the sensor noise per frame
            clean, _ = synthetic.render_clip(identity, expression, opts.num_frames, opts.size, rng, talking=i % 2 == 0,
                                             zoom=opts.face_zoom, noise=False)
            path = Path(tmp) / "clip.mp4"
            synthetic.write_mp4(path, stored, opts.fps, opts.crf)
            decoded = read_frames(path, range(opts.num_frames))
            t_stored, t_clean = (build_targets(to_clip(f, a.frames, a.stride, a.size), MEAN, STD, 2, 16)[0]
                                 for f in (decoded, clean))
            for name, cols in parts.items():
                sums[name] += [(t_stored[:, cols] - t_clean[:, cols]).pow(2).mean().item(),
                               t_stored[:, cols].pow(2).mean().item()]
    result = {name: dict(noise=s[0] / a.clips, variance=s[1] / a.clips, noise_share=s[0] / s[1])
              for name, s in sums.items()}
    for name, r in result.items():
        print(f"{name:10s}  target variance {r['variance']:.3f}  noise {r['noise']:.3f}  "
              f"share {100 * r['noise_share']:.0f} %")
    return result


if __name__ == "__main__":
    main()
