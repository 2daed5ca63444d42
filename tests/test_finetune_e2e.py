"""End to end: pretrain -> release -> finetune/run.py -> test report -> finetuned release -> predict CLI."""
import csv
import json

import pytest

from _cli import run


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ft")
    run(["pretrain/run.py", "--config", "tests/configs/tiny_pretrain.yaml", "--run.output_dir", str(tmp / "pt"),
         "--data.data_root", str(tmp / "pt_data"), "--optim.epochs", "1", "--optim.warmup_epochs", "0"])
    run(["finetune/run.py", "--config", "tests/configs/tiny_finetune.yaml", "--run.output_dir", str(tmp / "ft"),
         "--data.data_root", str(tmp / "data"), "--pretrained", str(tmp / "pt" / "release")])
    return tmp


def test_finetune_reports_loaded_keys_and_writes_test_reports(finetuned):
    out = finetuned / "ft"
    report = json.loads((out / "load_report.json").read_text())
    assert report["format"] == "release" and len(report["loaded"]) > 20
    assert sorted(report["new"]) == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    assert set(report["ignored"]) == {"norm.weight", "norm.bias"}
    metrics = json.loads((out / "test_metrics.json").read_text())
    assert metrics["select"] in ("best_val", "last") and 0.0 <= metrics["uar"] <= 1.0 and 0.0 <= metrics["war"] <= 1.0
    rows = list(csv.DictReader(open(out / "test_predictions.csv")))
    assert len(rows) == 7 and {r["label_name"] for r in rows} == {"Happy", "Sad", "Neutral", "Angry", "Surprise",
                                                                  "Disgust", "Fear"}
    assert (out / "test_confusion.png").stat().st_size > 0
    epochs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [0, 1] and all("val_uar" in e for e in epochs)
    assert all(e["features/encoder_std"] > 0 and e["features/head_input_norm"] > 0 for e in epochs)
    release = json.loads((out / "release" / "config.json").read_text())
    assert release["training"]["features"]["head_input"]["norm_last"] == epochs[-1]["features/head_input_norm"]
    assert "## Feature health" in (out / "release" / "README.md").read_text()


def test_predict_cli_on_the_finetuned_release(finetuned):
    release = finetuned / "ft" / "release"
    config = json.loads((release / "config.json").read_text())
    assert config["class_names"][0] == "Happy" and config["model_args"]["num_classes"] == 7
    inputs = [str(finetuned / "data" / "labeled" / "frames" / name) for name in ("00000", "00007")]
    proc = run(["-m", "lgiformer.predict", "--model", str(release), *inputs, "--json"])
    out = json.loads(proc.stdout)
    assert [r["input"] for r in out["results"]] == inputs
    for result in out["results"]:
        assert set(result["probabilities"]) == set(config["class_names"])
        assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert result["prediction"] == max(result["probabilities"], key=result["probabilities"].get)


def test_resume_keeps_the_best_validation_epoch_from_before_the_restart(finetuned, tmp_path):
    """A restart used to choose only among the epochs after it. A 3-epoch run, then the same run cut back to the
    checkpoint right after its best epoch (a job killed then) and resumed: the same epoch selected, the same test
    predictions."""
    import shutil

    args = ["finetune/run.py", "--config", "tests/configs/tiny_finetune.yaml", "--data.data_root",
            str(finetuned / "data"), "--pretrained", str(finetuned / "pt" / "release"), "--optim.epochs", "3",
            "--release_dir", "none"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    run([*args, "--run.output_dir", str(full)])
    best = json.loads((full / "test_metrics.json").read_text())["epoch"]
    assert best < 2, "this test needs a best validation epoch before the last one"
    assert (full / "best_val" / f"epoch{best:04d}.safetensors").is_file()
    shutil.copytree(full, cut)
    for path in [p for p in (cut / "checkpoints").glob("epoch*") if int(p.name[5:9]) > best + 1]:
        shutil.rmtree(path)
    (cut / "test_metrics.json").unlink()
    (cut / "test_predictions.csv").unlink()
    run([*args, "--run.output_dir", str(cut), "--run.resume", "auto"])
    assert "(restored)" in (cut / "run.log").read_text()
    a, b = (json.loads((d / "test_metrics.json").read_text()) for d in (full, cut))
    assert (a["select"], a["epoch"], a["val_uar"], a["uar"]) == (b["select"], b["epoch"], b["val_uar"], b["uar"])
    assert (full / "test_predictions.csv").read_text() == (cut / "test_predictions.csv").read_text()


def test_label_token_head_finetunes_from_the_encoder_release_and_predicts(finetuned, tmp_path):
    """``--model.global_pool label_token``: the encoder release loads as for the linear head, the head's queries
    and layers are new, and the finetuned release rebuilds the head for ``lgiformer.predict``."""
    out = tmp_path / "lt"
    run(["finetune/run.py", "--config", "tests/configs/tiny_finetune.yaml", "--run.output_dir", str(out),
         "--data.data_root", str(finetuned / "data"), "--pretrained", str(finetuned / "pt" / "release"),
         "--model.global_pool", "label_token", "--model.head_args", "{dim: 16, num_heads: 2, depth: 1}",
         "--optim.epochs", "1", "--data.test_num_clips", "1", "--data.test_num_crops", "1"])
    report = json.loads((out / "load_report.json").read_text())
    plain = json.loads((finetuned / "ft" / "load_report.json").read_text())
    assert report["loaded"] == plain["loaded"] and set(report["ignored"]) == {"norm.weight", "norm.bias"}
    assert "head.label_tokens" in report["new"] and {k.split(".")[0] for k in report["new"]} == {"fc_norm", "head"}
    config = json.loads((out / "release" / "config.json").read_text())
    assert config["model_args"]["global_pool"] == "label_token" and config["model_args"]["head_args"]["dim"] == 16
    clip = str(finetuned / "data" / "labeled" / "frames" / "00003")
    result = json.loads(run(["-m", "lgiformer.predict", "--model", str(out / "release"), clip, "--json"]).stdout)
    probs = result["results"][0]["probabilities"]
    assert len(probs) == 7 and sum(probs.values()) == pytest.approx(1.0, abs=1e-4)


def test_linear_probe_trains_the_head_only(finetuned, tmp_path):
    """--model.freeze_encoder true: the finetuned release holds the pretrained encoder's weights unchanged and a
    trained head."""
    import torch
    from safetensors.torch import load_file

    out = tmp_path / "probe"
    run(["finetune/run.py", "--config", "tests/configs/tiny_finetune.yaml", "--run.output_dir", str(out),
         "--data.data_root", str(finetuned / "data"), "--pretrained", str(finetuned / "pt" / "release"),
         "--model.freeze_encoder", "true", "--eval.select", "last"])
    encoder = load_file(str(finetuned / "pt" / "release" / "model.safetensors"))
    probe = load_file(str(out / "release" / "model.safetensors"))
    frozen = [k for k in probe if k in encoder and not k.startswith("norm.")]
    assert len(frozen) > 20 and all(torch.equal(probe[k], encoder[k]) for k in frozen)
    # the classifier trained: fc_norm starts at exactly 1 / 0
    assert not torch.equal(probe["fc_norm.weight"], torch.ones_like(probe["fc_norm.weight"]))
    assert not torch.equal(probe["fc_norm.bias"], torch.zeros_like(probe["fc_norm.bias"]))
    assert "training the head only" in (out / "run.log").read_text()
