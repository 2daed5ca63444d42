"""No file the project loads can run code: training checkpoints (model and optimiser states, ZeRO shards, the
universal copy), releases, and foreign weights, through every entry point that reads them. Each test plants a real
malicious pickle whose unpickling would create a marker file, and asserts the refusal and that the marker is absent.
"""
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from _cli import run

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "tests" / "configs" / "tiny_pretrain.yaml"


class Payload:
    """Unpickling this creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_unlabeled):
    """Two finished one-epoch pretraining runs of the tiny config: ZeRO 0 and ZeRO 1 (optimiser states sharded)."""
    base = tmp_path_factory.mktemp("runs")
    out = {"data": tiny_unlabeled}
    for stage in (0, 1):
        out[stage] = base / f"zero{stage}"
        run(["pretrain/run.py", "--config", CONFIG, "--run.output_dir", out[stage], "--data.data_root",
             tiny_unlabeled, "--run.zero_stage", str(stage), "--optim.epochs", "1", "--run.image_every", "0"])
    return out


def _tampered(runs, stage: int, tmp_path: Path, file: str = "mp_rank_00_model_states.pt") -> tuple[Path, Path]:
    """A copy of a run whose checkpoint file ``file`` carries the payload next to the real weights."""
    out, marker = tmp_path / "run", tmp_path / "marker"
    shutil.copytree(runs[stage], out)
    ckpt = next((out / "checkpoints").glob("epoch*"))
    target = ckpt / file
    state = torch.load(target, weights_only=False)  # our own file, made by the fixture
    state["extra"] = Payload(marker)
    torch.save(state, target)
    return out, marker


def test_release_cli_refuses_a_tampered_checkpoint(runs, tmp_path):
    out, marker = _tampered(runs, 0, tmp_path)
    proc = run(["-m", "lgiformer.release", "--checkpoint", out, "--out", tmp_path / "rel"], check=False)
    assert proc.returncode == 2, proc.stderr
    assert "refusing to load" in proc.stderr and "builtins.exec" in proc.stderr
    assert "mp_rank_00_model_states.pt" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists() and not (tmp_path / "rel").exists()


@pytest.mark.parametrize("file", ["mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"])
def test_resume_refuses_a_tampered_checkpoint(runs, tmp_path, file):
    out, marker = _tampered(runs, 1, tmp_path, file)
    proc = run(["pretrain/run.py", "--config", CONFIG, "--run.output_dir", out, "--data.data_root",
                runs["data"], "--run.zero_stage", "1", "--optim.epochs", "2", "--run.resume", "auto"],
               check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"refusing to load {out}" in proc.stderr and file in proc.stderr and "builtins.exec" in proc.stderr
    assert not marker.exists()


def test_universal_conversion_refuses_a_tampered_shard_and_a_planted_universal_copy(runs, tmp_path):
    """A ZeRO checkpoint resumed on another process count goes through DeepSpeed's universal converter, which
    unpickles every shard: the shards are checked first. A planted ``universal/`` copy is checked too."""
    from lgiformer.engine.checkpointer import universal_checkpoint
    from lgiformer.interop.safe_load import UnsafeCheckpointError

    out, marker = _tampered(runs, 1, tmp_path, "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    ckpt = next((out / "checkpoints").glob("epoch*"))
    with pytest.raises(UnsafeCheckpointError, match="builtins.exec"):
        universal_checkpoint(ckpt)
    assert not marker.exists() and not (ckpt / "universal").exists()

    clean = tmp_path / "clean"
    shutil.copytree(runs[1], clean)
    ckpt = next((clean / "checkpoints").glob("epoch*"))
    state = json.loads((ckpt / "COMPLETE.json").read_text())
    (ckpt / "COMPLETE.json").write_text(json.dumps(dict(state, world_size=2)))  # "written by 2 processes"
    (ckpt / "universal" / "zero").mkdir(parents=True)
    torch.save({"x": Payload(marker)}, ckpt / "universal" / "zero" / "fp32.pt")
    proc = run(["pretrain/run.py", "--config", CONFIG, "--run.output_dir", clean, "--data.data_root",
                runs["data"], "--run.zero_stage", "1", "--optim.epochs", "2", "--run.resume", "auto"],
               check=False)
    assert proc.returncode == 2 and "universal/zero/fp32.pt" in proc.stderr, proc.stderr[-2000:]
    assert not marker.exists()


def test_zero_consolidation_refuses_a_tampered_shard(runs, tmp_path):
    from lgiformer.engine.checkpointer import find_checkpoint, read_fp32_state_dict
    from lgiformer.interop.safe_load import UnsafeCheckpointError

    out, marker = _tampered(runs, 1, tmp_path, "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    with pytest.raises(UnsafeCheckpointError, match="builtins.exec"):
        read_fp32_state_dict(find_checkpoint(out))
    assert not marker.exists()


def test_clean_checkpoints_of_every_stage_still_load(runs, tmp_path):
    from lgiformer.engine.checkpointer import find_checkpoint, read_fp32_state_dict

    for stage in (0, 1):
        sd = read_fp32_state_dict(find_checkpoint(runs[stage]))
        assert "encoder.lg_region_tokens" in sd and all(v.dtype == torch.float32 for v in sd.values())


def _release(tmp_path: Path) -> Path:
    from lgiformer.models import create_model
    from lgiformer.models.release import write_release

    model = create_model("lgiformer_tiny_patch16_160", num_classes=3, img_size=64, num_frames=4,
                         region_size=[2, 2, 4], embed_dim=32, depth=1, num_heads=2)
    return write_release(model, tmp_path / "release", task="dfer", source=dict(format="test"), class_names=["a", "b", "c"])


def test_load_release_refuses_factory_arguments_that_load_other_files(tmp_path):
    """timm's factory takes ``checkpoint_path`` and would torch.load it: config.json may not name it."""
    import lgiformer

    release = _release(tmp_path)
    marker = tmp_path / "marker"
    torch.save({"state_dict": {"x": Payload(marker)}}, tmp_path / "evil.pth")
    config = json.loads((release / "config.json").read_text())
    config["model_args"]["checkpoint_path"] = str(tmp_path / "evil.pth")
    (release / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"model_args \['checkpoint_path'\] are not arguments"):
        lgiformer.load_release(release)
    proc = run(["-m", "lgiformer.predict", "--model", release, ROOT / "README.md"], check=False)
    assert proc.returncode == 2 and "checkpoint_path" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists()


