"""One release format for every task: what config.json records, old formats that still load, and the converters
that bring a reference checkpoint or an lgiformer 0.1 AU run into it."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import lgiformer
from lgiformer.convert import main as convert_main
from lgiformer.models import AUModel, create_model
from lgiformer.models.release import FORMAT_VERSION, read_release_config, write_release

FIX = Path(__file__).parent / "fixtures" / "mae_dfer_reference"
TINY = dict(img_size=32, num_frames=4, region_size=[2, 1, 2], embed_dim=32, depth=1, num_heads=2)


def _clips(n=2):
    torch.manual_seed(0)
    return torch.randn(n, 3, 4, 32, 32)


def test_config_records_the_task_the_code_and_rebuilds_the_model(tmp_path):
    model = create_model("lgiformer_tiny_patch16_160", num_classes=3, **TINY).eval()
    out = write_release(model, tmp_path / "rel", task="dfer", source={"format": "test"}, class_names=["a", "b", "c"])
    config = json.loads((out / "config.json").read_text())
    assert config["format_version"] == FORMAT_VERSION and config["task"] == "dfer"
    assert config["lgiformer"] == lgiformer.__version__ and "git_commit" in config
    with torch.no_grad():
        torch.testing.assert_close(lgiformer.load_release(out)(_clips()), model(_clips()))
    with pytest.raises(ValueError, match="task must be one of"):
        write_release(model, tmp_path / "other", task="classify", source={})


def test_release_files_follow_the_umask(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        out = write_release(create_model("vit_tiny_patch16_160", img_size=32, num_frames=4, depth=1, embed_dim=32,
                                         num_heads=2), tmp_path / "rel", task="pretrain", source={})
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o755
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in out.iterdir())


def test_a_format_1_release_still_loads_with_its_task_read_from_its_head(tmp_path):
    """lgiformer 0.1 wrote no task; a classifier's head says dfer, no head says pretrain."""
    for num_classes, task in ((3, "dfer"), (0, "pretrain")):
        model = create_model("lgiformer_tiny_patch16_160", num_classes=num_classes, **TINY).eval()
        out = write_release(model, tmp_path / task, task=task, source={"format": "test"})
        config = json.loads((out / "config.json").read_text())
        for key in ("task", "lgiformer", "git_commit", "class_names"):
            config.pop(key, None)
        (out / "config.json").write_text(json.dumps(dict(config, format_version=1)))
        again = read_release_config(out)
        assert again["task"] == task
        assert again.get("class_names") == (["class_0", "class_1", "class_2"] if num_classes else None)
        with torch.no_grad():
            torch.testing.assert_close(lgiformer.load_release(out)(_clips()), model(_clips()))


def _legacy_au_run(tmp_path: Path) -> tuple[Path, AUModel]:
    """The two files an lgiformer 0.1 AU run wrote into its output folder, with the schema it used."""
    encoder = create_model("lgiformer_tiny_patch16_160", num_classes=0, global_pool="", **TINY)
    torch.manual_seed(1)
    model = AUModel(encoder, "label_token", {"dim": 16, "num_heads": 2}, num_aus=3).eval()
    run = tmp_path / "au_run"
    run.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(run / "au_model.safetensors"))
    classifier_args = dict(encoder.model_args, num_classes=0, global_pool="")
    (run / "au_config.json").write_text(json.dumps(dict(
        format="lgiformer-au", model_name=encoder.model_name, model_args=classifier_args,
        model={"name": encoder.model_name}, au={"head": "label_token", "loss": "wbce", "dense": False, "moke": False,
                                                "freeze_encoder": False, "head_args": {"dim": 16, "num_heads": 2},
                                                "threshold": 0.4, "smooth_window": 8},
        au_names=["AU1", "AU2", "AU4"], rates=[0.1, 0.2, 0.3], threshold=0.4, smooth_window=8,
        data=dict(dataset="bp4d", fold=1, sampling_rate=None), selection={"select": "last", "epoch": 3},
        test_mean_f1=0.5)))
    return run, model


def test_an_au_run_of_lgiformer_0_1_converts_to_a_release_with_the_same_outputs(tmp_path, capsys):
    run, model = _legacy_au_run(tmp_path)
    with pytest.raises(FileNotFoundError, match="convert au-export"):
        lgiformer.load_release(run)
    assert convert_main(["au-export", "--input", str(run), "--output", str(tmp_path / "rel")]) == 0
    config = read_release_config(tmp_path / "rel")
    assert config["task"] == "au" and config["au_names"] == ["AU1", "AU2", "AU4"] and config["threshold"] == 0.4
    with torch.no_grad():
        torch.testing.assert_close(lgiformer.load_release(tmp_path / "rel")(_clips())["logits"],
                                   model(_clips())["logits"])
    assert convert_main(["au-export", "--input", str(tmp_path), "--output", str(tmp_path / "x")]) == 2
    assert "no au_config.json" in capsys.readouterr().err


def test_a_converted_finetuned_checkpoint_carries_its_dataset_classes_and_stride(tmp_path, capsys):
    rc = convert_main(["mae-dfer", "--input", str(FIX / "lgiformer_tiny_finetuned.pth"), "--output",
                       str(tmp_path / "rel"), "--dataset", "dfew", "--no-check"])
    assert rc == 0, capsys.readouterr().err
    config = read_release_config(tmp_path / "rel")
    assert config["class_names"] == ["Happy", "Sad", "Neutral", "Angry", "Surprise", "Disgust", "Fear"]
    assert config["data"]["sampling_rate"] == 4 and config["task"] == "dfer"
    rc = convert_main(["mae-dfer", "--input", str(FIX / "lgiformer_tiny_finetuned.pth"), "--output",
                       str(tmp_path / "mafw"), "--dataset", "mafw", "--no-check"])
    assert rc == 2 and "11 classes, but the checkpoint's head has 7" in capsys.readouterr().err
