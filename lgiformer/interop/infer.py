"""Architecture inference: read an encoder's constructor arguments off its weights (our parameter names).

Shapes give width, depth, MLP ratio, input channels, tubelet and patch size, qkv bias, regions count and classes.
Three things are not in the weights and come from hints (the user, then the checkpoint's own args or config),
then from defaults, and every such choice is written to the returned list of assumptions:
- heads: a q weight is dim x dim for any head count; we use the references' table (head dim 64 up to ViT-L,
  16 heads for ViT-H/g) or dim // 64;
- frames and image size (the position table is fixed, not stored);
- the region size of an LGI-Former (only the regions count is stored).
"""
from __future__ import annotations

import math
import re
from typing import Any, Mapping

import torch

from lgiformer.models import ENCODER_NAMES

__all__ = ["MAE_DFER_DEFAULTS", "VIDEOMAE_DEFAULTS", "infer_heads", "infer_encoder_args", "pick_variant", "parse_reference_name"]

# Widths of the reference variants -> their head counts (VideoMAE S/B/L/H/g, MAE-DFER base 512).
KNOWN_HEADS = {384: 6, 512: 8, 768: 12, 1024: 16, 1280: 16, 1408: 16}
DEFAULT_REGION = (2, 5, 10)
POOL_FROM_REFERENCE = {"region": "region", "org": "local", "all": "all"}  # MAE-DFER lg_classify_token_type
# What the released models were trained with, used where neither the weights nor the file's args say.
MAE_DFER_DEFAULTS = dict(img_size=160, num_frames=16, region_size=(2, 5, 10), norm_eps=1e-6)
VIDEOMAE_DEFAULTS = dict(img_size=224, num_frames=16, norm_eps=1e-6)


def _blocks_depth(sd: Mapping[str, torch.Tensor]) -> int:
    ids = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
    if not ids:
        raise ValueError("no 'blocks.<i>.' weights found: not an encoder state dict")
    if ids != set(range(len(ids))):
        raise ValueError(f"block indices are not contiguous: {sorted(ids)}")
    return len(ids)


def infer_heads(dim: int, given: int | None = None, source: str = "given") -> tuple[int, str]:
    """Heads for width ``dim``: ``given`` if set, else the reference table, else dim // 64."""
    if given:
        if dim % given:
            raise ValueError(f"num_heads={given} does not divide the width {dim}")
        return given, f"num_heads={given} ({source})"
    if dim in KNOWN_HEADS:
        h = KNOWN_HEADS[dim]
        return h, (f"num_heads={h}: not stored in the weights; assumed from the width {dim} (head dim {dim // h}, "
                   "as in the reference variants); pass --num-heads if the model was trained otherwise")
    if dim % 64 == 0:
        return dim // 64, (f"num_heads={dim // 64}: not stored in the weights; assumed head dim 64 (the references' "
                           "convention); pass --num-heads if the model was trained otherwise")
    raise ValueError(f"cannot guess the head count for width {dim} (not a multiple of 64): pass --num-heads")


def square_size(value: Any, name: str) -> int:
    """An image or patch size given as one number or as equal [h, w]."""
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ValueError(f"non-square {name} {list(value)} is not supported")
        value = value[0]
    return int(value)


def parse_reference_name(name: str) -> dict[str, int]:
    """Sizes spelled in a reference model name, e.g. 'vit_base_dim512_no_depth_patch16_160' -> dim, patch, img."""
    out = {}
    if m := re.search(r"dim(\d+)", name):
        out["embed_dim"] = int(m.group(1))
    if m := re.search(r"patch(\d+)_(\d+)", name):
        out["patch_size"], out["img_size"] = int(m.group(1)), int(m.group(2))
    return out


