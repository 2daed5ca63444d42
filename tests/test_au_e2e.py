"""AU task (task: au): evaluation helpers against hand computations, the AU model plumbing, and a tiny end-to-end
finetune + evaluation through ``finetune/run.py --task au`` on a tiny synthetic AU set."""
import csv
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import lgiformer
from _cli import run
from lgiformer.data import split_validation, window_positions
from lgiformer.inference import au_metrics
from lgiformer.models import AUModel
from lgiformer.tasks.au import training_rates


def split_by_subject(videos, fraction, seed=0):
    return split_validation(videos, fraction, seed=seed, by="subject")

SYNTHETIC_AUS = ["AU1", "AU2", "AU4", "AU6", "AU9", "AU12", "AU15", "AU25", "AU26"]


# ---------------------------------------------------------------------------------------------- evaluation units
def test_f1_matches_a_hand_computation():
    # AU0: preds 1 1 0 0 1, labels 1 0 1 0 1 -> TP 2, FP 1, FN 1 -> F1 = 4 / 6
    # AU1: preds 0 0 0 0 0, labels 0 0 0 1 0 -> TP 0, FN 1 -> F1 0; the masked row 2 (label 1, pred 0) is ignored
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.2], [0.4, 0.3], [0.2, 0.4], [0.5, 0.0]])
    labels = torch.tensor([[1, 0], [0, 0], [1, 1], [0, 1], [1, 0]], dtype=torch.float32)
    valid = torch.ones(5, 2, dtype=torch.bool)
    valid[2, 1] = False
    m, smoothed = au_metrics(probs, labels, valid, [0] * 5, threshold=0.5, smooth_window=0, au_names=["AU1", "AU2"])
    assert smoothed is None and m["protocol"] == "frame"
    assert m["per_au"]["AU1"] == pytest.approx(4 / 6)
    assert m["per_au"]["AU2"] == 0.0
    assert m["mean_f1"] == pytest.approx((4 / 6 + 0.0) / 2)
    # another threshold changes the predictions: at 0.35, AU2 predicts rows 3 (TP) and none else -> F1 1
    m2, _ = au_metrics(probs, labels, valid, [0] * 5, threshold=0.35, au_names=["AU1", "AU2"])
    assert m2["per_au"]["AU2"] == pytest.approx(1.0)
    # AU1 at 0.35: preds 1 1 1 0 1 -> TP 3, FP 1, FN 0 -> 6 / 7
    assert m2["per_au"]["AU1"] == pytest.approx(6 / 7)


def test_smoothing_on_a_step_signal_stays_within_each_video():
    # one video: a step 0 -> 1 at frame 10 with a single-frame dropout and a spike; window 5 (centred)
    x = np.r_[np.zeros(10), np.ones(10)]
    x[15] = 0.0  # dropout inside the positive run
    x[4] = 1.0   # spike inside the negative run
    labels = np.r_[np.zeros(10), np.ones(10)][:, None]
    probs = torch.tensor(x, dtype=torch.float32)[:, None]
    raw, smoothed = au_metrics(probs, torch.tensor(labels), torch.ones(20, 1, dtype=bool), [0] * 20, threshold=0.5,
                               smooth_window=5, au_names=["AU1"])
    s = smoothed[:, 0].numpy()
    # centred window of 5 (t-2..t+2), shrinking at the edges
    assert s[4] == pytest.approx(0.2) and s[15] == pytest.approx(0.8)
    assert s[0] == pytest.approx(0.0) and s[2] == pytest.approx(0.2) and s[19] == pytest.approx(1.0)
    assert s[9] == pytest.approx(0.4) and s[10] == pytest.approx(0.6)  # the step, symmetric around it
    # raw: spike = 1 FP, dropout = 1 FN -> F1 = 2*9 / (2*9 + 1 + 1) = 0.9; smoothed recovers both -> 1.0
    assert raw["frame"]["mean_f1"] == pytest.approx(0.9)
    assert raw["smoothed"]["mean_f1"] == pytest.approx(1.0) and raw["mean_f1"] == pytest.approx(1.0)
    # two videos back to back: the window never mixes them (the second video is constant 1 and stays 1)
    probs2 = torch.cat((torch.zeros(6, 1), torch.ones(6, 1)))
    _, sm2 = au_metrics(probs2, torch.cat((torch.zeros(6, 1), torch.ones(6, 1))), torch.ones(12, 1, dtype=bool),
                        [0] * 6 + [1] * 6, smooth_window=5)
    assert torch.equal(sm2, probs2)


def test_window_positions_are_centred_and_clamped():
    assert window_positions(20, 10, 4, 2).tolist() == [6, 8, 10, 12]
    assert window_positions(20, 0, 4, 2).tolist() == [0, 0, 0, 2]
    assert window_positions(5, 4, 4, 3).tolist() == [0, 1, 4, 4]


