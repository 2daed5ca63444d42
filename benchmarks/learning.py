"""How fast the CI-size models learn: the measurements behind the bounds of ``tests/test_learning.py``.

    python benchmarks/learning.py --seeds 0 1 2        # every case with the tests' budgets, a checkpoint every 5 epochs
    python benchmarks/learning.py --cases dfer_vit --epochs 80 --save-every 1

Each case runs the real command line (``finetune/run.py``, ``pretrain/run.py``) on a fixed tiny synthetic set, as
the test does but keeping a checkpoint every ``--save-every`` epochs, then evaluates every checkpoint:

* ``dfer_lgiformer``, ``dfer_vit``: accuracy on the 16 training clips (centre window and crop, as the test report);
* ``pretrain``: the reconstruction loss on 4 held-out videos (fixed crops and masks), as a fraction of the loss of
  the model as initialised with the run's seed (also printed: the fraction a model reaches that predicts zero);
* ``au``: F1 per AU on the training frames of a tiny multi-label set (6 clips, each labelled with the AUs that
  occur in it).

Printed as JSON: per case and seed, the metric after every epoch, the first step at which the test's criterion
holds and the step from which it holds at every later epoch (``stable_from_step``; None when it does not hold at the
end). The budget given to ``--epochs`` shapes the cosine schedule, so the bounds of ``tests/test_learning.py`` were
measured with the tests' own budgets. The tests import
the data, the command lines and the metrics from here, so the measured runs and the tested ones are the same.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lgiformer.config import from_dict  # noqa: E402
from lgiformer.data import (  # noqa: E402
    AUFrameWindows, VideoClassificationDataset, VideoPretrainDataset, build_loader, ensure_synthetic, read_au_csv,
    read_video_list)
from lgiformer.engine.checkpointer import complete_checkpoints, read_client_state, read_fp32_state_dict  # noqa: E402
from lgiformer.inference import evaluate, evaluate_au  # noqa: E402
from lgiformer.models import build_model, build_pretrain_model  # noqa: E402
from lgiformer.tasks.pretrain import PretrainModelConfig  # noqa: E402

CONFIGS = ROOT / "tests" / "configs"
# face crops (face_zoom 1.6): at the loose framing a 16 px patch holds so little face that even the best predictor
# from the token position alone is only 5 % below predicting zero (10 % with face crops), too little to test
UNLABELED = {"size": 64, "num_frames": 12, "unlabeled_clips": 16, "face_zoom": 1.6, "parts": "unlabeled"}
# The criteria and budgets (epochs) of tests/test_learning.py; the docstring of that file gives the measurements.
HELDOUT_FRACTION = 0.96    # pretraining: held-out loss at most this fraction of the loss at initialisation
AU_MIN_F1 = 0.9            # AU: every AU at least this F1 on the training frames
BUDGETS = {"dfer_lgiformer": 100, "dfer_vit": 100, "pretrain": 40, "au": 200}


# ---------------------------------------------------------------------------------------------- data


def make_data(work: Path) -> dict[str, Path]:
    """The fixed tiny sets (the recipes' own synthetic options, so runs find them up to date) and their lists."""
    dfer, unlabeled, au = work / "dfer", work / "unlabeled", work / "au"
    ensure_synthetic(dfer, size=64, labeled_frames=12, subjects=5, clips_per_class_per_subject=1, parts="labeled",
                     progress=False)
    clips16 = work / "clips16.txt"  # 16 clips of 4 subjects, every class 2-3 times
    clips16.write_text("\n".join((dfer / "labeled/lists/train_fold1.txt").read_text().splitlines()[:16]) + "\n")
    ensure_synthetic(unlabeled, progress=False, **UNLABELED)
    videos = (unlabeled / "unlabeled/pretrain.txt").read_text().splitlines()
    train12, heldout4 = work / "pretrain_train.txt", work / "pretrain_heldout.txt"
    train12.write_text("\n".join(videos[:12]) + "\n")
    heldout4.write_text("\n".join(videos[12:]) + "\n")
    ensure_synthetic(au, size=64, au_clips=6, au_subjects=3, au_frames=12, parts="au", progress=False)
    return dict(dfer=dfer, clips16=clips16, unlabeled=unlabeled, train12=train12, heldout4=heldout4, au=au,
                au_clips=au_occurrence_list(au / "au/labels.csv", work / "au_clips.csv"))


def au_occurrence_list(labels: Path, out: Path) -> Path:
    """An AU list whose every frame carries the AUs that occur anywhere in its clip: 6 clips, each AU in 1-3 of
    them, no two clips alike. (The frame labels themselves, a few positive frames per AU at 64 px, are not fitted
    by a 2-block, 32-wide model in a CI budget.)"""
    with open(labels, newline="") as f:
        rows = list(csv.DictReader(f))
    aus = [k for k in rows[0] if k.startswith("AU")]
    occurs = {(r["path"], a) for r in rows for a in aus if r[a] == "1"}
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**r, **{a: int((r["path"], a) in occurs) for a in aus}} for r in rows)
    return out


