"""Releases: the one published form of a model, loadable without pickle.

A release directory holds
* ``model.safetensors``: the state dict of one model built by :func:`lgiformer.models.create_model`
  (an encoder after pretraining, a classifier after finetuning, or an imported foreign model);
* ``config.json``: ``format``, ``format_version``, ``model_name`` and ``model_args`` (enough to rebuild the model),
  ``input`` (layout, shape, normalisation), and what the weights are (``source``, ``training`` summary, optional
  ``class_names`` and ``data`` settings for inference);
* ``README.md``: a short model card.

Written atomically (a temporary sibling directory renamed into place), so a release is complete or absent.

    python -m lgiformer.release --checkpoint output/pretrain/demo/checkpoints --out releases/demo

turns the newest complete training checkpoint of a run (any ZeRO stage: shards are consolidated) into an encoder
release.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lgiformer.models import create_model, model_arguments

log = logging.getLogger(__name__)

FORMAT = "lgiformer-release"
FORMAT_VERSION = 1
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

__all__ = ["FORMAT", "load_release", "read_release_config", "release_from_checkpoint", "write_release"]


def write_release(model: nn.Module, out_dir: str | os.PathLike, *, source: Mapping[str, Any], notes: str = "",
                  state_dict: Mapping[str, torch.Tensor] | None = None, overwrite: bool = False,
                  **extra: Any) -> Path:
    """Write ``model`` (built by ``create_model``: it carries ``model_name`` and ``model_args``) as a release.

    ``state_dict`` replaces the model's own weights (e.g. fp32 weights consolidated from a ZeRO checkpoint);
    ``extra`` goes into config.json as is (``training``, ``class_names``, ``data``, ``mean``/``std``)."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} exists and is not empty (pass overwrite=True / --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        args = dict(model.model_args)
        sd = state_dict if state_dict is not None else model.state_dict()
        sd = {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous().clone()
              for k, v in sd.items()}
        expected = set(model.state_dict())
        if set(sd) != expected:
            raise ValueError(f"state dict keys do not match {model.model_name}: missing "
                             f"{sorted(expected - set(sd))[:5]}, unexpected {sorted(set(sd) - expected)[:5]}")
        save_file(sd, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        mean, std = extra.pop("mean", IMAGENET_MEAN), extra.pop("std", IMAGENET_STD)
        shape = [args["in_chans"], args["num_frames"], args["img_size"], args["img_size"]]
        config = dict(format=FORMAT, format_version=FORMAT_VERSION, model_name=model.model_name, model_args=args,
                      input=dict(layout="B x C x T x H x W", shape=shape, mean=list(mean), std=list(std)),
                      source=dict(source), **extra)
        (tmp / "config.json").write_text(json.dumps(config, indent=1) + "\n")
        (tmp / "README.md").write_text(_model_card(config, out, notes))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _model_card(config: dict, out: Path, notes: str) -> str:
    kind = "classifier" if config["model_args"].get("num_classes") else "encoder (no head)"
    lines = [f"# {config['model_name']}", "", f"{kind}; source: {config['source'].get('format', '?')} "
             f"`{config['source'].get('file', '')}`.", "", "```python", "import lgiformer",
             f"model = lgiformer.load_release({str(out)!r})",
             "out = model(clips)  # clips: B x 3 x T x H x W, normalised with the mean / std in config.json", "```",
             "", f"Input: {config['input']['shape']} (C, T, H, W)."]
    if config.get("class_names"):
        lines += ["", "Classes: " + ", ".join(config["class_names"]) + "."]
    if config.get("training"):
        lines += ["", "## Training", "", "```json", json.dumps(config["training"], indent=1), "```"]
    if notes:
        lines += ["", "## Notes", "", notes]
    return "\n".join(lines) + "\n"


def read_release_config(path: str | os.PathLike) -> dict:
    path = Path(path)
    config_path = path / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{path} has no config.json: not a release directory")
    config = json.loads(config_path.read_text())
    if config.get("format") != FORMAT:
        raise ValueError(f"{config_path}: format {config.get('format')!r}, expected {FORMAT!r}")
    if int(config.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(f"{config_path}: format_version {config['format_version']} is newer than this lgiformer "
                         f"reads ({FORMAT_VERSION}); upgrade lgiformer")
    return config


def load_release(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """The model stored in a release directory, in eval mode, ready for ``model(clips)``."""
    config = read_release_config(path)
    model = create_model(config["model_name"], **checked_model_args(config, Path(path) / "config.json"))
    model.load_state_dict(load_file(str(Path(path) / "model.safetensors"), device=str(map_location)), strict=True)
    return model.eval()


def checked_model_args(config: Mapping[str, Any], where: str | os.PathLike) -> dict[str, Any]:
    """``config["model_args"]``, refused unless every key is an argument of the model's constructor: a factory
    argument such as timm's ``checkpoint_path`` would make building the model load (and unpickle) another file."""
    name, args = config.get("model_name"), config.get("model_args")
    if not isinstance(args, Mapping):
        raise ValueError(f"{where}: model_args must be a mapping of the model's arguments, got {args!r}")
    try:
        accepted = model_arguments(str(name))
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    unknown = sorted(set(args) - accepted)
    if unknown:
        raise ValueError(f"{where}: model_args {unknown} are not arguments of {name}; refusing to build the model "
                         f"(accepted: {', '.join(sorted(accepted))})")
    return dict(args)


def release_from_checkpoint(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, overwrite: bool = False
                            ) -> Path:
    """Encoder release from a pretraining checkpoint (a run's checkpoint folder or one checkpoint in it)."""
    from lgiformer.engine.checkpoint import find_checkpoint, read_client_state, read_fp32_state_dict

    ckpt = find_checkpoint(checkpoint)
    state = read_client_state(ckpt)
    sd = read_fp32_state_dict(ckpt)
    prefix = "encoder."
    encoder_sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    if not encoder_sd:
        raise ValueError(f"{ckpt}: no encoder.* weights (is this a pretraining checkpoint?)")
    encoder = create_model(state["model_name"], **checked_model_args(state, ckpt / "COMPLETE.json"))
    training = dict(state.get("summary", {}), epoch=state.get("epoch"), step=state.get("step"))
    return write_release(encoder, out_dir, state_dict=encoder_sd, overwrite=overwrite,
                         source=dict(format="lgiformer-pretrain-checkpoint", file=str(ckpt)), training=training,
                         mean=state.get("mean", IMAGENET_MEAN), std=state.get("std", IMAGENET_STD),
                         notes="Encoder of a masked-autoencoder pretraining run; finetune it with finetune/run.py "
                               "--pretrained <this folder>.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lgiformer.release", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a run's checkpoint folder, or one checkpoint in it")
    parser.add_argument("--out", required=True, help="release directory to write")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        out = release_from_checkpoint(args.checkpoint, args.out, overwrite=args.overwrite)
    except (OSError, ValueError) as err:  # a missing, unreadable or refused checkpoint: one line, not a traceback
        print(f"python -m lgiformer.release: error: {err}", file=sys.stderr)
        return 2
    log.info("release written to %s", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
