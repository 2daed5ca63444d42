"""Multi-task DFER + AU: the clips' AU labels, the joint loss (with mixup), the model and its release round trip,
the evaluation, and a tiny end-to-end run of finetune/run.py with ``au.aux_weight``."""
import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import lgiformer
from _cli import run
from lgiformer.au import fold_f1
from lgiformer.data import ClipAULabels, VideoClassificationDataset, VideoMixup, read_video_list
from lgiformer.data.sampling import center_indices, test_clip_indices
from lgiformer.data.synthetic import AU_NAMES, generate
from lgiformer.inference import evaluate
from lgiformer.models import ExpressionAUModel, create_model
from lgiformer.models.au import au_probs
from lgiformer.models.release import write_release
from lgiformer.tasks.multitask import clip_au_label_file, expression_au_loss

TINY = dict(img_size=32, num_frames=4, region_size=[2, 2, 2], embed_dim=32, depth=2, num_heads=2)


@pytest.fixture(scope="module")
def labeled(tmp_path_factory):
    root = tmp_path_factory.mktemp("mt") / "data"
    generate(root, size=32, labeled_frames=12, subjects=5, clips_per_class_per_subject=1, parts="labeled",
             progress=False)
    return root


def _csv_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _tiny_model(num_aus=len(AU_NAMES), head="label_token", seed=0, **classifier_args):
    torch.manual_seed(seed)
    classifier = create_model("lgiformer_tiny_patch16_160", num_classes=7, **TINY, **classifier_args)
    return ExpressionAUModel(classifier, head, dict(dim=32, num_heads=2) if head == "label_token" else {},
                             num_aus=num_aus)


# ---- data ----------------------------------------------------------------------------------------------------------
def test_generator_writes_the_labeled_clips_aus(labeled):
    rows = _csv_rows(labeled / "labeled" / "au_labels.csv")
    clips = _csv_rows(labeled / "labeled" / "clips.csv")
    assert len(rows) == len(clips) * 12 and list(rows[0]) == ["path", "frame", "subject", *AU_NAMES]
    by_clip = {c["path"]: c for c in clips}
    for r in rows:
        assert r["subject"] == by_clip[r["path"]]["subject"] and {r[a] for a in AU_NAMES} <= {"0", "1"}
    # the labels are the drawn expression: Happy shows AU12 and Surprise AU1 + AU2 somewhere; a calm Neutral clip none
    for clip in clips:
        frames = [r for r in rows if r["path"] == clip["path"]]
        active = {a for a in AU_NAMES if any(r[a] == "1" for r in frames)}
        if clip["class"] == "Happy":
            assert "AU12" in active
        if clip["class"] == "Surprise":
            assert {"AU1", "AU2"} <= active
        if clip["class"] == "Neutral" and clip["talking"] == "0":
            assert active == set()


def test_dataset_items_carry_the_centre_frame_aus(labeled):
    table = ClipAULabels.from_csv(labeled / "labeled" / "au_labels.csv", labeled)
    samples = read_video_list(labeled / "labeled" / "lists" / "test_fold1.txt", labeled)
    rows = _csv_rows(labeled / "labeled" / "au_labels.csv")
    want = {(str(labeled / r["path"]), int(r["frame"])): [float(r[a]) for a in AU_NAMES] for r in rows}
    common = dict(num_frames=4, sampling_rate=2, img_size=32, au_labels=table)
    val = VideoClassificationDataset(samples, mode="val", **common)
    clip, label, au, au_valid, index = val[0]
    centre = int(center_indices(12, 4, 2)[2])
    assert au.tolist() == want[(samples[0].path, centre)] and bool(au_valid.all()) and label == samples[0].label
    test = VideoClassificationDataset(samples, mode="test", test_num_clips=2, test_num_crops=3, **common)
    views, _, au, au_valid, _ = test[1]
    assert views.shape[0] == 6 and au.shape == (6, len(AU_NAMES)) and au_valid.shape == (6, len(AU_NAMES))
    centres = [int(w[2]) for w in test_clip_indices(12, 4, 2, 2) for _ in range(3)]  # clip-major, like the views
    assert au.tolist() == [want[(samples[1].path, c)] for c in centres]
    # a clip (or a frame) without labels is unannotated, not negative
    missing, missing_valid = table.targets("elsewhere/clip", [0, 1])
    assert not bool(missing_valid.any()) and float(missing.abs().sum()) == 0.0


# ---- loss ----------------------------------------------------------------------------------------------------------
class _RecordingAULoss(torch.nn.Module):
    """A plain masked BCE that keeps what it was given."""

    def forward(self, out, y, valid):
        self.seen = (y.clone(), valid.clone())
        bce = F.binary_cross_entropy_with_logits(out["logits"].float(), y, reduction="none")
        return {"loss": (bce * valid).sum() / valid.sum().clamp_min(1)}


