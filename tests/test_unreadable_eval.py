"""Evaluation never scores one file in another's place: a clip (an AU video) that no reader can read is excluded,
counted, logged and listed with its error; the figures cover the clips that were read; past
``data.bad_sample_threshold`` evaluation stops naming the files. Training keeps replacing bad samples."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from _cli import run
from lgiformer.data import (AUFrameWindows, AUVideo, ClipAULabels, TooManyBadSamples, VideoClassificationDataset,
                            VideoSample, build_loader, collate_readable)
from lgiformer.data.synthetic import AU_NAMES, generate
from lgiformer.inference import au_frame_rows, average_views, evaluate, evaluate_au, save_report

NAMES = ["c0", "c1", "c2", "c3", "c4", "c5", "c6"]


class MeanColour(nn.Module):
    """Logits from a clip's mean colour: any two of our clips get different probabilities, so a prediction made
    from another file would not match the sample's own."""

    def __init__(self, k: int = 7, num_aus: int = 0):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(3, k)
        self.num_aus = num_aus
        self.au = nn.Linear(3, num_aus) if num_aus else None

    def forward(self, x, with_au: bool = False):
        colour = x.mean((2, 3, 4))
        feats = 8 * (colour - colour.mean(1, keepdim=True))  # per clip: independent of the rest of the batch
        if self.au is not None and not with_au:  # an AU model: a head output dict
            return {"logits": self.au(feats)}
        return (self.fc(feats), {"logits": self.au(feats)}) if with_au else self.fc(feats)


def _cut(path: Path, fraction: float) -> Path:
    path.write_bytes(path.read_bytes()[:int(path.stat().st_size * fraction)])
    return path


@pytest.fixture
def test_list(tmp_path, media):
    """Eight entries: five good frame folders, and three unreadable mp4s with labels of their own: one cut before its
    index (cannot be opened), an empty one, and one whose index survived but not its frames (opens, fails to
    decode: what gets past the start-up check)."""
    rows = []
    for i, label in ((0, 0), (2, 1), (4, 2), (6, 4), (7, 0)):
        media.folder(tmp_path / f"clip{i}", media.frames(10, 32, seed=i))
        rows.append((i, f"clip{i}", label))
    _cut(media.mp4(tmp_path / "cut.mp4", media.frames(10, 32, seed=11)), 0.5)
    (tmp_path / "zero.mp4").write_bytes(b"")
    _cut(media.mp4(tmp_path / "cut_fs.mp4", media.frames(40, 32, seed=12), faststart=True), 0.6)
    rows += [(1, "cut.mp4", 5), (3, "zero.mp4", 3), (5, "cut_fs.mp4", 6)]
    rows.sort()
    (tmp_path / "test.txt").write_text("".join(f"{name} {label}\n" for _, name, label in rows))
    return tmp_path


def _test_set(root):
    return VideoClassificationDataset(str(root / "test.txt"), str(root), mode="test", num_frames=4, sampling_rate=2,
                                      img_size=16, test_num_clips=2, test_num_crops=2)


