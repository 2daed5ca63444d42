"""Shared importer for the reference ``.pth`` layout family (MAE-DFER and official VideoMAE).

Both save ``{"model": state_dict, "epoch", "args": argparse.Namespace, ...}`` (DeepSpeed runs use "module").
Finetuned files hold the encoder with ``fc_norm`` + ``head``; pretraining files hold ``encoder.*``, ``decoder.*``,
``encoder_to_decoder`` and ``mask_token``. A pretraining file is imported by the reference finetuning rule: keep
``encoder.*`` without its final ``norm``, drop the rest, so the model returns fc_norm(mean pooling) with a fresh
(identity) ``fc_norm`` -- or, with ``global_pool=""``, keep the final norm and return the tokens.
"""
from __future__ import annotations

import argparse
import hashlib
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from lgiformer.interop.infer import (MAE_DFER_DEFAULTS, POOL_FROM_REFERENCE, VIDEOMAE_DEFAULTS, infer_encoder_args,
                                     infer_heads, parse_reference_name, pick_variant)
from lgiformer.interop.safe_load import load_checkpoint
from lgiformer.models import MaskedVideoAutoencoder, create_model
from lgiformer.models.vit import checkpoint_filter_fn as vit_filter
from lgiformer.tokens import sinusoid_table

__all__ = ["Imported", "detect_family", "import_reference", "load_encoder", "unwrap_state_dict"]

STATE_DICT_KEYS = ("model", "module", "state_dict", "model_state")
# Entries of a pretraining checkpoint that finetuning never uses.
PRETRAIN_ONLY = ("decoder.", "encoder_to_decoder.", "mask_token", "decoder_pos_embed")


@dataclass
class Imported:
    """A model built and loaded from foreign weights, with what was assumed and what was left out."""

    model: nn.Module
    source: dict[str, Any]
    assumptions: list[str]
    dropped: list[str] = field(default_factory=list)
    left_at_init: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"model: {self.model.model_name} {self.model.model_args}", "assumed:"]
        lines += [f"  - {a}" for a in self.assumptions]
        if self.dropped:
            lines.append(f"dropped {len(self.dropped)} checkpoint entries: {_short(self.dropped)}")
        if self.left_at_init:
            lines.append(f"left at initial values (not in the checkpoint): {', '.join(self.left_at_init)}")
        return "\n".join(lines)


def _short(keys: Sequence[str], n: int = 6) -> str:
    heads = sorted({".".join(k.split(".")[:2 if k.startswith("encoder.") else 1]) + ("." if "." in k else "")
                    for k in keys})
    return ", ".join(h + ("*" if h.endswith(".") else "") for h in heads[:n]) + (" ..." if len(heads) > n else "")


def sha256_of(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def unwrap_state_dict(ckpt: Any, key: str | None = None) -> tuple[dict[str, torch.Tensor], str | None]:
    """The state dict inside a checkpoint container, and the container key it came from."""
    if not isinstance(ckpt, Mapping):
        raise ValueError(f"expected a dict checkpoint, got {type(ckpt).__name__}")
    if key is not None:
        if key not in ckpt:
            raise KeyError(f"checkpoint has no {key!r} entry (entries: {', '.join(map(str, ckpt))})")
        sd, used = ckpt[key], key
    else:
        used = next((k for k in STATE_DICT_KEYS if isinstance(ckpt.get(k), Mapping)), None)
        sd = ckpt[used] if used else ckpt
    sd = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise ValueError("no tensors found in the checkpoint" + (f" under {used!r}" if used else ""))
    if all(k.startswith("module.") for k in sd):  # DDP wrapper
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd, used


def detect_family(sd: Mapping[str, torch.Tensor]) -> str:
    keys = [k[len("encoder."):] if k.startswith("encoder.") else k for k in sd]
    if "lg_region_tokens" in keys:
        return "lgiformer"
    if any(k.startswith("blocks.0.attn.") for k in keys):
        return "vit"
    raise ValueError("neither an LGI-Former (no lg_region_tokens) nor a VideoMAE ViT (no blocks.0.attn.*) state dict")


def is_pretraining(sd: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith("encoder.") for k in sd) and any(k.startswith(PRETRAIN_ONLY) for k in sd)


def namespace_hints(args: Any) -> dict[str, Any]:
    """Sizes recorded in a reference run's ``args`` (argparse.Namespace or dict), in our argument names."""
    a = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
    hints = parse_reference_name(str(a.get("model", "")))
    for ours, theirs in (("img_size", "input_size"), ("num_frames", "num_frames"), ("tubelet_size", "tubelet_size"),
                         ("num_classes", "nb_classes"), ("depth", "depth"), ("num_heads", "num_heads"),
                         ("region_size", "lg_region_size")):
        if a.get(theirs) is not None:
            hints[ours] = a[theirs]
    return hints


def json_safe(args: Any) -> dict[str, Any]:
    a = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
    ok = (str, int, float, bool, type(None))
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in a.items()
            if isinstance(v, ok) or (isinstance(v, (list, tuple)) and all(isinstance(x, ok) for x in v))}


