"""The one way this project reads a pickled ``.pth`` / ``.pt`` file.

Two gates, both before any object is built:
1. a static scan of the pickle program: every global it names must be on a short fixed list (tensor rebuild
   functions, storage types, dtypes, ``collections.OrderedDict``, ``argparse.Namespace`` and a few builtins that
   ``torch.save`` uses for plain data); opcodes that fetch objects in other ways are refused outright;
2. ``torch.load(weights_only=True)`` with exactly ``argparse.Namespace`` added to torch's own allowlist.
Nothing in the file is ever called unless it passed both. Anything else raises :class:`UnsafeCheckpointError`.
"""
from __future__ import annotations

import _compat_pickle
import argparse
import io
import os
import pickle
import pickletools
import zipfile
from functools import lru_cache
from typing import Any, BinaryIO

import torch

__all__ = ["UnsafeCheckpointError", "load_checkpoint", "scan_globals"]

# Opcodes that obtain a callable other than through a named GLOBAL/INST: never accepted.
_FORBIDDEN_OPCODES = {"STACK_GLOBAL", "EXT1", "EXT2", "EXT4"}
_LEGACY_PICKLES = 4  # legacy (non-zip) torch.save: magic, protocol, sys info, the object; then storage keys


class UnsafeCheckpointError(ValueError):
    """The file needs Python objects beyond tensors, plain containers and ``argparse.Namespace``."""


@lru_cache(maxsize=1)
def _allowed_globals() -> frozenset[str]:
    names = {"collections.OrderedDict", "argparse.Namespace", "torch.Size", "torch.device", "_codecs.encode",
             "builtins.set", "builtins.bytearray", "builtins.complex", "torch.nn.parameter.Parameter",
             "torch.storage.UntypedStorage", "torch.storage.TypedStorage", "torch.serialization._get_layout"}
    names |= {f"torch._utils.{n}" for n in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3",
                                            "_rebuild_parameter", "_rebuild_parameter_with_state")}
    names |= {f"torch.{n}" for n in dir(torch) if n.endswith("Storage") and n[:1].isupper()}
    names |= {str(v) for v in vars(torch).values() if isinstance(v, torch.dtype)}  # "torch.float32", ...
    return frozenset(names)


def _python3_name(module: str, name: str) -> str:
    """``module.name`` as Python 3 resolves it (protocol-2 pickles spell ``builtins`` as ``__builtin__``)."""
    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
    return f"{_compat_pickle.IMPORT_MAPPING.get(module, module)}.{name}"


def _pickle_globals(stream: BinaryIO) -> list[str]:
    """Globals named by one pickle program read from ``stream`` (left just after its STOP opcode)."""
    found = []
    try:
        for op, arg, _ in pickletools.genops(stream):
            if op.name in _FORBIDDEN_OPCODES:
                found.append(f"<pickle opcode {op.name}>")
            elif op.name in ("GLOBAL", "INST"):
                found.append(_python3_name(*str(arg).split(" ", 1)))
    except Exception as err:  # a truncated or garbled program
        raise UnsafeCheckpointError(f"cannot read the pickle program: {err}") from err
    return found


def scan_globals(path: str | os.PathLike) -> list[str]:
    """Every global (``module.name``) the pickle program(s) in a torch file would look up. Runs nothing."""
    path = os.fspath(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            pkls = [n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            if len(pkls) != 1:
                raise UnsafeCheckpointError(f"{path}: not a torch.save file (found {len(pkls)} data.pkl records)")
            if any(n.endswith("constants.pkl") for n in zf.namelist()):
                raise UnsafeCheckpointError(f"{path}: a TorchScript archive, not a checkpoint")
            return _pickle_globals(io.BytesIO(zf.read(pkls[0])))
    found = []
    with open(path, "rb") as f:  # legacy format: a few pickles back to back, then raw storage bytes
        for _ in range(_LEGACY_PICKLES):
            if not f.peek(1):  # a plain pickle ends after one program
                break
            found += _pickle_globals(f)
    return found


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Load a ``torch.save`` file holding only tensors, plain containers and ``argparse.Namespace``.

    Raises :class:`UnsafeCheckpointError` (before anything in the file is executed) if it needs anything else."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(path)
    allowed = _allowed_globals()
    bad = sorted({g for g in scan_globals(path) if g not in allowed})
    if bad:
        raise UnsafeCheckpointError(
            f"refusing to load {path}: it needs Python objects beyond tensors, plain containers and "
            f"argparse.Namespace ({', '.join(bad)}). Nothing from the file was executed. If you trust its origin, "
            "re-save just its state dict (a dict of tensors) and convert that.")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(f"refusing to load {path}: the weights-only loader rejected it: {err}") from err