def test_a_pickle_posing_as_safetensors_is_not_unpickled(tmp_path):
    import lgiformer

    release = _release(tmp_path)
    marker = tmp_path / "marker"
    torch.save({"x": Payload(marker)}, release / "model.safetensors")
    with pytest.raises(Exception):
        lgiformer.load_release(release)
    assert not marker.exists()


def test_finetune_refuses_malicious_pretrained_weights(tmp_path, media):
    marker = tmp_path / "marker"
    sd = {"lg_region_tokens": torch.zeros(4, 32)}
    torch.save({"model": sd, "args": Payload(marker)}, tmp_path / "evil.pth")
    save_file(sd, str(tmp_path / "fine.safetensors"))  # a safetensors start point needs no pickle at all
    media.folder(tmp_path / "data" / "clip", media.frames(4, 32), ext="jpg")  # lists that pass the start-up check
    (tmp_path / "data" / "list.txt").write_text("clip 0\nclip 1\n")
    proc = run(["finetune/run.py", "--config", ROOT / "tests" / "configs" / "tiny_finetune.yaml",
                "--run.output_dir", tmp_path / "out", "--data.dataset", "dfew", "--data.data_root",
                tmp_path / "data", "--data.train_list", tmp_path / "data" / "list.txt", "--data.test_list",
                tmp_path / "data" / "list.txt", "--model.pretrained", tmp_path / "evil.pth"], check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "refusing to load" in proc.stderr and "builtins.exec" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists()