def _plain_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _drop_fixed_pos_embed(sd: dict[str, torch.Tensor], dropped: list[str]) -> None:
    """VideoMAE with a learned position table stores ``pos_embed``; ours is the fixed sinusoid."""
    pos = sd.pop("pos_embed", None)
    if pos is None:
        return
    table = sinusoid_table(pos.shape[-2], pos.shape[-1])
    if not torch.allclose(pos.reshape(table.shape).float(), table, atol=1e-5):
        raise ValueError("the checkpoint has a learned position table (pos_embed); only the fixed sinusoid table of "
                         "VideoMAE / MAE-DFER is supported")
    dropped.append("pos_embed")


def load_encoder(family: str, args: dict[str, Any], sd: dict[str, torch.Tensor]) -> tuple[nn.Module, list[str]]:
    """Build the encoder and load ``sd``; only ``fc_norm`` may be missing (the reference finetuning rule)."""
    model = create_model(pick_variant(family, args), **args)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    bad_missing = [k for k in missing if not k.startswith("fc_norm.")]
    if unexpected or bad_missing:
        raise ValueError(f"the weights do not fit the inferred {family} model {args}: "
                         f"missing {bad_missing or 'none'}, unexpected {unexpected or 'none'}")
    return model.eval(), list(missing)


def import_reference(path: str | os.PathLike, fmt: str, *, expect: str | None = None,
                     defaults: Mapping[str, Any], num_heads: int | None = None, img_size: int | None = None,
                     num_frames: int | None = None, region_size: Sequence[int] | None = None,
                     global_pool: str | None = None, checkpoint_key: str | None = None) -> Imported:
    """Import a reference-format ``.pth`` (see module doc). User arguments override the file's own ``args``."""
    return _import_loaded(load_checkpoint(path), path, fmt, expect=expect, defaults=defaults, num_heads=num_heads,
                          img_size=img_size, num_frames=num_frames, region_size=region_size,
                          global_pool=global_pool, checkpoint_key=checkpoint_key)


def _import_loaded(ckpt: Any, path: str | os.PathLike, fmt: str, *, expect: str | None, defaults: Mapping[str, Any],
                   num_heads: int | None, img_size: int | None, num_frames: int | None,
                   region_size: Sequence[int] | None, global_pool: str | None, checkpoint_key: str | None
                   ) -> Imported:
    sd, used = unwrap_state_dict(ckpt, checkpoint_key)
    ref_args = ckpt.get("args") if isinstance(ckpt, Mapping) else None
    family = detect_family(sd)
    if expect and family != expect:
        other = {"lgiformer": "mae-dfer", "vit": "videomae"}[family]
        raise ValueError(f"{path} holds a {family} model, not a {expect}: convert it with `{other}`")
    dropped: list[str] = []
    pretraining = is_pretraining(sd)
    if pretraining:
        keep_norm = global_pool == ""
        enc = {}
        for k, v in sd.items():
            if k.startswith("encoder.") and (keep_norm or not k.startswith("encoder.norm.")):
                enc[k[len("encoder."):]] = v
            else:
                dropped.append(k)
        sd = enc
    if family == "vit":
        sd = vit_filter(sd)
        _drop_fixed_pos_embed(sd, dropped)
        if "head.weight" in sd and "fc_norm.weight" not in sd:
            raise ValueError("this VideoMAE model classifies the first token (use_mean_pooling=False); only mean "
                             "pooling (fc_norm) is supported")
        if global_pool is None and "norm.weight" in sd and "head.weight" not in sd:
            global_pool = ""  # an encoder that keeps its final norm: unpooled tokens
    if global_pool == "" and "head.weight" in sd:
        raise ValueError("global_pool='' returns tokens, but this checkpoint has a classification head")
    if global_pool is None and family == "lgiformer" and ref_args is not None:
        kind = json_safe(ref_args).get("lg_classify_token_type")
        global_pool = POOL_FROM_REFERENCE.get(kind) if kind else None
    hints, sources = {}, {}
    for k, v in namespace_hints(ref_args).items():
        hints[k], sources[k] = v, "from the checkpoint's args"
    if pretraining:  # a pretraining run's nb_classes says nothing about this file (it has no head)
        hints.pop("num_classes", None)
    given = dict(num_heads=num_heads, img_size=img_size, num_frames=num_frames, region_size=region_size)
    for k, v in given.items():
        if v is not None:
            hints[k], sources[k] = v, "given"
    args, notes = infer_encoder_args(sd, family, hints=hints, sources=sources, defaults=defaults,
                                     global_pool=global_pool)
    if family == "lgiformer" and "blocks.0.second_attn.q.weight" not in sd:
        raise ValueError("LGI-Former variants without the global (second) attention are not supported")
    notes.insert(0, f"{'pretraining' if pretraining else 'finetuned'} {fmt} checkpoint"
                    + (f" (state dict under {used!r})" if used else ""))
    if pretraining:
        notes.append("reference loading rule for pretraining weights: encoder only"
                     + ("" if global_pool == "" else ", final norm dropped, fresh fc_norm after pooling"))
    model, missing = load_encoder(family, args, sd)
    source = dict(format=fmt, file=os.path.basename(os.fspath(path)), sha256=sha256_of(path),
                  kind="pretraining" if pretraining else "finetuned", checkpoint_key=used,
                  epoch=_plain_int(ckpt.get("epoch")) if isinstance(ckpt, Mapping) else None,
                  reference_args=json_safe(ref_args) if ref_args is not None else None)
    return Imported(model, source, notes, dropped, missing)