def test_validation_is_held_out_by_subject_and_rates_count_valid_labels_only():
    def video(subject, labels, valid):
        return SimpleNamespace(subject=subject, labels=np.asarray(labels, np.float32), valid=np.asarray(valid, bool))

    vids = [video(f"S{i % 5}", [[1, 0], [0, 0]], [[1, 1], [1, 1]]) for i in range(10)]
    train, val = split_by_subject(vids, 0.2, seed=0)
    assert len(val) == 2 and not {v.subject for v in train} & {v.subject for v in val}
    assert split_by_subject(vids[:2], 0.1)[1] == []  # two subjects: nothing held out (one would be left)
    assert len({v.subject for v in split_by_subject(vids[:3], 0.1)[1]}) == 1  # >= 3 subjects: at least one
    rates = training_rates([video("a", [[1, 1], [0, 1]], [[1, 0], [1, 1]])])
    assert rates.tolist() == pytest.approx([0.5, 1.0])


# ---------------------------------------------------------------------------------------------- model plumbing
def _tiny_encoder():
    from lgiformer.models import create_model

    return create_model("lgiformer_tiny_patch16_160", num_classes=0, global_pool="", img_size=64, num_frames=4,
                        region_size=[2, 2, 4], embed_dim=32, depth=2, num_heads=2)


@pytest.mark.parametrize("head", ["linear", "label_token", "fantrans_okd", "monet"])
def test_au_model_heads_param_groups_and_bias_init(head):
    from lgiformer.optim import param_groups

    enc = _tiny_encoder()
    extra = {"linear": {}, "label_token": {"dim": 32, "num_heads": 2}, "fantrans_okd": {"dim": 32, "depth": 1},
             "monet": {"hidden": 8, "num_orders": 6, "keep_orders": 3}}[head]
    rates = torch.tensor([0.1, 0.5, 0.2])
    model = AUModel(enc, head, extra, num_aus=3, rates=rates)
    groups = param_groups(model, 0.05, 0.75)
    scales = {n: g["lr_scale"] for g in groups for n in g.get("param_names", [])}
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(p.numel() for p in model.parameters())
    assert max(g["lr_scale"] for g in groups) == 1.0 and min(g["lr_scale"] for g in groups) < 1.0
    if scales:
        assert all(v == 1.0 for k, v in scales.items() if k.startswith("head."))
    model.eval()
    clips = torch.randn(2, 3, 4, 64, 64)
    with torch.no_grad():
        out = model(clips)
    assert out["logits"].shape == (2, 3)
    if head in ("linear", "label_token"):  # prior bias on the deterministic heads: zero the classifier, bias = logit(r)
        for name, p in model.head.named_parameters():
            if name in ("fc.weight", "cls_weight"):
                p.data.zero_()
        with torch.no_grad():
            probs = torch.sigmoid(model(clips)["logits"])
        assert torch.allclose(probs, rates.expand(2, 3), atol=1e-5)


def test_au_model_moke_freezes_the_encoder_and_exposes_expert_logits():
    enc = _tiny_encoder()
    model = AUModel(enc, "linear", {}, num_aus=3, moke=True, moke_args={"hidden": 4})
    out = model(torch.randn(2, 3, 4, 64, 64))
    assert out["aux"]["experts"].shape == (2, 3)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("head.") or "moke" in n or n.startswith("expert_") for n in trainable)


# ---------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def au_run(tmp_path_factory):
    from lgiformer.data.synthetic import ensure_synthetic

    tmp = tmp_path_factory.mktemp("au")
    ensure_synthetic(tmp / "data", parts="au", size=64, au_clips=6, au_subjects=3, au_frames=12, progress=False)
    run(["finetune/run.py", "--config", "tests/configs/tiny_au.yaml", "--task", "au",
         "--run.output_dir", tmp / "run", "--data.data_root", tmp / "data"])
    return tmp


def test_au_finetune_writes_metrics_and_predictions(au_run):
    out = au_run / "run"
    metrics = json.loads((out / "test_metrics.json").read_text())
    assert metrics["au_names"] == SYNTHETIC_AUS
    for view in ("frame", "smoothed", "centre_clip"):
        assert list(metrics[view]["per_au"]) == SYNTHETIC_AUS
        assert 0.0 <= metrics[view]["mean_f1"] <= 1.0
        assert all(0.0 <= f <= 1.0 for f in metrics[view]["per_au"].values())
    assert metrics["protocol"] == "smoothed" and metrics["smooth_window"] == 4
    assert metrics["mean_f1"] == metrics["smoothed"]["mean_f1"]
    assert metrics["selection"]["select"] == "last"
    rows = list(csv.DictReader(open(out / "test_predictions.csv")))
    assert len(rows) == metrics["num_frames"] > 0
    assert {f"{n}_prob" for n in SYNTHETIC_AUS} | {f"{n}_label" for n in SYNTHETIC_AUS} <= set(rows[0])
    assert {r[f"{SYNTHETIC_AUS[0]}_label"] for r in rows} <= {"0", "1", "-1"}
    report = json.loads((out / "load_report.json").read_text())
    assert report["format"] == "random"
    epochs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [0, 1] and all(np.isfinite(e["train_loss"]) for e in epochs)


def test_saved_au_model_reloads_and_predicts(au_run):
    from lgiformer.models.release import read_release_config

    release = au_run / "run" / "release"
    model, config = lgiformer.load_release(release), read_release_config(release)
    assert config["task"] == "au" and config["au_names"] == SYNTHETIC_AUS
    assert config["model_name"] == "au_model" and config["model_args"]["head"] == "label_token"
    with torch.no_grad():
        out = model(torch.randn(1, 3, 4, 64, 64))
    assert out["logits"].shape == (1, len(SYNTHETIC_AUS))