def _batch(b=4, a=len(AU_NAMES), seed=0):
    g = torch.Generator().manual_seed(seed)
    clips = torch.randn(b, 3, 4, 32, 32, generator=g)
    labels = torch.tensor([0, 3, 5, 6][:b])
    au = (torch.rand(b, a, generator=g) > 0.6).float()
    valid = torch.rand(b, a, generator=g) > 0.2
    return clips, labels, au, valid


def test_joint_loss_is_ce_plus_weighted_au_loss():
    model = _tiny_model().eval()  # no dropout in the head: two forward passes agree
    clips, labels, au, valid = _batch()
    au_loss = _RecordingAULoss()
    out = expression_au_loss(model, (clips, labels, au, valid), au_loss=au_loss, au_weight=0.3, smoothing=0.1)
    logits, au_out = model(clips, with_au=True)
    ce = F.cross_entropy(logits, labels, label_smoothing=0.1)
    bce = F.binary_cross_entropy_with_logits(au_out["logits"], au, reduction="none")
    want = ce + 0.3 * (bce * valid).sum() / valid.sum()
    assert torch.allclose(out["loss"], want, atol=1e-6) and torch.allclose(out["cls"], ce, atol=1e-6)
    assert set(out) == {"loss", "cls", "au", "acc"}
    # nothing annotated: no AU loss at all
    nothing = expression_au_loss(model, (clips, labels, au, torch.zeros_like(valid)), au_loss=au_loss, au_weight=1.0)
    assert float(nothing["au"]) == 0.0
    # the AU term trains the encoder and the AU head, and never the expression head
    model.zero_grad()
    au_loss(model(clips, with_au=True)[1], au, valid.float())["loss"].backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert grads["classifier.head.weight"] is None or float(grads["classifier.head.weight"].abs().max()) < 1e-7
    assert float(grads["classifier.blocks.0.mlp.fc1.weight"].abs().max()) > 0
    assert any(n.startswith("au_head.") and g is not None and float(g.abs().max()) > 0 for n, g in grads.items())


@pytest.mark.parametrize("cutmix", [False, True])
def test_mixup_mixes_the_au_targets_like_the_clips(cutmix):
    torch.manual_seed(3)
    mixup = VideoMixup(mixup_alpha=0.0 if cutmix else 0.8, cutmix_alpha=1.0 if cutmix else 0.0, prob=1.0,
                       label_smoothing=0.0, num_classes=7)
    au_loss = _RecordingAULoss()
    clips, labels, au, valid = _batch()
    expression_au_loss(_tiny_model(), (clips, labels, au, valid), au_loss=au_loss, au_weight=1.0, mixup=mixup)
    lam = mixup.last_lam
    assert 0.0 < lam < 1.0
    y, v = au_loss.seen
    assert torch.allclose(y, lam * au + (1 - lam) * au.flip(0))
    assert torch.equal(v.bool(), valid & valid.flip(0))


# ---- model ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pool", [{}, dict(global_pool="label_token", head_args=dict(dim=16, num_heads=2))])
def test_model_keeps_the_classifier_output_and_its_release_gives_both_outputs(pool, tmp_path):
    model = _tiny_model(**pool).eval()
    clips = _batch()[0]
    with torch.no_grad():
        logits = model(clips)
        both, au_out = model(clips, with_au=True)
        plain = model.classifier(clips)
    assert torch.equal(logits, plain) and torch.equal(both, plain) and au_out["logits"].shape == (4, len(AU_NAMES))
    with torch.no_grad():
        model.au_norm.weight.uniform_(0.5, 1.5)  # a trained norm: the release must carry it
        au_out = model(clips, with_au=True)[1]
    release = write_release(model, tmp_path / "rel", task="dfer_au", source={"format": "test"},
                            au_names=list(AU_NAMES))
    again = lgiformer.load_release(release)
    with torch.no_grad():
        assert torch.allclose(again(clips), logits, atol=1e-6)
        assert torch.allclose(au_probs(again(clips, with_au=True)[1]), au_probs(au_out), atol=1e-6)


def test_layer_decay_groups_cover_the_encoder_and_leave_both_heads_at_full_lr():
    from lgiformer.optim import param_groups

    model = _tiny_model()
    groups = param_groups(model, weight_decay=0.05, layer_decay=0.5)
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    stem, block = named["classifier.patch_embed.proj.weight"], named["classifier.blocks.1.mlp.fc1.weight"]
    assert scale[id(stem)] < scale[id(block)] < 1.0
    for name in ("classifier.head.weight", "au_norm.weight", *[n for n in named if n.startswith("au_head.")]):
        assert scale[id(named[name])] == 1.0, name
    assert len(scale) == len(named)


