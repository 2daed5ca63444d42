"""Finetune a pretrained encoder for dynamic facial expression recognition or action unit detection, then test it.

    python finetune/run.py                                  # the demo: synthetic labeled set, demo release
    python finetune/run.py --config finetune/configs/dfew.yaml --fold 1 \
        --pretrained releases/lgiformer_base_voxceleb2 --data.data_root /data/DFEW
    torchrun --standalone --nproc_per_node 4 finetune/run.py --config finetune/configs/mafw.yaml --fold 3 ...
    python finetune/run.py --config finetune/configs/bp4d.yaml --fold 1 --data.data_root /data/BP4D   # AUs

``--pretrained`` takes our release, a reference MAE-DFER checkpoint (pretraining or finetuned), a VideoMAE
checkpoint or Hugging Face folder, or ``none``. Any config key can be overridden with ``--section.key value``.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from lgiformer import engine  # noqa: E402
from lgiformer.config import config_main  # noqa: E402
from lgiformer.tasks import finetune_task, load_finetune_config  # noqa: E402

DEMO = Path(__file__).with_name("configs") / "demo.yaml"


def main(argv: list[str]) -> int:
    return config_main(argv, prog="finetune/run.py", doc=__doc__, default_config=DEMO, load=load_finetune_config,
                       run=lambda cfg: engine.run(cfg, finetune_task(cfg)))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