# ---------------------------------------------------------------------------------------------- command lines


def command(case: str, data: dict[str, Path], out: Path, epochs: int, seed: int = 0, save_every: int = 0
            ) -> list[str]:
    """The command line (after ``python``) of ``case``: ``save_every`` > 0 keeps a checkpoint every that many
    epochs (measurement), 0 the recipe's."""
    common = ["--run.output_dir", str(out), "--optim.epochs", str(epochs), "--run.seed", str(seed),
              "--release_dir", "none", "--run.log_every", "100"]
    if save_every:
        common += ["--run.save_every", str(save_every), "--run.keep_last", "1000"]
    if case.startswith("dfer_"):
        # The demo recipe's head (spatial) and no augmentation: memorising means fitting these clips; tested on the
        # same 16 clips, centre view. (The mean-pooled heads, region / avg, memorise too, about 4x slower at this
        # width: 190-230 steps in a plain loop against 40-60.)
        encoder = ["--model.name", "vit_tiny_patch16_160", "--model.region_size", "none"] if case == "dfer_vit" else []
        return ["finetune/run.py", "--config", str(CONFIGS / "tiny_finetune.yaml"), *encoder, *common,
                "--model.global_pool", "spatial",
                "--data.data_root", str(data["dfer"]), "--data.train_list", str(data["clips16"]),
                "--data.test_list", str(data["clips16"]), "--data.val_fraction", "0", "--eval.select", "last",
                "--data.auto_augment", "none", "--data.reprob", "0", "--data.mixup", "0", "--data.cutmix", "0",
                "--data.smoothing", "0", "--data.crop_scale", "1.0,1.0", "--data.test_num_clips", "1",
                "--data.test_num_crops", "1", "--optim.lr", "3e-3", "--optim.layer_decay", "1.0",
                "--optim.warmup_epochs", "1"]
    if case == "pretrain":
        return ["pretrain/run.py", "--config", str(CONFIGS / "tiny_pretrain.yaml"), *common,
                "--data.data_root", str(data["unlabeled"]), "--data.synthetic", json.dumps(UNLABELED),
                "--data.list_file", str(data["train12"]), "--run.image_every", "0", "--optim.lr", "3e-3",
                "--optim.warmup_epochs", "1"]
    if case == "au":
        return ["finetune/run.py", "--config", str(CONFIGS / "tiny_au.yaml"), *common,
                "--data.data_root", str(data["au"]), "--data.train_list", str(data["au_clips"]),
                "--data.test_list", str(data["au_clips"]), "--au.smooth_window", "0", "--data.crop_scale", "1.0,1.0",
                "--optim.lr", "3e-3",
                "--optim.warmup_epochs", "1"]
    raise ValueError(f"unknown case {case!r}")


CASES = ("dfer_lgiformer", "dfer_vit", "pretrain", "au")


# ---------------------------------------------------------------------------------------------- metrics


def load_model(ckpt: Path) -> torch.nn.Module:
    """The model a finetuning checkpoint holds (classifier or AU model), in eval mode."""
    state = read_client_state(ckpt)
    model = build_model(state["model_name"], state["model_args"], str(ckpt))
    model.load_state_dict(read_fp32_state_dict(ckpt))
    return model.eval()


def pretrain_model(ckpt: Path | None, config: dict[str, Any], seed: int = 0) -> torch.nn.Module:
    """The masked autoencoder of a pretraining run's config, with ``ckpt``'s weights, or as initialised (``seed``)
    when ``ckpt`` is None; in eval mode."""
    m = from_dict(PretrainModelConfig, config["model"], "model")
    torch.manual_seed(seed)
    model = build_pretrain_model(m.name, decoder_embed_dim=m.decoder_embed_dim, decoder_depth=m.decoder_depth,
                                 decoder_num_heads=m.decoder_num_heads, mask_type=m.mask_type,
                                 mask_ratio=m.mask_ratio, targets=m.targets, motion_weight=m.motion_weight,
                                 **m.encoder_kwargs())
    if ckpt is not None:
        model.load_state_dict(read_fp32_state_dict(ckpt))
    return model.eval()


def clip_accuracy(model: torch.nn.Module, data: dict[str, Path]) -> float:
    """Accuracy on the 16 clips, one centre view each (the test report's WAR)."""
    args = model.model_args
    samples = read_video_list(data["clips16"], data["dfer"], labeled=True, num_classes=7)
    dataset = VideoClassificationDataset(samples, mode="test", test_num_clips=1, test_num_crops=1,
                                         num_frames=args["num_frames"], sampling_rate=2, img_size=args["img_size"],
                                         num_classes=7, frame_ext="jpg")
    loader = build_loader(dataset, 8, shuffle=False, drop_last=False, num_workers=0, seed=0)
    return float(evaluate(model, loader, 7).metrics["war"])