# ---- evaluation ----------------------------------------------------------------------------------------------------
def test_evaluate_scores_every_view_against_its_own_labels(labeled):
    table = ClipAULabels.from_csv(labeled / "labeled" / "au_labels.csv", labeled)
    samples = read_video_list(labeled / "labeled" / "lists" / "test_fold2.txt", labeled)
    test = VideoClassificationDataset(samples, mode="test", num_frames=4, sampling_rate=2, img_size=32,
                                      test_num_clips=2, test_num_crops=2, au_labels=table)
    loader = torch.utils.data.DataLoader(test, batch_size=3)
    model = _tiny_model()
    result = evaluate(model, loader, 7, au_names=AU_NAMES)
    n = len(samples)
    assert result.au_probs.shape == (n, 4, len(AU_NAMES)) and result.probs.shape == (n, 7)
    first = test[0]
    assert np.array_equal(result.au_labels[0], first[2].numpy()) and np.array_equal(result.au_valid[0],
                                                                                    first[3].numpy())
    with torch.no_grad():
        direct = au_probs(model.eval()(first[0], with_au=True)[1]).numpy()
    assert np.allclose(result.au_probs[0], direct, atol=1e-5)
    want = fold_f1(torch.from_numpy(result.au_probs.reshape(-1, 9)), torch.from_numpy(result.au_labels.reshape(-1, 9)),
                   torch.from_numpy(result.au_valid.reshape(-1, 9)))
    assert result.metrics["au"]["mean_f1"] == pytest.approx(want["mean"]) and result.metrics["au"]["num_views"] == 4 * n
    assert 0.0 <= result.metrics["uar"] <= 1.0


# ---- config and end to end -----------------------------------------------------------------------------------------
def test_config_refuses_what_multi_task_cannot_do(tmp_path):
    from lgiformer.config import ConfigError
    from lgiformer.data import get_dataset_spec
    from lgiformer.tasks.finetune import load_finetune_config

    with pytest.raises(ConfigError, match="au.dense"):
        load_finetune_config("tests/configs/tiny_finetune.yaml", ["--au.aux_weight", "0.5", "--au.dense", "true"])
    with pytest.raises(ConfigError, match="au.aux_weight must be >= 0"):
        load_finetune_config("tests/configs/tiny_finetune.yaml", ["--au.aux_weight", "-1"])
    cfg = load_finetune_config("tests/configs/tiny_finetune.yaml", ["--au.aux_weight", "0.5"])
    with pytest.raises(ConfigError, match="set data.au_labels"):
        clip_au_label_file(cfg.data, get_dataset_spec("dfew"), tmp_path)


def _multi_task_run(labeled, out, nproc=1):
    launcher = [] if nproc == 1 else ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    run([*launcher, "finetune/run.py", "--config", "tests/configs/tiny_finetune.yaml", "--run.output_dir", str(out),
         "--data.data_root", str(labeled), "--data.synthetic", "{size: 32, labeled_frames: 12, subjects: 5, "
         "clips_per_class_per_subject: 1, parts: labeled}", "--model.img_size", "32", "--model.region_size",
         "[2, 2, 2]", "--au.aux_weight", "0.5", "--au.head_args", "{dim: 32, num_heads: 2}"])
    return json.loads((out / "test_metrics.json").read_text())


def test_multi_task_finetune_under_torchrun_gathers_every_view_once(labeled, tmp_path):
    """Two processes: each tests a shard (7 clips: one is padded in twice); the gathered AU arrays hold every clip's
    four views once, like the expression predictions."""
    metrics = _multi_task_run(labeled, tmp_path / "run2", nproc=2)
    assert metrics["au"]["num_views"] == 7 * 4 and sum(map(sum, metrics["confusion"])) == 7
    rows = _csv_rows(tmp_path / "run2" / "test_predictions.csv")
    assert sorted(int(r["index"]) for r in rows) == list(range(7))


def test_multi_task_finetune_end_to_end(labeled, tmp_path):
    out = tmp_path / "run"
    metrics = _multi_task_run(labeled, out)
    assert set(metrics["au"]["per_au"]) == set(AU_NAMES) and metrics["au"]["num_views"] == 7 * 4
    assert 0.0 <= metrics["au"]["mean_f1"] <= 1.0 and 0.0 <= metrics["uar"] <= 1.0
    epochs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert all({"train_cls", "train_au", "val_au_mean_f1"} <= set(e) for e in epochs)
    # the release is the whole multi-task model: expression logits by default, the AU head's output on request
    release = json.loads((out / "release" / "config.json").read_text())
    assert release["task"] == "dfer_au" and release["model_args"]["classifier"]["model_args"]["num_classes"] == 7
    assert release["au_names"] == list(AU_NAMES) and release["training"]["test_au_mean_f1"] == metrics["au"]["mean_f1"]
    model = lgiformer.load_release(out / "release")
    with torch.no_grad():
        clips = torch.randn(2, 3, 4, 32, 32)
        assert model(clips).shape == (2, 7)
        assert model(clips, with_au=True)[1]["logits"].shape == (2, len(AU_NAMES))
