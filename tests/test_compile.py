"""``run.compile`` (auto / true / false), the compile mode and cache choice, the compile-time report, and fused AdamW
only on GPUs (``lgiformer/engine/compile.py``, ``lgiformer/engine/ds.py``)."""
from __future__ import annotations

import dataclasses
import logging

import pytest
import torch
from torch import nn

from lgiformer.config import ConfigError, RunConfig, load_config
from lgiformer.engine import compile as compiling
from lgiformer.engine import ds

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@dataclasses.dataclass
class _Config:
    run: RunConfig = dataclasses.field(default_factory=RunConfig)


def test_run_compile_accepts_auto_and_booleans(tmp_path):
    assert load_config(_Config).run.compile == "auto"
    assert load_config(_Config, None, ["--run.compile", "auto"]).run.compile == "auto"
    assert load_config(_Config, None, ["--run.compile", "False"]).run.compile is False
    assert load_config(_Config, None, ["--run.compile", "--run.batch_size", "2"]).run.compile is True
    (tmp_path / "recipe.yaml").write_text("run:\n  compile: true\n")
    assert load_config(_Config, tmp_path / "recipe.yaml").run.compile is True
    with pytest.raises(ConfigError, match="expected a boolean .true/false. or auto"):
        load_config(_Config, None, ["--run.compile", "sometimes"])


def test_auto_compiles_on_cuda_only_and_the_mode_follows_the_shapes(monkeypatch):
    monkeypatch.delenv("LGIFORMER_COMPILE_MODE", raising=False)
    assert (compiling.resolve_compile("auto", CPU), compiling.resolve_compile("auto", CUDA)) == (False, True)
    assert compiling.resolve_compile(True, CPU) and not compiling.resolve_compile(False, CUDA)
    with pytest.raises(ValueError):
        compiling.resolve_compile("yes please", CPU)
    assert compiling.choose_mode(CUDA, static_shapes=True) == "reduce-overhead"   # CUDA graphs
    assert compiling.choose_mode(CUDA, static_shapes=False) == "default"
    assert compiling.choose_mode(CPU, static_shapes=True) == "default"
    monkeypatch.setenv("LGIFORMER_COMPILE_MODE", "max-autotune-no-cudagraphs")
    assert compiling.choose_mode(CUDA, static_shapes=True) == "max-autotune-no-cudagraphs"
    monkeypatch.setenv("LGIFORMER_COMPILE_MODE", "fast")
    with pytest.raises(ValueError, match="LGIFORMER_COMPILE_MODE"):
        compiling.choose_mode(CUDA, static_shapes=True)


