"""Interruptions as a cluster meets them: Slurm's time limit, a worker killed under torchrun, a kill during a
save. Real processes on CPU (torchrun with gloo for the multi-process ones).

The Slurm tests run the real batch scripts with stand-in ``srun`` (runs its command in its own place, so a signal
sent to it reaches the torchrun agent, as srun forwards it) and ``scontrol`` (``show hostnames`` prints localhost,
``requeue`` is recorded) first on PATH. Every run that was interrupted must end with the weights of an uninterrupted
run, bit for bit: the same checkpoint name, and ``torch.equal`` on every tensor.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from _cli import cli_env, kill_tree, run, start

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "tests" / "configs" / "tiny_pretrain.yaml"
# 2 processes x 1 clip of 8 videos: 4 steps per epoch, 12 in all
COMMON = ("--run.batch_size", "1", "--release_dir", "none", "--run.image_every", "0")
FINAL = "epoch0003_step00000012"

SRUN = """#!/bin/bash
# stand-in srun: records the CPUs its tasks would get, drops its own options, becomes the command
echo "srun SRUN_CPUS_PER_TASK=${SRUN_CPUS_PER_TASK:-unset}" >> "${FAKE_SLURM_LOG}"
while [[ $# -gt 0 && $1 == --* ]]; do shift; done
exec "$@"
"""
SCONTROL = """#!/bin/bash
# stand-in scontrol
case "$1" in
    show) echo localhost ;;
    requeue) echo "requeue $2" >> "${FAKE_SLURM_LOG}" ;;
    *) exit 1 ;;
esac
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from lgiformer.data import ensure_synthetic

    root = tmp_path_factory.mktemp("synthetic")
    ensure_synthetic(root, size=64, num_frames=12, unlabeled_clips=8, parts="unlabeled", progress=False)
    return root


def _args(out: Path, synthetic: Path, *extra: str) -> list[str]:
    return ["pretrain/run.py", "--config", str(CONFIG), "--run.output_dir", str(out), "--data.data_root",
            str(synthetic), *COMMON, *extra]


def _torchrun(*args: str) -> list[str]:
    return ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]


def _weights(out: Path) -> tuple[str, dict[str, torch.Tensor]]:
    from lgiformer.engine.checkpointer import find_checkpoint, read_fp32_state_dict

    ckpt = find_checkpoint(out)
    return ckpt.name, read_fp32_state_dict(ckpt)


def _assert_same_weights(out: Path, reference: tuple[str, dict[str, torch.Tensor]]) -> None:
    name, weights = _weights(out)
    assert name == reference[0] == FINAL
    assert weights.keys() == reference[1].keys()
    differ = [k for k in weights if not torch.equal(weights[k], reference[1][k])]
    assert not differ, f"{len(differ)} of {len(weights)} tensors differ from the uninterrupted run, e.g. {differ[:3]}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory, synthetic):
    """The uninterrupted 2-process run: its final checkpoint's name and weights."""
    out = tmp_path_factory.mktemp("reference") / "run"
    run(_torchrun(*_args(out, synthetic)))
    return _weights(out)


def _wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before {what}")
        if time.time() > deadline:
            kill_tree(proc)
            pytest.fail(f"no {what} within {timeout} s")
        time.sleep(0.05)


def _in_epoch_after_first_checkpoint(out: Path):
    """True once epoch 1 has taken a step, so its first checkpoint (end of epoch 0) is complete."""
    def check() -> bool:
        steps = out / "steps.jsonl"
        return steps.is_file() and any(json.loads(line)["epoch"] >= 1 for line in steps.read_text().splitlines()
                                       if line.endswith("}"))
    return check


