"""The one-GPU performance check behind ``benchmarks/gpu_check.sh``: engine vs plain loop, eager vs compiled,
LGI-Former-B vs ViT-B, pretraining (batch 128) and finetuning (batch 32), bf16, in at most 8 minutes.

    bash benchmarks/gpu_check.sh                       # on a GPU: table on stdout, JSON in output/gpu_check/
    python benchmarks/gpu_check.py --dry-run           # the plan, the GPU's peak and the budget; touches no GPU
    python benchmarks/gpu_check.py --device cpu --tiny --skip-compiled --steps 1 --warmup 1 --peak-tflops 1
                                                       # the CPU smoke run of tests/test_benchmarks.py

Runners, all with the same model, batch, bf16 autocast and parameter groups (``lgiformer.optim.param_groups``;
layer decay 0.75 for finetuning):

* ``plain``: ``loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)`` with torch AdamW (fused on CUDA);
* ``engine``: the training engine as ``pretrain/run.py`` and ``finetune/run.py`` run it: ``lgiformer.engine.ds``
  (DeepSpeed, ZeRO 0) driven by ``lgiformer.engine.loop.train_one_epoch``;
* ``engine-bare`` (eager only): the same DeepSpeed engine called directly (``engine(batch)``,
  ``engine.backward``, ``engine.step``), which separates DeepSpeed's cost from the loop's.

Compiled rows use what the engine uses (``lgiformer.engine.compile``): each transformer block compiled (regional
compilation), CUDA graphs (``reduce-overhead``) for pretraining, inductor's default mode for finetuning; the plain
loop compiles the model's blocks with the same arguments, and the engine row then compiles through
``compile_engine``, which finds what the plain row compiled in torch's caches. Compile time is the time torch spent
compiling during the row's warm-up. ``LGIFORMER_COMPILE_SCOPE=model`` / ``LGIFORMER_COMPILE_MODE=...`` change the
choice for both, as for training.

Step time = (wall time of ``--steps`` steps between two device synchronisations) / steps: no synchronisation inside,
as in training. MFU = FLOPs of one training step (forward + backward, counted once per model and mode with
``torch.utils.flop_counter`` on the eager model: matmuls, convolutions and attention) / step time / the GPU's dense
bf16 peak (table below, or ``--peak-tflops``). Each eager and compiled plain row also records the CUDA kernels one
step launches and the ten that take longest (``torch.profiler``), the GPU counterpart of ``throughput.py --ops``.

Then, time permitting, the three attentions alone (SDPA against explicit GEMMs and softmax, forward + backward) and
``benchmarks/engine_overhead.py``: what one optimiser step costs through the engine beyond the plain loop, call by
call (kernels launched and time).

Rows run in priority order (all eager rows, then compiled finetuning, then compiled pretraining); a row whose
estimated cost no longer fits ``--budget-s`` is skipped and listed as skipped. The JSON is rewritten after every row,
so a run cut short still leaves what it measured.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets, TFLOP/s; the first name found in
# ``torch.cuda.get_device_name()`` wins, so the more specific names come first. ``--peak-tflops`` overrides.
PEAK_BF16_TFLOPS: list[tuple[str, float]] = [
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H200 NVL", 835.0), ("GH200", 989.0), ("H100", 989.0),
    ("H200", 989.0), ("H800", 989.0), ("B200", 2250.0), ("B100", 1750.0), ("A100", 312.0), ("A800", 312.0),
    ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0), ("A40", 150.0), ("A30", 165.0), ("A10G", float("nan")),
    ("A10", 125.0), ("MI300X", 1307.0), ("MI250X", 383.0),
]

TARGETS = {
    "lgi_vit_finetune_step_ratio": ("<=", 0.7),
    "lgi_vit_pretrain_clips_ratio": (">=", 1.3),
    "engine_vs_plain_overhead": ("<=", 0.10),
    "vit_finetune_mfu": (">=", 0.35),
}


def peak_tflops(device_name: str, override: float | None) -> tuple[float | None, str]:
    if override:
        return override, "--peak-tflops"
    for key, value in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return (None, f"{key}: no published dense bf16 figure, pass --peak-tflops") if value != value else \
                (value, f"table ({key})")
    return None, f"{device_name!r} not in the table: pass --peak-tflops"


@dataclasses.dataclass(frozen=True)
class Case:
    model: str
    mode: str     # finetune | pretrain
    batch: int


@dataclasses.dataclass(frozen=True)
class Plan:
    case: Case
    runner: str   # plain | engine | engine-bare
    compiled: bool

    @property
    def label(self) -> str:
        return f"{self.case.model} {self.case.mode} b{self.case.batch} {self.runner}{' compiled' if self.compiled else ''}"


def cases(tiny: bool, finetune_batch: int | None = None, pretrain_batch: int | None = None) -> list[Case]:
    lgi, vit = ("lgiformer_tiny_patch16_160", "vit_tiny_patch16_160") if tiny else \
        ("lgiformer_base_patch16_160", "vit_base_patch16_160")
    ft, pt = finetune_batch or (2 if tiny else 32), pretrain_batch or (2 if tiny else 128)
    return [Case(lgi, "finetune", ft), Case(vit, "finetune", ft), Case(lgi, "pretrain", pt), Case(vit, "pretrain", pt)]


def plan(tiny: bool, skip_compiled: bool, finetune_batch: int | None = None,
         pretrain_batch: int | None = None) -> list[Plan]:
    cs = cases(tiny, finetune_batch, pretrain_batch)
    rows = [Plan(c, r, False) for c in cs for r in ("plain", "engine-bare", "engine")]
    if not skip_compiled:
        rows += [Plan(c, r, True) for c in cs if c.mode == "finetune" for r in ("plain", "engine")]
        rows += [Plan(c, r, True) for c in cs if c.mode == "pretrain" for r in ("plain", "engine")]
    return rows


# ---- one model, its batch, its optimiser and its DeepSpeed engine -----------------------------------------------
class Bench:
    def __init__(self, case: Case, device: torch.device, tiny: bool, depth: int | None = None) -> None:
        from lgiformer.engine import ds
        from lgiformer.models import build_pretrain_model, create_model
        from lgiformer.optim import param_groups

        self.case, self.device = case, device
        kw = dict(depth=1, num_frames=4, img_size=32) if tiny else {}
        if tiny and case.model.startswith("lgiformer"):
            kw["region_size"] = (1, 1, 2)
        if depth:
            kw["depth"] = depth
        torch.manual_seed(0)
        if case.mode == "finetune":
            self.model = create_model(case.model, num_classes=7, **kw)
        else:
            self.model = build_pretrain_model(case.model, **kw)
        self.model.to(device).train()
        a = (self.model if case.mode == "finetune" else self.model.encoder).model_args
        data = torch.Generator().manual_seed(0)
        self.clips = torch.randn(case.batch, 3, a["num_frames"], a["img_size"], a["img_size"], generator=data).to(device)
        if case.mode == "finetune":
            self.batch = (self.clips, torch.randint(0, 7, (case.batch,), generator=data).to(device))
        else:
            self.batch = (self.clips, self.model.masker(case.batch, generator=data).to(device))
        layer_decay = 0.75 if case.mode == "finetune" else None
        fused = True if device.type == "cuda" else None
        self.opt = torch.optim.AdamW(param_groups(self.model, 0.05, layer_decay), lr=1e-4, betas=(0.9, 0.95),
                                     fused=fused)
        self.engine, _ = ds.initialize(self.model, param_groups(self.model, 0.05, layer_decay), lr=1e-4,
                                       betas=(0.9, 0.95), eps=1e-8, micro_batch=case.batch, accum_steps=1,
                                       world_size=1, precision="bf16", zero_stage=0, clip_grad=None)
        self.flops = None

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def loss(self, module: Any) -> torch.Tensor:
        clips, second = self.batch
        if self.case.mode == "finetune":
            return F.cross_entropy(module(clips).float(), second)
        return module(clips, second)["loss"]

    def step_fn(self, engine: Any, batch: Any) -> dict:
        return {"loss": self.loss(engine)}

    def plain_step(self) -> None:
        with self.autocast():
            loss = self.loss(self.model)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def bare_step(self) -> None:
        with self.autocast():
            loss = self.loss(self.engine)
        self.engine.backward(loss)
        self.engine.step()

    def loop_steps(self, n: int) -> None:
        from lgiformer.distributed import init_distributed
        from lgiformer.engine.logger import RunLogger
        from lgiformer.engine.loop import LoopState, Training, train_one_epoch

        training = Training(self.engine, init_distributed(str(self.device)), RunLogger(".", enabled=False),
                            "bf16", lr=1e-4, total_batch=self.case.batch, steps_per_epoch=n,
                            batches_per_epoch=n, lr_values=np.full(n, 1e-4), wd_values=np.full(n, 0.05),
                            log_every=10 ** 6, max_nonfinite=3, progress=False)
        train_one_epoch(training, [self.batch] * n, self.step_fn, LoopState())

    def count_flops(self) -> float:
        """FLOPs of one training step, forward + backward, eager, bf16 autocast."""
        if self.flops is None:
            from torch.utils.flop_counter import FlopCounterMode

            counter = FlopCounterMode(display=False)
            with counter, self.autocast():
                loss = self.loss(self.model)
            with counter:
                loss.backward()
            self.model.zero_grad(set_to_none=True)
            self.flops = float(counter.get_total_flops())
        return self.flops


def sig(x: float, digits: int = 4) -> float:
    """``x`` to ``digits`` significant digits (MFU of a tiny CPU model is 1e-5, of a GPU run 0.3)."""
    return float(f"{x:.{digits}g}")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(device: torch.device, fn: Callable[[int], None], n: int) -> float:
    sync(device)
    start = time.perf_counter()
    fn(n)
    sync(device)
    return (time.perf_counter() - start) / n


def kernels_per_step(bench: Bench, step: Callable[[], None]) -> dict:
    """CUDA kernels one step launches and the ten longest (on CPU: aten operators, for the smoke run)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = bench.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        step()
        sync(bench.device)
    if cuda:
        from torch.autograd import DeviceType

        kernels = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
        by_name: dict[str, float] = {}
        for e in kernels:
            by_name[e.name] = by_name.get(e.name, 0.0) + e.device_time_total / 1e3
        top = sorted(by_name.items(), key=lambda kv: -kv[1])[:10]
        return {"kernels": len(kernels), "kernel_ms": round(sum(by_name.values()), 2),
                "top_ms": [[name[:90], round(ms, 3)] for name, ms in top]}
    ops = [e for e in prof.events() if e.name.startswith("aten::")]
    return {"aten_ops": len(ops)}


