"""``torch.compile`` for training runs: whether to compile, in which mode, where the compiled code is cached, and how
long compiling took. The engine calls one function, :func:`compile_engine`, right after ``deepspeed.initialize``.

* ``run.compile``: ``auto`` (the default) compiles on CUDA and not on CPU (where compiling costs about 90 s per block
  shape and gains nothing measurable: docs/PERFORMANCE.md); ``true`` / ``false`` force it.
* Scope: the repeated transformer blocks are compiled one by one ("regional compilation"): the blocks of a stack
  share their code and shapes, so torch compiles one block (forward and backward) and reuses it for all of them,
  where compiling the whole model traces and compiles every block again (the whole LGI-Former-B took 138 s on an
  H100, docs/PERFORMANCE.md). It also keeps the data-dependent steps of pretraining (gathering the visible tokens)
  outside the compiled code, so no graph breaks there. ``LGIFORMER_COMPILE_SCOPE=model`` compiles the whole model
  through DeepSpeed's ``engine.compile`` instead (also the fallback for a model without ``blocks``).
* Mode: pretraining has static shapes (every mask type keeps the same number of visible tokens per clip, and an
  LGI-Former needs region-balanced masks), so on CUDA it runs ``mode="reduce-overhead"``: inductor's kernels replayed
  as CUDA graphs, which removes the per-kernel launch cost that dominates the LGI-Former's many small kernels (not
  with ``run.grad_checkpointing``, whose recomputation inside backward CUDA graphs cannot replay). Other runs use
  inductor's default mode (fusion, no CUDA graphs). ``LGIFORMER_COMPILE_MODE`` overrides the choice
  (``default``, ``reduce-overhead``, ``max-autotune``, ``max-autotune-no-cudagraphs``).
* Cache: inductor's FX-graph and AOTAutograd caches are on by default, but live in ``/tmp/torchinductor_$USER``,
  which cluster nodes wipe, so a requeued job compiled from scratch. Unless ``TORCHINDUCTOR_CACHE_DIR`` is already
  set, it is set to ``$LGIFORMER_COMPILE_CACHE`` (default ``~/.cache/lgiformer/torch_compile``) / one folder per
  torch + CUDA version, so restarts and later runs in the same software environment reuse the compiled kernels.
* Compile time: compiling happens during the first training step; the time torch spent compiling (and the cache
  hits) is logged when the second step starts, and kept in :class:`CompileInfo`.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
SCOPES = ("blocks", "model")


@dataclasses.dataclass
class CompileInfo:
    enabled: bool
    mode: str | None = None
    scope: str | None = None               # blocks | model
    regions: int = 0                       # modules compiled (blocks), 1 for the whole model
    static_shapes: bool = False
    cache_dir: str | None = None
    compile_seconds: float | None = None   # filled in when the second step starts
    cache_hits: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def cuda_graphs(self) -> bool:
        return self.mode in ("reduce-overhead", "max-autotune")


def resolve_compile(setting: bool | str, device: torch.device) -> bool:
    """``run.compile`` as a decision: ``auto`` is on for CUDA, off elsewhere."""
    if isinstance(setting, str):
        if setting != "auto":
            raise ValueError(f"run.compile must be auto, true or false, got {setting!r}")
        return device.type == "cuda"
    return bool(setting)


def choose_mode(device: torch.device, static_shapes: bool) -> str:
    """CUDA graphs where shapes are static on CUDA, inductor's default mode otherwise; ``LGIFORMER_COMPILE_MODE``
    wins."""
    override = os.environ.get("LGIFORMER_COMPILE_MODE", "").strip()
    if override and override != "auto":
        if override not in MODES:
            raise ValueError(f"LGIFORMER_COMPILE_MODE must be auto or one of {MODES}, got {override!r}")
        return override
    return "reduce-overhead" if device.type == "cuda" and static_shapes else "default"


def choose_scope() -> str:
    scope = os.environ.get("LGIFORMER_COMPILE_SCOPE", "blocks").strip() or "blocks"
    if scope not in SCOPES:
        raise ValueError(f"LGIFORMER_COMPILE_SCOPE must be one of {SCOPES}, got {scope!r}")
    return scope


def compile_kwargs(mode: str, static_shapes: bool) -> dict[str, Any]:
    """``torch.compile`` arguments for a mode: static shapes are declared so nothing is recompiled as dynamic."""
    kwargs: dict[str, Any] = {} if mode == "default" else {"mode": mode}
    if static_shapes:
        kwargs["dynamic"] = False
    return kwargs


def block_stacks(model: nn.Module) -> list[nn.Module]:
    """The blocks of every ``blocks`` ModuleList in the model (encoder, decoder), in order."""
    return [blk for name, m in model.named_modules() if name.split(".")[-1] == "blocks"
            and isinstance(m, nn.ModuleList) for blk in m]


def compile_blocks(model: nn.Module, kwargs: dict[str, Any]) -> int:
    """Compile every repeated block in place (``nn.Module.compile``); returns how many. Parameter and state-dict
    names do not change."""
    blocks = block_stacks(model)
    for blk in blocks:
        blk.compile(**kwargs)
    return len(blocks)


def environment_tag() -> str:
    """torch and CUDA version: compiled artifacts are only valid within one such environment."""
    cuda = torch.version.cuda or "cpu"
    return f"torch-{torch.__version__.replace('+', '_')}-cuda-{cuda}"


def set_cache_dir() -> str:
    """Point inductor's on-disk cache (FX graphs, AOTAutograd, Triton kernels) at a folder that survives restarts,
    unless the user already chose one with ``TORCHINDUCTOR_CACHE_DIR``. Returns the folder in use."""
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        return os.environ["TORCHINDUCTOR_CACHE_DIR"]
    root = Path(os.environ.get("LGIFORMER_COMPILE_CACHE") or Path.home() / ".cache" / "lgiformer" / "torch_compile")
    path = root / environment_tag()
    path.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)  # read by inductor at its first compile
    return str(path)


def compile_seconds() -> float:
    """Seconds torch has spent compiling in this process so far (dynamo, AOTAutograd, inductor; forward and
    backward)."""
    spent = torch._dynamo.utils.calculate_time_spent()
    if "total_wall_time" in spent:
        return float(spent["total_wall_time"])
    return float(spent.get("entire_frame_compile", 0.0) + spent.get("entire_backward_compile", 0.0))


def cache_hits() -> dict[str, int]:
    counters = torch._dynamo.utils.counters
    return {"fx_graph_hit": int(counters["inductor"].get("fxgraph_cache_hit", 0)),
            "fx_graph_miss": int(counters["inductor"].get("fxgraph_cache_miss", 0)),
            "aot_autograd_hit": int(counters["aot_autograd"].get("autograd_cache_hit", 0)),
            "aot_autograd_miss": int(counters["aot_autograd"].get("autograd_cache_miss", 0))}


def has_static_shapes(model: nn.Module) -> bool:
    """Pretraining models (they draw masks with a fixed number of visible tokens) see the same shapes every step."""
    return hasattr(model, "masker")


def compile_engine(engine: Any, setting: bool | str, device: torch.device, *,
                   static_shapes: bool | None = None) -> CompileInfo:
    """Compile the model's blocks (or, by choice or fallback, the whole ``engine.module`` through DeepSpeed's
    ``engine.compile``) if ``run.compile`` says so on this device; see the module docstring for scope, mode and cache. ``static_shapes`` defaults to
    :func:`has_static_shapes` of the model. Returns what was done; the compile time is logged and recorded in the
    returned :class:`CompileInfo` when the second training step starts."""
    if not resolve_compile(setting, device):
        return CompileInfo(enabled=False)
    static = has_static_shapes(engine.module) if static_shapes is None else static_shapes
    scope = choose_scope() if block_stacks(engine.module) else "model"
    # Gradient checkpointing re-runs each block inside backward, which CUDA graphs cannot replay: fusion only.
    checkpointing = any(getattr(m, "grad_checkpointing", False) for m in engine.module.modules())
    info = CompileInfo(enabled=True, mode=choose_mode(device, static and not checkpointing), scope=scope,
                       static_shapes=static, cache_dir=set_cache_dir())
    kwargs = compile_kwargs(info.mode, static)
    before = compile_seconds()
    if scope == "blocks":
        info.regions = compile_blocks(engine.module, kwargs)
    else:
        engine.compile(compile_kwargs=kwargs)
        info.regions = 1
    log.info("torch.compile: %s (%d), mode %s%s, cache %s", scope, info.regions, info.mode,
             ", static shapes" if static else "", info.cache_dir)
    _report_after_first_step(engine, info, before)
    return info


def _report_after_first_step(engine: nn.Module, info: CompileInfo, before: float) -> None:
    """Log the compile time when the second forward starts (the first step, forward and backward, compiled by
    then). The hook sits on the DeepSpeed engine, which stays eager; only ``engine.module`` is compiled."""
    calls = {"n": 0}

    def hook(module: nn.Module, args: Any) -> None:
        calls["n"] += 1
        if calls["n"] < 2:
            return
        info.compile_seconds = round(compile_seconds() - before, 1)
        info.cache_hits = cache_hits()
        log.info("torch.compile: %.1f s compiling in the first step (cache: %s)", info.compile_seconds,
                 ", ".join(f"{k} {v}" for k, v in info.cache_hits.items()))
        handle.remove()

    handle = engine.register_forward_pre_hook(hook)
