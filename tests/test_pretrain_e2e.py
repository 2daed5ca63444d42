"""End to end: pretrain/run.py in one process and under torchrun, resume after SIGKILL, release round trip."""
import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from _cli import kill_tree, run, start

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "tests" / "configs" / "tiny_pretrain.yaml"


@pytest.fixture
def synthetic(tiny_unlabeled):
    return tiny_unlabeled


def _args(out, synthetic, *extra):
    return ["--config", str(CONFIG), "--run.output_dir", str(out), "--data.data_root", str(synthetic), *extra]


def _pretrain(out, synthetic, *extra, nproc=1, check=True):
    launcher = [] if nproc == 1 else ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return run([*launcher, "pretrain/run.py", *_args(out, synthetic, *extra)], check=check)


def _steps(out):
    """Last logged loss of every optimiser step (a resumed run logs the replayed steps again)."""
    losses = {}
    for line in (Path(out) / "steps.jsonl").read_text().splitlines():
        rec = json.loads(line)
        losses[(rec["epoch"], rec["batch"])] = rec["loss"]
    return losses


def test_single_process_run_leaves_everything(tmp_path, synthetic):
    out = tmp_path / "run"
    # 2 of the 8 videos held out: 6 train (3 steps of 2 per epoch), the held-out loss after epoch 2 and at the end
    _pretrain(out, synthetic, "--eval.heldout_fraction", "0.25", "--eval.every", "2", "--eval.heldout_views", "2")
    epochs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [0, 1, 2]
    assert all(e["train_loss"] > 0 for e in epochs)
    sites = {f"features/{s}_{k}" for s in ("encoder", "decoder", "head_input") for k in ("std", "norm")}
    assert all(sites <= set(e) and all(e[k] > 0 for k in sites) for e in epochs)
    assert ["heldout/loss" in e for e in epochs] == [False, True, False]
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.startswith("epoch"))
    assert ckpts == ["epoch0001_step00000003", "epoch0002_step00000006", "epoch0003_step00000009"]
    assert (out / "config.yaml").is_file() and "effective_lr" in (out / "config.yaml").read_text()
    assert list((out / "images").glob("*.png")) and list((out / "tensorboard").iterdir())
    # the release: safetensors + config.json, and the same encoder outputs as the checkpoint's weights
    import lgiformer
    from lgiformer.engine.checkpointer import find_checkpoint, read_fp32_state_dict

    release = out / "release"
    config = json.loads((release / "config.json").read_text())
    assert config["format"] == "lgiformer-release" and config["model_args"]["embed_dim"] == 32
    assert config["training"]["step"] == 9
    heldout = config["training"]["heldout"]
    assert (heldout["videos"], heldout["clips"]) == (2, 4)
    assert all(heldout[p]["loss"] > 0 for p in ("model", "visible_mean", "zero"))
    assert set(heldout["wins"]) == {"visible_mean", "zero"} and all(0 <= w <= 1 for w in heldout["wins"].values())
    assert config["training"]["features"]["encoder"]["std_last"] == epochs[-1]["features/encoder_std"]
    card = (release / "README.md").read_text()
    assert "## Held-out reconstruction" in card and "## Feature health" in card
    assert (release / "heldout_reconstruction.png").stat().st_size > 0
    encoder = lgiformer.load_release(release)
    sd = read_fp32_state_dict(find_checkpoint(out))
    weights = load_file(str(release / "model.safetensors"))
    assert set(weights) == {k[len("encoder."):] for k in sd if k.startswith("encoder.")}
    assert all(torch.equal(weights[k], sd["encoder." + k]) for k in weights)
    clips = torch.randn(2, 3, 4, 64, 64)
    from lgiformer.models import create_model

    again = create_model(config["model_name"], **config["model_args"]).eval()
    again.load_state_dict({k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")})
    with torch.no_grad():
        torch.testing.assert_close(encoder.forward_features(clips), again.forward_features(clips))
    # the decoder beside the encoder: the whole autoencoder of the checkpoint comes back, and visualize shows it
    from lgiformer.models.release import load_masked_autoencoder

    mae = load_masked_autoencoder(release)
    assert mae.state_dict().keys() == sd.keys()
    assert all(torch.equal(mae.state_dict()[k], v) for k, v in sd.items())
    assert config["data"]["sampling_rate"] == 2 and config["decoder"]["mask_ratio"] == mae.masker.mask_ratio
    video = sorted((synthetic / "unlabeled").rglob("*.mp4"))[0]
    shown = run(["-m", "lgiformer.visualize", "--model", release, video, "--out", tmp_path / "vis", "--json"])
    result = json.loads(shown.stdout)["results"][0]
    assert Path(result["png"]).is_file() and result["losses"]["model"]["loss"] > 0
    # the same release from the checkpoint, by the command
    run(["-m", "lgiformer.release", "--checkpoint", out / "checkpoints", "--out", tmp_path / "again"])
    assert load_masked_autoencoder(tmp_path / "again").state_dict().keys() == sd.keys()
    run(["-m", "lgiformer.release", "--checkpoint", out / "checkpoints", "--out", tmp_path / "encoder_only",
         "--without-decoder"])
    assert not (tmp_path / "encoder_only" / "decoder.safetensors").exists()


def test_two_processes_match_one_process(tmp_path, synthetic):
    """Same global batch (2 x 2 vs 1 x 4): the same weights after the same steps, within fp32 tolerance."""
    one, two = tmp_path / "one", tmp_path / "two"
    common = ("--optim.epochs", "2", "--release_dir", "none")
    _pretrain(one, synthetic, "--run.batch_size", "4", *common)
    _pretrain(two, synthetic, "--run.batch_size", "2", *common, nproc=2)
    from lgiformer.engine.checkpointer import find_checkpoint, read_fp32_state_dict

    a, b = read_fp32_state_dict(find_checkpoint(one)), read_fp32_state_dict(find_checkpoint(two))
    assert find_checkpoint(one).name == find_checkpoint(two).name == "epoch0002_step00000004"
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=2e-5, msg=key)
    assert any(not torch.equal(a[k], torch.zeros_like(a[k])) for k in a)


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_checkpoint_of_two_processes_resumes_in_one_with_its_optimiser_state(tmp_path, synthetic, stage):
    """DeepSpeed refuses to load a ZeRO 1-3 checkpoint on another number of processes. It is converted to the
    universal format, and the moved run takes the same steps as the 2-process run: the same weights at the end
    (a fresh optimiser state would not give them). Stage 3 also logs images, a forward that every process must run."""
    from lgiformer.engine.checkpointer import find_checkpoint, read_fp32_state_dict

    two, moved = tmp_path / "two", tmp_path / "moved"
    common = ("--optim.epochs", "2", "--run.zero_stage", str(stage), "--release_dir", "none", "--run.image_every", "1")
    _pretrain(two, synthetic, "--run.batch_size", "2", *common, nproc=2)
    assert (two / "images").is_dir()
    first = "epoch0001_step00000002"
    shutil.copytree(two / "checkpoints" / first, moved / "checkpoints" / first)
    _pretrain(moved, synthetic, "--run.batch_size", "4", *common, "--run.resume", "auto")
    assert (moved / "checkpoints" / first / "universal").is_dir()
    assert find_checkpoint(two).name == find_checkpoint(moved).name == "epoch0002_step00000004"
    a, b = read_fp32_state_dict(find_checkpoint(two)), read_fp32_state_dict(find_checkpoint(moved))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=2e-5, msg=key)


