"""Hugging Face ``transformers`` VideoMAE <-> our VideoViT.

Import reads a ``save_pretrained`` folder (``config.json`` + ``model.safetensors``, sharded safetensors, or a
``pytorch_model.bin`` through the restricted loader) without needing ``transformers``; export builds the
``transformers`` model, so it needs the ``hf`` extra. The two models are the same computation:

====================================================  ==========================================
ours (VideoViT)                                       transformers (prefix ``videomae.``)
====================================================  ==========================================
patch_embed.proj                                      embeddings.patch_embeddings.projection
blocks.i.norm1 / norm2                                encoder.layer.i.layernorm_before / _after
blocks.i.attn.q.weight, attn.q_bias                   ...attention.attention.query.weight / .bias
blocks.i.attn.kv.weight (= [key; value])              ...attention.attention.key.weight, value.weight
blocks.i.attn.v_bias                                  ...attention.attention.value.bias
blocks.i.attn.proj                                    ...attention.output.dense
blocks.i.mlp.fc1 / fc2                                ...intermediate.dense / ...output.dense
norm (global_pool "")                                 layernorm (use_mean_pooling False)
fc_norm, head (global_pool "avg")                     fc_norm, classifier (no prefix)
====================================================  ==========================================
Both use the same fixed sinusoid position table (not stored). Input layout differs: ours B x 3 x T x H x W,
``pixel_values`` B x T x 3 x H x W. One difference is not in the weights: transformers' ``fc_norm`` always uses
LayerNorm eps 1e-5, ours uses the model's ``norm_eps``; the importer states it (the effect is below 1e-5 on
pooled features of normal scale).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load_file
from torch import nn

from lgiformer.interop.infer import square_size, infer_encoder_args
from lgiformer.interop.reference import Imported, load_encoder, sha256_of
from lgiformer.interop.safe_load import load_checkpoint

__all__ = ["export_hf_videomae", "hf_to_ours", "import_hf_videomae", "ours_to_hf", "compare_with_transformers"]

HF_FC_NORM_EPS = 1e-5  # nn.LayerNorm default, used by VideoMAEForVideoClassification.fc_norm
_BLOCK = [  # (ours, theirs) inside blocks.i / encoder.layer.i
    ("norm1", "layernorm_before"), ("norm2", "layernorm_after"), ("attn.proj", "attention.output.dense"),
    ("mlp.fc1", "intermediate.dense"), ("mlp.fc2", "output.dense"),
]
_ATT = "attention.attention."


# ---- state-dict mapping -----------------------------------------------------------------------------------------
def hf_to_ours(hf: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map a transformers VideoMAE state dict (any of the three heads) to VideoViT names.

    Returns (our state dict, transformers keys not mapped: the pretraining decoder and friends)."""
    prefix = "videomae." if any(k.startswith("videomae.") for k in hf) else ""
    out: dict[str, torch.Tensor] = {}
    left = []
    depth = len({m.group(1) for k in hf if (m := re.match(re.escape(prefix) + r"encoder\.layer\.(\d+)\.", k))})
    for i in range(depth):
        src = f"{prefix}encoder.layer.{i}."
        dst = f"blocks.{i}."
        for ours, theirs in _BLOCK:
            for p in ("weight", "bias"):
                out[f"{dst}{ours}.{p}"] = hf[f"{src}{theirs}.{p}"]
        out[f"{dst}attn.q.weight"] = hf[f"{src}{_ATT}query.weight"]
        out[f"{dst}attn.kv.weight"] = torch.cat((hf[f"{src}{_ATT}key.weight"], hf[f"{src}{_ATT}value.weight"]))
        if f"{src}{_ATT}key.bias" in hf and bool(hf[f"{src}{_ATT}key.bias"].any()):
            raise ValueError("this model has a learned key bias; ours (as VideoMAE's) fixes it at zero")
        for ours, names in (("q_bias", ("query.bias", "q_bias")), ("v_bias", ("value.bias", "v_bias"))):
            found = [hf[f"{src}{_ATT}{n}"] for n in names if f"{src}{_ATT}{n}" in hf]
            if found:
                out[f"{dst}attn.{ours}"] = found[0]
    pairs = [(f"{prefix}embeddings.patch_embeddings.projection", "patch_embed.proj"), (f"{prefix}layernorm", "norm"),
             ("fc_norm", "fc_norm"), ("classifier", "head")]
    for theirs, ours in pairs:
        for p in ("weight", "bias"):
            if f"{theirs}.{p}" in hf:
                out[f"{ours}.{p}"] = hf[f"{theirs}.{p}"]
    used = {f"{prefix}encoder.layer.{i}." for i in range(depth)}
    for k in hf:
        if not (any(k.startswith(u) for u in used) or any(k.startswith(t + ".") for t, _ in pairs)):
            left.append(k)
    return out, left


