"""Start a finetuning model from pretrained weights, and say exactly which weights were used.

``load_pretrained(model, source)`` accepts:
* our release: a directory holding ``model.safetensors`` (+ ``config.json``), or a ``.safetensors`` file;
* a reference MAE-DFER checkpoint (``.pth``: pretraining ``encoder.*`` + decoder, or finetuned), read with the
  project's safe loader (never a plain unpickle);
* a VideoMAE checkpoint (official ``.pth``; ``qkv`` weights are split into our ``q`` / ``kv``), or a Hugging Face
  ``transformers`` VideoMAE file when the interop converter is installed;
* ``None`` / ``""`` / ``"none"`` / ``"random"``: random init (every key reported as new).
Weights enter through one filter (:func:`filter_state_dict`): unwrap the container, strip ``module.`` /
``encoder.`` / ``backbone.`` prefixes, drop pretraining-only parts (decoder, mask token, encoder_to_decoder), map
VideoMAE names. A classifier head of another shape (other classes) is skipped, so the model keeps a fresh head;
any other shape mismatch is an error, because silently dropping encoder weights is never what a user wants.
The returned :class:`LoadReport` lists the loaded, new (left at init) and ignored keys (with the reason).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch
from safetensors.torch import load_file
from torch import nn

from lgiformer.interop.reference import PRETRAIN_ONLY, detect_family, is_pretraining, unwrap_state_dict
from lgiformer.interop.safe_load import load_checkpoint
from lgiformer.interop.videomae import convert_hf_state_dict
from lgiformer.models.vit import checkpoint_filter_fn

log = logging.getLogger(__name__)

RANDOM_INIT = ("", "none", "random", "scratch")
_STRIP_PREFIXES = ("module.", "_orig_mod.", "backbone.", "encoder.")
_HEAD_PREFIXES = ("head.",)


@dataclass
class LoadReport:
    source: str
    format: str
    loaded: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    ignored: dict[str, str] = field(default_factory=dict)  # checkpoint key -> why it was not used
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(source=self.source, format=self.format, loaded=self.loaded, new=self.new, ignored=self.ignored,
                    notes=self.notes)

    def summary(self, max_names: int = 12) -> str:
        def names(keys):
            keys = list(keys)
            shown = ", ".join(keys[:max_names])
            return shown + (f", ... (+{len(keys) - max_names})" if len(keys) > max_names else "")

        reasons: dict[str, list[str]] = {}
        for key, why in self.ignored.items():
            reasons.setdefault(why, []).append(key)
        lines = [f"weights from {self.source or 'random init'} [{self.format}]: {len(self.loaded)} loaded, "
                 f"{len(self.new)} new, {len(self.ignored)} ignored",
                 f"  new (left at init): {names(self.new) or '-'}"]
        lines += [f"  ignored ({why}): {names(keys)}" for why, keys in reasons.items()]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def read_state_dict(source: str | os.PathLike) -> tuple[dict[str, torch.Tensor], str, dict]:
    """Read weights from any supported source: (state dict, format name, metadata such as config.json)."""
    path = Path(source)
    if path.is_dir():
        weights = path / "model.safetensors"
        if not weights.is_file():
            raise FileNotFoundError(f"{path} is a directory without model.safetensors: not a release")
        config = json.loads((path / "config.json").read_text()) if (path / "config.json").is_file() else {}
        sd = _load_safetensors(weights)
        return sd, "hf_videomae" if _guess_format(sd) == "hf_videomae" else "release", {"config": config}
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights not found: {path}")
    if path.suffix == ".safetensors":
        config_path = path.with_name("config.json")
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        sd = _load_safetensors(path)
        return sd, "hf_videomae" if _guess_format(sd) == "hf_videomae" else "safetensors", {"config": config}
    ckpt = load_checkpoint(path)
    sd, used = unwrap_state_dict(ckpt)
    return sd, _guess_format(sd), {k: v for k, v in ckpt.items() if k != used} if used else {}


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path), device="cpu")


def _guess_format(sd: Mapping[str, torch.Tensor]) -> str:
    """The report's name for the weights' origin; the family and pretraining tests are the importers' own."""
    if any(k.startswith(("videomae.", "embeddings.patch_embeddings.", "encoder.layer.")) for k in sd):
        return "hf_videomae"
    try:
        family = detect_family(sd)
    except ValueError:
        return "state_dict"
    origin = {"lgiformer": "mae_dfer", "vit": "videomae"}[family]
    return f"{origin}_pretrain" if is_pretraining(sd) else f"{origin}_finetuned"