def test_sigkill_mid_epoch_then_resume_auto_matches_uninterrupted_run(tmp_path, synthetic):
    full, cut = tmp_path / "full", tmp_path / "cut"
    _pretrain(full, synthetic, "--release_dir", "none")
    proc = start(["pretrain/run.py", *_args(cut, synthetic, "--release_dir", "none")],
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:  # kill in the middle of epoch 1, after its first checkpoint exists
        steps = cut / "steps.jsonl"
        if steps.is_file() and any(json.loads(l)["epoch"] == 1 and json.loads(l)["batch"] >= 2
                                   for l in steps.read_text().splitlines()):
            break
        if proc.poll() is not None:
            pytest.fail("the run ended before it could be killed")
        time.sleep(0.05)
    kill_tree(proc)
    from lgiformer.engine.checkpointer import complete_checkpoints

    assert [p.name for p in complete_checkpoints(cut / "checkpoints")] == ["epoch0001_step00000004"]
    _pretrain(cut, synthetic, "--release_dir", "none", "--run.resume", "auto")
    reference, resumed = _steps(full), _steps(cut)
    assert sorted(reference) == sorted(resumed)
    after_resume = [k for k in reference if k[0] >= 1]
    assert len(after_resume) == 8
    for key in after_resume:
        assert resumed[key] == pytest.approx(reference[key], rel=1e-5, abs=1e-6), key
    # TensorBoard hides what the killed attempt logged after its checkpoint: one point per step, the resumed values
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    curves = []
    for run_dir in (full, cut):
        acc = EventAccumulator(str(run_dir / "tensorboard"))
        acc.Reload()
        curves.append([(e.step, e.value) for e in acc.Scalars("train/loss")])
    assert [s for s, _ in curves[1]] == [s for s, _ in curves[0]] == sorted({s for s, _ in curves[0]})
    assert [v for _, v in curves[1]] == pytest.approx([v for _, v in curves[0]], rel=1e-5, abs=1e-6)


def _sigterm_mid_epoch(out, synthetic, *extra) -> dict:
    """Start a run, SIGTERM it after two logged steps; returns the client state of the checkpoint it saved."""
    proc = start(["pretrain/run.py", *_args(out, synthetic, "--release_dir", "none", *extra)],
                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not ((out / "steps.jsonl").is_file() and
                                          len((out / "steps.jsonl").read_text().splitlines()) >= 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # the run itself only, as Slurm's preemption signal reaches it
    try:
        _, err = proc.communicate(timeout=300)
    finally:
        kill_tree(proc)
    assert proc.returncode == 143, err[-2000:]
    from lgiformer.engine.checkpointer import find_checkpoint, read_client_state

    state = read_client_state(find_checkpoint(out))
    assert state["loop"]["batch_in_epoch"] > 0  # saved in the middle of an epoch
    return state


def _lrs(out):
    return {(rec["epoch"], rec["batch"]): rec["lr"] for rec in map(json.loads, (out / "steps.jsonl").open())}


def test_sigterm_saves_a_mid_epoch_checkpoint_and_resume_continues(tmp_path, synthetic):
    """With repeated sampling (2 views per video, so 1 video and 2 clips per step: 8 steps per epoch), which also
    checks that a resumed epoch skips the videos it consumed, not the clips."""
    out = tmp_path / "term"
    _sigterm_mid_epoch(out, synthetic, "--data.repeat_aug", "2")
    _pretrain(out, synthetic, "--release_dir", "none", "--run.resume", "auto", "--data.repeat_aug", "2")
    from lgiformer.engine.checkpointer import find_checkpoint

    assert find_checkpoint(out).name == "epoch0003_step00000024"
    steps = _steps(out)
    assert sorted(steps) == [(epoch, batch) for epoch in range(3) for batch in range(1, 9)]


def test_resume_with_another_batch_layout_follows_the_new_schedule(tmp_path, synthetic):
    """Stopped mid-epoch at batch 2 (4 steps per epoch), resumed at batch 8 (1 step per epoch): the run redoes the
    part of the epoch that no new batch fits in, every later step has the lr a fresh batch-8 run has there, and the
    newest checkpoint is the last one written, although the one written before the resume has a larger step."""
    out, fresh = tmp_path / "cut", tmp_path / "fresh"
    state = _sigterm_mid_epoch(out, synthetic)
    assert state["layout"] == {"samples_per_batch": 2, "batches_per_epoch": 4}
    _pretrain(out, synthetic, "--release_dir", "none", "--run.resume", "auto", "--run.batch_size", "8")
    _pretrain(fresh, synthetic, "--release_dir", "none", "--run.batch_size", "8")
    from lgiformer.engine.checkpointer import find_checkpoint

    assert find_checkpoint(out).name == find_checkpoint(fresh).name == "epoch0003_step00000003"
    expected, resumed = _lrs(fresh), _lrs(out)
    for key in (k for k in expected if k[0] >= state["loop"]["epoch"]):  # the steps taken after the resume
        assert resumed[key] == pytest.approx(expected[key], rel=1e-9), key
    assert "the checkpoint was written with 2 items per micro-batch" in (out / "run.log").read_text()


def test_config_errors_are_clear(tmp_path):
    proc = run(["pretrain/run.py", "--run.batch_sise", "3"], timeout=120, check=False)
    assert proc.returncode == 2
    assert "unknown key 'batch_sise'" in proc.stderr and "did you mean batch_size" in proc.stderr
    from lgiformer.config import ConfigError
    from lgiformer.tasks.pretrain import load_pretrain_config

    with pytest.raises(ConfigError, match=r"run.batch_size \(2, .*\) must be a multiple of data.repeat_aug \(3"):
        load_pretrain_config(str(CONFIG), ["--data.repeat_aug", "3"])
    assert load_pretrain_config(str(CONFIG), ["--data.repeat_aug", "2"]).data.repeat_aug == 2