def run_row(p: Plan, bench: Bench, args: argparse.Namespace, peak: float | None) -> dict:
    from lgiformer.engine import compile as compiling

    dev = bench.device
    row: dict[str, Any] = {"label": p.label, "model": p.case.model, "mode": p.case.mode, "batch": p.case.batch,
                           "runner": p.runner, "compiled": p.compiled}
    if p.compiled:
        static = compiling.has_static_shapes(bench.model)
        mode = compiling.choose_mode(dev, static)
        scope = compiling.choose_scope() if compiling.block_stacks(bench.model) else "model"
        row.update(compile_mode=mode, compile_scope=scope)
        before = compiling.compile_seconds()
        if p.runner == "plain":  # what compile_engine does, without the engine
            kwargs = compiling.compile_kwargs(mode, static)
            if scope == "blocks":
                compiling.compile_blocks(bench.model, kwargs)
            else:
                bench.model.compile(**kwargs)
        else:
            compiling.compile_engine(bench.engine, True, dev, static_shapes=static)
    steps = {"plain": lambda n: [bench.plain_step() for _ in range(n)],
             "engine-bare": lambda n: [bench.bare_step() for _ in range(n)],
             "engine": bench.loop_steps}[p.runner]
    warm_start = time.perf_counter()
    steps(args.warmup)
    sync(dev)
    row["warmup_s"] = round(time.perf_counter() - warm_start, 1)
    if p.compiled:
        row["compile_s"] = round(compiling.compile_seconds() - before, 1)
        row["compile_cache"] = compiling.cache_hits()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    compiled_before = compiling.compile_seconds()
    reps = [timed(dev, steps, args.steps) for _ in range(args.repeats)]
    if p.compiled:  # should be 0: a recompile inside the timed steps would inflate them
        row["compile_s_while_timed"] = round(compiling.compile_seconds() - compiled_before, 1)
    step_s = statistics.median(reps)
    flops = bench.count_flops() if not p.compiled else bench.flops
    row.update(step_s=round(step_s, 5), step_s_repeats=[round(r, 5) for r in reps],
               clips_per_s=round(p.case.batch / step_s, 1),
               peak_mem_gib=round(torch.cuda.max_memory_allocated() / 2 ** 30, 2) if dev.type == "cuda" else None,
               gflop_per_step=None if flops is None else sig(flops / 1e9))
    if flops is not None:
        row["tflops"] = sig(flops / step_s / 1e12)
        row["mfu"] = None if peak is None else sig(flops / step_s / (peak * 1e12))
    if p.runner == "plain":
        row["profile"] = kernels_per_step(bench, bench.plain_step)
    return row