def heldout_loss(model: torch.nn.Module, config: dict[str, Any], data: dict[str, Path], views: int = 4) -> float:
    """Mean reconstruction loss over ``views`` fixed (crop, mask) draws of the 4 held-out videos."""
    m = config["model"]
    dataset = VideoPretrainDataset(str(data["heldout4"]), str(data["unlabeled"]), num_frames=m["num_frames"],
                                   stride=config["data"]["sampling_rate"], input_size=m["img_size"],
                                   mask_generator=model.masker, seed=1234)
    losses = []
    with torch.no_grad():
        for epoch in range(views):
            dataset.set_epoch(epoch)
            clips, masks, _ = zip(*(dataset[i] for i in range(len(dataset))))
            losses.append(float(model(torch.stack(clips), torch.stack(masks))["loss"]))
    return sum(losses) / len(losses)


def zero_prediction_loss(model: torch.nn.Module, config: dict[str, Any], data: dict[str, Path], views: int = 4
                         ) -> float:
    """:func:`heldout_loss` of a model that predicts 0 for every target (their mean: they are normalised per
    patch), the level a model reaches by learning nothing about the clips."""
    m = config["model"]
    dataset = VideoPretrainDataset(str(data["heldout4"]), str(data["unlabeled"]), num_frames=m["num_frames"],
                                   stride=config["data"]["sampling_rate"], input_size=m["img_size"],
                                   mask_generator=model.masker, seed=1234)
    losses = []
    for epoch in range(views):
        dataset.set_epoch(epoch)
        clips, masks, _ = zip(*(dataset[i] for i in range(len(dataset))))
        target = model.build_targets(torch.stack(clips))[torch.stack(masks)]
        parts, offset = {}, 0
        for part, size in model.target_sizes.items():
            parts[part] = float(target[:, offset:offset + size].square().mean())
            offset += size
        w = model.motion_weight
        losses.append((1 - w) * parts["appearance"] + w * parts["motion"] if len(parts) == 2 else
                      float(target.square().mean()))
    return sum(losses) / len(losses)


def au_f1(model: torch.nn.Module, data: dict[str, Path]) -> dict[str, float]:
    """F1 per AU on the training frames (threshold 0.5, no smoothing)."""
    videos, names = read_au_csv(data["au_clips"], data["au"])
    args = model.encoder.model_args
    dataset = AUFrameWindows(videos, num_frames=args["num_frames"], sampling_rate=2, img_size=args["img_size"])
    metrics, _ = evaluate_au(model, dataset, names, threshold=0.5, smooth_window=0, batch_size=8, device="cpu",
                             tubelet=args["tubelet_size"])
    return dict(metrics["per_au"])


# ---------------------------------------------------------------------------------------------- measurement


def measure(case: str, data: dict[str, Path], work: Path, epochs: int, seed: int, save_every: int
            ) -> dict[str, Any]:
    out = work / f"{case}_seed{seed}"
    env = dict(os.environ, OMP_NUM_THREADS="1")  # as the tests run it (tests/_cli.py): the same numerics
    subprocess.run([sys.executable, *command(case, data, out, epochs, seed, save_every=save_every)], cwd=ROOT,
                   check=True, stdout=subprocess.DEVNULL, env=env)
    curve, first, stable = [], None, None
    config = read_client_state(complete_checkpoints(out / "checkpoints")[0]).get("config")
    initial = zero = None
    if case == "pretrain":
        start = pretrain_model(None, config, seed)
        initial = heldout_loss(start, config, data)
        zero = zero_prediction_loss(start, config, data) / initial
    for ckpt in complete_checkpoints(out / "checkpoints"):
        step = read_client_state(ckpt)["step"]
        if case == "pretrain":
            value = heldout_loss(pretrain_model(ckpt, config), config, data) / initial
            met = value <= HELDOUT_FRACTION
        elif case == "au":
            per_au = au_f1(load_model(ckpt), data)
            value = min(per_au.values())
            met = value >= AU_MIN_F1
        else:
            value = clip_accuracy(load_model(ckpt), data)
            met = value == 1.0
        curve.append((step, round(value, 4)))
        if met and first is None:
            first = step
        stable = (stable or step) if met else None
    return dict(case=case, seed=seed, epochs=epochs, first_step=first, stable_from_step=stable,
                initial_heldout_loss=initial, zero_prediction_fraction=zero, curve=curve)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=0, help="the budget (default: the tests' own, BUDGETS)")
    p.add_argument("--save-every", type=int, default=5, help="epochs between the checkpoints evaluated")
    p.add_argument("--work", default="", help="where the data and runs go (default: a temporary folder)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        data = make_data(work / "data")
        for case in args.cases:
            for seed in args.seeds:
                epochs = args.epochs or BUDGETS[case]
                print(json.dumps(measure(case, data, work, epochs, seed, args.save_every)), flush=True)


if __name__ == "__main__":
    main()
