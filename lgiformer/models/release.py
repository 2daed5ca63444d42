"""Releases: the one published form of every model this project trains or imports, loadable without pickle.

A release directory holds
* ``model.safetensors``: the state dict of one model built by :func:`lgiformer.models.build_model` (an encoder after
  pretraining, a classifier after DFER finetuning, an encoder with an AU head after AU finetuning, a classifier with
  an auxiliary AU head after DFER + AU, or an imported foreign model);
* ``config.json``: ``format``, ``format_version``, ``task`` (pretrain, dfer, au, dfer_au), ``model_name``
  and ``model_args`` (enough to rebuild the model), ``input`` (layout, shape, normalisation), what the weights are
  (``source``, ``training`` summary), what its outputs mean (``class_names``, ``au_names``, ``threshold``), the
  ``data`` settings for inference, and the code that wrote it (``lgiformer``, ``git_commit``);
* ``README.md``: a short model card;
* for a pretraining release written with its decoder (``release.with_decoder``, the default of ``pretrain/run.py``),
  ``decoder.safetensors`` (the masked autoencoder's weights outside the encoder) and ``decoder`` in config.json (the
  autoencoder's arguments): :func:`load_masked_autoencoder` rebuilds the whole pretraining model from them, for
  ``python -m lgiformer.visualize``. Finetuning reads ``model.safetensors`` only.

Written atomically (a temporary sibling directory renamed into place), so a release is complete or absent; files
and folders get the user's umask like any other output. Releases of format version 1 (encoders and classifiers
written by lgiformer 0.1) load unchanged: their task is read from their head.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lgiformer.models import MaskedVideoAutoencoder, build_model
from lgiformer.models.au import COMPOSITES
from lgiformer.models.mae import DECODER_ARGS
from lgiformer.provenance import atomic_directory, code_version, follow_umask

FORMAT = "lgiformer-release"
FORMAT_VERSION = 2
TASKS = ("pretrain", "dfer", "au", "dfer_au")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DECODER_FILE = "decoder.safetensors"
_RESERVED = ("model.safetensors", "config.json", "README.md")

__all__ = ["DECODER_FILE", "FORMAT", "FORMAT_VERSION", "TASKS", "decoder_parts", "encoder_args", "load_release",
           "load_masked_autoencoder", "read_release_config", "write_release"]


def encoder_args(model_name: str, model_args: Mapping[str, Any]) -> dict[str, Any]:
    """The encoder's arguments inside a model's ``model_args`` (a composite keeps them one level down)."""
    if model_name in COMPOSITES:
        return dict(model_args[COMPOSITES[model_name][1]]["model_args"])
    return dict(model_args)


def write_release(model: nn.Module, out_dir: str | os.PathLike, *, task: str, source: Mapping[str, Any],
                  notes: str = "", state_dict: Mapping[str, torch.Tensor] | None = None, overwrite: bool = False,
                  card: Mapping[str, str] | None = None, files: Mapping[str, str | os.PathLike] | None = None,
                  weights: Mapping[str, Mapping[str, torch.Tensor]] | None = None, **extra: Any) -> Path:
    """Write ``model`` (it carries ``model_name`` and ``model_args``) as a release of ``task``.

    ``state_dict`` replaces the model's own weights (e.g. fp32 weights consolidated from a ZeRO checkpoint);
    ``extra`` goes into config.json as is (``training``, ``class_names``, ``au_names``, ``data``, ``mean``/``std``);
    ``card`` adds model-card sections (title -> markdown) and ``files`` copies files into the release (name ->
    source path), e.g. an image the card shows; ``weights`` writes further safetensors files (name -> state dict),
    e.g. the pretraining decoder (:func:`decoder_parts`)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty (pass overwrite=True / --overwrite to replace it)")
    with atomic_directory(out) as tmp:
        sd = _plain_fp32(state_dict if state_dict is not None else model.state_dict())
        expected = set(model.state_dict())
        if set(sd) != expected:
            raise ValueError(f"state dict keys do not match {model.model_name}: missing "
                             f"{sorted(expected - set(sd))[:5]}, unexpected {sorted(set(sd) - expected)[:5]}")
        save_file(sd, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        follow_umask(tmp / "model.safetensors")
        for name, companion in (weights or {}).items():
            if Path(name).name != name or name in _RESERVED or not name.endswith(".safetensors"):
                raise ValueError(f"weights: {name!r} is not a .safetensors file name of its own")
            save_file(_plain_fp32(companion), str(tmp / name), metadata={"format": "pt"})
            follow_umask(tmp / name)
        mean, std = extra.pop("mean", IMAGENET_MEAN), extra.pop("std", IMAGENET_STD)
        args = encoder_args(model.model_name, model.model_args)
        shape = [args["in_chans"], args["num_frames"], args["img_size"], args["img_size"]]
        config = dict(format=FORMAT, format_version=FORMAT_VERSION, task=task, model_name=model.model_name,
                      model_args=dict(model.model_args),
                      input=dict(layout="B x C x T x H x W", shape=shape, mean=list(mean), std=list(std)),
                      source=dict(source), **extra, **code_version())
        (tmp / "config.json").write_text(json.dumps(config, indent=1) + "\n")
        for name, source_path in (files or {}).items():
            if Path(name).name != name or name in _RESERVED or name in (weights or {}):
                raise ValueError(f"files: {name!r} is not a plain file name of its own")
            shutil.copyfile(source_path, tmp / name)
            follow_umask(tmp / name)
        (tmp / "README.md").write_text(_model_card(config, out, notes, card or {}))
    return out


def _plain_fp32(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU copies, floating point as fp32 (a bf16 or ZeRO-consolidated state dict is stored the same way)."""
    return {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous().clone()
            for k, v in state_dict.items()}


def decoder_parts(decoder_args: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """:func:`write_release`'s keyword arguments that keep a pretraining model's decoder beside its encoder: the
    weights of the masked autoencoder's ``state_dict`` outside ``encoder.*`` and its arguments
    (``MaskedVideoAutoencoder.decoder_args``)."""
    decoder = {k: v for k, v in state_dict.items() if not k.startswith("encoder.")}
    if not decoder:
        raise ValueError("the state dict has no decoder weights (only encoder.*)")
    return dict(weights={DECODER_FILE: decoder}, decoder=dict(decoder_args))


def _model_card(config: dict, out: Path, notes: str, card: Mapping[str, str]) -> str:
    what = {"pretrain": "encoder (no head), from masked-autoencoder pretraining",
            "dfer": "expression classifier", "au": "action unit detector (encoder + AU head)",
            "dfer_au": "expression classifier with an auxiliary AU head"}[config["task"]]
    lines = [f"# {config['model_name']}", "", f"{what}; source: {config['source'].get('format', '?')} "
             f"`{config['source'].get('file', '')}`.", "", "```python", "import lgiformer",
             f"model = lgiformer.load_release({str(out)!r})",
             "out = model(clips)  # clips: B x 3 x T x H x W, normalised with the mean / std in config.json", "```",
             "", f"Input: {config['input']['shape']} (C, T, H, W)."]
    if config.get("class_names"):
        lines += ["", "Classes: " + ", ".join(config["class_names"]) + "."]
    if config.get("au_names"):
        lines += ["", "Action units: " + ", ".join(config["au_names"]) + "."]
    if config.get("decoder"):
        lines += ["", f"With the pretraining decoder ({DECODER_FILE}: {config['decoder'].get('decoder_depth')} blocks "
                      f"of width {config['decoder'].get('decoder_embed_dim')}): see the reconstruction of a video "
                      f"with `python -m lgiformer.visualize --model {str(out)!r} VIDEO --out DIR`."]
    for title, text in card.items():
        lines += ["", f"## {title}", "", text]
    if config.get("training"):
        lines += ["", "## Training", "", "```json", json.dumps(config["training"], indent=1), "```"]
    if notes:
        lines += ["", "## Notes", "", notes]
    lines += ["", f"Written by lgiformer {config.get('lgiformer')} (commit {config.get('git_commit') or 'unknown'})."]
    return "\n".join(lines) + "\n"


def read_release_config(path: str | os.PathLike) -> dict[str, Any]:
    """The release's ``config.json``, checked and completed: ``task`` (read from the head in format 1),
    ``class_names`` for a classifier (``class_N`` when none were saved)."""
    path = Path(path)
    config_path = path / "config.json"
    if not config_path.is_file():
        hint = (" (an AU run of lgiformer 0.1: convert it with `python -m lgiformer.convert au-export --input "
                f"{path} --output RELEASE`)") if (path / "au_config.json").is_file() else ""
        raise FileNotFoundError(f"{path} has no config.json: not a release directory{hint}")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_path}: not valid JSON ({err})") from None
    if config.get("format") != FORMAT:
        raise ValueError(f"{config_path}: format {config.get('format')!r}, expected {FORMAT!r}")
    if int(config.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(f"{config_path}: format_version {config['format_version']} is newer than this lgiformer "
                         f"reads ({FORMAT_VERSION}); upgrade lgiformer")
    if "task" not in config:  # format 1: an encoder or a classifier
        num_classes = int(config.get("model_args", {}).get("num_classes") or 0)
        config["task"] = "dfer" if num_classes > 0 else "pretrain"
    if config["task"] not in TASKS:
        raise ValueError(f"{config_path}: task {config['task']!r}, expected one of {TASKS}")
    num_classes = int(encoder_args(config["model_name"], config["model_args"]).get("num_classes") or 0)
    if num_classes and not config.get("class_names"):
        config["class_names"] = [f"class_{i}" for i in range(num_classes)]
    if config.get("class_names") and len(config["class_names"]) != num_classes:
        raise ValueError(f"{config_path}: {len(config['class_names'])} class names for a {num_classes}-class head")
    return config


def load_release(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """The model stored in a release directory, in eval mode, ready for ``model(clips)``."""
    return _load_model(Path(path), read_release_config(path), map_location)


def _load_model(path: Path, config: dict[str, Any], map_location: str | torch.device) -> nn.Module:
    model = build_model(config["model_name"], config["model_args"], str(path / "config.json"))
    model.load_state_dict(load_file(str(path / "model.safetensors"), device=str(map_location)), strict=True)
    return model.eval()


def load_masked_autoencoder(path: str | os.PathLike, map_location: str | torch.device = "cpu"
                            ) -> MaskedVideoAutoencoder:
    """The whole pretraining model (encoder, decoder, mask token) of a pretraining release written with its decoder,
    in eval mode: ``model.reconstruction_images(clips)`` shows what pretraining learned."""
    path = Path(path)
    config = read_release_config(path)
    if config["task"] != "pretrain":
        raise ValueError(f"{path}: a {config['task']} release (a finetuned model); the reconstruction needs a "
                         "pretraining release (task pretrain) written with its decoder")
    if not config.get("decoder") or not (path / DECODER_FILE).is_file():
        raise ValueError(f"{path}: a pretraining release without its decoder (no {DECODER_FILE}): write it with "
                         "release.with_decoder true (pretrain/run.py, the default), `python -m lgiformer.release "
                         "--checkpoint RUN/checkpoints`, or convert the reference's pretraining checkpoint")
    args = config["decoder"]
    if not isinstance(args, Mapping) or set(args) - DECODER_ARGS:
        raise ValueError(f"{path / 'config.json'}: decoder: expected arguments among {sorted(DECODER_ARGS)}, got "
                         f"{sorted(args) if isinstance(args, Mapping) else args!r}")
    encoder = _load_model(path, config, map_location)
    model = MaskedVideoAutoencoder(encoder, **args, norm_mean=config["input"]["mean"], norm_std=config["input"]["std"])
    missing, unexpected = model.load_state_dict(load_file(str(path / DECODER_FILE), device=str(map_location)),
                                                strict=False)
    missing = [k for k in missing if not k.startswith("encoder.")]
    if missing or unexpected:
        raise ValueError(f"{path / DECODER_FILE}: does not fit the decoder in config.json: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    return model.to(map_location).eval()
