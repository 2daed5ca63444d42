"""No silent hang at start-up: runs build no C++ op, and a JIT build lock with no live builder is reported.

torch's JIT builder creates ``<extensions>/<op>/lock``, keeps it open while it builds and deletes it at the end;
every other process polls for the lock to disappear, with no time limit. A build killed half-way leaves the lock,
and then every later DeepSpeed start on CPU (which built ``deepspeed_shm_comm``) waited forever, silently.
"""
import os
import subprocess
import sys
import time
from pathlib import Path


from _cli import cli_env, kill_tree, run
from lgiformer.engine import ds

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "tests" / "configs" / "tiny_pretrain.yaml"


def _holder(path: Path) -> subprocess.Popen:
    """A process that holds ``path`` open, as a builder holds its lock."""
    proc = subprocess.Popen([sys.executable, "-c", f"f = open({str(path)!r}); import time; print('open', flush=True); "
                             "time.sleep(600)"], stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdout.readline().strip() == "open"
    return proc


def test_a_lock_nobody_holds_is_stale_and_a_held_one_is_not(tmp_path, caplog):
    held, left = tmp_path / "cpu_adam" / "lock", tmp_path / "py311_cpu" / "deepspeed_shm_comm" / "lock"
    for lock in (held, left):
        lock.parent.mkdir(parents=True)
        lock.touch()
    (tmp_path / "fused_adam").mkdir()  # a finished build: no lock
    builder = _holder(held)
    try:
        with caplog.at_level("WARNING", logger="lgiformer.engine.ds"):
            assert ds.report_stale_build_locks(tmp_path) == [left]
    finally:
        kill_tree(builder)
    assert [r.getMessage() for r in caplog.records] == [
        f"{left}: a JIT build lock that no process on this machine holds (left by an interrupted build 0 min ago); "
        f"any build of that op would wait on it forever: remove it with rm {left}"]
    assert held.exists() and left.exists()  # reported, never removed
    assert sorted(ds.stale_build_locks(tmp_path)) == sorted([held, left])  # the builder is gone
    assert ds.stale_build_locks(tmp_path / "absent") == []


def test_the_environment_folder_is_used_unless_the_user_set_one(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    monkeypatch.delenv(ds.EXTENSIONS_ENV, raising=False)
    ds.use_environment_extensions()
    assert ds.EXTENSIONS_ENV not in os.environ  # install.sh did not make the folder: torch's default stays
    (tmp_path / "torch_extensions").mkdir()
    ds.use_environment_extensions()
    assert os.environ[ds.EXTENSIONS_ENV] == str(tmp_path / "torch_extensions") == str(ds.extensions_root())
    monkeypatch.setenv(ds.EXTENSIONS_ENV, str(tmp_path / "mine"))
    ds.use_environment_extensions()
    assert os.environ[ds.EXTENSIONS_ENV] == str(tmp_path / "mine")


def test_a_run_after_an_interrupted_build_starts_reports_the_lock_and_builds_nothing(tmp_path):
    """A real DeepSpeed build of the shared-memory op, killed as soon as it holds its lock, as a Ctrl-C or a job
    time limit during a first run leaves it. A pretraining run in the same extensions folder then trains to the
    end instead of waiting forever, builds nothing, and names the lock in one warning line."""
    from lgiformer.data import ensure_synthetic

    extensions = tmp_path / "extensions"
    env = dict(cli_env(), TORCH_EXTENSIONS_DIR=str(extensions))
    build = subprocess.Popen([sys.executable, "-c", "from deepspeed.comm.torch import build_shm_op; build_shm_op()"],
                             env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lock = extensions / ds.SHM_OP / "lock"
    deadline = time.time() + 240
    while not lock.exists() and build.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    kill_tree(build)
    assert lock.is_file(), "the build never took its lock"
    assert not list(extensions.rglob("*.so"))  # killed before it finished

    data = tmp_path / "data"
    ensure_synthetic(data, size=64, num_frames=12, unlabeled_clips=8, parts="unlabeled", progress=False)
    out = tmp_path / "run"
    proc = run(["pretrain/run.py", "--config", CONFIG, "--run.output_dir", out, "--data.data_root", data,
                "--optim.epochs", "1", "--run.max_steps_per_epoch", "2", "--release_dir", "none"], timeout=240,
               env=env)
    assert (out / "checkpoints" / "epoch0001_step00000002").is_dir()
    assert f"{lock}: a JIT build lock that no process on this machine holds" in proc.stdout
    assert f"rm {lock}" in proc.stdout
    assert lock.is_file() and not list(extensions.rglob("*.so"))
