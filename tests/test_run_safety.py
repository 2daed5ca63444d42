"""A run never destroys or mixes another run's work, falls back past a damaged newest checkpoint, and reports the
whole run after a resume (tiny pretraining runs through pretrain/run.py)."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from _cli import ROOT, run

CONFIG = ROOT / "tests" / "configs" / "tiny_pretrain.yaml"


@pytest.fixture
def synthetic(tiny_unlabeled):
    return tiny_unlabeled


def _pretrain(out, synthetic, *extra, check=True):
    return run(["pretrain/run.py", "--config", CONFIG, "--run.output_dir", out, "--data.data_root", synthetic,
                "--run.image_every", "0", *extra], check=check)


def _epochs(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_a_fresh_run_in_a_folder_with_another_runs_checkpoints_stops_or_moves_it_aside(tmp_path, synthetic):
    """Run A (3 epochs, keep_last 2), then run B (1 epoch, another seed) in the same folder: B used to log "checkpoint
    saved", have its checkpoint pruned at once as older than A's, and release A's weights as its own."""
    out = tmp_path / "run"
    _pretrain(out, synthetic, "--run.keep_last", "2")
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    proc = _pretrain(out, synthetic, "--optim.epochs", "1", "--run.seed", "7", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "holds the checkpoints of another run" in proc.stderr and "--run.resume auto" in proc.stderr
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before  # untouched
    a_release = load_file(str(out / "release" / "model.safetensors"))

    _pretrain(out, synthetic, "--optim.epochs", "1", "--run.seed", "7", "--run.overwrite", "true")
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.replaced-")]
    assert len(aside) == 1 and sorted(p.name for p in (aside[0] / "checkpoints").iterdir()) == before
    assert [p.name for p in (out / "checkpoints").iterdir() if p.name.startswith("epoch")] == \
        ["epoch0001_step00000004"]
    from lgiformer.engine.checkpointer import find_checkpoint, read_fp32_state_dict

    b_weights = read_fp32_state_dict(find_checkpoint(out))
    b_release = load_file(str(out / "release" / "model.safetensors"))
    assert all(torch.equal(b_release[k], b_weights["encoder." + k]) for k in b_release)
    assert not torch.equal(b_release["lg_region_tokens"], a_release["lg_region_tokens"])
    assert [e["epoch"] for e in _epochs(out)] == [0]


def test_pruning_touches_only_the_current_runs_checkpoints(tmp_path):
    from torch import nn

    from lgiformer.distributed import init_distributed
    from lgiformer.engine import ds
    from lgiformer.engine.checkpointer import complete_checkpoints, save_checkpoint

    init_distributed("cpu")
    model = nn.Linear(2, 1)
    engine, _ = ds.initialize(model, [{"params": list(model.parameters())}], lr=0.1, betas=(0.9, 0.999), eps=1e-8,
                              micro_batch=1, accum_steps=1, world_size=1, precision="fp32", zero_stage=0,
                              clip_grad=None)
    root = tmp_path / "checkpoints"
    for step in (5, 6, 7):   # another run's, newer-looking than ours
        save_checkpoint(engine, root, {"epoch": step, "step": step, "loop": {}, "run_id": "other"}, 5, True)
    for step in (1, 2, 3):
        save_checkpoint(engine, root, {"epoch": step, "step": step, "loop": {}, "run_id": "ours"}, 1, True)
    names = [p.name for p in complete_checkpoints(root)]
    assert names == ["epoch0003_step00000003", "epoch0005_step00000005", "epoch0006_step00000006",
                     "epoch0007_step00000007"]


def test_resume_falls_back_past_a_truncated_newest_checkpoint_and_reports_the_whole_run(tmp_path, synthetic):
    """The newest checkpoint's model states cut to 5,000 bytes (a full disk): --run.resume auto used to die in a
    57-line traceback that never named the file. Now it warns, resumes from the one before, and the run's summary
    (the release's first loss) is the first epoch of the whole run, not of the resumed attempt."""
    out = tmp_path / "run"
    _pretrain(out, synthetic, "--optim.epochs", "2", "--release_dir", "none")
    first_epoch_loss = _epochs(out)[0]["train_loss"]
    newest = out / "checkpoints" / "epoch0002_step00000008" / "mp_rank_00_model_states.pt"
    with open(newest, "r+b") as f:
        f.truncate(5000)
    proc = _pretrain(out, synthetic, "--optim.epochs", "3", "--run.resume", "auto")
    assert "epoch0002_step00000008" in proc.stdout + proc.stderr and "cannot be loaded" in proc.stdout + proc.stderr
    assert "resumed from" in proc.stdout and "epoch0001_step00000004" in proc.stdout
    assert [e["epoch"] for e in _epochs(out)] == [0, 1, 1, 2]  # epoch 1 run again from its start
    config = json.loads((out / "release" / "config.json").read_text())
    assert config["training"]["first_loss"] == pytest.approx(first_epoch_loss)
    assert config["training"]["epoch"] == 3


def test_resume_refuses_when_no_checkpoint_loads(tmp_path, synthetic):
    out = tmp_path / "run"
    _pretrain(out, synthetic, "--optim.epochs", "1", "--release_dir", "none")
    ckpt = out / "checkpoints" / "epoch0001_step00000004"
    (ckpt / "mp_rank_00_model_states.pt").write_bytes(b"")
    proc = _pretrain(out, synthetic, "--optim.epochs", "2", "--run.resume", "auto", check=False)
    assert proc.returncode == 2 and "none of the checkpoints could be loaded" in proc.stderr
    assert "Traceback" not in proc.stderr
    shutil.rmtree(out)