@pytest.fixture
def fake_slurm(tmp_path):
    """PATH with the stand-ins first, and the variables Slurm gives a batch script on one node with 2 "GPUs"."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", SRUN), ("scontrol", SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "slurm.log"
    env = dict(cli_env(), PATH=os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), os.environ["PATH"]]),
               FAKE_SLURM_LOG=str(log), SLURM_JOB_ID="4242", SLURM_JOB_NODELIST="localhost", SLURM_NNODES="1",
               SLURM_GPUS_ON_NODE="2", SLURM_CPUS_PER_TASK="2", MASTER_PORT=str(_free_port()))
    return env, log


def _sbatch(script: str, env: dict[str, str], **variables: str) -> subprocess.Popen:
    return subprocess.Popen(["bash", f"scripts/slurm/{script}"], cwd=ROOT, env=dict(env, **variables),
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        kill_tree(proc)
    return out


def test_slurm_time_limit_requeues_and_the_requeued_job_ends_with_the_uninterrupted_weights(
        tmp_path, synthetic, reference, fake_slurm):
    """SIGTERM to the batch script (``--signal=B:TERM``) after the first checkpoint: the workers save mid-epoch,
    torchrun exits 1 all the same, and the job is requeued because the run left its PREEMPTED marker. The requeued
    job (the same script again) resumes and finishes with the weights of the run that was never stopped."""
    env, log = fake_slurm
    out = tmp_path / "out"
    variables = dict(RECIPE=str(CONFIG), OUT_DIR=str(out), EXTRA=f"--data.data_root {synthetic} {' '.join(COMMON)}")
    job = _sbatch("pretrain.sbatch", env, **variables)
    _wait_for(_in_epoch_after_first_checkpoint(out), job, "a step after the first checkpoint")
    job.send_signal(signal.SIGTERM)  # the batch shell only, as Slurm's B: signal
    text = _finish(job)
    assert job.returncode == 1, text[-3000:]  # torchrun's exit code after a SIGTERM: useless for the decision
    marker = json.loads((out / "PREEMPTED").read_text())
    assert marker["job_id"] == "4242"
    from lgiformer.engine.checkpointer import find_checkpoint, read_client_state

    assert marker["checkpoint"] == str(find_checkpoint(out))
    assert read_client_state(find_checkpoint(out))["loop"]["batch_in_epoch"] > 0  # saved mid-epoch, not lost
    assert log.read_text().splitlines() == ["srun SRUN_CPUS_PER_TASK=2", "requeue 4242"]

    again = _sbatch("pretrain.sbatch", env, **variables)  # the requeued job
    text = _finish(again)
    assert again.returncode == 0, text[-3000:]
    assert "resumed from" in (out / "run.log").read_text()
    assert not (out / "PREEMPTED").exists()
    assert log.read_text().splitlines() == ["srun SRUN_CPUS_PER_TASK=2", "requeue 4242", "srun SRUN_CPUS_PER_TASK=2"]
    _assert_same_weights(out, reference)


def test_finetune_array_task_requeues_itself_on_sigterm(tmp_path, fake_slurm):
    """finetune_folds.sbatch: the same handling; the array task's own job id is requeued, and its fold's folder
    holds the marker."""
    env, log = fake_slurm
    root = tmp_path / "folds"
    extra = ("--data.data_root", str(tmp_path / "data"), "--run.batch_size", "1", "--optim.epochs", "3",
             "--release_dir", "none", "--data.test_num_clips", "1", "--data.test_num_crops", "1")
    job = _sbatch("finetune_folds.sbatch", dict(env, SLURM_JOB_ID="4300", SLURM_ARRAY_JOB_ID="4298",
                                                SLURM_ARRAY_TASK_ID="2"),
                  RECIPE="tests/configs/tiny_finetune.yaml", PRETRAINED="none", OUT_ROOT=str(root),
                  EXTRA=" ".join(extra))
    _wait_for(_in_epoch_after_first_checkpoint(root / "fold2"), job, "a step after the first checkpoint")
    job.send_signal(signal.SIGTERM)
    text = _finish(job)
    assert json.loads((root / "fold2" / "PREEMPTED").read_text())["job_id"] == "4300", text[-3000:]
    assert log.read_text().splitlines() == ["srun SRUN_CPUS_PER_TASK=2", "requeue 4300"]


def _workers(agent: int) -> list[int]:
    """The pids of the torchrun agent's worker processes (its children running pretrain/run.py)."""
    children = []
    for task in Path(f"/proc/{agent}/task").iterdir():
        children += [int(p) for p in (task / "children").read_text().split()]
    return [p for p in children if "pretrain/run.py" in Path(f"/proc/{p}/cmdline").read_text()]


