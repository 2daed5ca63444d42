"""Running the project's command-line entry points from tests.

Every child starts in its own session, so a timeout (ours or pytest-timeout's) kills the whole process tree:
torchrun's workers and DataLoader workers included. ``subprocess.run(timeout=...)`` kills only the direct child, and
then blocks forever reading the pipes that the orphaned grandchildren still hold open.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def cli_env() -> dict[str, str]:
    """A single-process environment: unbuffered, one thread, and no distributed variables from the caller."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def start(args: list[str], **kwargs) -> subprocess.Popen:
    """``Popen`` of ``python ARGS`` from the repository root, in a new session (see ``kill_tree``)."""
    kwargs.setdefault("env", cli_env())
    return subprocess.Popen([PY, *map(str, args)], cwd=ROOT, start_new_session=True, **kwargs)


def kill_tree(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Signal every process of the child's session (its process group) and reap the child."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    proc.wait()


def run(args: list[str], timeout: float = 360, check: bool = True, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess:
    """``python ARGS`` with captured text output (``env``: default :func:`cli_env`); ``check`` asserts exit 0 and
    shows the output's tail otherwise.
    The default timeout stays under pytest-timeout's per-test limit (pytest.ini), so a stuck run fails here, with
    its output, rather than there."""
    proc = start(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env or cli_env())
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc)
        out, err = proc.communicate()
        raise AssertionError(f"`{' '.join(map(str, args))}` ran past {timeout} s\n{out[-3000:]}\n{err[-5000:]}")
    finally:
        if proc.poll() is None:  # interrupted (pytest-timeout, Ctrl-C): leave no process behind
            kill_tree(proc)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{out[-3000:]}\n{err[-5000:]}")
    return result
