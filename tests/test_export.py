"""``python -m lgiformer.export``: ONNX (run with ONNX Runtime) and TorchScript files that give PyTorch's
probabilities, with a sidecar that is enough to use them without this package."""
import json

import numpy as np
import pytest
import torch

from _cli import run
from _tools import CLASSES, TINY, tiny_release
from lgiformer.export import export, main
from lgiformer.models.release import load_release


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    root = tmp_path_factory.mktemp("releases")
    return dict(lgiformer=tiny_release(root / "lgiformer"),
                label_token=tiny_release(root / "label_token", global_pool="label_token",
                                         head_args=dict(dim=32, depth=1, num_heads=2)),
                vit=tiny_release(root / "vit", "vit_tiny_patch16_160", clips=1, crops=1),
                encoder=tiny_release(root / "encoder", num_classes=0))


def _clips(n):
    return torch.randn(n, 3, TINY["num_frames"], TINY["img_size"], TINY["img_size"],
                       generator=torch.Generator().manual_seed(n))


def _reference(release, clips):
    with torch.no_grad():
        return load_release(release)(clips).softmax(-1)


def test_onnx_export_runs_in_onnx_runtime_with_pytorchs_probabilities(releases, tmp_path):
    import onnxruntime as ort

    out = tmp_path / "model.onnx"
    proc = run(["-m", "lgiformer.export", "--model", releases["lgiformer"], "--format", "onnx", "--out", out,
                "--json"])
    meta = json.loads(proc.stdout)
    assert json.loads((tmp_path / "model.onnx.json").read_text()) == meta
    assert meta["check"]["passed"] and meta["check"]["views"] == 4 and meta["check"]["tolerance"] == 1e-4
    assert meta["check"]["max_abs_diff_probabilities"] <= 1e-4
    assert meta["class_names"] == CLASSES and meta["input"]["shape"] == ["batch", 3, 8, 64, 64]
    assert meta["input"]["mean"] == [0.485, 0.456, 0.406] and meta["sampling"]["sampling_rate"] == 2
    assert meta["sampling"]["test_num_clips"] == 2 and meta["exporter"]["opset"] == 18
    # independently of the tool's own check: another batch size, fresh inputs
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [meta["input"]["name"]]
    clips = _clips(3)
    logits = session.run([meta["output"]["name"]], {"clips": clips.numpy()})[0]
    probs, expected = torch.from_numpy(logits).softmax(-1), _reference(releases["lgiformer"], clips)
    assert probs.shape == (3, len(CLASSES)) and torch.allclose(probs, expected, atol=1e-4)
    assert expected.max() - expected.min() > 0.05              # not a flat output that any graph would match


@pytest.mark.parametrize("kind", ["label_token", "vit"])
def test_onnx_export_of_other_heads_and_encoders(releases, tmp_path, kind):
    import onnxruntime as ort

    meta = export(releases[kind], "onnx", tmp_path / "m.onnx")
    assert meta["check"]["passed"] and meta["check"]["views"] == (1 if kind == "vit" else 4)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    clips = _clips(2)
    probs = torch.from_numpy(session.run(["logits"], {"clips": clips.numpy()})[0]).softmax(-1)
    assert torch.allclose(probs, _reference(releases[kind], clips), atol=1e-4)


def test_torchscript_export_loads_with_torch_jit(releases, tmp_path, media, capsys):
    clip = media.mp4(tmp_path / "clip.mp4", media.frames(t=24, size=48))
    assert main(["--model", str(releases["lgiformer"]), "--format", "torchscript", "--clip", str(clip)]) == 0
    out = releases["lgiformer"].parent / "lgiformer.pt"            # default: beside the release
    assert str(out) in capsys.readouterr().out
    meta = json.loads(out.with_name("lgiformer.pt.json").read_text())
    assert meta["format"] == "torchscript" and meta["check"]["clip"] == str(clip) and meta["check"]["passed"]
    module = torch.jit.load(str(out))
    for n in (1, 5):
        with torch.no_grad():
            probs = module(_clips(n)).softmax(-1)
        assert torch.allclose(probs, _reference(releases["lgiformer"], _clips(n)), atol=1e-4)


def test_a_failed_check_writes_nothing(releases, tmp_path, capsys):
    out = tmp_path / "m.pt"
    assert main(["--model", str(releases["lgiformer"]), "--format", "torchscript", "--out", str(out),
                 "--tolerance", "-1"]) == 1
    assert "probabilities differ from PyTorch's" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_bad_input_is_one_clear_line(releases, tmp_path, capsys):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    cases = [([releases["encoder"]], "encoder without a classifier head"),
             ([tmp_path / "missing"], "missing has no config.json: not a release"),
             ([releases["lgiformer"], "--clip", tmp_path / "nope.mp4"], "nope.mp4: no such file or folder"),
             ([releases["lgiformer"], "--clip", text], "PyAV cannot open it")]
    for args, expected in cases:
        assert main(["--model", *map(str, args), "--out", str(tmp_path / "x.onnx")]) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and expected in errors[0], errors
    assert not (tmp_path / "x.onnx").exists()


def test_sidecar_is_enough_to_preprocess_like_predict(releases, tmp_path, media):
    """A user with only the ONNX file and its sidecar: normalise with mean / std, average softmax over views; the
    result is what ``lgiformer.predict`` says for the same views."""
    import onnxruntime as ort

    from lgiformer.predict import build_views_dataset, read_release_info, run as predict

    meta = export(releases["lgiformer"], "onnx", tmp_path / "m.onnx")
    folder = media.folder(tmp_path / "clip", media.frames(t=24, size=48), ext="png")
    info = read_release_info(releases["lgiformer"])
    views = build_views_dataset([str(folder)], info["data"], info["config"]["model_args"], None, None)[0][0]
    assert len(views) == meta["sampling"]["test_num_clips"] * meta["sampling"]["test_num_crops"]
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    probs = torch.from_numpy(session.run(["logits"], {"clips": views.numpy()})[0]).softmax(-1).mean(0)
    expected = predict(str(releases["lgiformer"]), [str(folder)])["results"][0]["probabilities"]
    assert np.allclose(probs.numpy(), [expected[name] for name in meta["class_names"]], atol=1e-4)


def test_torchscript_export_after_deepspeed_zero3_replaced_linear(releases, tmp_path, monkeypatch):
    """DeepSpeed ZeRO-3 replaces F.linear for the whole process with a Python autograd function, which torch.jit
    cannot save; an export in such a process traces with torch's own linear."""

    class PythonLinear(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, weight, bias=None):
            return torch._C._nn.linear(x, weight, bias)

    def zero3_like_linear(x, weight, bias=None):
        return PythonLinear.apply(x, weight, bias)

    monkeypatch.setattr(torch.nn.functional, "linear", zero3_like_linear)
    meta = export(releases["lgiformer"], "torchscript", tmp_path / "m.pt")
    assert meta["check"]["passed"] and torch.nn.functional.linear is zero3_like_linear   # restored afterwards
