"""LGI-Former / MAE-DFER: self-supervised video pretraining for dynamic facial expression recognition.

Importing the package registers its encoders with timm (``timm.create_model("lgiformer_base_patch16_160")``) and
gives :func:`load_release`; it imports neither DeepSpeed nor transformers.
"""
from lgiformer import _compat  # noqa: F401  (must run before torchvision / timm are imported)
from lgiformer import models  # noqa: F401  (registers the encoders with timm)
from lgiformer.models.release import load_release
from lgiformer.provenance import __version__

__all__ = ["__version__", "load_release", "models"]