def import_pretraining_model(path: str | os.PathLike, fmt: str = "mae-dfer", *, decoder_num_heads: int | None = None,
                             mask_ratio: float = 0.9, checkpoint_key: str | None = None, **encoder_kwargs
                             ) -> tuple[nn.Module, Imported]:
    """The whole masked autoencoder of a reference pretraining ``.pth`` (encoder with its final norm, decoder,
    mask token), to continue pretraining. ``fmt`` "mae-dfer" (appearance + motion targets, region-balanced
    masking) or "videomae" (pixel target, tube masking), or "auto" (read from the weights: an LGI-Former is
    MAE-DFER's, a ViT VideoMAE's). ``encoder_kwargs`` as for the encoder importers."""
    formats = {"mae-dfer": ("lgiformer", MAE_DFER_DEFAULTS), "videomae": ("vit", VIDEOMAE_DEFAULTS)}
    if fmt not in (*formats, "auto"):
        raise ValueError(f"fmt must be one of {[*formats, 'auto']}, got {fmt!r}")
    ckpt = load_checkpoint(path)
    sd, _ = unwrap_state_dict(ckpt, checkpoint_key)
    if not is_pretraining(sd):
        raise ValueError(f"{path} is not a pretraining checkpoint (no decoder)")
    if fmt == "auto":
        fmt = "mae-dfer" if detect_family(sd) == "lgiformer" else "videomae"
    family, defaults = formats[fmt]
    kwargs = {**dict(num_heads=None, img_size=None, num_frames=None, region_size=None), **encoder_kwargs}
    imported = _import_loaded(ckpt, path, fmt, expect=family, defaults=defaults, global_pool="",
                              checkpoint_key=checkpoint_key, **kwargs)
    imported.assumptions = [a for a in imported.assumptions if not a.startswith("reference loading rule")]
    dec = vit_filter({k: v for k, v in sd.items() if k.startswith(PRETRAIN_ONLY)})
    width = dec["mask_token"].shape[-1]
    depth = len({k.split(".")[2] for k in dec if k.startswith("decoder.blocks.")})
    heads, note = infer_heads(width, decoder_num_heads)
    mlp_ratio = dec["decoder.blocks.0.mlp.fc1.weight"].shape[0] / width if depth else 4.0
    targets, mask_type = (("appearance", "motion"), "region_balanced") if fmt == "mae-dfer" else (("pixel",), "tube")
    mae = MaskedVideoAutoencoder(imported.model, width, depth, heads, mask_type, mask_ratio, targets,
                                 mlp_ratio=mlp_ratio, norm_eps=imported.model.model_args["norm_eps"])
    missing, unexpected = mae.load_state_dict(dec, strict=False)
    if unexpected or any(not k.startswith("encoder.") for k in missing):
        raise ValueError(f"the decoder weights do not fit: unexpected {unexpected}, "
                         f"missing {[k for k in missing if not k.startswith('encoder.')]}")
    imported.assumptions += [f"decoder: width {width}, depth {depth}, " + note.replace("num_heads", "decoder heads"),
                             f"targets {targets} with {mask_type} masking, ratio {mask_ratio}"]
    if fmt == "mae-dfer":
        imported.assumptions.append(
            "our decoder adds its position table in the same (region-major) order as the encoder; the reference "
            "added it in raster order (docs/REFERENCE.md#defect-1), so the imported decoder needs continued training")
    imported.dropped = []
    return mae.eval(), imported
