"""Turn a run's training checkpoint into a release (see :mod:`lgiformer.models.release` for the format).

    python -m lgiformer.release --checkpoint output/pretrain/demo/checkpoints --out releases/demo

takes the newest complete training checkpoint of a pretraining run (any ZeRO stage: shards are consolidated) and
writes its encoder, with the decoder beside it for ``python -m lgiformer.visualize`` (``--without-decoder``: the
encoder only). Finetuning runs write their release themselves, from the selected weights.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from lgiformer.engine.checkpointer import find_checkpoint, read_client_state, read_fp32_state_dict
from lgiformer.models import build_model
from lgiformer.models.mae import DECODER_ARGS
from lgiformer.models.release import IMAGENET_MEAN, IMAGENET_STD, decoder_parts, write_release

log = logging.getLogger(__name__)

__all__ = ["main", "release_from_checkpoint"]


def release_from_checkpoint(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, overwrite: bool = False,
                            with_decoder: bool = True) -> Path:
    """Encoder release from a pretraining checkpoint (a run's checkpoint folder or one checkpoint in it), with its
    decoder unless ``with_decoder`` is false."""
    ckpt = find_checkpoint(checkpoint)
    state = read_client_state(ckpt)
    encoder = build_model(state["model_name"], state["model_args"], str(ckpt / "COMPLETE.json"))
    sd = read_fp32_state_dict(ckpt)
    prefix = "encoder."
    encoder_sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    if not encoder_sd:
        raise ValueError(f"{ckpt}: no encoder.* weights (is this a pretraining checkpoint?)")
    training = dict(state.get("summary", {}), epoch=state.get("epoch"), step=state.get("step"))
    decoder = decoder_parts(_decoder_args(state), sd) if with_decoder else {}
    return write_release(encoder, out_dir, task="pretrain", state_dict=encoder_sd, overwrite=overwrite, **decoder,
                         source=dict(format="lgiformer-pretrain-checkpoint", file=str(ckpt)), training=training,
                         mean=state.get("mean", IMAGENET_MEAN), std=state.get("std", IMAGENET_STD),
                         **({"data": state["data"]} if "data" in state else {}),
                         notes="Encoder of a masked-autoencoder pretraining run; finetune it with finetune/run.py "
                               "--model.pretrained <this folder>.")


def _decoder_args(state: dict) -> dict:
    """The autoencoder's arguments: recorded in the checkpoint since lgiformer 0.2, else read from the run's config
    (its model section holds them under the same names)."""
    if "decoder" in state:
        return dict(state["decoder"])
    return {k: v for k, v in state.get("config", {}).get("model", {}).items() if k in DECODER_ARGS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lgiformer.release", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a run's checkpoint folder, or one checkpoint in it")
    parser.add_argument("--out", required=True, help="release directory to write")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--without-decoder", action="store_true",
                        help="write the encoder only (no decoder.safetensors: lgiformer.visualize cannot use it)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        out = release_from_checkpoint(args.checkpoint, args.out, overwrite=args.overwrite,
                                      with_decoder=not args.without_decoder)
    except (OSError, ValueError) as err:  # a missing, unreadable or refused checkpoint: one line, not a traceback
        print(f"python -m lgiformer.release: error: {err}", file=sys.stderr)
        return 2
    log.info("release written to %s", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
