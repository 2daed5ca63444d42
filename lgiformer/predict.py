"""Classify videos with a finetuned release: per-class probabilities for each input.

    python -m lgiformer.predict --model RELEASE_DIR video.mp4 [more.mp4 | frame_folder ...] [--json] [--crop-faces]

Each input (a video file or a folder of frames) goes through exactly the test pipeline of finetuning: the same
reader, temporal sampling, resizing and normalisation, N temporal clips x M spatial crops (from the release's
``config.json``, or ``--clips`` / ``--crops``), softmax averaged over the views. The text output lists the classes by
probability; ``--json`` prints one object with a result per input (``probabilities`` sum to 1).

The models are trained on face crops. ``--crop-faces`` takes footage that is not face-cropped: every frame's face is
detected, tracked and cropped first (:mod:`lgiformer.data.faces`, the same crops as ``python -m data_lists
crop-faces``), and each result gets a ``face`` entry (frames, frames with a detection).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import torch

from lgiformer.data import (
    TooManyBadSamples,
    VideoClassificationDataset,
    VideoReadError,
    open_video,
)
from lgiformer.data.faces import FaceCropSettings, HaarFaceDetector, crop_to
from lgiformer.inference import predict as predict_loader
from lgiformer.models.release import load_release, read_release_config

log = logging.getLogger("lgiformer.predict")


def read_release_info(release: str | os.PathLike) -> dict:
    """Class names and the data settings a classifier release was finetuned with."""
    config = read_release_config(release)
    if not config.get("class_names"):
        raise ValueError(f"{release} holds an encoder without a classifier head (task {config['task']}): finetune it "
                         "first (finetune/run.py) and predict with the finetuned release")
    return dict(config=config, class_names=list(config["class_names"]), data=dict(config.get("data", {})))


def load_model(release: str | os.PathLike, device: str = "cpu") -> torch.nn.Module:
    return load_release(release).to(device).eval()


def build_views_dataset(inputs: Sequence[str], data: dict, model_args: dict, clips: int | None, crops: int | None,
                        list_dir: str):
    """The finetuning test dataset over ``inputs`` (dummy labels): one [V, 3, T, H, W] tensor per input."""
    list_file = Path(list_dir) / "inputs.txt"
    lines = []
    for item in inputs:
        p = Path(item).resolve()
        if not p.exists():
            raise FileNotFoundError(f"{item}: no such file or folder (expected a video file or a folder of frames)")
        try:  # one clear error naming the input, before any work
            open_video(p)
        except VideoReadError as err:
            raise VideoReadError(item, f"{err.reason}; expected a video file or a folder of frames") from None
        if " " in str(p):
            raise ValueError(f"{item}: paths with spaces are not supported by the list format; rename or link it")
        lines.append(f"{p} 0")
    list_file.write_text("\n".join(lines) + "\n")
    settings = dict(num_frames=model_args.get("num_frames", 16), img_size=model_args.get("img_size", 160))
    settings.update({k: v for k, v in data.items() if k in _DATASET_KEYS})
    if clips:
        settings["test_num_clips"] = clips
    if crops:
        settings["test_num_crops"] = crops
    # max_retries=0: an input that cannot be decoded is an error, never replaced by another input's views
    return VideoClassificationDataset(str(list_file), mode="test", max_retries=0, **settings)


# Data settings a release may carry that the test dataset accepts (the rest of `data` is descriptive only).
_DATASET_KEYS = ("num_frames", "sampling_rate", "img_size", "short_side_size", "mean", "std", "test_num_clips",
                 "test_num_crops", "frame_ext", "frame_template")


def crop_inputs(inputs: Sequence[str], out_dir: str | os.PathLike, settings=None, progress: bool = False
                ) -> tuple[list[str], list[dict]]:
    """Face crops of each input (:func:`lgiformer.data.faces.crop_to`) as frame folders under ``out_dir``:
    ``(folders, track summaries)``. ``settings``: :class:`~lgiformer.data.faces.FaceCropSettings` (default)."""
    from tqdm.auto import tqdm

    settings = settings or FaceCropSettings()
    detector = HaarFaceDetector()
    folders, summaries = [], []
    for i, item in enumerate(tqdm(inputs, desc="crop faces", unit="video", disable=not progress)):
        if not Path(item).exists():
            raise FileNotFoundError(f"{item}: no such file or folder (expected a video file or a folder of frames)")
        folder = Path(out_dir) / f"faces_{i:05d}"
        summaries.append(crop_to(item, folder, settings, "frames", detector).summary())
        folders.append(str(folder))
    return folders, summaries


def run(release: str, inputs: Sequence[str], clips: int | None = None, crops: int | None = None,
        device: str = "cpu", batch_size: int = 1, crop_faces=None, progress: bool = False) -> dict:
    """Predictions for ``inputs``; ``crop_faces`` (True or a ``FaceCropSettings``) crops the faces first."""
    info = read_release_info(release)
    model = load_model(release, device)
    faces = None
    with tempfile.TemporaryDirectory() as tmp:
        views_inputs = inputs
        if crop_faces:
            views_inputs, faces = crop_inputs(inputs, tmp, None if crop_faces is True else crop_faces, progress)
        dataset = build_views_dataset(views_inputs, info["data"], info["config"].get("model_args", {}), clips, crops,
                                      tmp)
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
        result = predict_loader(model, loader, device)
    names = info["class_names"]
    results = []
    for i, probs in zip(result.indices, result.probs):
        ranked = sorted(zip(names, probs.tolist()), key=lambda t: -t[1])
        results.append(dict(input=str(inputs[i]), prediction=ranked[0][0],
                            probabilities={n: round(float(p), 6) for n, p in zip(names, probs.tolist())}))
        if faces is not None:
            results[-1]["face"] = faces[i]
    return dict(model=str(release), model_name=getattr(model, "model_name", ""), classes=names,
                views=int(getattr(dataset, "num_views", 0) or 0) or None, results=results)


def format_text(output: dict, top: int) -> str:
    lines = []
    for r in output["results"]:
        ranked = sorted(r["probabilities"].items(), key=lambda t: -t[1])[:top]
        lines.append(f"{r['input']}: {r['prediction']}")
        lines += [f"  {name:>16s} {p:6.3f}" for name, p in ranked]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lgiformer.predict", description=__doc__.split("\n")[0])
    parser.add_argument("inputs", nargs="+", help="video files and/or folders of frames")
    parser.add_argument("--model", required=True, help="finetuned release directory (config.json + model.safetensors)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--clips", type=int, default=None, help="temporal clips per input (default: the release's)")
    parser.add_argument("--crops", type=int, default=None, help="spatial crops per clip (default: the release's)")
    parser.add_argument("--top", type=int, default=0, help="text output: show only the K most likely classes")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--crop-faces", action="store_true",
                        help="inputs are not face-cropped: detect, track and crop the face in every frame first")
    parser.add_argument("--face-margin", type=float, default=None,
                        help="with --crop-faces: margin on each side, fraction of the detected box (default 0.25, "
                             "as python -m data_lists crop-faces)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        crop_faces = args.crop_faces
        if crop_faces and args.face_margin is not None:
            crop_faces = FaceCropSettings(margin=args.face_margin)
        output = run(args.model, args.inputs, args.clips, args.crops, args.device, crop_faces=crop_faces,
                     progress=crop_faces and sys.stderr.isatty())
    except (FileNotFoundError, ValueError, ImportError, VideoReadError, TooManyBadSamples) as err:
        print("error: " + " ".join(str(err).split()), file=sys.stderr)
        return 2
    print(json.dumps(output, indent=1) if args.json else format_text(output, args.top or len(output["classes"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
