"""Classify videos with a finetuned release: per-class probabilities for each input.

    python -m lgiformer.predict --model RELEASE_DIR video.mp4 [more.mp4 | frame_folder ...] [--json]

Each input (a video file or a folder of frames) goes through exactly the test pipeline of finetuning: the same
reader, temporal sampling, resizing and normalisation, N temporal clips x M spatial crops (from the release's
``config.json``, or ``--clips`` / ``--crops``), softmax averaged over the views. The text output lists the classes by
probability; ``--json`` prints one object with a result per input (``probabilities`` sum to 1).

An input that cannot be read (missing, empty, not a video, cut off) is never replaced by another one: it gets its own
line ``INPUT: error: REASON`` (in ``--json``: ``{"input", "error"}``) and the other inputs are still predicted. Exit
codes: 0 every input was predicted; 1 at least one input could not be read (the others were predicted); 2 nothing
could run (a bad release folder or bad options).

The models are trained on face crops. ``--crop-faces`` takes footage that is not face-cropped: every frame's face is
detected, tracked and cropped first (:mod:`lgiformer.data.faces`, the same crops as ``python -m data_lists
crop-faces``), and each result gets a ``face`` entry (frames, frames with a detection); an input in which no face is
found is an error line like any unreadable input. ``--explain DIR`` writes, for each input, where the model looked for
its predicted class (:mod:`lgiformer.explain`: the label-token head's attention, else a gradient map) over the frames.
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

from lgiformer.data import VideoClassificationDataset, VideoReadError, VideoSample, collate_readable
from lgiformer.data.faces import FaceCropSettings, HaarFaceDetector, crop_to
from lgiformer.errors import per_input_exit_code
from lgiformer.explain import explain_clip
from lgiformer.inference import predict as predict_loader
from lgiformer.models.release import load_release, read_release_config

log = logging.getLogger("lgiformer.predict")


def read_release_info(release: str | os.PathLike) -> dict:
    """Class names and the data settings a classifier release was finetuned with."""
    config = read_release_config(release)
    if not config.get("class_names"):
        raise ValueError(f"{release} holds an encoder without a classifier head (task {config['task']}): finetune it "
                         "first (finetune/run.py) and predict with the finetuned release")
    return dict(config=config, class_names=list(config["class_names"]), data=dict(config.get("data", {})),
                mean=config["input"]["mean"], std=config["input"]["std"])


def load_model(release: str | os.PathLike, device: str = "cpu") -> torch.nn.Module:
    return load_release(release).to(device).eval()


def build_views_dataset(inputs: Sequence[str], data: dict, model_args: dict, clips: int | None, crops: int | None):
    """The finetuning test dataset over ``inputs`` (dummy labels): one [V, 3, T, H, W] tensor per input, or an
    ``Unreadable`` record for an input that cannot be read (load it with ``collate_readable``)."""
    samples = [VideoSample(str(Path(item).resolve()), 0) for item in inputs]
    settings = dict(num_frames=model_args.get("num_frames", 16), img_size=model_args.get("img_size", 160))
    settings.update({k: v for k, v in data.items() if k in _DATASET_KEYS})
    if clips:
        settings["test_num_clips"] = clips
    if crops:
        settings["test_num_crops"] = crops
    return VideoClassificationDataset(samples, mode="test", **settings)


# Data settings a release may carry that the test dataset accepts (the rest of `data` is descriptive only).
_DATASET_KEYS = ("num_frames", "sampling_rate", "img_size", "short_side_size", "mean", "std", "test_num_clips",
                 "test_num_crops", "frame_ext", "frame_template")


def crop_inputs(inputs: Sequence[str], out_dir: str | os.PathLike, settings: FaceCropSettings | None = None,
                progress: bool = False) -> tuple[list[str], list[dict]]:
    """Face crops of each input (:func:`lgiformer.data.faces.crop_to`) as frame folders under ``out_dir``:
    ``(folders, summaries)``. An input that cannot be cropped (unreadable, no face) keeps its path and gets
    ``{"error": reason}`` as its summary."""
    from tqdm.auto import tqdm  # the terminal-aware bar, only for this interactive option

    settings = settings or FaceCropSettings()
    detector = HaarFaceDetector()
    folders, summaries = [], []
    for i, item in enumerate(tqdm(inputs, desc="crop faces", unit="video", disable=not progress)):
        folder = Path(out_dir) / f"faces_{i:05d}"
        try:
            summaries.append(crop_to(item, folder, settings, "frames", detector).summary())
            folders.append(str(folder))
        except (OSError, ValueError, VideoReadError) as err:
            summaries.append({"error": " ".join(str(err).split())})
            folders.append(str(item))
    return folders, summaries


def run(release: str, inputs: Sequence[str], clips: int | None = None, crops: int | None = None,
        device: str = "cpu", batch_size: int = 1, crop_faces: bool | FaceCropSettings = False,
        progress: bool = False, explain: str | os.PathLike | None = None) -> dict:
    """A result per input, in order: ``prediction`` and ``probabilities``, or ``error`` for an input that could not
    be read (never replaced by another input). ``crop_faces`` (True or a ``FaceCropSettings``) crops the faces
    first; ``explain`` (a folder) writes where the model looked for the predicted class, one PNG per input
    (:mod:`lgiformer.explain`, on the first test view)."""
    info = read_release_info(release)
    model = load_model(release, device)
    faces = None
    with tempfile.TemporaryDirectory() as tmp:
        views_inputs = list(inputs)
        if crop_faces:
            views_inputs, faces = crop_inputs(inputs, tmp, None if crop_faces is True else crop_faces, progress)
        dataset = build_views_dataset(views_inputs, info["data"], info["config"].get("model_args", {}), clips, crops)
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0,
                                             collate_fn=collate_readable)
        result = predict_loader(model, loader, device)
        errors = {e["index"]: e["reason"] for e in result.excluded}
        errors.update({i: f["error"] for i, f in enumerate(faces or []) if "error" in f})
        probs_of = {int(i): probs.tolist() for i, probs in zip(result.indices, result.probs)}
        names = info["class_names"]
        results = []
        for i, item in enumerate(inputs):
            if i in errors:
                results.append(dict(input=str(item), error=errors[i]))
                continue
            ranked = sorted(zip(names, probs_of[i]), key=lambda t: -t[1])
            results.append(dict(input=str(item), prediction=ranked[0][0],
                                probabilities={n: round(float(p), 6) for n, p in zip(names, probs_of[i])}))
            if faces is not None:
                results[-1]["face"] = faces[i]
            if explain:
                first_view = dataset[i][0][0].to(device)
                results[-1]["explain"] = explain_clip(
                    model, first_view, Path(explain) / f"{i:03d}_{Path(item).stem}.png", info["mean"], info["std"],
                    class_index=names.index(ranked[0][0]))
    return dict(model=str(release), model_name=getattr(model, "model_name", ""), classes=names,
                views=int(getattr(dataset, "num_views", 0) or 0) or None, results=results)


def format_text(output: dict, top: int) -> str:
    lines = []
    for r in output["results"]:
        if "error" in r:
            lines.append(f"{r['input']}: error: {r['error']}")
            continue
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
    parser.add_argument("--explain", metavar="DIR",
                        help="write a heat map of where the model looked (predicted class) over each input, as PNG")
    parser.add_argument("--face-margin", type=float, default=None,
                        help="with --crop-faces: margin on each side, fraction of the detected box (default 0.25, "
                             "as python -m data_lists crop-faces)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("lgiformer.data.datasets").setLevel(logging.ERROR)  # unreadable inputs: our own error lines
    try:
        crop_faces = args.crop_faces
        if crop_faces and args.face_margin is not None:
            crop_faces = FaceCropSettings(margin=args.face_margin)
        output = run(args.model, args.inputs, args.clips, args.crops, args.device, crop_faces=crop_faces,
                     progress=crop_faces and sys.stderr.isatty(), explain=args.explain)
    except (FileNotFoundError, ValueError, ImportError) as err:
        print("error: " + " ".join(str(err).split()), file=sys.stderr)
        return 2
    print(json.dumps(output, indent=1) if args.json else format_text(output, args.top or len(output["classes"])))
    return per_input_exit_code(output["results"])


if __name__ == "__main__":
    sys.exit(main())
