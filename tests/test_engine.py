"""The shared engine: schedules, DeepSpeed config, atomic checkpoints, non-finite loss handling."""
import json

import numpy as np
import pytest
import torch
from torch import nn

from lgiformer.engine import ds
from lgiformer.engine.checkpointer import (MARKER, complete_checkpoints, find_checkpoint, load_checkpoint,
                                         read_fp32_state_dict, save_checkpoint)
from lgiformer.distributed import init_distributed
from lgiformer.engine.logger import MeanMeter, RunLogger
from lgiformer.engine.loop import LoopState, NonFiniteLossError, Training, train_one_epoch
from lgiformer.engine.schedules import apply_schedule, cosine_schedule


def test_cosine_schedule_warmup_and_floor():
    values = cosine_schedule(1.0, 0.1, total_steps=20, warmup_steps=5, warmup_start=0.0)
    assert len(values) == 20
    np.testing.assert_allclose(values[:5], [0.0, 0.2, 0.4, 0.6, 0.8])
    assert values[5] == pytest.approx(1.0)
    assert np.all(np.diff(values[5:]) <= 1e-12) and values[-1] > 0.1 and values[-1] < 0.12
    half = 5 + 15 // 2
    assert values[half] == pytest.approx(0.1 + 0.45 * (1 + np.cos(np.pi * 7 / 15)))


def test_apply_schedule_respects_layer_scale_and_no_decay_groups():
    p1, p2 = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([{"params": [p1], "weight_decay": 0.05, "lr_scale": 0.5},
                             {"params": [p2], "weight_decay": 0.0}], lr=1.0)
    apply_schedule(opt, lr=2.0, weight_decay=0.1)
    assert [g["lr"] for g in opt.param_groups] == [1.0, 2.0]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    apply_schedule(opt, lr=2.0, weight_decay=0.0)
    apply_schedule(opt, lr=2.0, weight_decay=0.2)  # a decayed group stays decayed after passing through 0
    assert [g["weight_decay"] for g in opt.param_groups] == [0.2, 0.0]


def test_deepspeed_config_from_ours():
    cfg = ds.deepspeed_config(4, 2, 8, "bf16", 2, 1.0)
    assert cfg["train_batch_size"] == 64 and cfg["gradient_accumulation_steps"] == 2
    assert "bf16" not in cfg and cfg["zero_optimization"]["stage"] == 2  # bf16 is autocast over fp32 weights
    assert cfg["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"}
    assert cfg["gradient_clipping"] == 1.0 and "optimizer" not in cfg and "fp16" not in cfg
    assert ds.resolve_precision("auto", torch.device("cpu")) == "fp32"
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        ds.resolve_precision("fp16", torch.device("cpu"))


def test_mean_meter_never_averages_non_finite():
    meter = MeanMeter()
    meter.update(loss=1.0, grad_norm=float("inf"))
    meter.update(loss=3.0, grad_norm=2.0)
    meter.update(loss=float("nan"))
    assert meter.mean("loss") == 2.0 and meter.mean("grad_norm") == 2.0
    assert meter.nonfinite == {"grad_norm": 1, "loss": 1}


@pytest.fixture(scope="module")
def engine():
    init_distributed("cpu")
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    groups = [{"params": list(model.parameters()), "weight_decay": 0.0}]
    eng, _ = ds.initialize(model, groups, lr=0.1, betas=(0.9, 0.999), eps=1e-8, micro_batch=2, accum_steps=1,
                           world_size=1, precision="fp32", zero_stage=0, clip_grad=None)
    return eng


def _step_fn(engine, batch):
    x, y = batch
    return {"loss": ((engine(x) - y) ** 2).mean()}


def _run(engine, batches, state=None, max_nonfinite=3, tmp_path=None):
    state = state or LoopState()
    training = Training(engine, init_distributed("cpu"), RunLogger(tmp_path, enabled=False), "fp32", lr=0.01,
                        total_batch=2, steps_per_epoch=len(batches), batches_per_epoch=len(batches),
                        lr_values=np.full(100, 0.01), wd_values=np.zeros(100), log_every=1,
                        max_nonfinite=max_nonfinite, progress=False)
    return state, train_one_epoch(training, batches, _step_fn, state)


def test_non_finite_losses_are_skipped_counted_and_abort(engine, tmp_path):
    good = (torch.randn(2, 4), torch.randn(2, 1))
    bad = (torch.full((2, 4), float("nan")), torch.randn(2, 1))
    before = [p.detach().clone() for p in engine.module.parameters()]
    state, stats = _run(engine, [bad, good, bad, good], tmp_path=tmp_path)
    assert state.skipped_steps == 2 and state.step == 2 and state.batch_in_epoch == 4
    assert np.isfinite(stats["loss"]) and stats["nonfinite_loss"] == 1.0
    assert all(torch.isfinite(p).all() for p in engine.module.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, engine.module.parameters()))
    with pytest.raises(NonFiniteLossError, match="3 consecutive non-finite losses"):
        _run(engine, [good, bad, bad, bad, good], tmp_path=tmp_path)