def interleaved_rows(case: Case, bench: Bench, args: argparse.Namespace, peak: float | None) -> list[dict]:
    """``--interleave`` (for shared CPUs): the three eager runners of one case timed in rounds, one step of each per
    round, so a change in machine load hits all three alike; step time = median over the rounds, and the process's
    CPU time per step (steadier than the wall time on a shared machine)."""
    runners = {"plain": bench.plain_step, "engine-bare": bench.bare_step, "engine": lambda: bench.loop_steps(1)}
    for step in runners.values():
        for _ in range(args.warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in runners}
    cpu_times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(args.steps * args.repeats):
        for name, step in runners.items():
            cpu = time.process_time()
            times[name].append(timed(bench.device, lambda n: step(), 1))
            cpu_times[name].append(time.process_time() - cpu)
    flops = bench.count_flops()
    rows = []
    for name, ts in times.items():
        step_s = statistics.median(ts)
        rows.append({"label": Plan(case, name, False).label, "model": case.model, "mode": case.mode,
                     "batch": case.batch, "runner": name, "compiled": False, "step_s": round(step_s, 5),
                     "step_s_rounds": [round(t, 4) for t in ts], "clips_per_s": round(case.batch / step_s, 2),
                     "step_cpu_s": round(statistics.median(cpu_times[name]), 5),
                     "gflop_per_step": sig(flops / 1e9), "tflops": sig(flops / step_s / 1e12),
                     "mfu": None if peak is None else sig(flops / step_s / (peak * 1e12)),
                     "interleaved": True})
    return rows


