"""See what pretraining learned: a pretraining model's reconstruction of your own videos.

    python -m lgiformer.visualize --model PRETRAINING_RELEASE video.mp4 [more.mp4 | frame_folder ...] --out DIR [--json]

Each input (a video file or a folder of frames) is read as the models read it: the centre window of ``num_frames``
frames at the pretraining stride (the release's ``data.sampling_rate``, or ``--stride``), resized and centre-cropped,
normalised. One mask is drawn from ``--seed`` with the model's own masking (type and ratio, or ``--mask-ratio``), and
the masked autoencoder predicts the masked tokens. For each input, in DIR:

* ``NNN_<name>.png``: a grid, one column per frame; rows: the input, the masked input, the predicted appearance, the
  predicted motion and the true motion (VideoMAE-style models: the predicted pixels). Visible patches show the
  input, masked ones the prediction. The targets are normalised per tubelet, so predictions are put back into pixels
  with the mean and spread of the input's own tubelet, as MAE's visualisation does: a masked patch's average colour
  comes from the input, and what the model predicted is the pattern inside it. Motion is the difference of
  consecutive frames, mid-grey where nothing changes.
* ``NNN_<name>.gif``: the same rows side by side, animated over the frames.

It also prints the reconstruction loss on the masked tokens next to two predictors that learn nothing (the mean of
the visible patches, and zero): a model that learned something beats both.

``--model`` is a pretraining release written with its decoder (``pretrain/run.py`` keeps it by default,
``release.with_decoder``), or a reference MAE-DFER / VideoMAE pretraining ``.pth`` (read with the restricted loader:
nothing in it is executed). Inputs that cannot be read get their own ``INPUT: error: REASON`` line and are never
replaced by another video. Exit codes: 0 all inputs shown; 1 some inputs could not be read; 2 nothing could run.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from lgiformer.data import Unreadable, VideoClassificationDataset, VideoSample
from lgiformer.errors import per_input_exit_code
from lgiformer.interop import import_pretraining_model
from lgiformer.models import MaskedVideoAutoencoder
from lgiformer.models.mae import PREDICTORS
from lgiformer.models.release import load_masked_autoencoder, read_release_config

__all__ = ["ROW_TITLES", "load_pretraining_model", "main", "render", "run"]

ROW_TITLES = {"input": "input", "masked": "masked input", "pred_appearance": "predicted appearance",
              "pred_pixel": "predicted pixels", "pred_motion": "predicted motion", "true_motion": "true motion"}
DEFAULT_STRIDE = 4  # the reference's pretraining sampling rate, for models that do not record theirs
MIN_PANEL = 128     # pixels: narrower frames are enlarged by a whole factor, so the titles fit and faces show


def load_pretraining_model(model: str | os.PathLike, device: str = "cpu"
                           ) -> tuple[MaskedVideoAutoencoder, dict]:
    """``(masked autoencoder, settings)`` from a pretraining release with its decoder or a reference pretraining
    ``.pth``; settings: ``mean``, ``std`` and ``sampling_rate`` (``None`` when the model does not record it)."""
    path = Path(model)
    if path.is_file():
        mae, _ = import_pretraining_model(path, "auto")
        settings = dict(mean=mae.norm_mean.tolist(), std=mae.norm_std.tolist(), sampling_rate=None)
    elif path.is_dir():
        mae = load_masked_autoencoder(path)
        config = read_release_config(path)
        settings = dict(mean=config["input"]["mean"], std=config["input"]["std"],
                        sampling_rate=config.get("data", {}).get("sampling_rate"))
    else:
        raise FileNotFoundError(f"{path}: no such release folder or checkpoint file")
    return mae.to(device).eval(), settings


def render(images: dict[str, torch.Tensor], png: str | os.PathLike, gif: str | os.PathLike,
           fps: float = 4.0) -> dict[str, list[int]]:
    """Write the grid (PNG) and the animation (GIF) of ``images`` (title -> frames [T', 3, H, W] in [0, 1]); every
    row is stretched to the input's frame count (a tubelet's prediction stands under each of its frames), and frames
    narrower than ``MIN_PANEL`` are enlarged by a whole factor (nearest neighbour). Returns
    the sizes written (``png``: [width, height], ``gif``: [width, height, frames])."""
    rows = {name: images[name] for name in ROW_TITLES if name in images}
    frames = rows["input"].shape[0]
    stretched = {name: _to_uint8(x[[j * x.shape[0] // frames for j in range(frames)]]) for name, x in rows.items()}
    h, w = stretched["input"].shape[1:3]
    scale = max(1, -(-MIN_PANEL // w))  # small inputs (the demo's 96 px) are enlarged, pixel for pixel
    if scale > 1:
        stretched = {name: x.repeat(scale, axis=1).repeat(scale, axis=2) for name, x in stretched.items()}
        h, w = h * scale, w * scale
    label_w, title_h, pad = 150, 18, 2
    grid = Image.new("RGB", (label_w + frames * (w + pad), len(rows) * (h + pad)), "white")
    draw = ImageDraw.Draw(grid)
    for r, (name, row) in enumerate(stretched.items()):
        y = r * (h + pad)
        draw.text((4, y + h // 2 - 6), ROW_TITLES[name], fill="black")
        for j in range(frames):
            grid.paste(Image.fromarray(row[j]), (label_w + j * (w + pad), y))
    grid.save(png)
    animation = []
    for j in range(frames):
        frame = Image.new("RGB", (len(rows) * (w + pad), title_h + h), "white")
        draw = ImageDraw.Draw(frame)
        for c, (name, row) in enumerate(stretched.items()):
            draw.text((c * (w + pad) + 2, 3), ROW_TITLES[name], fill="black")
            frame.paste(Image.fromarray(row[j]), (c * (w + pad), title_h))
        animation.append(frame)
    animation[0].save(gif, save_all=True, append_images=animation[1:], duration=int(1000 / fps), loop=0)
    return dict(png=list(grid.size), gif=[*animation[0].size, len(animation)])


def _to_uint8(frames: torch.Tensor) -> np.ndarray:
    """[T, 3, H, W] in [0, 1] -> [T, H, W, 3] uint8."""
    return (frames.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def run(model: str | os.PathLike, inputs: Sequence[str], out_dir: str | os.PathLike, *, seed: int = 0,
        mask_ratio: float | None = None, stride: int | None = None, fps: float = 4.0, device: str = "cpu",
        progress: bool = False) -> dict:
    """A result per input, in order: the files written (``png``, ``gif``) and the held-out style ``losses`` of the
    model and the two baselines on the masked tokens, or ``error`` for an input that could not be read."""
    from tqdm.auto import tqdm  # the terminal-aware bar, only for this interactive tool

    mae, settings = load_pretraining_model(model, device)
    if mask_ratio is not None:
        mae.masker = type(mae.masker)(mae.layout, mae.masker.mask_type, mask_ratio, mae.masker.rounding)
    args = mae.encoder.model_args
    stride = stride or settings["sampling_rate"] or DEFAULT_STRIDE
    dataset = VideoClassificationDataset([VideoSample(str(Path(item).resolve()), 0) for item in inputs], mode="val",
                                         num_frames=args["num_frames"], img_size=args["img_size"],
                                         sampling_rate=stride, mean=settings["mean"], std=settings["std"])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for i, item in enumerate(tqdm(inputs, desc="visualize", unit="video", disable=not progress)):
        sample = dataset[i]
        if isinstance(sample, Unreadable):
            results.append(dict(input=str(item), error=sample.reason))
            continue
        clip = sample[0].unsqueeze(0).to(device)
        mask = mae.masker(1, generator=torch.Generator().manual_seed(seed)).to(device)
        with torch.no_grad():
            losses = mae.heldout_losses(clip, mask)
            images = mae.reconstruction_images(clip, mask)
        stem = f"{i:03d}_{Path(item).stem or 'input'}"
        sizes = render(images, out / f"{stem}.png", out / f"{stem}.gif", fps)
        results.append(dict(input=str(item), png=str(out / f"{stem}.png"), gif=str(out / f"{stem}.gif"),
                            sizes=sizes, losses={name: {k: round(float(v[0]), 6) for k, v in parts.items()}
                                                 for name, parts in losses.items()}))
    return dict(model=str(model), model_name=mae.encoder.model_name, seed=seed, sampling_rate=stride,
                mask=dict(type=mae.masker.mask_type, ratio=mae.masker.mask_ratio,
                          visible_tokens=mae.masker.num_visible, tokens=mae.layout.num_tokens),
                results=results)


def format_text(output: dict) -> str:
    mask = output["mask"]
    lines = [f"{output['model_name']}: {mask['visible_tokens']} of {mask['tokens']} tokens visible ({mask['type']} "
             f"mask, ratio {mask['ratio']}, seed {output['seed']}); reconstruction loss on the masked tokens, lower "
             "is better"]
    for r in output["results"]:
        if "error" in r:
            lines.append(f"{r['input']}: error: {r['error']}")
            continue
        losses = r["losses"]
        parts = [k for k in losses["model"] if k != "loss"]
        line = "; ".join(f"{PREDICTORS[name]} {losses[name]['loss']:.4f}" for name in PREDICTORS)
        detail = ", ".join(f"{k[len('loss_'):]} {losses['model'][k]:.4f}" for k in parts)
        lines += [f"{r['input']}: {line}", f"  this model by part: {detail}", f"  wrote {r['png']} and {r['gif']}"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lgiformer.visualize", description=__doc__.split("\n")[0])
    parser.add_argument("inputs", nargs="+", help="video files and/or folders of frames (face crops)")
    parser.add_argument("--model", required=True,
                        help="pretraining release with its decoder, or a reference pretraining .pth")
    parser.add_argument("--out", required=True, help="folder for the PNG grids and GIF animations")
    parser.add_argument("--seed", type=int, default=0, help="seed of the mask (default 0)")
    parser.add_argument("--mask-ratio", type=float, default=None, help="masking ratio (default: the model's)")
    parser.add_argument("--stride", type=int, default=None,
                        help=f"frame sampling stride (default: the release's, else {DEFAULT_STRIDE})")
    parser.add_argument("--fps", type=float, default=4.0, help="GIF frames per second (default 4)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("lgiformer.data.datasets").setLevel(logging.ERROR)  # unreadable inputs: our own error lines
    if args.mask_ratio is not None and not 0 < args.mask_ratio < 1:
        parser.error(f"--mask-ratio must be in (0, 1), got {args.mask_ratio}")
    try:
        output = run(args.model, args.inputs, args.out, seed=args.seed, mask_ratio=args.mask_ratio,
                     stride=args.stride, fps=args.fps, device=args.device, progress=sys.stderr.isatty())
    except (OSError, ValueError, ImportError) as err:
        print("error: " + " ".join(str(err).split()), file=sys.stderr)
        return 2
    print(json.dumps(output, indent=1) if args.json else format_text(output))
    return per_input_exit_code(output["results"])


if __name__ == "__main__":
    sys.exit(main())