def test_checkpoint_save_is_atomic_and_pruned(engine, tmp_path):
    root = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        save_checkpoint(engine, root, {"epoch": step, "step": step, "loop": {}}, keep_last=2, is_main=True)
    names = [p.name for p in complete_checkpoints(root)]
    assert names == ["epoch0002_step00000002", "epoch0003_step00000003"]
    # a save killed half-way: a .tmp directory without the marker, and a newer-looking folder without it
    (root / ".tmp_epoch0004_step00000004").mkdir()
    (root / "epoch0005_step00000005").mkdir()
    assert find_checkpoint(root).name == "epoch0003_step00000003"
    assert json.loads((find_checkpoint(root) / MARKER).read_text())["step"] == 3
    weights = {k: v.clone() for k, v in engine.module.state_dict().items()}
    sd = read_fp32_state_dict(find_checkpoint(root))
    assert all(torch.equal(sd[k], v) for k, v in weights.items())
    with torch.no_grad():
        for p in engine.module.parameters():
            p.add_(1.0)
    state = load_checkpoint(engine, find_checkpoint(root))
    assert state["step"] == 3
    assert all(torch.equal(engine.module.state_dict()[k], v) for k, v in weights.items())
    save_checkpoint(engine, root, {"epoch": 6, "step": 6, "loop": {}}, keep_last=2, is_main=True)
    assert not any(p.name.startswith(".tmp") for p in root.iterdir())  # stale partial saves are cleaned up
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        find_checkpoint(tmp_path / "empty")


def test_relayout_maps_a_checkpoint_onto_another_batch_layout():
    """Resuming with another number of processes, batch size or repeat_aug: the epoch is kept, the position in it
    never skips an unseen item, it lands on an accumulation boundary, and the step is recounted in the new layout."""
    from lgiformer.engine.checkpointer import relayout

    old = dict(samples_per_batch=4, batches_per_epoch=10)           # e.g. 2 processes x 2 items
    loop = LoopState(epoch=3, step=3 * 10 + 7, batch_in_epoch=7, skipped_steps=2)
    # twice the processes: 8 items per micro-batch, 5 per epoch; 28 items consumed -> 3 new batches (24 items)
    new = relayout(loop, old, samples_per_batch=8, batches_per_epoch=5, accum_steps=1)
    assert (new.epoch, new.batch_in_epoch, new.step, new.skipped_steps) == (3, 3, 3 * 5 + 3, 2)
    # half: 2 items per micro-batch, 20 per epoch, accumulation 4: 14 batches -> boundary 12, 5 steps per epoch
    new = relayout(loop, old, samples_per_batch=2, batches_per_epoch=20, accum_steps=4)
    assert (new.batch_in_epoch, new.step) == (12, 3 * 5 + 3)
    # a checkpoint at an epoch boundary keeps it; a position past a shorter epoch ends that epoch
    assert relayout(LoopState(epoch=2, step=20), old, 8, 5, 1) == LoopState(epoch=2, step=10)
    capped = relayout(loop, old, samples_per_batch=4, batches_per_epoch=6, accum_steps=1)   # max_steps_per_epoch 6
    assert (capped.batch_in_epoch, capped.step) == (6, 3 * 6 + 6)
    assert loop == LoopState(epoch=3, step=37, batch_in_epoch=7, skipped_steps=2)   # not modified in place


def test_newest_checkpoint_is_the_furthest_in_training_across_a_relayout(engine, tmp_path):
    """After a resume with another batch layout the step is recounted, so it cannot order checkpoints: epoch, then the
    fraction of it done, decide (checkpoints written before layouts were saved keep the step order)."""
    root = tmp_path / "checkpoints"
    layout = dict(samples_per_batch=2, batches_per_epoch=4)
    relaid = dict(samples_per_batch=8, batches_per_epoch=2)
    saves = [dict(epoch=1, step=3, loop={}),                                                 # before layouts
             dict(epoch=1, step=5, loop={"batch_in_epoch": 1}, layout=layout),               # 1/4 of epoch 1
             dict(epoch=1, step=3, loop={"batch_in_epoch": 1}, layout=relaid),               # 1/2 of it, resumed
             dict(epoch=2, step=4, loop={"batch_in_epoch": 0}, layout=relaid)]               # epoch 1 done
    for state in saves:
        save_checkpoint(engine, root, state, keep_last=10, is_main=True)
    # the third save has the first one's tag: it replaced it
    assert [p.name for p in complete_checkpoints(root)] == ["epoch0001_step00000005", "epoch0001_step00000003",
                                                            "epoch0002_step00000004"]
    assert find_checkpoint(root).name == "epoch0002_step00000004"
    save_checkpoint(engine, root, dict(epoch=2, step=5, loop={"batch_in_epoch": 1}, layout=relaid), keep_last=2,
                    is_main=True)
    assert [p.name for p in complete_checkpoints(root)] == ["epoch0002_step00000004", "epoch0002_step00000005"]


