"""Turn a run's training checkpoint into a release (see :mod:`lgiformer.models.release` for the format).

    python -m lgiformer.release --checkpoint output/pretrain/demo/checkpoints --out releases/demo

takes the newest complete training checkpoint of a pretraining run (any ZeRO stage: shards are consolidated) and
writes its encoder. Finetuning runs write their release themselves, from the selected weights.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from lgiformer.engine.checkpointer import find_checkpoint, read_client_state, read_fp32_state_dict
from lgiformer.models import build_model
from lgiformer.models.release import IMAGENET_MEAN, IMAGENET_STD, write_release

log = logging.getLogger(__name__)

__all__ = ["main", "release_from_checkpoint"]


def release_from_checkpoint(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, overwrite: bool = False
                            ) -> Path:
    """Encoder release from a pretraining checkpoint (a run's checkpoint folder or one checkpoint in it)."""
    ckpt = find_checkpoint(checkpoint)
    state = read_client_state(ckpt)
    encoder = build_model(state["model_name"], state["model_args"], str(ckpt / "COMPLETE.json"))
    sd = read_fp32_state_dict(ckpt)
    prefix = "encoder."
    encoder_sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    if not encoder_sd:
        raise ValueError(f"{ckpt}: no encoder.* weights (is this a pretraining checkpoint?)")
    training = dict(state.get("summary", {}), epoch=state.get("epoch"), step=state.get("step"))
    return write_release(encoder, out_dir, task="pretrain", state_dict=encoder_sd, overwrite=overwrite,
                         source=dict(format="lgiformer-pretrain-checkpoint", file=str(ckpt)), training=training,
                         mean=state.get("mean", IMAGENET_MEAN), std=state.get("std", IMAGENET_STD),
                         notes="Encoder of a masked-autoencoder pretraining run; finetune it with finetune/run.py "
                               "--model.pretrained <this folder>.")


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
