"""Importers for foreign weights and the release they are written to.

- ``import_mae_dfer(path)``: reference MAE-DFER ``.pth`` (pretraining or finetuned) -> LGIFormer;
- ``import_videomae(path)``: official VideoMAE ``.pth`` -> VideoViT;
- ``import_pretraining_model(path, fmt)``: a reference pretraining ``.pth`` -> our whole masked autoencoder
  (encoder, decoder, mask token), to continue pretraining;
- ``import_hf_videomae(folder)`` / ``export_hf_videomae(model, folder)``: transformers VideoMAE <-> VideoViT;
- ``load_checkpoint(path)``: the only ``.pth`` reader in the project (tensors, plain containers and
  ``argparse.Namespace`` only).
Each importer returns an :class:`Imported` (model, source, assumptions) and infers the architecture from the
weights; ``write_imported`` stores it as a release and ``load_release`` reads one back.
"""
from __future__ import annotations

import os
from pathlib import Path


from lgiformer.interop.hf_videomae import compare_with_transformers, export_hf_videomae, import_hf_videomae
from lgiformer.interop.mae_dfer import import_mae_dfer
from lgiformer.interop.reference import Imported, import_pretraining_model
from lgiformer.interop.safe_load import UnsafeCheckpointError, load_checkpoint
from lgiformer.interop.videomae import import_videomae
from lgiformer.models.release import load_release, write_release

__all__ = ["Imported", "UnsafeCheckpointError", "compare_with_transformers", "export_hf_videomae",
           "import_hf_videomae", "import_mae_dfer", "import_pretraining_model", "import_videomae", "load_checkpoint",
           "load_release", "write_imported"]


def write_imported(imported: Imported, out_dir: str | os.PathLike, **extra) -> Path:
    """Write an imported model as a release (safetensors + config.json + model card): a classifier's task is dfer,
    an encoder's pretrain (its weights come from pretraining). ``extra`` goes into config.json (``class_names``,
    ``data``)."""
    task = "dfer" if imported.model.model_args.get("num_classes") else "pretrain"
    return write_release(imported.model, out_dir, task=task, source=imported.source, notes=imported.summary(),
                         **extra)
