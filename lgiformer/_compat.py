"""Import-time compatibility fix, applied before timm is first imported.

The package registry serves no CPU build of torchvision: torchvision 0.28.0 is a CUDA build whose compiled ops do
not load against the CPU torch 2.13.0, and its ``_meta_registrations`` then fails on import with
``operator torchvision::nms does not exist`` (so ``import timm`` fails too). When, and only when, that exact failure
happens, we define the two missing operator schemas and import again. timm's models and layers and
torchvision.transforms then work; only torchvision's C++ ops (nms, roi_align), which this project never uses, stay
unavailable. A matching torch/torchvision pair (any GPU install) imports on the first try and is left untouched.
"""
from __future__ import annotations

import sys

import torch

_MISSING_OP_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_library = None  # kept alive: dropping the Library object would unregister the schemas
TORCHVISION_OPS_PATCHED = False


def import_torchvision() -> None:
    """Import torchvision, defining its missing op schemas if its compiled extension does not match torch."""
    global _library, TORCHVISION_OPS_PATCHED
    try:
        import torchvision  # noqa: F401
    except ImportError:
        return  # not installed: timm will say so itself where it is needed
    except RuntimeError as err:
        if "torchvision::nms" not in str(err):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        _library = torch.library.Library("torchvision", "DEF")
        for schema in _MISSING_OP_SCHEMAS:
            _library.define(schema)
        TORCHVISION_OPS_PATCHED = True
        import torchvision  # noqa: F401,F811


import_torchvision()
