"""Smoke tests for the benchmark scripts: the reference-mode LGI-Former and the JSON output (tiny configs)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._reference_lgi import ReferenceLGIBlock, reference_lgiformer_from  # noqa: E402
from benchmarks.common import RunConfig, parse_spec  # noqa: E402
from lgiformer.masking import MaskGenerator  # noqa: E402
from lgiformer.models import create_model  # noqa: E402

TINY = dict(img_size=32, num_frames=4, embed_dim=32, depth=2, num_heads=2, region_size=(1, 1, 2))


@pytest.mark.parametrize("pool", ["region", ""])
def test_reference_mode_loads_our_weights_and_matches(pool):
    kw = dict(num_classes=5, global_pool=pool) if pool else dict(num_classes=0, global_pool="")
    model = create_model("lgiformer_tiny_patch16_160", **kw, **TINY).eval()
    ref = reference_lgiformer_from(model)
    assert all(isinstance(b, ReferenceLGIBlock) for b in ref.blocks)
    assert list(ref.state_dict()) == list(model.state_dict())
    ref.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ref(x), model(x), atol=1e-4, rtol=0)


def test_reference_mode_matches_with_visible_tokens_and_gradients():
    enc = create_model("lgiformer_tiny_patch16_160", num_classes=0, global_pool="", **TINY)
    ref = reference_lgiformer_from(enc)
    x = torch.randn(2, 3, 4, 32, 32)
    mask = MaskGenerator(enc.layout, "region_balanced", 0.5)(2)
    ours, theirs = enc.forward_features(x, mask), ref.forward_features(x, mask)
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)
    ours.square().mean().backward()
    theirs.square().mean().backward()
    for (name, p), q in zip(enc.named_parameters(), ref.parameters()):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-4, rtol=1e-3, msg=name)


def test_reference_mode_is_lgiformer_only():
    with pytest.raises(TypeError):
        reference_lgiformer_from(create_model("vit_tiny_patch16_160", img_size=32, num_frames=4, depth=1))
    with pytest.raises(ValueError):
        RunConfig(model="vit_tiny_patch16_160", impl="reference")


def test_parse_spec_overrides_the_command_line():
    base = RunConfig(batch=2, depth=4)
    cfg = parse_spec("lgiformer_base_patch16_160:impl=reference,depth=2,region=2x7x7,img_size=224", base)
    assert (cfg.impl, cfg.depth, cfg.batch, cfg.region, cfg.img_size) == ("reference", 2, 2, (2, 7, 7), 224)
    with pytest.raises(ValueError):
        parse_spec("lgiformer_base_patch16_160:nope=1", base)


def test_throughput_json_on_a_tiny_config(capsys):
    from benchmarks import throughput

    throughput.main(["--model", "lgiformer_tiny_patch16_160", "--frames", "4", "--img-size", "32", "--depth", "1",
                     "--region", "1x1x2", "--batch", "1", "--iters", "1", "--warmup", "0", "--threads", "1",
                     "--no-memory", "--json", "--ops",
                     "--compare", "lgiformer_tiny_patch16_160:impl=baseline", "lgiformer_tiny_patch16_160",
                     "lgiformer_tiny_patch16_160:impl=reference", "vit_tiny_patch16_160:mode=pretrain"])
    result = json.loads(capsys.readouterr().out)
    assert {"environment", "iters", "warmup", "results", "ratios"} <= set(result)
    rows = result["results"]
    assert [r["impl"] for r in rows] == ["baseline", "ours", "reference", "ours"] and rows[3]["mode"] == "pretrain"
    for r in rows:
        assert {"label", "model", "mode", "batch", "params_m", "step_time_s", "clips_per_s", "peak_mb",
                "saved_mb", "memory_method", "block_ops", "max_abs_diff"} <= set(r)
        assert r["step_time_s"] > 0 and r["clips_per_s"] > 0 and r["saved_mb"] > 0
        assert r["block_ops"]["ops"] > r["block_ops"]["ops_compute"] > 0 and r["block_ops"]["ops_top"] > 0
    assert result["ratios"][0]["time_ratio"] == 1.0
    # The lean block launches fewer operators than the baseline block, and computes the same features.
    assert result["ratios"][1]["ops_ratio"]["ops_compute"] < 1.0
    assert rows[1]["max_abs_diff"] <= 1e-5 and rows[2]["max_abs_diff"] <= 1e-4
    assert rows[0]["max_abs_diff"] is None and rows[3]["max_abs_diff"] is None  # nothing to compare them with
    assert rows[1]["block_ops"]["block_input"] == [1, 4, 1 + 2, 192]  # 4 regions of 2 tokens (2 x 2 x 2 grid)


def test_memory_probe_reports_a_positive_peak():
    from benchmarks.common import _probe_in_process

    cfg = RunConfig(model="lgiformer_tiny_patch16_160", batch=1, frames=4, img_size=32, depth=1, region=(1, 1, 2))
    mem = _probe_in_process(cfg)
    assert mem["peak_total_mb"] > 0 and mem["peak_mb"] is not None and "VmHWM" in mem["memory_method"]


def test_pretrain_effect_table_and_paired_differences():
    from benchmarks.pretrain_effect import sizes, summarize

    r = {"LGI app+motion": {1: {"uar": 0.30, "war": 0.35}, 2: {"uar": 0.40, "war": 0.45}},
         "LGI appearance": {1: {"uar": 0.25, "war": 0.30}, 2: {"uar": 0.40, "war": 0.40}},
         "LGI scratch": {1: {"uar": 0.20, "war": 0.20}, 2: {"uar": 0.20, "war": 0.25}}}
    table = summarize(r, [1, 2])
    assert "| LGI app+motion | 30.0 / 35.0 | 40.0 / 45.0 | 35.0 +- 7.1 | 40.0 |" in table
    # pretrained - scratch per fold: +10, +20 -> mean +15, sample std 7.1; motion - appearance: +5, 0
    assert "LGI app+motion minus LGI scratch: UAR +15.0 +- 7.1 points over folds 1: +10.0, 2: +20.0" in table
    assert "LGI app+motion minus LGI appearance: UAR +2.5 +- 3.5 points" in table
    assert sizes(45) == dict(unlabeled=1200, pre_epochs=12, ft_epochs=20)   # the measured point
    assert sizes(90) == dict(unlabeled=1200, pre_epochs=24, ft_epochs=40)
    assert sizes(5) == dict(unlabeled=1200, pre_epochs=2, ft_epochs=4)     # floors


def test_au_heads_benchmark_runs_and_reports_f1_and_auc(tmp_path, capsys):
    from benchmarks import au_heads

    summary = au_heads.main(["--encoder", "none", "--data-root", str(tmp_path / "syn"), "--synthetic",
                             "size=96,au_frames=8,au_clips=6,au_subjects=3,parts=au", "--heads", "linear",
                             "--pixel-probe", "--epochs", "2", "--batch-size", "8", "--timing-runs", "1",
                             "--json", str(tmp_path / "au.json")])
    assert set(summary["heads"]) == {"linear", "pixel_probe"}
    for r in summary["heads"].values():
        assert 0.0 <= r["mean_f1"] <= 1.0 and (0.0 <= r["mean_auc"] <= 1.0 or r["mean_auc"] != r["mean_auc"])
        assert r["params"] > 0
    assert summary["heads"]["linear"]["ms_per_clip"] > 0 and summary["heads"]["pixel_probe"]["ms_per_clip"] == 0
    assert json.loads((tmp_path / "au.json").read_text())["heads"].keys() == summary["heads"].keys()
    assert "pixel_probe" in capsys.readouterr().out


def test_learnability_starts_from_a_release_and_reports_each_evaluation(tmp_path, capsys):
    from benchmarks import learnability
    from lgiformer.models.release import write_release

    encoder = create_model("lgiformer_tiny_patch16_160", num_classes=0, global_pool="", img_size=96, num_frames=8,
                           embed_dim=128, depth=4, num_heads=4, region_size=[2, 3, 6])
    release = write_release(encoder, tmp_path / "release", task="pretrain", source={"kind": "test"})
    out = learnability.main(["--make-data", "--data", str(tmp_path / "syn"), "--subjects", "5", "--clips-per-class",
                             "1", "--data-size", "96", "--epochs", "1", "--init", str(release), "--frames", "8"])
    # Every encoder weight comes from the release; only the classifier (fc_norm, head) starts fresh.
    assert len(out["loaded"]) == len(encoder.state_dict()) - 2   # the release's unpooled `norm` is not in the model
    assert out["train_clips"] + out["test_clips"] == 5 * 7 and out["test_clips"] == 7   # one subject per fold
    (last,) = out["history"]
    assert last["epoch"] == 1 and 0.0 <= last["uar"] <= 1.0 and 0.0 <= last["train_acc"] <= 1.0
    assert f"{len(out['loaded'])} loaded, 4 new" in capsys.readouterr().out   # the load report is printed
    # A linear probe on the per-position features: only fc_norm and the head (6 x 6 positions x 128 -> 7) learn.
    probe = learnability.main(["--data", str(tmp_path / "syn"), "--epochs", "1", "--frames", "8", "--pool", "spatial",
                               "--freeze"])
    assert probe["trainable"] == 2 * 128 + 6 * 6 * 128 * 7 + 7


def test_dataloader_benchmark_compares_repeated_sampling(tmp_path, capsys):
    from benchmarks import dataloader

    out = dataloader.main(["--data", str(tmp_path / "data"), "--video-size", "64", "--video-frames", "24",
                           "--repeats", "2", "--batch", "2", "--batches", "1", "--workers", "0",
                           "--repeat-aug", "1,2", "--json"])
    assert json.loads(capsys.readouterr().out) == out
    assert out["videos"] == "24 x 24 frames at 64 px" and out["decode_16_frames"]["raw_decord_ms"] > 0
    sources = [row["source"] for row in out["loaders"]]
    assert sources == ["mp4 (decord), pretrain transform", "mp4 (decord), pretrain transform, 2 views per video",
                       "mp4 (pyav), pretrain transform", "jpg frame folders, finetune transform (no RandAugment)"]
    assert all(row["clips_per_s"] > 0 and row["workers"] == 0 for row in out["loaders"])


def test_gpu_check_peak_table_names_the_right_gpu():
    from benchmarks.gpu_check import peak_tflops

    assert peak_tflops("NVIDIA H100 80GB HBM3", None)[0] == 989.0
    assert peak_tflops("NVIDIA H100 PCIe", None)[0] == 756.0
    assert peak_tflops("NVIDIA H200", None)[0] == 989.0
    assert peak_tflops("NVIDIA A100-SXM4-80GB", None)[0] == 312.0
    assert peak_tflops("NVIDIA L40S", None)[0] == 362.0 and peak_tflops("NVIDIA L4", None)[0] == 121.0
    assert peak_tflops("NVIDIA A10G", None)[0] is None        # no published dense bf16 figure: ask for one
    assert peak_tflops("Some Future GPU", None)[0] is None
    assert peak_tflops("NVIDIA A10G", 70.0) == (70.0, "--peak-tflops")


def test_gpu_check_script_plans_every_row_within_its_budget(tmp_path):
    import os
    import subprocess

    env = dict(os.environ, PYTHON=sys.executable, OUT_DIR=str(tmp_path))
    out = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", "--peak-tflops", "989"],
                         env=env, capture_output=True, text=True, check=True).stdout
    lines = out.strip().splitlines()
    assert lines[-1].startswith("20 rows; peak 989.0 TFLOP/s") and "budget 450 s" in lines[-1]
    for model in ("lgiformer_base_patch16_160", "vit_base_patch16_160"):
        for mode, batch in (("finetune", 32), ("pretrain", 128)):
            for runner in ("plain", "engine"):
                for compiled in ("", " compiled"):
                    assert f"{model} {mode} b{batch} {runner}{compiled}" in lines


def test_gpu_check_runs_on_cpu_with_tiny_models(tmp_path, capsys, monkeypatch):
    """The GPU script's every runner (plain loop, DeepSpeed engine called directly, the training loop), both models
    and both modes, on tiny models on the CPU: it cannot rot between GPU loans."""
    from benchmarks import gpu_check

    monkeypatch.setenv("LGIFORMER_COMPILE_CACHE", str(tmp_path / "compile_cache"))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)

    out = tmp_path / "gpu_check.json"
    result = gpu_check.main(["--device", "cpu", "--tiny", "--skip-compiled", "--steps", "1", "--repeats", "1",
                             "--warmup", "1", "--peak-tflops", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    rows = result["rows"]
    assert len(rows) == 12 and not any(r.get("error") or r.get("skipped") for r in rows)
    assert {(r["model"], r["mode"], r["runner"]) for r in rows} == {
        (m, mode, runner) for m in ("lgiformer_tiny_patch16_160", "vit_tiny_patch16_160")
        for mode in ("finetune", "pretrain") for runner in ("plain", "engine-bare", "engine")}
    for r in rows:
        assert r["step_s"] > 0 and r["gflop_per_step"] > 0
        assert r["mfu"] == pytest.approx(r["gflop_per_step"] * 1e9 / r["step_s"] / 1e12, rel=1e-2)  # peak 1 TFLOP/s
    assert all(r["profile"]["aten_ops"] > 0 for r in rows if r["runner"] == "plain")
    eager = result["summary"]["plain eager"]
    lgi = next(r for r in rows if r["model"].startswith("lgi") and r["mode"] == "finetune" and r["runner"] == "plain")
    vit = next(r for r in rows if r["model"].startswith("vit") and r["mode"] == "finetune" and r["runner"] == "plain")
    assert eager["lgi_vit_finetune_step_ratio"] == round(lgi["step_s"] / vit["step_s"], 3)
    assert eager["lgi_vit_finetune_step_ratio_met"] == (eager["lgi_vit_finetune_step_ratio"] <= 0.7)
    assert set(result["summary"]["engine eager"]["engine_vs_plain_overhead_each"]) == {
        f"{m} {mode}" for m in ("lgiformer_tiny_patch16_160", "vit_tiny_patch16_160") for mode in ("finetune", "pretrain")}
    assert set(result["attention_kernels"]) == set(gpu_check.ATTENTION_SHAPES)
    assert all(r["sdpa_ms"] > 0 and r["explicit_ms"] > 0 for r in result["attention_kernels"].values())
    overhead = result["engine_overhead"]["rows"]
    assert overhead["DeepSpeed engine.step (now)"]["ops"] == overhead["plain loop: opt.step + zero_grad"]["ops"]
    assert overhead["DeepSpeed engine.step, clipping at 1.0 (the old default)"]["ops"] > \
        overhead["DeepSpeed engine.step (now)"]["ops"]
    assert "engine eager:" in capsys.readouterr().out