ATTENTION_SHAPES = {  # LGI-Former-B at finetuning batch 32: (batch, heads, queries, keys), head dim 64
    "local: 256 regions x 101 tokens": (256, 8, 101, 101),
    "global: 32 clips x 8 representative tokens": (32, 8, 8, 8),
    "local-global: 32 clips x 808 queries x 8 keys": (32, 8, 808, 8),
}


def attention_kernels(device: torch.device, tiny: bool, reps: int = 20) -> dict:
    """The LGI-Former's three attentions, forward + backward in bf16: SDPA against the explicit two GEMMs and a
    softmax (the issue asked whether 8 keys are cheaper without SDPA). Milliseconds per call, median."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    out = {}
    for name, (b, h, lq, lk) in ATTENTION_SHAPES.items():
        if tiny:
            b = 2
        q = torch.randn(b, h, lq, 64, device=device, dtype=dtype, requires_grad=True)
        k = torch.randn(b, h, lk, 64, device=device, dtype=dtype, requires_grad=True)
        v = torch.randn(b, h, lk, 64, device=device, dtype=dtype, requires_grad=True)
        grad = torch.randn(b, h, lq, 64, device=device, dtype=dtype)
        impls = {"sdpa": lambda: F.scaled_dot_product_attention(q, k, v),
                 "explicit": lambda: ((q * 64 ** -0.5) @ k.transpose(-2, -1)).softmax(-1) @ v}
        row = {}
        for impl, fn in impls.items():
            times = []
            for i in range(reps + 3):
                sync(device)
                start = time.perf_counter()
                torch.autograd.backward(fn(), grad)
                sync(device)
                if i >= 3:
                    times.append(time.perf_counter() - start)
            row[f"{impl}_ms"] = round(1e3 * statistics.median(times), 4)
        out[name] = row
    return out


def estimate_s(p: Plan, done: list[dict], args: argparse.Namespace) -> float:
    """A pessimistic guess of a row's cost, from the eager rows already measured."""
    eager = [r for r in done if r.get("step_s") and r["model"] == p.case.model and r["mode"] == p.case.mode]
    step = max((r["step_s"] for r in eager), default=0.5)
    total_steps = args.warmup + args.steps * args.repeats + 3
    cost = 10.0 + step * total_steps
    if p.compiled:
        cost += args.compile_estimate_s * (0.3 if p.runner == "engine" else 1.0)
    return cost


