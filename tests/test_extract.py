"""``python -m lgiformer.extract``: pooled encoder features of a list, resumable chunks, sharded under torchrun."""
import json

import pytest
import torch

from _cli import run
from _tools import TINY, tiny_release
from lgiformer.data import VideoClassificationDataset, read_video_list
from lgiformer.extract import ExtractError, extract, load_features
from lgiformer.models import LGIFormer, VideoViT
from lgiformer.models.release import load_release


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Five clips (mp4 and frame folders, 20 frames of 48 px) and a labeled and an unlabeled list of them."""
    from conftest import moving_frames, write_frame_folder, write_mp4

    root = tmp_path_factory.mktemp("clips")
    lines = []
    for i in range(5):
        frames = moving_frames(t=20, size=48, seed=i)
        path = write_mp4(root / f"v{i}.mp4", frames) if i % 2 else write_frame_folder(root / f"f{i}", frames)
        lines.append((path, i % 3))
    (root / "labeled.txt").write_text("".join(f"{p} {y}\n" for p, y in lines))
    (root / "unlabeled.txt").write_text("".join(f"{p} 0 20\n" for p, _ in lines))
    return root


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    root = tmp_path_factory.mktemp("releases")
    return dict(encoder=tiny_release(root / "encoder", num_classes=0),
                classifier=tiny_release(root / "classifier"),
                vit=tiny_release(root / "vit", "vit_tiny_patch16_160", num_classes=0))


def _by_hand(release, list_file, pool, clips=1, crops=1):
    """The features as a reader of the module docstring would compute them: the test views, forward_features,
    then the pooling written out on the token layout (R representative tokens first, then raster t, h, w)."""
    model = load_release(release)
    samples = read_video_list(list_file, labeled=list_file.name == "labeled.txt")
    data = json.loads((release / "config.json").read_text()).get("data", {})
    dataset = VideoClassificationDataset(samples, mode="test", num_frames=TINY["num_frames"],
                                         img_size=TINY["img_size"], sampling_rate=data.get("sampling_rate", 4),
                                         test_num_clips=clips, test_num_crops=crops)
    grid_t, grid_hw = TINY["num_frames"] // 2, (TINY["img_size"] // 16) ** 2        # 4 x (4 x 4) tokens
    r = 8 if isinstance(model, LGIFormer) else 0                                   # (4/2) * (4/2) * (4/2) regions
    out = []
    with torch.no_grad():
        for i in range(len(samples)):
            views = dataset[i][0]
            tokens = model.forward_features(views)
            assert tokens.shape[1] == r + grid_t * grid_hw
            local = tokens[:, r:]
            pooled = dict(region=tokens[:, :r].mean(1) if r else None, local=local.mean(1),
                          spatial=local.reshape(len(views), grid_t, grid_hw, -1).mean(1), tokens=tokens)[pool]
            out.append(pooled.mean(0))
    return torch.stack(out)


@pytest.mark.parametrize("kind,pool", [("encoder", "region"), ("encoder", "local"), ("encoder", "spatial"),
                                       ("classifier", "tokens"), ("vit", "local"), ("vit", "spatial")])
def test_features_are_forward_features_pooled(clips, releases, tmp_path, kind, pool):
    out = tmp_path / "feats.safetensors"
    summary = extract(releases[kind], clips / "unlabeled.txt", out, pool, chunk_size=2, batch_size=2)
    loaded = load_features(out)
    expected = _by_hand(releases[kind], clips / "unlabeled.txt", pool)
    shapes = dict(region=(5, 32), local=(5, 32), spatial=(5, 16, 32),
                  tokens=(5, (8 if kind != "vit" else 0) + 64, 32))
    assert loaded["features"].shape == shapes[pool] and summary["shape"] == list(shapes[pool])
    assert torch.allclose(loaded["features"], expected, atol=1e-5)
    assert loaded["paths"] == [s.path for s in read_video_list(clips / "unlabeled.txt", labeled=False)]
    assert loaded["labels"] is None and loaded["pool"] == pool
    assert not out.with_name(out.name + ".parts").exists()          # merged, then removed


def test_views_are_averaged_and_labels_kept(clips, releases, tmp_path):
    out = tmp_path / "feats.safetensors"
    extract(releases["encoder"], clips / "labeled.txt", out, "local", clips=2, crops=2)
    loaded = load_features(out)
    assert loaded["labels"].tolist() == [0, 1, 2, 0, 1]
    expected = _by_hand(releases["encoder"], clips / "labeled.txt", "local", clips=2, crops=2)
    assert torch.allclose(loaded["features"], expected, atol=1e-5)
    single = _by_hand(releases["encoder"], clips / "labeled.txt", "local")
    assert not torch.allclose(expected, single, atol=1e-3)           # the views really differ


def test_a_killed_run_resumes_without_recomputing_written_chunks(clips, releases, tmp_path, monkeypatch):
    out, reference = tmp_path / "feats.safetensors", tmp_path / "reference.safetensors"
    extract(releases["encoder"], clips / "labeled.txt", reference, "region", chunk_size=2, batch_size=2)
    calls = []
    forward = LGIFormer.forward_features

    def dies_on_the_second_call(self, x, mask=None):
        calls.append(len(x))
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return forward(self, x, mask)

    monkeypatch.setattr(LGIFormer, "forward_features", dies_on_the_second_call)
    with pytest.raises(KeyboardInterrupt):
        extract(releases["encoder"], clips / "labeled.txt", out, "region", chunk_size=2, batch_size=2)
    parts = out.with_name(out.name + ".parts")
    assert sorted(p.name for p in parts.iterdir()) == ["chunk-000000.safetensors"] and not out.exists()

    calls.clear()
    monkeypatch.setattr(LGIFormer, "forward_features", lambda self, x, mask=None: calls.append(len(x))
                        or forward(self, x, mask))
    summary = extract(releases["encoder"], clips / "labeled.txt", out, "region", chunk_size=2, batch_size=2)
    assert calls == [2, 1]                       # chunks 1 and 2 (entries 2-3 and 4); chunk 0 was not recomputed
    assert summary["reused"] == 1 and summary["computed"] == 2
    assert torch.equal(load_features(out)["features"], load_features(reference)["features"])

    calls.clear()                                # complete: nothing to do
    assert extract(releases["encoder"], clips / "labeled.txt", out, "region", chunk_size=2)["up_to_date"]
    assert calls == []


def test_chunks_of_another_run_or_damaged_are_recomputed(clips, releases, tmp_path, monkeypatch):
    out = tmp_path / "feats.safetensors"
    parts = out.with_name(out.name + ".parts")
    parts.mkdir()
    (parts / "chunk-000001.safetensors").write_bytes(b"half a file")            # damaged
    from safetensors.torch import save_file                                     # another run's chunk 2
    save_file({"features": torch.zeros(1, 32)}, str(parts / "chunk-000002.safetensors"),
              metadata=dict(key="another model", paths=json.dumps([str(clips / "f4")])))
    calls = []
    forward = LGIFormer.forward_features
    monkeypatch.setattr(LGIFormer, "forward_features", lambda self, x, mask=None: calls.append(len(x))
                        or forward(self, x, mask))
    summary = extract(releases["encoder"], clips / "labeled.txt", out, "region", chunk_size=2, batch_size=2)
    assert summary["computed"] == 3 and summary["reused"] == 0 and calls == [2, 2, 1]
    expected = _by_hand(releases["encoder"], clips / "labeled.txt", "region")
    assert torch.allclose(load_features(out)["features"], expected, atol=1e-5)
    with pytest.raises(ExtractError, match="holds other features"):           # never overwritten silently
        extract(releases["encoder"], clips / "labeled.txt", out, "local", chunk_size=2)
    extract(releases["encoder"], clips / "labeled.txt", out, "local", chunk_size=2, overwrite=True)
    assert load_features(out)["pool"] == "local"


def test_two_processes_under_torchrun_give_the_single_process_features(clips, releases, tmp_path):
    single, sharded = tmp_path / "single.safetensors", tmp_path / "sharded.safetensors"
    args = ["--model", releases["encoder"], "--list", clips / "labeled.txt", "--pool", "spatial", "--chunk-size",
            "1", "--batch-size", "1", "--workers", "0"]
    extract(releases["encoder"], clips / "labeled.txt", single, "spatial", chunk_size=1, batch_size=1)
    proc = run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "lgiformer.extract",
                *args, "--out", sharded, "--json"], timeout=240)
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert summary["chunks"] == 5 and summary["computed"] == 3      # rank 0 did chunks 0, 2, 4; rank 1 did 1, 3
    a, b = load_features(single), load_features(sharded)
    assert a["paths"] == b["paths"] and torch.allclose(a["features"], b["features"], atol=1e-6)
    assert torch.equal(a["labels"], b["labels"])


def test_command_line_and_bad_input(clips, releases, tmp_path, capsys):
    from lgiformer.extract import main

    out = tmp_path / "cli.safetensors"
    proc = run(["-m", "lgiformer.extract", "--model", releases["classifier"], "--list", clips / "labeled.txt",
                "--out", out, "--pool", "local", "--json"])
    assert json.loads(proc.stdout)["shape"] == [5, 32] and load_features(out)["features"].shape == (5, 32)

    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    bad = tmp_path / "bad.txt"
    bad.write_text(f"{clips / 'v1.mp4'} 0\n{text} 1\n")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# nothing\n")
    cases = [(["--list", tmp_path / "missing.txt"], "missing.txt: no such list file"),
             (["--list", empty], "empty.txt: the list holds no entries"),
             (["--list", bad], "bad.txt:2: " + str(text)),
             (["--list", clips / "labeled.txt", "--model", releases["vit"], "--pool", "region"],
              "--pool region needs an LGI-Former release"),
             (["--list", clips / "labeled.txt", "--model", tmp_path], "has no config.json: not a release")]
    for args, expected in cases:
        argv = ["--model", releases["encoder"], "--out", tmp_path / "x.safetensors", "--workers", "0", *args]
        assert main(list(map(str, argv))) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and expected in errors[0], errors


def test_pool_region_is_refused_for_a_vit_model_object():
    from lgiformer.extract import pool_tokens

    vit = VideoViT(**TINY)
    with pytest.raises(ExtractError, match="needs an LGI-Former release"):
        pool_tokens(vit, torch.zeros(1, 64, 32), "region")
    assert pool_tokens(vit, torch.ones(2, 64, 32), "spatial").shape == (2, 16, 32)
