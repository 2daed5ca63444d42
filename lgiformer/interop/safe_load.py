"""The one way this project reads a pickled ``.pth`` / ``.pt`` file: foreign weights and our own training
checkpoints alike.

Two gates, both before any object is built:
1. a static scan of the pickle program: every global it names must be on a short fixed list (tensor rebuild
   functions, storage types, dtypes, ``collections.OrderedDict``, ``argparse.Namespace`` and a few builtins that
   ``torch.save`` uses for plain data; for training checkpoints also the three small DeepSpeed classes its optimiser
   states hold); opcodes that fetch objects in other ways are refused outright;
2. the weights-only unpickler of ``torch.load`` with exactly those classes added to torch's own allowlist.
Nothing in the file is ever called unless it passed both. Anything else raises :class:`UnsafeCheckpointError`.

DeepSpeed reads its checkpoint files itself, with ``torch.load(weights_only=False)``. Its loads run inside
:func:`weights_only_loads`, which forces every ``torch.load`` to the weights-only unpickler for its duration, after
:func:`check_files` has scanned every file the load can touch.
"""
from __future__ import annotations

import _compat_pickle
import argparse
import contextlib
import importlib
import io
import os
import pickle
import pickletools
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator

import torch

from lgiformer.errors import InputError

__all__ = ["DEEPSPEED_GLOBALS", "CorruptFileError", "UnsafeCheckpointError", "check_files", "load_checkpoint", "scan_globals",
           "weights_only_loads"]

# What DeepSpeed's own checkpoint files need beyond tensors and plain containers (read off ZeRO 0-3, fp32 and
# bf16 checkpoints of version 0.19): the loss-scaler object, the ZeRO stage enum and a fragment record in the
# optimiser states, and tensor subclass rebuilding in ZeRO 3 states. Each is plain data once built.
DEEPSPEED_GLOBALS = ("deepspeed.runtime.fp16.loss_scaler.LossScaler", "deepspeed.runtime.zero.config.ZeroStageEnum",
                     "deepspeed.utils.tensor_fragment.fragment_address", "torch.Tensor",
                     "torch._tensor._rebuild_from_type_v2")

# Opcodes that obtain a callable other than through a named GLOBAL/INST: never accepted.
_FORBIDDEN_OPCODES = {"STACK_GLOBAL", "EXT1", "EXT2", "EXT4"}
_LEGACY_PICKLES = 4  # legacy (non-zip) torch.save: magic, protocol, sys info, the object; then storage keys


class UnsafeCheckpointError(InputError):
    """The file needs Python objects beyond tensors, plain containers and ``argparse.Namespace``."""


class CorruptFileError(InputError):
    """The file is not a readable torch file (truncated, garbled, empty): nothing in it can run either."""


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
        raise CorruptFileError(f"cannot read the pickle program: {err}") from err
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


def check_files(paths: Iterable[str | os.PathLike], extra_globals: Iterable[str] = ()) -> None:
    """Scan every file in ``paths`` (torch files only; folders are searched for ``*.pt`` / ``*.pth``) without running
    anything; :class:`UnsafeCheckpointError` names the first file that needs a global outside the allowlist
    (plus ``extra_globals``)."""
    allowed = _allowed_globals() | set(extra_globals)
    for path in _torch_files(paths):
        try:
            found = scan_globals(path)
        except UnsafeCheckpointError as err:
            raise UnsafeCheckpointError(f"refusing to load {path}: {err}") from None
        except (CorruptFileError, OSError, zipfile.BadZipFile) as err:
            raise CorruptFileError(f"{path}: not a readable torch file ({err})") from None
        bad = sorted({g for g in found if g not in allowed})
        if bad:
            raise UnsafeCheckpointError(
                f"refusing to load {path}: it needs Python objects beyond tensors, plain containers and "
                f"argparse.Namespace ({', '.join(bad)}). "
                "Nothing from the file was executed. If you trust its origin, re-save just its state dict (a dict "
                "of tensors) and load that.")


def _torch_files(paths: Iterable[str | os.PathLike]) -> Iterator[Path]:
    for path in map(Path, paths):
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.suffix in (".pt", ".pth") and p.is_file())
        else:
            yield path


@contextlib.contextmanager
def weights_only_loads(extra_globals: Iterable[str] = ()) -> Iterator[None]:
    """Every ``torch.load`` inside the block, a library's included (DeepSpeed passes ``weights_only=False``), runs
    the weights-only unpickler, with ``extra_globals`` (names from a fixed list such as :data:`DEEPSPEED_GLOBALS`)
    added to torch's allowlist. Scan the files with :func:`check_files` first: that gate names the file."""
    classes = [_resolve(name) for name in extra_globals]
    previous = os.environ.get(_FORCE_WEIGHTS_ONLY)
    os.environ[_FORCE_WEIGHTS_ONLY] = "1"  # read by torch.load at every call
    try:
        with torch.serialization.safe_globals(classes):
            yield
    finally:
        if previous is None:
            os.environ.pop(_FORCE_WEIGHTS_ONLY, None)
        else:
            os.environ[_FORCE_WEIGHTS_ONLY] = previous


_FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"


def _resolve(name: str) -> Any:
    module, _, attr = name.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    extra_globals: Iterable[str] = ()) -> Any:
    """Load a ``torch.save`` file holding only tensors, plain containers and ``argparse.Namespace`` (plus
    ``extra_globals``, names from a fixed list such as :data:`DEEPSPEED_GLOBALS`).

    Raises :class:`UnsafeCheckpointError` (before anything in the file is executed) if it needs anything else."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(path)
    check_files([path], extra_globals)
    try:
        with weights_only_loads(extra_globals), torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(f"refusing to load {path}: the weights-only loader rejected it: {err}") from err