def _zero3_engine(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    groups = [{"params": [model[0].bias, model[2].bias], "weight_decay": 0.0},
              {"params": [model[0].weight, model[2].weight], "weight_decay": 0.05, "lr_scale": 0.5}]
    eng, _ = ds.initialize(model, groups, lr=0.1, betas=(0.9, 0.999), eps=1e-8, micro_batch=2, accum_steps=1,
                           world_size=1, precision="fp32", zero_stage=3, clip_grad=None)
    return eng


def _zero3_step(eng, batch):
    apply_schedule(eng.optimizer, lr=0.05, weight_decay=0.5)
    eng.backward(_step_fn(eng, batch)["loss"])
    eng.step()


def _full_weights(eng):
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(eng.module.parameters())):
        return [p.detach().clone() for p in eng.module.parameters()]


def test_zero3_checkpoint_from_another_process_count_loads_through_universal_format(tmp_path):
    """A checkpoint whose processes differ from this run's goes through DeepSpeed's universal format. Under ZeRO 3
    that load gives every group the first group's settings and one shared Adam step tensor (incremented once per
    group): without our repair, the next steps differ from the original engine's."""
    init_distributed("cpu")
    torch.manual_seed(1)
    batches = [(torch.randn(2, 4), torch.randn(2, 1)) for _ in range(4)]
    original = _zero3_engine()
    for batch in batches[:2]:
        _zero3_step(original, batch)
    root = tmp_path / "checkpoints"
    ckpt = save_checkpoint(original, root, {"epoch": 1, "step": 2, "loop": {}, "zero_stage": 3, "world_size": 2},
                           keep_last=1, is_main=True)
    moved = _zero3_engine(seed=5)
    settings = [{k: g[k] for k in ("weight_decay", "lr_scale") if k in g} for g in moved.optimizer.param_groups]
    load_checkpoint(moved, ckpt)
    assert (ckpt / "universal").is_dir()
    assert [{k: g[k] for k in s} for g, s in zip(moved.optimizer.param_groups, settings)] == settings
    steps = [st["step"] for st in moved.optimizer.optimizer.state.values()]
    assert len(steps) == 2 and steps[0] is not steps[1]
    for a, b in zip(_full_weights(original), _full_weights(moved)):
        torch.testing.assert_close(a, b)
    for batch in batches[2:]:
        _zero3_step(original, batch)
        _zero3_step(moved, batch)
    for a, b in zip(_full_weights(original), _full_weights(moved)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def _tensorboard_scalars(log_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_resumed_logger_hides_what_the_interrupted_attempt_logged_after_its_checkpoint(tmp_path):
    first = RunLogger(tmp_path, enabled=True)
    for step in range(6):  # checkpoint at step 3, killed after logging step 5
        first.scalars({"loss": float(step)}, step)
    first.close()
    resumed = RunLogger(tmp_path, enabled=True)
    resumed.purge_from(3)
    for step in range(3, 5):
        resumed.scalars({"loss": 10.0 + step}, step)
    resumed.close()
    assert _tensorboard_scalars(tmp_path / "tensorboard", "train/loss") == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 13.0),
                                                                            (4, 14.0)]
    RunLogger(tmp_path / "off", enabled=False).purge_from(3)  # other ranks: nothing to do


def test_best_on_validation_keeps_the_files_its_checkpoints_refer_to(engine, tmp_path):
    from lgiformer.engine.checkpointer import BestOnValidation

    model = nn.Linear(3, 2)
    best = BestOnValidation(tmp_path, keep_weights=True, is_main=True)

    def files():
        return sorted(p.name for p in (tmp_path / "best_val").iterdir())

    assert best.update(0.5, 0, model) and not best.update(0.5, 1, model)  # a tie keeps the earlier epoch
    weights0 = {k: v.clone() for k, v in model.state_dict().items()}

    def save_checkpoint_with_best(epoch):
        save_checkpoint(engine, tmp_path / "checkpoints", {"epoch": epoch, "step": epoch, "loop": {},
                                                           "best": best.record()}, keep_last=1, is_main=True)

    save_checkpoint_with_best(1)
    best.checkpointed()
    with torch.no_grad():
        model.weight.add_(1.0)
    assert best.update(0.7, 2, model)
    assert files() == ["epoch0000.safetensors", "epoch0002.safetensors"]  # the kept checkpoint still needs epoch 0
    save_checkpoint_with_best(3)  # keep_last 1: the epoch-1 checkpoint goes
    best.checkpointed()
    assert files() == ["epoch0002.safetensors"]
    resumed = BestOnValidation(tmp_path, keep_weights=True, is_main=True)
    resumed.restore(json.loads((find_checkpoint(tmp_path / "checkpoints") / MARKER).read_text())["best"])
    assert (resumed.epoch, resumed.value) == (2, 0.7)
    assert torch.equal(resumed.state["weight"], weights0["weight"] + 1.0)
    (tmp_path / "best_val" / "epoch0002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="epoch0002.safetensors: the checkpoint says the best"):
        BestOnValidation(tmp_path, keep_weights=True, is_main=True).restore(resumed.record())
