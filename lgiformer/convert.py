"""Convert foreign weights into a release, or a release into a transformers folder.

    python -m lgiformer.convert mae-dfer    --input MAE-DFER.pth      --output RELEASE_DIR [--num-heads 8]
    python -m lgiformer.convert videomae    --input VideoMAE.pth      --output RELEASE_DIR
    python -m lgiformer.convert hf-videomae --input HF_FOLDER         --output RELEASE_DIR
    python -m lgiformer.convert export-hf   --input RELEASE_DIR       --output HF_FOLDER

Every import prints what it assumed (sizes that are not stored in the weights), writes the release, reads it back
and checks the outputs on a fixed input; transformers imports and exports are also checked against transformers
(when installed). ``.pth`` files are read with the restricted loader: nothing in them is executed.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file

from lgiformer.data import get_dataset_spec
from lgiformer.interop import (compare_with_transformers, export_hf_videomae, import_hf_videomae, import_mae_dfer,
                               import_videomae, load_release, write_imported)
from lgiformer.models import AUModel, build_model
from lgiformer.models.au import CLASSIFIER_ARGS
from lgiformer.models.release import write_release
from lgiformer.tasks.au import AUConfig

TOLERANCE = 1e-4


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lgiformer.convert", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in (("mae-dfer", "reference MAE-DFER .pth (pretraining or finetuned LGI-Former)"),
                       ("videomae", "official VideoMAE ViT .pth (pretraining or finetuned)"),
                       ("hf-videomae", "transformers VideoMAE folder (save_pretrained)"),
                       ("export-hf", "our ViT release -> transformers VideoMAE folder"),
                       ("au-export", "an AU run of lgiformer 0.1 (au_model.safetensors + au_config.json) -> release")):
        s = sub.add_parser(name, help=text, description=text)
        s.add_argument("--input", required=True, help="checkpoint file or folder")
        s.add_argument("--output", required=True, help="directory to write")
        s.add_argument("--no-check", action="store_true", help="skip the output checks")
        if name in ("mae-dfer", "videomae"):
            s.add_argument("--num-heads", type=int, help="attention heads (not stored in weights; default: from "
                                                          "the width, head dim 64)")
            s.add_argument("--img-size", type=int, help="input size (default: the file's args, else 160 for "
                                                         "MAE-DFER, 224 for VideoMAE)")
            s.add_argument("--num-frames", type=int, help="frames per clip (default: the file's args, else 16)")
            s.add_argument("--checkpoint-key", help="entry holding the state dict (default: model, module, ...)")
        if name == "mae-dfer":
            s.add_argument("--region-size", type=int, nargs=3, metavar=("T", "H", "W"),
                           help="tokens per region (default: the file's args, else 2 5 10)")
        if name in ("mae-dfer", "videomae", "hf-videomae"):
            s.add_argument("--dataset", help="the dataset a finetuned checkpoint classifies (dfew, ferv39k, mafw...): "
                                             "its class names and sampling stride go into the release")
        if name not in ("export-hf", "au-export"):
            pools = ["region", "local", "all", "none"] if name == "mae-dfer" else ["avg", "none"]
            s.add_argument("--global-pool", choices=pools,
                           help="pooling; 'none' keeps the encoder's final norm and returns tokens")
        elif name == "export-hf":
            s.add_argument("--labels", help="comma-separated class names for id2label (default: the names "
                                            "recorded in the release, else LABEL_i)")
    return p


@torch.no_grad()
def _check_release(model: torch.nn.Module, out_dir: str) -> float:
    """Largest difference between the in-memory model and the release read back, on a fixed input."""
    a = model.model_args
    clips = torch.randn(1, a["in_chans"], a["num_frames"], a["img_size"], a["img_size"],
                        generator=torch.Generator().manual_seed(0))
    return float((load_release(out_dir)(clips) - model.eval()(clips)).abs().max())


def _release_labels(release_dir: str) -> list[str] | None:
    """Class names recorded with a release (a transformers import keeps its id2label), if any."""
    config = json.loads((Path(release_dir) / "config.json").read_text())
    labels = (config.get("source") or {}).get("labels")
    return list(labels) if labels else None


def _verdict(what: str, diff: float) -> bool:
    ok = diff <= TOLERANCE
    print(f"check {what}: max abs diff {diff:.2e} ({'ok' if ok else f'FAILED, tolerance {TOLERANCE:g}'})")
    return ok


def dataset_fields(dataset: str | None, model: torch.nn.Module) -> dict:
    """What a release of a finetuned reference checkpoint needs from its dataset: class names in the dataset's
    order, and the sampling stride the test protocol reads with."""
    if not dataset:
        return {}
    spec = get_dataset_spec(dataset)
    num_classes = int(model.model_args.get("num_classes") or 0)
    if num_classes and len(spec.classes) != num_classes:
        raise ValueError(f"--dataset {dataset}: {len(spec.classes)} classes, but the checkpoint's head has "
                         f"{num_classes}")
    args = model.model_args
    fields: dict = dict(data=dict(dataset=spec.name, sampling_rate=spec.sampling_rate, num_frames=args["num_frames"],
                                  img_size=args["img_size"], frame_ext=spec.frame_ext))
    if num_classes:
        fields["class_names"] = list(spec.classes)
    return fields


def release_from_au_export(run_dir: str | Path, out_dir: str | Path) -> Path:
    """The AU model of an lgiformer 0.1 AU run (``au_model.safetensors`` + ``au_config.json`` in the run folder) as a
    release of task ``au``, with the same weights and outputs."""
    run_dir = Path(run_dir)
    config_path = run_dir / "au_config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{run_dir}: no au_config.json (expected the output folder of an AU run)")
    old = json.loads(config_path.read_text())
    if old.get("format") != "lgiformer-au":
        raise ValueError(f"{config_path}: format {old.get('format')!r}, expected 'lgiformer-au'")
    encoder_args = {k: v for k, v in old["model_args"].items() if k not in CLASSIFIER_ARGS}
    encoder = build_model(old["model_name"], dict(encoder_args, num_classes=0, global_pool=""), str(config_path))
    au = AUConfig(**{k: v for k, v in old["au"].items() if k in AUConfig.__dataclass_fields__})
    head_args, moke_args = au.split_head_args()
    model = AUModel(encoder, au.head, head_args, num_aus=len(old["au_names"]), freeze_encoder=au.freeze_encoder,
                    moke=au.moke, moke_args=moke_args, dense=au.dense)
    model.load_state_dict(load_file(str(run_dir / "au_model.safetensors")))
    data = {k: v for k, v in (old.get("data") or {}).items() if v is not None}
    return write_release(model, out_dir, task="au", source=dict(format="lgiformer-0.1-au-export", file=str(run_dir)),
                         au_names=list(old["au_names"]), rates=list(old.get("rates") or []),
                         threshold=old.get("threshold", 0.5), smooth_window=old.get("smooth_window", 0),
                         data=dict(data, num_frames=encoder_args["num_frames"], img_size=encoder_args["img_size"]),
                         training=dict(selection=old.get("selection"), test_mean_f1=old.get("test_mean_f1")))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    pool = getattr(args, "global_pool", None)
    pool = "" if pool == "none" else pool
    ok = True
    out = Path(args.output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        print(f"error: {out} exists and is not empty; choose a new output directory", file=sys.stderr)
        return 2
    try:
        if args.command == "export-hf":
            model = load_release(args.input)
            labels = args.labels.split(",") if args.labels else _release_labels(args.input)
            diff = export_hf_videomae(model, args.output, labels=labels, check=not args.no_check)
            print(f"wrote transformers {model.model_name} folder to {args.output}")
            return 0 if diff is None or _verdict("transformers reload vs ours", diff) else 1
        if args.command == "au-export":
            release_from_au_export(args.input, args.output)
            print(f"wrote release to {args.output}")
            return 0
        if args.command == "mae-dfer":
            imported = import_mae_dfer(args.input, num_heads=args.num_heads, img_size=args.img_size,
                                       num_frames=args.num_frames, region_size=args.region_size, global_pool=pool,
                                       checkpoint_key=args.checkpoint_key)
        elif args.command == "videomae":
            imported = import_videomae(args.input, num_heads=args.num_heads, img_size=args.img_size,
                                       num_frames=args.num_frames, global_pool=pool,
                                       checkpoint_key=args.checkpoint_key)
        else:
            imported = import_hf_videomae(args.input, global_pool=pool)
        print(imported.summary())
        write_imported(imported, args.output, **dataset_fields(args.dataset, imported.model))
        print(f"wrote release to {args.output}")
        if not args.no_check:
            ok = _verdict("release read back vs converted model", _check_release(imported.model, args.output))
            if args.command == "hf-videomae":
                try:
                    ok &= _verdict("ours vs transformers", compare_with_transformers(args.input, imported.model))
                except ImportError:
                    print("transformers is not installed: skipped the comparison with it")
    except (ValueError, KeyError, FileNotFoundError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
