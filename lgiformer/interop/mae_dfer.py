"""Importer for the reference MAE-DFER checkpoints (pretraining and finetuned LGI-Former ``.pth``)."""
from __future__ import annotations

import os
from typing import Sequence

from lgiformer.interop.infer import MAE_DFER_DEFAULTS
from lgiformer.interop.reference import Imported, import_reference

__all__ = ["MAE_DFER_DEFAULTS", "import_mae_dfer"]


def import_mae_dfer(path: str | os.PathLike, *, num_heads: int | None = None, img_size: int | None = None,
                    num_frames: int | None = None, region_size: Sequence[int] | None = None,
                    global_pool: str | None = None, checkpoint_key: str | None = None) -> Imported:
    """LGI-Former from a reference MAE-DFER ``.pth``. A finetuned file gives the classifier (pooling "region",
    the released setting, unless its args say otherwise); a pretraining file gives the encoder by the reference
    finetuning rule: ``model(clips)`` returns fc_norm(mean of the representative tokens), with ``fc_norm`` fresh."""
    return import_reference(path, "mae-dfer", expect="lgiformer", defaults=MAE_DFER_DEFAULTS, num_heads=num_heads,
                            img_size=img_size, num_frames=num_frames, region_size=region_size,
                            global_pool=global_pool, checkpoint_key=checkpoint_key)