@pytest.mark.parametrize("workers", [0, 2])
def test_unreadable_test_clips_are_excluded_never_replaced(test_list, tmp_path, workers):
    dataset = _test_set(test_list)
    listed = [line.split() for line in (test_list / "test.txt").read_text().splitlines()]
    model = MeanColour()
    loader = build_loader(dataset, 3, shuffle=False, drop_last=False, num_workers=workers, collate_fn=collate_readable)
    result = evaluate(model, loader, 7, NAMES, bad_sample_threshold=0.5, split="test")

    good = [0, 2, 4, 6, 7]
    assert result.indices.tolist() == good
    assert result.labels.tolist() == [int(listed[i][1]) for i in good]
    with torch.no_grad():  # each row is the model on that very sample
        for row, i in enumerate(good):
            views, label, index = dataset[i]
            assert index == i and label == int(listed[i][1])
            np.testing.assert_allclose(result.probs[row], average_views(model(views)[None])[0].numpy(), atol=1e-6)
    assert [(e["index"], Path(e["path"]).name, e["label"]) for e in result.excluded] == \
        [(1, "cut.mp4", 5), (3, "zero.mp4", 3), (5, "cut_fs.mp4", 6)]
    reasons = {Path(e["path"]).name: e["reason"] for e in result.excluded}
    assert "PyAV cannot open it" in reasons["cut.mp4"] and "decord cannot open it" in reasons["cut.mp4"]
    assert reasons["zero.mp4"] == "empty file (0 bytes)" and "PyAV cannot decode it" in reasons["cut_fs.mp4"]

    # the figures cover the five clips that were read, computed here by hand
    preds = result.probs.argmax(1)
    labels = np.array([int(listed[i][1]) for i in good])
    assert result.metrics["war"] == pytest.approx(float((preds == labels).mean()))
    recalls = [float((preds[labels == c] == c).mean()) for c in sorted(set(labels.tolist()))]
    assert result.metrics["uar"] == pytest.approx(float(np.mean(recalls)))
    assert (result.metrics["evaluated"], result.metrics["excluded"]) == (5, 3)
    assert result.metrics["num_samples"] == 5

    out = tmp_path / f"report{workers}"
    save_report(result, out, "test", NAMES, [s.path for s in dataset.samples])
    with open(out / "test_predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5
    for r in rows:  # no row carries another file's path or label
        name, label = listed[int(r["index"])]
        assert Path(r["path"]).name == name and int(r["label"]) == int(label)
        assert name.startswith("clip")
    report = json.loads((out / "test_metrics.json").read_text())
    assert report["evaluated"] == 5 and report["excluded"] == 3
    assert [(Path(e["path"]).name, e["reason"]) for e in report["excluded_files"]] == \
        [(Path(e["path"]).name, e["reason"]) for e in result.excluded]


def test_evaluation_stops_past_the_threshold_naming_the_files(test_list, caplog):
    loader = build_loader(_test_set(test_list), 4, shuffle=False, drop_last=False, collate_fn=collate_readable)
    with pytest.raises(TooManyBadSamples) as err:  # 3 of 8 = 37.5 % > 20 %
        evaluate(MeanColour(), loader, 7, NAMES, bad_sample_threshold=0.2, split="test")
    message = str(err.value)
    assert message.startswith("test: 3 of 8 clips (37.5 %) could not be read, more than data.bad_sample_threshold")
    for name in ("cut.mp4", "zero.mp4", "cut_fs.mp4"):
        assert name in message
    with caplog.at_level("WARNING", logger="lgiformer.inference"):  # under the threshold: logged with the files
        evaluate(MeanColour(), loader, 7, NAMES, bad_sample_threshold=0.5, split="test")
    logged = " ".join(r.getMessage() for r in caplog.records if r.name == "lgiformer.inference")
    assert "test: 3 of 8 clips could not be read and are left out" in logged and "zero.mp4: empty file" in logged


def test_training_still_replaces_a_bad_sample(test_list):
    train = VideoClassificationDataset(str(test_list / "test.txt"), str(test_list), mode="train", num_frames=4,
                                       sampling_rate=2, img_size=16)
    clip, label, index = train[3]  # zero.mp4: another sample is read in its place, and counted
    assert index == 3 and clip.shape == (3, 4, 16, 16)
    assert train.bad_samples.snapshot()["bad"] >= 1


def _au_video(path, n, seed, subject):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, (n, 3)).astype(np.float32)
    return AUVideo(str(path), np.arange(n), labels, np.ones((n, 3), bool), subject)


def test_au_evaluation_leaves_out_a_video_that_cannot_be_read(tmp_path, media):
    """Frame-wise AU evaluation: the cut video is left out whole (no row of it in the predictions), the others are
    scored exactly as without it."""
    videos = [_au_video(media.folder(tmp_path / "a", media.frames(8, 32, seed=1)), 8, 1, "s1"),
              _au_video(_cut(media.mp4(tmp_path / "b.mp4", media.frames(40, 32, seed=2), faststart=True), 0.5), 40, 2,
                        "s2"),
              _au_video(media.folder(tmp_path / "c", media.frames(8, 32, seed=3)), 8, 3, "s3")]
    model = MeanColour(num_aus=3)
    names = ["AU1", "AU2", "AU4"]
    opts = dict(num_frames=4, sampling_rate=1, img_size=16)
    common = dict(threshold=0.5, smooth_window=3, batch_size=4, device="cpu")
    metrics, arrays = evaluate_au(model, AUFrameWindows(videos, **opts), names, bad_sample_threshold=0.5, **common)
    alone, _ = evaluate_au(model, AUFrameWindows([videos[0], videos[2]], **opts), names, **common)
    assert metrics["excluded"] == 1 and metrics["evaluated"] == 2 and metrics["num_videos"] == 2
    assert metrics["excluded_files"][0]["path"].endswith("b.mp4") and "PyAV" in metrics["excluded_files"][0]["reason"]
    assert metrics["num_frames"] == 16 and metrics["mean_f1"] == pytest.approx(alone["mean_f1"])
    assert metrics["per_au"] == pytest.approx(alone["per_au"])
    header, rows = au_frame_rows(AUFrameWindows(videos, **opts), names, arrays, 0.5)
    paths = [r[0] for r in rows]
    assert len(paths) == 16 and not any(p.endswith("b.mp4") for p in paths)
    with pytest.raises(TooManyBadSamples, match=r"(?s)1 of 3 videos .*/b\.mp4: PyAV"):
        evaluate_au(model, AUFrameWindows(videos, **opts), names, bad_sample_threshold=0.1, split="test", **common)