def filter_state_dict(sd: Mapping[str, torch.Tensor], model: nn.Module, fmt: str = "state_dict"
                      ) -> tuple[dict[str, torch.Tensor], dict[str, str], list[str]]:
    """Checkpoint names -> the model's names. Returns (usable weights, ignored key -> reason, notes)."""
    if fmt == "hf_videomae":
        sd = convert_hf_state_dict(dict(sd))
    target = model.state_dict()
    out, ignored, notes = {}, {}, []
    for key, value in sd.items():
        name = key
        for prefix in _STRIP_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix):]
        if key.startswith(PRETRAIN_ONLY) or name.startswith(PRETRAIN_ONLY):
            ignored[key] = "pretraining only"
            continue
        out[name] = value
    if any(k.endswith("attn.qkv.weight") for k in out):  # VideoMAE fused qkv -> q and kv
        out = checkpoint_filter_fn(out)
    usable, mismatched = {}, []
    for name, value in out.items():
        if name not in target:
            ignored[name] = "not in this model"
        elif tuple(value.shape) != tuple(target[name].shape):
            if name.startswith(_HEAD_PREFIXES):
                ignored[name] = f"head shape {tuple(value.shape)} != {tuple(target[name].shape)} (new classes)"
            else:
                mismatched.append(f"{name}: checkpoint {tuple(value.shape)} vs model {tuple(target[name].shape)}")
        else:
            usable[name] = value
    if mismatched:
        raise ValueError("the pretrained weights do not fit this model (check the model name and its size, "
                         "img_size, num_frames, region_size):\n  " + "\n  ".join(mismatched))
    if "norm.weight" in ignored and "fc_norm.weight" in target:
        notes.append("the encoder's final norm is not used: the pooled model normalises with fc_norm instead "
                     "(the reference finetuning rule)")
    return usable, ignored, notes


def load_pretrained(model: nn.Module, source: str | os.PathLike | None) -> LoadReport:
    """Load ``source`` into ``model`` (in place) and report loaded / new / ignored keys. Never raises on a missing
    head or on pretraining-only weights; raises on encoder weights that do not fit the model."""
    all_keys = list(model.state_dict())
    if source is None or str(source).lower() in RANDOM_INIT:
        return LoadReport(source="", format="random", new=all_keys)
    sd, fmt, _ = read_state_dict(source)
    usable, ignored, notes = filter_state_dict(sd, model, fmt)
    if not usable:
        raise ValueError(f"no weight of {source} matches the model {getattr(model, 'model_name', '')}: "
                         f"{len(sd)} keys, e.g. {', '.join(list(sd)[:5])}")
    result = model.load_state_dict(usable, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    report = LoadReport(source=str(source), format=fmt, loaded=[k for k in all_keys if k in usable],
                        new=list(result.missing_keys), ignored=ignored, notes=notes)
    encoder_new = [k for k in report.new if not k.startswith(("head.", "fc_norm."))]
    if encoder_new:
        report.notes.append(f"{len(encoder_new)} encoder weights were not in the checkpoint and keep their random "
                            "init: check that this is the encoder you meant")
    return report


def release_model_args(source: str | os.PathLike | None) -> dict:
    """The architecture a release was saved with (``config.json``: ``model_name``/``model`` and ``model_args``),
    or ``{}`` for other sources. Lets finetuning build the same encoder without repeating its sizes."""
    if source is None or str(source).lower() in RANDOM_INIT:
        return {}
    path = Path(source)
    config_path = path / "config.json" if path.is_dir() else path.with_name("config.json")
    if path.suffix not in ("", ".safetensors") or not config_path.is_file():
        return {}
    return json.loads(config_path.read_text())