def summarize(rows: list[dict]) -> dict:
    """The issue's four GPU figures, for eager and compiled, plain loop and engine."""
    def find(model_prefix: str, mode: str, runner: str, compiled: bool) -> dict | None:
        return next((r for r in rows if r["model"].startswith(model_prefix) and r["mode"] == mode
                     and r["runner"] == runner and r["compiled"] == compiled and r.get("step_s")), None)

    out: dict[str, Any] = {}
    for compiled in (False, True):
        for runner in ("plain", "engine"):
            key = f"{runner}{' compiled' if compiled else ' eager'}"
            lf, vf = find("lgiformer", "finetune", runner, compiled), find("vit", "finetune", runner, compiled)
            lp, vp = find("lgiformer", "pretrain", runner, compiled), find("vit", "pretrain", runner, compiled)
            figures: dict[str, Any] = {}
            if lf and vf:
                figures["lgi_vit_finetune_step_ratio"] = round(lf["step_s"] / vf["step_s"], 3)
            if lp and vp:
                figures["lgi_vit_pretrain_clips_ratio"] = round(lp["clips_per_s"] / vp["clips_per_s"], 3)
            if vf and vf.get("mfu") is not None:
                figures["vit_finetune_mfu"] = vf["mfu"]
            if runner == "engine":
                overheads = {}
                for r in rows:
                    if r["runner"] == "engine" and r["compiled"] == compiled and r.get("step_s"):
                        plain = find(r["model"], r["mode"], "plain", compiled)
                        if plain:
                            overheads[f"{r['model']} {r['mode']}"] = round(r["step_s"] / plain["step_s"] - 1, 3)
                if overheads:
                    figures["engine_vs_plain_overhead"] = max(overheads.values())
                    figures["engine_vs_plain_overhead_each"] = overheads
            for name, (op, target) in TARGETS.items():
                if name in figures:
                    v = figures[name]
                    figures[f"{name}_met"] = bool(v <= target if op == "<=" else v >= target)
            out[key] = figures
    return out


def format_table(rows: list[dict]) -> str:
    head = (f"{'config':58s} {'step ms':>8s} {'clips/s':>8s} {'TFLOP/s':>8s} {'MFU':>6s} {'mem GiB':>8s} "
            f"{'compile s':>9s} {'kernels':>8s}")
    lines = [head, "-" * len(head)]
    for r in rows:
        if r.get("skipped") or r.get("error"):
            lines.append(f"{r['label'][:58]:58s} {'skipped: ' + r['skipped'] if r.get('skipped') else 'error: ' + r['error'][:60]}")
            continue
        mfu = "-" if r.get("mfu") is None else f"{100 * r['mfu']:.1f}%"
        prof = r.get("profile") or {}
        kern = prof.get("kernels", prof.get("aten_ops", "-"))
        lines.append(f"{r['label'][:58]:58s} {1e3 * r['step_s']:8.1f} {r['clips_per_s']:8.1f} "
                     f"{r.get('tflops', float('nan')):8.1f} {mfu:>6s} {r.get('peak_mem_gib') or float('nan'):8.2f} "
                     f"{r.get('compile_s', '-')!s:>9s} {kern!s:>8s}")
    return "\n".join(lines)