def test_multi_task_evaluation_excludes_the_clip_from_both_heads(tmp_path, media):
    """DFER + AU: the unreadable clip has neither an expression row nor AU views."""
    root = tmp_path / "data"
    generate(root, size=32, labeled_frames=8, subjects=5, clips_per_class_per_subject=1, parts="labeled",
             progress=False)
    table = ClipAULabels.from_csv(root / "labeled" / "au_labels.csv", root)
    samples = [VideoSample(str(root / "labeled" / "frames" / f"{i:05d}"), i % 7) for i in range(4)]
    (tmp_path / "zero.mp4").write_bytes(b"")
    samples.insert(2, VideoSample(str(tmp_path / "zero.mp4"), 6))
    dataset = VideoClassificationDataset(samples, mode="test", num_frames=4, sampling_rate=2, img_size=16,
                                         test_num_clips=2, test_num_crops=1, au_labels=table)
    loader = build_loader(dataset, 2, shuffle=False, drop_last=False, collate_fn=collate_readable)
    result = evaluate(MeanColour(num_aus=len(AU_NAMES)), loader, 7, au_names=AU_NAMES, bad_sample_threshold=0.5)
    assert result.indices.tolist() == [0, 1, 3, 4] and [e["index"] for e in result.excluded] == [2]
    assert result.au_probs.shape == (4, 2, len(AU_NAMES)) and result.metrics["au"]["num_views"] == 8


def test_finetune_under_torchrun_excludes_a_cut_test_clip_once(tmp_path, media):
    """End to end, two processes: a test clip whose frames were cut off passes the start-up check (its index is
    intact), fails when read, and is reported once, gathered from whichever process read it; every prediction row
    is its own clip's."""
    data = tmp_path / "data"
    generate(data, size=64, labeled_frames=12, subjects=5, clips_per_class_per_subject=1, parts="labeled",
             progress=False)
    lists = data / "labeled" / "lists"
    _cut(media.mp4(tmp_path / "cut.mp4", media.frames(40, 64, seed=5), faststart=True), 0.6)
    lines = (lists / "test_fold1.txt").read_text().splitlines()
    lines.insert(3, f"{tmp_path / 'cut.mp4'} 5")
    (tmp_path / "test.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "finetune/run.py", "--config",
         "tests/configs/tiny_finetune.yaml", "--run.output_dir", out, "--data.data_root", data, "--data.synthetic",
         "{size: 64, labeled_frames: 12, subjects: 5, clips_per_class_per_subject: 1, parts: labeled}",
         "--data.test_list", tmp_path / "test.txt", "--data.bad_sample_threshold", "0.2", "--optim.epochs", "1",
         "--optim.warmup_epochs", "0"])
    report = json.loads((out / "test_metrics.json").read_text())
    assert report["evaluated"] == 7 and report["excluded"] == 1 and sum(map(sum, report["confusion"])) == 7
    assert [(e["index"], e["path"], e["label"]) for e in report["excluded_files"]] == [(3, str(tmp_path / "cut.mp4"),
                                                                                        5)]
    with open(out / "test_predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(int(r["index"]) for r in rows) == [0, 1, 2, 4, 5, 6, 7]
    listed = [line.split() for line in lines]
    for r in rows:
        assert [Path(r["path"]).name, r["label"]] == [Path(listed[int(r["index"])][0]).name, listed[int(r["index"])][1]]
    log = (out / "run.log").read_text()
    assert "test: 1 of 8 clips could not be read and are left out of the figures" in log