def test_cache_dir_is_persistent_and_per_environment_unless_the_user_set_one(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("LGIFORMER_COMPILE_CACHE", str(tmp_path / "cache"))
    path = compiling.set_cache_dir()
    assert path == str(tmp_path / "cache" / compiling.environment_tag()) and (tmp_path / "cache").is_dir()
    import os
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == path
    assert torch.__version__.replace("+", "_") in compiling.environment_tag()
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert compiling.set_cache_dir() == str(tmp_path / "mine")


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.gelu(self.fc(x)) * 2


class _Engine(nn.Module):
    """What ``compile_engine`` uses of a DeepSpeed engine: ``module``, ``compile(compile_kwargs=...)`` (which
    compiles ``module`` in place, as DeepSpeed does) and being an eager nn.Module around it."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.compile_kwargs = None

    def compile(self, compile_kwargs: dict) -> None:  # noqa: A003
        self.compile_kwargs = compile_kwargs
        self.module.compile(**compile_kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


def test_compile_engine_is_off_on_cpu_by_default_and_infers_static_shapes(monkeypatch, tmp_path):
    monkeypatch.setenv("LGIFORMER_COMPILE_CACHE", str(tmp_path))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.delenv("LGIFORMER_COMPILE_MODE", raising=False)
    engine = _Engine(_Net())
    assert compiling.compile_engine(engine, "auto", CPU).enabled is False and engine.compile_kwargs is None
    pretrain_like = _Net()
    pretrain_like.masker = object()  # a pretraining model draws its own masks: static shapes
    engine = _Engine(pretrain_like)
    monkeypatch.setattr(nn.Module, "compile", lambda self, **kw: None)  # record the arguments, do not compile
    info = compiling.compile_engine(engine, True, CPU)
    assert info.enabled and info.static_shapes and info.mode == "default" and not info.cuda_graphs
    assert info.scope == "model" and engine.compile_kwargs == {"dynamic": False}  # no blocks: the whole model


def test_compile_engine_compiles_each_block_of_a_stack(monkeypatch, tmp_path):
    from lgiformer.models import build_pretrain_model

    monkeypatch.setenv("LGIFORMER_COMPILE_CACHE", str(tmp_path))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.delenv("LGIFORMER_COMPILE_MODE", raising=False)
    monkeypatch.delenv("LGIFORMER_COMPILE_SCOPE", raising=False)
    compiled = []
    monkeypatch.setattr(nn.Module, "compile", lambda self, **kw: compiled.append((self, kw)))
    mae = build_pretrain_model("lgiformer_tiny_patch16_160", img_size=32, num_frames=4, embed_dim=32, depth=3,
                               num_heads=2, region_size=(1, 1, 2), decoder_embed_dim=16, decoder_depth=2,
                               decoder_num_heads=2, mask_ratio=0.5)
    names = {id(m): n for n, m in mae.named_modules()}
    engine = _Engine(mae)
    info = compiling.compile_engine(engine, True, CUDA)  # nothing runs: the choice of regions and mode only
    assert (info.scope, info.regions, info.mode, info.static_shapes) == ("blocks", 5, "reduce-overhead", True)
    assert [names[id(m)] for m, _ in compiled] == [f"encoder.blocks.{i}" for i in range(3)] + \
        [f"decoder.blocks.{i}" for i in range(2)]
    assert all(kw == {"mode": "reduce-overhead", "dynamic": False} for _, kw in compiled)
    assert engine.compile_kwargs is None  # the engine itself stays eager
    mae.set_grad_checkpointing(True)  # recomputation inside backward: no CUDA graphs
    assert compiling.compile_engine(_Engine(mae), True, CUDA).mode == "default"
    monkeypatch.setenv("LGIFORMER_COMPILE_SCOPE", "model")
    assert compiling.compile_engine(_Engine(mae), True, CUDA).scope == "model"
    monkeypatch.setenv("LGIFORMER_COMPILE_SCOPE", "layers")
    with pytest.raises(ValueError, match="LGIFORMER_COMPILE_SCOPE"):
        compiling.compile_engine(_Engine(mae), True, CUDA)


def test_compile_engine_compiles_and_reports_the_compile_time(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("LGIFORMER_COMPILE_CACHE", str(tmp_path))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.delenv("LGIFORMER_COMPILE_MODE", raising=False)
    torch.manual_seed(0)
    net = _Net()
    eager = _Net()
    eager.load_state_dict(net.state_dict())
    engine = _Engine(net)
    with caplog.at_level(logging.INFO, logger="lgiformer.engine.compile"):
        info = compiling.compile_engine(engine, True, CPU)
        x = torch.randn(4, 8)
        for _ in range(2):
            out = engine(x)
            out.sum().backward()
    torch.testing.assert_close(out, eager(x))
    torch.testing.assert_close(net.fc.weight.grad / 2, torch.autograd.grad(eager(x).sum(), eager.fc.weight)[0])
    assert info.compile_seconds is not None and info.compile_seconds > 0
    assert set(info.cache_hits) == {"fx_graph_hit", "fx_graph_miss", "aot_autograd_hit", "aot_autograd_miss"}
    assert any("compiling in the first step" in r.getMessage() for r in caplog.records)


def test_fused_adamw_only_for_cuda_parameters():
    cpu_groups = [{"params": [nn.Parameter(torch.zeros(2))]}]
    assert not ds.use_fused_adamw(cpu_groups) and not ds.use_fused_adamw([])
    meta_groups = [{"params": [nn.Parameter(torch.zeros(2, device="meta"))]}]
    assert not ds.use_fused_adamw(meta_groups)


def test_one_process_engine_makes_no_gradient_copies_and_matches_a_plain_step(monkeypatch):
    """ZeRO 0 on one process: DeepSpeed's backward all-reduce (flatten, scale, copy back) is switched off, and one
    engine step gives the weights a plain torch loop gives."""
    from lgiformer.distributed import init_distributed
    from lgiformer.optim import param_groups

    init_distributed("cpu")  # kept for the session, as tests/test_engine.py does: DeepSpeed remembers the group
    torch.manual_seed(0)
    model, plain = _Net(), _Net()
    plain.load_state_dict(model.state_dict())
    engine, _ = ds.initialize(model, param_groups(model, 0.05), lr=1e-2, betas=(0.9, 0.95), eps=1e-8, micro_batch=4,
                              accum_steps=1, world_size=1, precision="fp32", zero_stage=0, clip_grad=None)
    assert engine.enable_backward_allreduce is False
    monkeypatch.setattr(type(engine), "allreduce_gradients", lambda *a, **k: pytest.fail("gradients all-reduced"))
    opt = torch.optim.AdamW(param_groups(plain, 0.05), lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    x = torch.randn(4, 8)
    engine.backward(engine(x).square().mean())
    engine.step()
    plain(x).square().mean().backward()
    opt.step()
    for (name, a), b in zip(model.named_parameters(), plain.parameters()):
        torch.testing.assert_close(a, b, msg=name)


def test_no_clip_grad_means_no_clipping_in_deepspeed():
    """``optim.clip_grad: null`` must reach DeepSpeed as 0 (its default is 1.0): the engine then neither clips nor
    computes a norm per parameter."""
    from torch.profiler import ProfilerActivity, profile

    from lgiformer.distributed import init_distributed
    from lgiformer.optim import param_groups

    assert ds.deepspeed_config(4, 1, 1, "bf16", 0, None)["gradient_clipping"] == 0.0
    assert ds.deepspeed_config(4, 1, 1, "bf16", 0, 0.5)["gradient_clipping"] == 0.5
    init_distributed("cpu")
    model = _Net()
    engine, _ = ds.initialize(model, param_groups(model, 0.05), lr=1e-2, betas=(0.9, 0.95), eps=1e-8, micro_batch=4,
                              accum_steps=1, world_size=1, precision="fp32", zero_stage=0, clip_grad=None)
    assert engine.gradient_clipping() == 0.0
    engine.backward(engine(torch.randn(4, 8)).square().sum() * 1e3)   # a gradient norm far above 1
    grads = [p.grad.clone() for p in model.parameters()]
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        engine.step()
    assert not any("norm" in e.name for e in prof.events())
    assert max(float(g.norm()) for g in grads) > 10.0