def ours_to_hf(sd: Mapping[str, torch.Tensor], prefix: str = "videomae.") -> dict[str, torch.Tensor]:
    """Map a VideoViT state dict to transformers names (``prefix`` "" for a bare VideoMAEModel)."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if m := re.match(r"blocks\.(\d+)\.(.+)$", k):
            src, rest = f"{prefix}encoder.layer.{m.group(1)}.", m.group(2)
            if rest == "attn.q.weight":
                out[src + _ATT + "query.weight"] = v
            elif rest == "attn.kv.weight":
                key, value = v.chunk(2)
                out[src + _ATT + "key.weight"], out[src + _ATT + "value.weight"] = key, value
            elif rest in ("attn.q_bias", "attn.v_bias"):
                out[src + _ATT + ("query.bias" if rest == "attn.q_bias" else "value.bias")] = v
            else:
                name, p = rest.rsplit(".", 1)
                out[src + dict(_BLOCK)[name] + "." + p] = v
        elif k.startswith("patch_embed.proj."):
            out[prefix + "embeddings.patch_embeddings.projection." + k.rsplit(".", 1)[1]] = v
        elif k.startswith("norm."):
            out[prefix + "layernorm." + k[len("norm."):]] = v
        elif k.startswith("fc_norm."):
            out[k] = v
        elif k.startswith("head."):
            out["classifier." + k[len("head."):]] = v
        else:
            raise ValueError(f"no transformers VideoMAE name for {k!r}")
    return {k: v.contiguous() for k, v in out.items()}


# ---- import -----------------------------------------------------------------------------------------------------
def _read_folder(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], str]:
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{folder} has no config.json: not a transformers save_pretrained folder")
    config = json.loads(cfg_path.read_text())
    if config.get("model_type") != "videomae":
        raise ValueError(f"{folder}: model_type is {config.get('model_type')!r}, not 'videomae'")
    if (folder / "model.safetensors").is_file():
        return config, load_file(folder / "model.safetensors"), "model.safetensors"
    if (folder / "model.safetensors.index.json").is_file():
        shards = sorted(set(json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"].values()))
        sd: dict[str, torch.Tensor] = {}
        for shard in shards:
            sd.update(load_file(folder / shard))
        return config, sd, "model.safetensors.index.json"
    if (folder / "pytorch_model.bin").is_file():
        return config, dict(load_checkpoint(folder / "pytorch_model.bin")), "pytorch_model.bin"
    raise FileNotFoundError(f"{folder}: no model.safetensors or pytorch_model.bin")


def import_hf_videomae(folder: str | os.PathLike, *, global_pool: str | None = None) -> Imported:
    """VideoViT from a transformers VideoMAE folder (VideoMAEModel, VideoMAEForVideoClassification or
    VideoMAEForPreTraining). Sizes and heads come from ``config.json`` and are checked against the weights.

    - classification (mean pooling): ``model(clips)`` gives the same logits;
    - VideoMAEModel: ``forward_features`` gives ``last_hidden_state``; ``model(clips)`` pools with a fresh fc_norm
      (or, when the model keeps its final layernorm, returns those tokens);
    - pretraining: the encoder by the reference finetuning rule (final norm dropped, fresh fc_norm), or the normed
      tokens with ``global_pool=""``."""
    folder = Path(folder)
    config, hf, weights_file = _read_folder(folder)
    sd, left = hf_to_ours(hf)
    arch = (config.get("architectures") or ["?"])[0]
    pretraining = any(k.startswith(("decoder.", "encoder_to_decoder.", "mask_token")) for k in hf)
    mean_pool = bool(config.get("use_mean_pooling", True))
    notes = [f"transformers {arch} ({weights_file})"]
    if config.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"hidden_act {config['hidden_act']!r} is not supported (ours is exact GELU)")
    if "head.weight" in sd and not mean_pool:
        raise ValueError("this model classifies the first token (use_mean_pooling=False); only mean pooling is "
                         "supported")
    dropped = list(left)
    if pretraining and global_pool != "":
        dropped += [k for k in ("norm.weight", "norm.bias") if sd.pop(k, None) is not None]
        notes.append("reference loading rule for pretraining weights: encoder only, final norm dropped, "
                     "fresh fc_norm after pooling")
    if global_pool is None:
        global_pool = "" if "norm.weight" in sd else "avg"
    if global_pool == "" and "head.weight" in sd:
        raise ValueError("global_pool='' returns tokens, but this model has a classification head")
    image_size, patch_size = (square_size(config.get(k, d), k) for k, d in (("image_size", 224), ("patch_size", 16)))
    hints = dict(num_heads=config.get("num_attention_heads", 12), img_size=image_size,
                 num_frames=config.get("num_frames", 16), norm_eps=config.get("layer_norm_eps", 1e-12),
                 embed_dim=config.get("hidden_size"), depth=config.get("num_hidden_layers"),
                 tubelet_size=config.get("tubelet_size"), patch_size=patch_size)
    args, inferred = infer_encoder_args(sd, "vit", hints=hints, sources={k: "from config.json" for k in hints},
                                        global_pool=global_pool)
    notes += inferred
    conflicts = {k: (hints[k], args[k]) for k in ("embed_dim", "depth", "tubelet_size", "patch_size")
                 if hints[k] is not None and hints[k] != args[k]}
    if conflicts:
        raise ValueError(f"config.json does not match the weights (config, weights): {conflicts}")
    if "fc_norm.weight" in sd and abs(args["norm_eps"] - HF_FC_NORM_EPS) > 0:
        notes.append(f"fc_norm eps: transformers uses {HF_FC_NORM_EPS:g}, ours uses norm_eps={args['norm_eps']:g} "
                     "(VideoViT has one eps for all norms); pooled outputs differ by well under 1e-4")
    model, missing = load_encoder("vit", args, sd)
    source = dict(format="hf-videomae", file=os.path.basename(os.path.abspath(folder)), architecture=arch,
                  sha256=sha256_of(folder / weights_file) if weights_file != "model.safetensors.index.json" else None,
                  kind="pretraining" if pretraining else ("finetuned" if "head.weight" in sd else "encoder"))
    id2label = {int(k): v for k, v in (config.get("id2label") or {}).items()}
    if model.num_classes and sorted(id2label) == list(range(model.num_classes)):
        source["labels"] = [id2label[i] for i in range(model.num_classes)]
    return Imported(model, source, notes, dropped, missing)


# ---- export -----------------------------------------------------------------------------------------------------
def _transformers():
    try:
        import transformers
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError("exporting to transformers needs it installed: pip install 'lgiformer[hf]'") from err
    return transformers


def hf_config_for(model: nn.Module, labels: list[str] | None = None):
    """The ``VideoMAEConfig`` describing a VideoViT."""
    a = model.model_args
    if not getattr(model, "model_name", "").startswith("vit"):
        raise ValueError(f"only VideoViT models have a transformers equivalent, not {model.model_name!r}")
    if a["global_pool"] not in ("avg", ""):
        raise ValueError(f"global_pool {a['global_pool']!r} has no transformers equivalent (only 'avg' and '')")
    hidden = int(a["embed_dim"] * a["mlp_ratio"])
    if model.blocks[0].mlp.fc1.out_features != hidden:
        raise ValueError("MLP width is not embed_dim * mlp_ratio")
    kwargs = dict(image_size=a["img_size"], patch_size=a["patch_size"], num_channels=a["in_chans"],
                  num_frames=a["num_frames"], tubelet_size=a["tubelet_size"], hidden_size=a["embed_dim"],
                  num_hidden_layers=a["depth"], num_attention_heads=a["num_heads"], intermediate_size=hidden,
                  hidden_act="gelu", layer_norm_eps=a["norm_eps"], qv_bias=a["qkv_bias"],
                  use_mean_pooling=a["global_pool"] == "avg")
    if a["global_pool"] == "avg":
        n = a["num_classes"]
        if labels is not None and len(labels) != n:
            raise ValueError(f"{len(labels)} labels for {n} classes")
        names = labels or [f"LABEL_{i}" for i in range(n)]
        kwargs.update(id2label=dict(enumerate(names)), label2id={v: i for i, v in enumerate(names)})
    return _transformers().VideoMAEConfig(**kwargs)


def export_hf_videomae(model: nn.Module, out_dir: str | os.PathLike, *, labels: list[str] | None = None,
                       check: bool = True) -> float | None:
    """Write a VideoViT as a transformers folder. Mean-pooled models become VideoMAEForVideoClassification
    (with 0 labels its logits are the pooled features, so a trained fc_norm is kept); unpooled encoders become
    VideoMAEModel (use_mean_pooling False, final layernorm = our norm). With ``check``, the folder is loaded back
    with transformers and compared on a fixed input; returns the largest absolute difference."""
    tf = _transformers()
    config = hf_config_for(model, labels)
    a = model.model_args
    if a["global_pool"] == "avg":
        hf = tf.VideoMAEForVideoClassification(config)
        sd = ours_to_hf(model.state_dict(), "videomae.")
    else:
        if a["num_classes"]:
            raise ValueError("an unpooled model with a head has no transformers equivalent")
        hf = tf.VideoMAEModel(config)
        sd = ours_to_hf(model.state_dict(), "")
    hf.load_state_dict(sd, strict=True)
    hf.save_pretrained(out_dir)
    return compare_with_transformers(out_dir, model) if check else None


# ---- checks -----------------------------------------------------------------------------------------------------
@torch.no_grad()
def compare_with_transformers(folder: str | os.PathLike, model: nn.Module, clips: torch.Tensor | None = None,
                              attn_implementation: str = "eager") -> float:
    """Largest absolute difference between ``model`` and the transformers model saved in ``folder`` on ``clips``
    (default: one fixed random clip). Compares logits for a classifier, else the encoder's tokens."""
    tf = _transformers()
    config = json.loads((Path(folder) / "config.json").read_text())
    arch = (config.get("architectures") or ["VideoMAEModel"])[0]
    cls = getattr(tf, arch)
    hf = cls.from_pretrained(folder, attn_implementation=attn_implementation).eval()
    a = model.model_args
    if clips is None:
        gen = torch.Generator().manual_seed(0)
        clips = torch.randn(1, a["in_chans"], a["num_frames"], a["img_size"], a["img_size"], generator=gen)
    pixels = clips.permute(0, 2, 1, 3, 4)
    model = model.eval()
    if arch == "VideoMAEForVideoClassification":
        ours, ref = model(clips), hf(pixel_values=pixels).logits
    else:
        base = hf.videomae if hasattr(hf, "videomae") else hf
        ours = model.forward_features(clips)
        if a["global_pool"] == "":
            ref = base(pixel_values=pixels).last_hidden_state
        else:
            ref = base.encoder(base.embeddings(pixels, None)).last_hidden_state
    return float((ours - ref).abs().max())
