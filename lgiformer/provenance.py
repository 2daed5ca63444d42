"""Which code made a file, and who may read it: the package version and, in a git checkout, the commit (``-dirty``
with uncommitted changes), written into every run's resolved ``config.yaml`` and every release's ``config.json``;
files that follow the user's umask, so that results can be shared on a cluster like any other output."""
from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Iterator

__version__ = "0.2.0"


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the running code, or None outside a git checkout (an installed wheel)."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


def follow_umask(path: str | os.PathLike) -> None:
    """Give a file the permissions the user's umask gives any new file (safetensors writes 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


@contextlib.contextmanager
def atomic_directory(out: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty sibling folder of ``out`` to fill; when the block ends, it replaces ``out`` (complete or absent,
    never half-written); on an error it is removed. Made with the user's umask: ``tempfile.mkdtemp`` would make the
    result private."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def code_version() -> dict[str, str | None]:
    return {"lgiformer": __version__, "git_commit": git_commit()}
