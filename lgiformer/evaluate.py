"""Evaluate a release on a labelled list without training: the finetuning test protocol, on any copy of a dataset.

    python -m lgiformer.evaluate --model RELEASE --list test.txt --data-root DIR [--dataset dfew] [--out DIR] [--json]

A classifier (task dfer or dfer_au: our finetuned releases and converted reference MAE-DFER / VideoMAE finetuned
checkpoints) reads a ``path label`` list and is tested with N temporal clips x M spatial crops (the release's
settings, else the dataset's protocol, else 2 x 2), softmax averaged over the views; it writes and prints UAR, WAR,
per-class recall, weighted F1, the confusion matrix (PNG) and the predictions CSV. An AU detector (task au) reads an
AU CSV and is evaluated frame by frame (per-AU F1, raw and smoothed). ``--dataset`` supplies the class names,
sampling stride and frame extension a release may not record. So a user can check published per-fold numbers on
their own copy of DFEW.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from lgiformer.data import (AUFrameWindows, VideoClassificationDataset, build_loader, get_dataset_spec, read_au_csv,
                            read_video_list)
from lgiformer.errors import InputError
from lgiformer.inference import au_frame_rows, evaluate, evaluate_au, save_report, write_csv
from lgiformer.models.release import encoder_args, load_release, read_release_config

log = logging.getLogger("lgiformer.evaluate")


def _settings(config: dict, dataset: str | None) -> dict[str, Any]:
    """Sampling and test-view settings: the release's ``data``, else the dataset's, else the defaults."""
    spec = get_dataset_spec(dataset) if dataset else None
    data = dict(config.get("data") or {})
    args = encoder_args(config["model_name"], config["model_args"])
    return dict(num_frames=args["num_frames"], img_size=args["img_size"],
                sampling_rate=data.get("sampling_rate") or (spec.sampling_rate if spec else 4),
                frame_ext=data.get("frame_ext") or (spec.frame_ext if spec else None),
                test_num_clips=data.get("test_num_clips") or 2, test_num_crops=data.get("test_num_crops") or 2,
                short_side_size=data.get("short_side_size"))


def evaluate_release(release: str | Path, list_file: str | Path, data_root: str | Path, out_dir: str | Path, *,
                     dataset: str | None = None, clips: int | None = None, crops: int | None = None,
                     batch_size: int = 4, num_workers: int = 2, device: str = "cpu") -> dict[str, Any]:
    """Evaluate ``release`` on ``list_file`` and write the reports into ``out_dir``; returns the metrics."""
    config = read_release_config(release)
    task = config["task"]
    if task == "pretrain":
        raise InputError(f"{release}: an encoder release (task pretrain) has no classifier or AU head to evaluate; "
                         "finetune it first (finetune/run.py)")
    settings = _settings(config, dataset)
    model = load_release(release).to(device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if task == "au":
        au_names = config.get("au_names")
        videos, au_names = read_au_csv(list_file, data_root, au_names=au_names)
        windows = AUFrameWindows(videos, num_frames=settings["num_frames"], sampling_rate=settings["sampling_rate"],
                                 img_size=settings["img_size"])
        threshold, smooth = config.get("threshold", 0.5), config.get("smooth_window", 0)
        metrics, arrays = evaluate_au(model, windows, au_names, threshold=threshold, smooth_window=smooth,
                                      batch_size=batch_size, device=device, num_workers=num_workers,
                                      dense=bool(config["model_args"].get("dense")),
                                      tubelet=encoder_args(config["model_name"], config["model_args"])["tubelet_size"])
        (out / "test_metrics.json").write_text(json.dumps(metrics, indent=1))
        write_csv(out / "test_predictions.csv", *au_frame_rows(windows, au_names, arrays, threshold))
        return metrics
    class_names = list(config["class_names"])
    if dataset and list(get_dataset_spec(dataset).classes) != class_names \
            and all(n.startswith("class_") for n in class_names):
        class_names = list(get_dataset_spec(dataset).classes)  # a converted checkpoint without names
    samples = read_video_list(list_file, data_root, labeled=True, num_classes=len(class_names))
    views = dict(settings, test_num_clips=clips or settings["test_num_clips"],
                 test_num_crops=crops or settings["test_num_crops"])
    test = VideoClassificationDataset(samples, mode="test", **{k: v for k, v in views.items() if v is not None})
    loader = build_loader(test, batch_size, shuffle=False, drop_last=False, num_workers=num_workers, seed=0)
    result = evaluate(model, loader, len(class_names), class_names, device, progress=True)
    protocol = dict(release=str(release), list=str(list_file), clips=views["test_num_clips"],
                    crops=views["test_num_crops"], sampling_rate=views["sampling_rate"])
    return save_report(result, out, "test", class_names, [s.path for s in samples], extra=dict(protocol=protocol))


def format_report(metrics: dict[str, Any]) -> str:
    if "uar" not in metrics:  # AU
        per_au = "  ".join(f"{n} {100 * f:.1f}" for n, f in metrics["per_au"].items())
        return (f"mean F1 {100 * metrics['mean_f1']:.2f} ({metrics['protocol']}; frame-wise "
                f"{100 * metrics['frame']['mean_f1']:.2f}) over {metrics['num_frames']} frames\n  {per_au}")
    recall = "  ".join(f"{n} {'-' if r is None else f'{100 * r:.1f}'}" for n, r in metrics["per_class_recall"].items())
    p = metrics["protocol"]
    return (f"UAR {100 * metrics['uar']:.2f}  WAR {100 * metrics['war']:.2f}  weighted F1 "
            f"{100 * metrics['weighted_f1']:.2f}  ({p['clips']} clips x {p['crops']} crops)\n  recall: {recall}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lgiformer.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a release directory (finetuned classifier or AU detector)")
    parser.add_argument("--list", required=True, help="labelled list: 'path label' lines (DFER) or an AU CSV")
    parser.add_argument("--data-root", default="", help="root the list's paths are relative to")
    parser.add_argument("--dataset", help="dataset name (dfew, ferv39k, mafw, ...): class names, stride, frame type")
    parser.add_argument("--out", help="report folder (default: <release>/eval_<list name>)")
    parser.add_argument("--clips", type=int, help="temporal clips per video (default: the release's, else 2)")
    parser.add_argument("--crops", type=int, help="spatial crops per clip (default: the release's, else 2)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    out = args.out or str(Path(args.model) / f"eval_{Path(args.list).stem}")
    try:
        metrics = evaluate_release(args.model, args.list, args.data_root, out, dataset=args.dataset, clips=args.clips,
                                   crops=args.crops, batch_size=args.batch_size, num_workers=args.workers,
                                   device=args.device)
    except (OSError, ValueError) as err:  # InputError, a missing or unreadable release or list: one line
        print(f"python -m lgiformer.evaluate: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(metrics, indent=1, default=str) if args.json else format_report(metrics))
    if not args.json:
        print(f"reports: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
