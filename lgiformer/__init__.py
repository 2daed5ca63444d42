"""LGI-Former / MAE-DFER: self-supervised video pretraining for dynamic facial expression recognition."""
from lgiformer import _compat  # noqa: F401  (must run before torchvision / timm are imported)

__version__ = "0.1.0"


def load_release(path):  # noqa: ANN001,ANN201 - thin re-export, documented in lgiformer.release
    """Load a release folder (``model.safetensors`` + ``config.json``) as a model ready for ``model(clips)``."""
    from lgiformer.release import load_release as _load

    return _load(path)