def test_a_worker_killed_under_torchrun_is_restarted_and_the_run_ends_with_the_uninterrupted_weights(
        tmp_path, synthetic, reference):
    """torchrun --max-restarts 1: SIGKILL to one of the two workers mid-epoch; the agent restarts the group, which
    resumes on its own (--run.resume auto) from the newest complete checkpoint."""
    out = tmp_path / "run"
    # a fresh store per restart (without it 2 of 4 restarts failed: pytorch/pytorch#135712); and the surviving
    # worker may wait on its dead peer, so torchrun's grace before it SIGKILLs it is short
    env = dict(cli_env(), TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1", TORCH_ELASTIC_SHUTDOWN_TIMEOUT="5")
    agent = start(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max-restarts=1",
                   *_args(out, synthetic, "--run.resume", "auto")], env=env, stdout=subprocess.PIPE,
                  stderr=subprocess.STDOUT, text=True)
    _wait_for(_in_epoch_after_first_checkpoint(out), agent, "a step after the first checkpoint")
    workers = _workers(agent.pid)
    assert len(workers) == 2
    os.kill(workers[1], signal.SIGKILL)
    text = _finish(agent)
    assert agent.returncode == 0, text[-3000:]
    log = (out / "run.log").read_text()
    assert log.count("resume auto: no complete checkpoint") == 1 and log.count("resumed from") == 1
    assert "torchrun restarted the worker group (restart 1 of 1)" in log
    assert "TORCH_DISABLE_SHARE_RDZV_TCP_STORE" not in log
    _assert_same_weights(out, reference)


def test_a_torchrun_launch_with_restarts_but_a_shared_store_is_warned_about(monkeypatch):
    from lgiformer.distributed import elastic_restart_warning

    monkeypatch.delenv("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", raising=False)
    monkeypatch.delenv("TORCHELASTIC_MAX_RESTARTS", raising=False)
    assert elastic_restart_warning() is None  # not torchrun
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "0")
    assert elastic_restart_warning() is None  # no restarts
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "1")
    assert "set TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in elastic_restart_warning()
    monkeypatch.setenv("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    assert elastic_restart_warning() is None


KILL_MID_SAVE = """
import os, runpy, signal, sys
import torch

real_save = torch.save


def save(obj, f, *args, **kwargs):  # DeepSpeed writes every checkpoint file with torch.save
    real_save(obj, f, *args, **kwargs)
    if "/.tmp_epoch0002" in str(f):  # the first file of the second checkpoint: cut it short and die
        os.truncate(f, os.path.getsize(f) // 2)
        os.kill(os.getpid(), signal.SIGKILL)


torch.save = save
sys.argv = ["pretrain/run.py", *sys.argv[1:]]
runpy.run_path("pretrain/run.py", run_name="__main__")
"""


def test_sigkill_in_the_middle_of_a_save_leaves_the_previous_checkpoint_and_resume_ends_with_the_same_weights(
        tmp_path, synthetic):
    """One process, killed while DeepSpeed writes the second checkpoint (its first file half written). The
    half-written save is never read; resume continues from the first checkpoint and ends with the weights of the
    uninterrupted run, bit for bit; the next save clears the leftover."""
    from lgiformer.engine.checkpointer import complete_checkpoints

    single = ("--run.batch_size", "2")  # 1 process x 2 clips: 4 steps per epoch, as in the 2-process runs
    full, cut = tmp_path / "full", tmp_path / "cut"
    run(_args(full, synthetic, *single))
    killed = run(["-c", KILL_MID_SAVE, *_args(cut, synthetic, *single)[1:]], check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert [c.name for c in complete_checkpoints(cut / "checkpoints")] == ["epoch0001_step00000004"]
    partial = cut / "checkpoints" / ".tmp_epoch0002_step00000008"
    assert [p.name for p in partial.iterdir()] == ["mp_rank_00_model_states.pt"]
    run(_args(cut, synthetic, *single, "--run.resume", "auto"))
    assert not partial.exists()
    _assert_same_weights(cut, _weights(full))
