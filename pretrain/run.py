"""Masked video pretraining (MAE-DFER) on face video.

    python pretrain/run.py                                   # the demo: synthetic data, small model, CPU friendly
    python pretrain/run.py --config pretrain/configs/voxceleb2_lgiformer_base.yaml --data.data_root /data/vox2
    torchrun --standalone --nproc_per_node 8 pretrain/run.py --config ... --run.resume auto
    python pretrain/run.py --config ... --run.batch_size 32 optim.epochs=50   # any key: --section.key value

The recipe (YAML) sets the defaults; any key can be overridden on the command line; the resolved config and the
effective learning rate are saved next to the checkpoints. See README.md for multi-node and Slurm.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from lgiformer import engine  # noqa: E402
from lgiformer.config import config_main  # noqa: E402
from lgiformer.tasks import PretrainTask, load_pretrain_config  # noqa: E402

DEMO = Path(__file__).with_name("configs") / "demo.yaml"


def main(argv: list[str]) -> int:
    return config_main(argv, prog="pretrain/run.py", doc=__doc__, default_config=DEMO, load=load_pretrain_config,
                       run=lambda cfg: engine.run(cfg, PretrainTask))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