def infer_encoder_args(sd: Mapping[str, torch.Tensor], family: str, *, hints: Mapping[str, Any] | None = None,
                       sources: Mapping[str, str] | None = None, defaults: Mapping[str, Any] | None = None,
                       global_pool: str | None = None) -> tuple[dict[str, Any], list[str]]:
    """Constructor arguments for ``family`` ("lgiformer" or "vit") from a state dict in our names.

    ``hints`` (user choices or values read from the checkpoint: num_heads, img_size, num_frames, region_size,
    num_classes, norm_eps) override ``defaults``; shapes in the weights override both, with a note when they
    disagree; ``sources`` says where each hint came from. ``global_pool`` is the pooling the caller decided (it
    depends on how the checkpoint was trained)."""
    hints = {k: v for k, v in (hints or {}).items() if v is not None}
    defaults = dict(defaults or {})
    sources = sources or {}
    notes: list[str] = []
    if "patch_embed.proj.weight" not in sd:
        raise ValueError("no 'patch_embed.proj.weight': not an encoder state dict")
    dim, in_chans, tubelet, ph, pw = sd["patch_embed.proj.weight"].shape
    if ph != pw:
        raise ValueError(f"non-square patches ({ph} x {pw}) are not supported")
    depth = _blocks_depth(sd)
    prefix = "blocks.0.first_attn." if family == "lgiformer" else "blocks.0.attn."
    hidden = sd["blocks.0.mlp.fc1.weight"].shape[0]
    args: dict[str, Any] = dict(embed_dim=dim, depth=depth, in_chans=in_chans, tubelet_size=tubelet, patch_size=ph,
                                mlp_ratio=hidden / dim, qkv_bias=prefix + "q_bias" in sd)
    for key, value in (("embed_dim", dim), ("depth", depth), ("patch_size", ph), ("tubelet_size", tubelet)):
        if key in hints and int(hints[key]) != value:
            notes.append(f"{key}: the checkpoint's args say {hints[key]}, the weights say {value}; using the weights")
    args["num_heads"], note = infer_heads(dim, hints.get("num_heads"), sources.get("num_heads", "from the checkpoint"))
    notes.append(note)
    for key in ("img_size", "num_frames"):
        if key in hints:
            args[key] = square_size(hints[key], key)
            notes.append(f"{key}={args[key]} ({sources.get(key, 'from the checkpoint')})")
        else:
            args[key] = int(defaults[key])
            flag = "--" + key.replace("_", "-")
            notes.append(f"{key}={args[key]}: not stored in the weights; assumed the default (pass {flag})")
    args["norm_eps"] = float(hints.get("norm_eps", defaults.get("norm_eps", 1e-6)))
    if "norm_eps" not in hints:
        notes.append(f"LayerNorm eps={args['norm_eps']:g} (the references' value)")
    num_classes = sd["head.weight"].shape[0] if "head.weight" in sd else 0
    if "num_classes" in hints and int(hints["num_classes"]) != num_classes and num_classes:
        notes.append(f"classes: the checkpoint's args say {hints['num_classes']}, the head has {num_classes}")
    args["num_classes"] = num_classes
    grid = (args["num_frames"] // tubelet, args["img_size"] // ph, args["img_size"] // ph)
    if family == "lgiformer":
        if "lg_region_tokens" not in sd:
            raise ValueError("no 'lg_region_tokens': not an LGI-Former state dict")
        regions = sd["lg_region_tokens"].shape[0]
        if "region_size" in hints:
            region = tuple(int(v) for v in hints["region_size"])
            notes.append(f"region_size={region} ({sources.get('region_size', 'from the checkpoint')})")
        else:
            region = tuple(defaults.get("region_size", DEFAULT_REGION))
            notes.append(f"region_size={region} tokens: only the regions count is stored; assumed the paper's "
                         "setting (pass --region-size T H W)")
        if len(region) != 3 or any(g % r for g, r in zip(grid, region)):
            raise ValueError(f"region size {region} does not tile the token grid {grid}; pass --region-size")
        count = math.prod(g // r for g, r in zip(grid, region))
        if count != regions:
            raise ValueError(f"the weights hold {regions} region tokens but region size {region} on the token grid "
                             f"{grid} gives {count}; pass --region-size (and --img-size / --num-frames)")
        args["region_size"] = list(region)
        args["global_pool"] = global_pool if global_pool is not None else "region"
    else:
        args["global_pool"] = global_pool if global_pool is not None else "avg"
    notes.append(f"pooling global_pool={args['global_pool']!r}, {num_classes} classes, {_regions_note(args)}"
                 f"width {dim}, depth {depth}, MLP ratio {args['mlp_ratio']:g}, qkv bias {args['qkv_bias']}, "
                 f"tubelet {tubelet}, patch {ph}, {in_chans} input channels")
    return args, notes


def _regions_note(args: Mapping[str, Any]) -> str:
    return f"regions {tuple(args['region_size'])}, " if "region_size" in args else ""


_VARIANT_BY_WIDTH = {
    "lgiformer": {192: "lgiformer_tiny_patch16_160", 384: "lgiformer_small_patch16_160",
                  512: "lgiformer_base_patch16_160", 1024: "lgiformer_large_patch16_160"},
    "vit": {192: "vit_tiny_patch16_160", 384: "vit_small_patch16_160", 768: "vit_base_patch16_160"},
}


def pick_variant(family: str, args: Mapping[str, Any]) -> str:
    """The registered name of the same width, else the base variant; ``args`` overrides every size anyway."""
    name = _VARIANT_BY_WIDTH[family].get(args["embed_dim"], f"{family}_base_patch16_160")
    assert name in ENCODER_NAMES
    return name
