"""``python -m lgiformer.evaluate``: a release tested on a labelled list with the finetuning protocol, from our
releases and from a converted reference checkpoint, with one-line errors for bad input."""
import csv
import json
from pathlib import Path

import pytest
import torch

from _cli import run
from lgiformer.data import VideoClassificationDataset, read_video_list
from lgiformer.data.synthetic import generate
from lgiformer.inference import evaluate
from lgiformer.models import create_model
from lgiformer.models.release import load_release, write_release

FIX = Path(__file__).parent / "fixtures" / "mae_dfer_reference"
TINY = dict(img_size=32, num_frames=4, region_size=[2, 2, 2], embed_dim=32, depth=1, num_heads=2)
CLASSES = ["Happy", "Sad", "Neutral", "Angry", "Surprise", "Disgust", "Fear"]


@pytest.fixture(scope="module")
def labeled(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval") / "data"
    generate(root, size=32, labeled_frames=12, subjects=5, clips_per_class_per_subject=1, parts="labeled",
             progress=False)
    return root


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("lgiformer_tiny_patch16_160", num_classes=7, **TINY).eval()
    return write_release(model, tmp_path_factory.mktemp("rel") / "release", task="dfer", source={"format": "test"},
                         class_names=CLASSES, data=dict(sampling_rate=2, test_num_clips=2, test_num_crops=2))


def test_evaluate_writes_and_prints_the_test_protocols_figures(labeled, release, tmp_path):
    test_list = labeled / "labeled" / "lists" / "test_fold1.txt"
    out = tmp_path / "report"
    proc = run(["-m", "lgiformer.evaluate", "--model", release, "--list", test_list, "--data-root", labeled,
                "--out", out, "--json", "--workers", "0"])
    printed = json.loads(proc.stdout)
    saved = json.loads((out / "test_metrics.json").read_text())
    assert printed["uar"] == saved["uar"] and saved["protocol"]["clips"] == 2 and saved["protocol"]["crops"] == 2
    # the same figures as the library's evaluation of the same views
    samples = read_video_list(test_list, labeled, labeled=True, num_classes=7)
    dataset = VideoClassificationDataset(samples, mode="test", num_frames=4, sampling_rate=2, img_size=32)
    want = evaluate(load_release(release), torch.utils.data.DataLoader(dataset, batch_size=3), 7, CLASSES)
    assert saved["uar"] == pytest.approx(want.metrics["uar"]) and saved["confusion"] == want.metrics["confusion"]
    rows = list(csv.DictReader(open(out / "test_predictions.csv")))
    assert [r["path"] for r in rows] == [s.path for s in samples] and set(saved["per_class_recall"]) == set(CLASSES)
    assert (out / "test_confusion.png").stat().st_size > 0
    text = run(["-m", "lgiformer.evaluate", "--model", release, "--list", test_list, "--data-root", labeled,
                "--out", tmp_path / "again", "--workers", "0", "--clips", "1", "--crops", "1"]).stdout
    assert text.startswith("UAR ") and "(1 clips x 1 crops)" in text and "Happy" in text


def test_bad_input_is_one_line(labeled, release, tmp_path):
    encoder = write_release(create_model("lgiformer_tiny_patch16_160", num_classes=0, global_pool="", **TINY),
                            tmp_path / "encoder", task="pretrain", source={})
    test_list = labeled / "labeled" / "lists" / "test_fold1.txt"
    for args, message in (([encoder, test_list], "an encoder release (task pretrain)"),
                          ([release, tmp_path / "missing.txt"], "missing.txt"),
                          ([tmp_path, test_list], "not a release directory")):
        proc = run(["-m", "lgiformer.evaluate", "--model", args[0], "--list", args[1], "--data-root", labeled],
                   check=False)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_a_converted_reference_checkpoint_evaluates_with_its_dataset_names(tmp_path, media):
    from lgiformer.convert import main as convert_main

    assert convert_main(["mae-dfer", "--input", str(FIX / "lgiformer_tiny_finetuned.pth"), "--output",
                         str(tmp_path / "rel"), "--dataset", "dfew", "--no-check"]) == 0
    for i in range(2):
        media.mp4(tmp_path / "videos" / f"{i}.mp4", media.frames(t=20, size=160, seed=i))
    (tmp_path / "test.txt").write_text("videos/0.mp4 0\nvideos/1.mp4 4\n")
    proc = run(["-m", "lgiformer.evaluate", "--model", tmp_path / "rel", "--list", tmp_path / "test.txt",
                "--data-root", tmp_path, "--out", tmp_path / "report", "--workers", "0", "--clips", "1", "--crops",
                "1"])
    assert "Happy" in proc.stdout and "Surprise" in proc.stdout
    rows = list(csv.DictReader(open(tmp_path / "report" / "test_predictions.csv")))
    assert [r["label_name"] for r in rows] == ["Happy", "Surprise"]