def environment(device: torch.device) -> dict:
    import platform

    info = {"date": time.strftime("%Y-%m-%d %H:%M"), "torch": torch.__version__, "cuda": torch.version.cuda,
            "python": platform.python_version(), "device": str(device)}
    try:
        import deepspeed
        info["deepspeed"] = deepspeed.__version__
    except ImportError:  # pragma: no cover - DeepSpeed is a dependency
        info["deepspeed"] = None
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _run_or_skip(p: Plan, rows_plan: list[Plan], benches: dict[Case, Bench], result: dict,
                 args: argparse.Namespace, device: torch.device, peak: float | None, start: float) -> dict:
    elapsed = time.perf_counter() - start
    if elapsed + estimate_s(p, result["rows"], args) > args.budget_s:
        row = {"label": p.label, "model": p.case.model, "mode": p.case.mode, "batch": p.case.batch,
               "runner": p.runner, "compiled": p.compiled, "skipped": f"budget ({elapsed:.0f} s used)"}
    else:
        print(f"[{elapsed:5.0f} s] {p.label}", file=sys.stderr, flush=True)
        try:
            if p.case not in benches:
                benches[p.case] = Bench(p.case, device, args.tiny, args.depth)
            row = run_row(p, benches[p.case], args, peak)
        except Exception as err:  # noqa: BLE001 - one failing row must not lose the others
            row = {"label": p.label, "model": p.case.model, "mode": p.case.mode, "batch": p.case.batch,
                   "runner": p.runner, "compiled": p.compiled, "error": f"{type(err).__name__}: {err}"}
            print(f"  failed: {row['error']}", file=sys.stderr, flush=True)
    if p.case not in [q.case for q in rows_plan[rows_plan.index(p) + 1:]]:
        benches.pop(p.case, None)  # its last row: free the model, optimisers and engine
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="tiny models and clips (the CPU smoke run)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and the peak figure; run nothing")
    p.add_argument("--skip-compiled", action="store_true")
    p.add_argument("--only", nargs="+", default=None, metavar="TEXT",
                   help="run only the rows whose label contains one of these, e.g. 'lgiformer_base_patch16_160 finetune'")
    p.add_argument("--finetune-batch", type=int, default=None, help="default 32 (tiny: 2)")
    p.add_argument("--pretrain-batch", type=int, default=None, help="default 128 (tiny: 2)")
    p.add_argument("--depth", type=int, default=None, help="override both models' depth (short CPU runs)")
    p.add_argument("--interleave", action="store_true",
                   help="eager runners only, timed in interleaved rounds (shared CPUs); ignores --budget-s")
    p.add_argument("--steps", type=int, default=10, help="steps per timed repeat")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per row (median)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (the compiled rows compile here)")
    p.add_argument("--budget-s", type=float, default=450.0, help="skip rows that would not finish within this")
    p.add_argument("--compile-estimate-s", type=float, default=90.0, help="assumed cold compile time of one row")
    p.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the GPU, TFLOP/s")
    p.add_argument("--out", default="output/gpu_check/gpu_check.json")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    start = time.perf_counter()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak, peak_source = peak_tflops(name, args.peak_tflops)
    rows_plan = [p for p in plan(args.tiny, args.skip_compiled, args.finetune_batch, args.pretrain_batch)
                 if not args.only or any(word in p.label for word in args.only)]
    result: dict[str, Any] = {"environment": environment(device) if not args.dry_run else {"device": str(device)},
                              "peak_bf16_tflops": peak, "peak_source": peak_source, "tiny": args.tiny,
                              "settings": {k: getattr(args, k) for k in ("steps", "repeats", "warmup", "budget_s",
                                                                         "depth")},
                              "rows": []}
    if args.dry_run:
        for p in rows_plan:
            print(p.label)
        print(f"{len(rows_plan)} rows; peak {peak} TFLOP/s ({peak_source}); budget {args.budget_s:.0f} s")
        result["plan"] = [p.label for p in rows_plan]
        return result

    from lgiformer.engine import compile as compiling
    from lgiformer.distributed import init_distributed

    result["compile_cache_dir"] = compiling.set_cache_dir()  # before anything compiles
    init_distributed(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    benches: dict[Case, Bench] = {}
    if args.interleave:
        for case in cases(args.tiny, args.finetune_batch, args.pretrain_batch):
            print(f"[{time.perf_counter() - start:5.0f} s] {case.model} {case.mode} b{case.batch}, runners interleaved",
                  file=sys.stderr, flush=True)
            result["rows"] += interleaved_rows(case, Bench(case, device, args.tiny, args.depth), args, peak)
            result["summary"] = summarize(result["rows"])
            out.write_text(json.dumps(result, indent=1))
        rows_plan = []
    try:
        for p in rows_plan:
            result["rows"].append(_run_or_skip(p, rows_plan, benches, result, args, device, peak, start))
            result["summary"] = summarize(result["rows"])
            result["wall_s"] = round(time.perf_counter() - start, 1)
            out.write_text(json.dumps(result, indent=1))
        if time.perf_counter() - start < args.budget_s - 40:
            result["attention_kernels"] = attention_kernels(device, args.tiny)
            out.write_text(json.dumps(result, indent=1))
        if time.perf_counter() - start < args.budget_s - 30:
            from benchmarks import engine_overhead

            print("engine overhead per optimiser step", file=sys.stderr, flush=True)
            lgi = cases(args.tiny)[0].model
            result["engine_overhead"] = engine_overhead.run(lgi, args.device, 1 if args.tiny else args.depth)
            out.write_text(json.dumps(result, indent=1))
    except KeyboardInterrupt:  # gpu_check.sh's time limit: report what was measured
        result["interrupted"] = True
        result["wall_s"] = round(time.perf_counter() - start, 1)
        out.write_text(json.dumps(result, indent=1))
    env = result["environment"]
    if result.get("interrupted"):
        print("interrupted by the time limit: the rows below are those that finished")
    print(f"{env.get('gpu', env['device'])}, torch {env['torch']}, DeepSpeed {env['deepspeed']}, bf16; "
          f"peak {peak} TFLOP/s ({peak_source}); {args.steps} steps x {args.repeats} repeats after {args.warmup} "
          f"warm-up; {result.get('wall_s', 0):.0f} s")
    print(format_table(result["rows"]))
    for key, figures in result.get("summary", {}).items():
        shown = {k: v for k, v in figures.items() if not k.endswith("_each")}
        if shown:
            print(f"{key}: " + ", ".join(f"{k} {v}" for k, v in shown.items()))
    for name, r in result.get("attention_kernels", {}).items():
        print(f"attention {name}: SDPA {r['sdpa_ms']:.3f} ms, explicit {r['explicit_ms']:.3f} ms (forward + backward)")
    overhead = result.get("engine_overhead")
    if overhead:
        print(f"optimiser step of {overhead['model']} ({overhead['parameters']} tensors, {overhead['groups']} groups), "
              "gradients set, no forward:")
        for name, r in overhead["rows"].items():
            kernels = f", {r['kernels']} kernels" if "kernels" in r else ""
            print(f"  {name:58s} {r['ms']:8.2f} ms, {r['ops_top']} top-level operators{kernels}")
    print(f"JSON: {out}")
    return result


if __name__ == "__main__":
    from lgiformer.distributed import destroy

    main()
    destroy()  # in-process callers (the tests) keep the group: DeepSpeed remembers it
