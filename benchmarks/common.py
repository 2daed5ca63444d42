"""Shared pieces of ``throughput.py`` and ``scaling.py``: run specs, one training step, timing and memory.

A *spec* is ``MODEL[:key=value,key=value]``, e.g. ``lgiformer_base_patch16_160:impl=reference,depth=2``. Keys:
``impl`` (ours | baseline | reference; baseline = the LGI-Former blocks as they were before the lean block,
``benchmarks/_baseline_lgi.py``), ``mode`` (pretrain | finetune), ``batch``, ``frames``, ``img_size``, ``depth``,
``region`` (e.g. 2x7x7, LGI-Former only), ``precision`` (fp32 | bf16), ``compile``, ``grad_checkpointing``
(0/1). Keys left out take the command line's values.

One step is forward + backward + ``torch.optim.AdamW.step()`` + ``zero_grad(set_to_none=True)`` on random clips
already on the device (no data loading). Plain torch AdamW: DeepSpeed (used by the real engine) is not needed to
compare models and would add its own, model-independent, optimizer cost (see ``benchmarks/engine_check.py``).

Memory, the same quantity on both devices: the peak of a steady-state training step ABOVE what is resident before
it (weights, AdamW state, inputs), so activations + gradients + temporaries.
  * CUDA: ``torch.cuda.max_memory_allocated() - torch.cuda.memory_allocated()`` around the step, in process.
  * CPU: torch has no allocation counter, and an in-process RSS reading is wrong after earlier runs (glibc keeps
    freed memory mapped and reuses it). So every config is measured in a FRESH subprocess started with
    ``MALLOC_MMAP_THRESHOLD_=65536`` (every allocation over 64 KiB is its own mmap, returned to the OS when freed, so
    RSS follows live tensor memory). It runs one warm-up step, reads VmRSS, resets the high-water mark
    (``echo 5 > /proc/self/clear_refs``), runs one step and reads VmHWM. Includes allocator scratch (oneDNN, MKL).
Also reported, device-independent: ``saved_mb``, the bytes of the distinct tensors autograd saves for backward
(parameters excluded), counted with ``torch.autograd.graph.saved_tensors_hooks`` during one forward; and with
``ops=True`` the operators one block launches, forward + backward (:func:`block_op_counts`).
"""
from __future__ import annotations

import dataclasses
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from lgiformer.models import build_pretrain_model, create_model  # noqa: E402

NUM_CLASSES = 7
MB = 2 ** 20
IMPLS = ("ours", "baseline", "reference")


@dataclasses.dataclass
class RunConfig:
    model: str = "lgiformer_base_patch16_160"
    impl: str = "ours"
    mode: str = "finetune"
    batch: int = 2
    frames: int = 16
    img_size: int = 160
    depth: int | None = None
    region: tuple[int, int, int] | None = None
    precision: str = "fp32"
    device: str = "cpu"
    compile: bool = False
    grad_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {self.impl!r}")
        if self.impl != "ours" and not self.model.startswith("lgiformer"):
            raise ValueError(f"impl={self.impl} exists for lgiformer_* models only")
        if self.mode not in ("pretrain", "finetune"):
            raise ValueError(f"mode must be 'pretrain' or 'finetune', got {self.mode!r}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {self.precision!r}")
        if not self.model.startswith("lgiformer"):
            self.region = None  # a ViT is one region; a command-line --region applies to the LGI-Formers only

    @property
    def label(self) -> str:
        extra = [self.impl, self.mode, f"{self.batch}x{self.frames}x{self.img_size}", self.precision]
        extra += [f"depth={self.depth}"] if self.depth else []
        extra += [f"region={'x'.join(map(str, self.region))}"] if self.region else []
        extra += ["compile"] * self.compile + ["ckpt"] * self.grad_checkpointing
        return f"{self.model}[{','.join(extra)}]"


def _bool(v: str) -> bool:
    if v.lower() in ("1", "true", "yes", "on"):
        return True
    if v.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {v!r}")


def parse_region(v: str | None) -> tuple[int, int, int] | None:
    if v in (None, ""):
        return None
    parts = tuple(int(p) for p in v.lower().replace(",", "x").split("x"))
    if len(parts) != 3:
        raise ValueError(f"region must be T x H x W tokens, e.g. 2x7x7, got {v!r}")
    return parts  # type: ignore[return-value]


_CASTS: dict[str, Callable[[str], object]] = dict(
    impl=str, mode=str, batch=int, frames=int, img_size=int, depth=int, region=parse_region, precision=str,
    device=str, compile=_bool, grad_checkpointing=_bool)


def parse_spec(spec: str, base: RunConfig) -> RunConfig:
    """``MODEL[:k=v,...]`` on top of ``base`` (the command line's values)."""
    name, _, rest = spec.partition(":")
    fields = {"model": name or base.model}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in _CASTS:
            raise ValueError(f"bad spec item {item!r} in {spec!r}; keys: {', '.join(_CASTS)}")
        fields[key] = _CASTS[key](value.strip())
    return dataclasses.replace(base, **fields)


# ---- building one runnable training step ------------------------------------------------------------------------
@dataclasses.dataclass
class Bench:
    cfg: RunConfig
    model: torch.nn.Module
    step: Callable[[], None]
    forward_loss: Callable[[], torch.Tensor]
    params: int
    features: Callable[[], torch.Tensor]  # the encoder's output on the config's clips (fixed mask), no grad


def build(cfg: RunConfig, seed: int = 0) -> Bench:
    from benchmarks._baseline_lgi import baseline_lgiformer_from
    from benchmarks._reference_lgi import reference_lgiformer_from, use_explicit_attention

    torch.manual_seed(seed)
    device = torch.device(cfg.device)
    kw = dict(num_frames=cfg.frames, img_size=cfg.img_size)
    if cfg.depth:
        kw["depth"] = cfg.depth
    if cfg.region:
        kw["region_size"] = cfg.region
    if cfg.mode == "pretrain":
        model = build_pretrain_model(cfg.model, **kw)
        if cfg.impl == "reference":
            model.encoder = reference_lgiformer_from(model.encoder)
            use_explicit_attention(model.decoder)  # the reference decoder is a plain explicit-attention ViT
        elif cfg.impl == "baseline":
            model.encoder = baseline_lgiformer_from(model.encoder)  # the decoder is today's in both
    else:
        model = create_model(cfg.model, num_classes=NUM_CLASSES, **kw)
        if cfg.impl == "reference":
            model = reference_lgiformer_from(model)
        elif cfg.impl == "baseline":
            model = baseline_lgiformer_from(model)
    model.to(device).train()
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    if cfg.compile:  # as training compiles: each block (regional), the mode the engine would pick on this device
        from lgiformer.engine import compile as compiling

        static = cfg.mode == "pretrain"
        compiling.compile_blocks(model, compiling.compile_kwargs(compiling.choose_mode(device, static), static))
    fwd = model
    data = torch.Generator().manual_seed(seed)  # the same clips whatever the model construction drew
    clips = torch.randn(cfg.batch, 3, cfg.frames, cfg.img_size, cfg.img_size, generator=data).to(device)
    labels = torch.randint(0, NUM_CLASSES, (cfg.batch,), generator=data).to(device)

    def forward_loss() -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16) if cfg.precision == "bf16" else nullcontext():
            if cfg.mode == "pretrain":
                return fwd(clips)["loss"]
            return F.cross_entropy(fwd(clips).float(), labels)

    def step() -> None:
        forward_loss().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    mask = model.masker(cfg.batch, generator=torch.Generator().manual_seed(seed)).to(device) \
        if cfg.mode == "pretrain" else None
    encoder = model.encoder if cfg.mode == "pretrain" else model

    def features() -> torch.Tensor:
        with torch.no_grad():
            return encoder.forward_features(clips, mask).float()

    return Bench(cfg, model, step, forward_loss, params, features)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed_step(bench: Bench) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one step. On a shared CPU the CPU time is the steadier
    figure: other jobs stretch the wall time of a step, hardly its CPU time."""
    sync(bench.cfg.device)
    t0, c0 = time.perf_counter(), time.process_time()
    bench.step()
    sync(bench.cfg.device)
    return time.perf_counter() - t0, time.process_time() - c0


def saved_tensor_mb(bench: Bench) -> float | None:
    """MiB of distinct tensors saved for backward during one forward (parameters excluded); None with compile."""
    if bench.cfg.compile:
        return None
    params = {p.untyped_storage().data_ptr() for p in bench.model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = bench.forward_loss()
    loss.backward()
    bench.model.zero_grad(set_to_none=True)
    return round(sum(seen.values()) / MB, 1)


# ---- operators per block -----------------------------------------------------------------------------------------
VIEW_OPS = frozenset(f"aten::{n}" for n in (
    "as_strided", "view", "_unsafe_view", "_reshape_alias", "reshape", "transpose", "t", "permute", "expand",
    "select", "slice", "narrow", "unsqueeze", "squeeze", "unflatten", "flatten", "movedim", "unbind", "split",
    "split_with_sizes", "chunk", "alias", "detach", "resolve_conj", "resolve_neg", "empty", "empty_like",
    "empty_strided", "new_empty_strided", "contiguous", "to", "lift_fresh", "expand_as", "view_as"))


def block_op_counts(bench: Bench) -> dict | None:
    """Operators the model's first block launches for one forward + backward on the input it sees in this config
    (the batch, the visible tokens in pretraining), fp32, recorded by ``torch.profiler`` after one warm-up pass,
    gradients set to None before (as ``zero_grad(set_to_none=True)`` leaves them):

    * ``ops``: every ``aten::`` operator call the profiler records, nested ones included (``aten::linear`` and the
      ``aten::addmm`` it calls count as two);
    * ``ops_top``: the calls made by the block's Python code and by the autograd engine (not nested in another
      operator);
    * ``ops_compute``: the calls, at any level, that are not views, reshapes or allocations (``VIEW_OPS``): the ones
      that read or write tensor data, the closest CPU proxy for kernel launches on a GPU.

    For a compiled config the block is the compiled one (the compiled code runs as few operators, plus the GEMMs and
    attention kernels it calls)."""
    from torch.profiler import ProfilerActivity, profile

    encoder = getattr(bench.model, "encoder", bench.model)
    block = encoder.blocks[0]
    seen: dict[str, torch.Tensor] = {}
    handle = block.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0].detach().clone()))
    with torch.no_grad(), torch.compiler.set_stance("force_eager"):  # the hook runs eagerly, even on a compiled block
        bench.forward_loss()
    handle.remove()
    x = seen["x"].float().requires_grad_()
    grad = torch.randn_like(x)  # a dense output gradient, as a loss downstream gives (``sum()`` would expand ones)

    def once() -> None:
        block.zero_grad(set_to_none=True)
        x.grad = None
        block(x).backward(grad)

    once()
    once()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        once()
    block.zero_grad(set_to_none=True)
    events = [e for e in prof.events() if e.name.startswith("aten::")]
    top = [e for e in events if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")]
    compute = [e for e in events if e.name not in VIEW_OPS]
    return {"ops": len(events), "ops_top": len(top), "ops_compute": len(compute), "block_input": list(x.shape)}


# ---- peak memory --------------------------------------------------------------------------------------------------
def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _probe_in_process(cfg: RunConfig) -> dict:
    """Peak memory of one steady-state step of ``cfg`` in this process (see module docstring)."""
    bench = build(cfg)
    bench.step()  # warm-up: creates AdamW state, compiles, fills allocator caches
    gc.collect()
    if cfg.device.startswith("cuda"):
        sync(cfg.device)
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        bench.step()
        sync(cfg.device)
        peak = torch.cuda.max_memory_allocated()
        return {"peak_mb": round((peak - base) / MB, 1), "peak_total_mb": round(peak / MB, 1),
                "memory_method": "cuda.max_memory_allocated - memory_allocated before the step"}
    base = _status_kb("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        reset = True
    except OSError:
        reset = False
    bench.step()
    peak = _status_kb("VmHWM")
    method = "fresh subprocess, MALLOC_MMAP_THRESHOLD_=65536, VmHWM - VmRSS before the step"
    return {"peak_mb": round((peak - base) / 1024, 1), "peak_total_mb": round(peak / 1024, 1),
            "memory_method": method + ("" if reset else " (VmHWM not resettable: includes the warm-up step)")}


def peak_memory(cfg: RunConfig) -> dict:
    """CUDA: in process. CPU: in a fresh subprocess (see module docstring)."""
    if cfg.device.startswith("cuda"):
        gc.collect()
        torch.cuda.empty_cache()
        return _probe_in_process(cfg)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--probe", json.dumps(dataclasses.asdict(cfg))]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"memory probe failed for {cfg.label}:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- timing several configs, interleaved ------------------------------------------------------------------------
def run_interleaved(cfgs: list[RunConfig], iters: int, warmup: int, memory: bool = True,
                    log: Callable[[str], None] | None = None, ops: bool = False) -> list[dict]:
    """Build every config, warm each up, then time ``iters`` rounds of one step per config in turn (so drifts in
    machine load hit all configs alike). Step time is the median over the rounds. ``ops``: also count the operators
    of one block (:func:`block_op_counts`)."""
    benches, outputs = [], []
    for cfg in cfgs:
        if log:
            log(f"building {cfg.label}")
        bench = build(cfg)
        outputs.append(bench.features())  # before any optimiser step: configs that differ only in impl share weights
        for _ in range(warmup):
            bench.step()
        benches.append(bench)
    times: list[list[float]] = [[] for _ in benches]
    cpu_times: list[list[float]] = [[] for _ in benches]
    for i in range(iters):
        for j, bench in enumerate(benches):
            wall, cpu = timed_step(bench)
            times[j].append(wall)
            cpu_times[j].append(cpu)
        if log:
            log(f"round {i + 1}/{iters}: " + " ".join(f"{t[-1]:.3f}s" for t in times))
    results = []
    for bench, ts, cs in zip(benches, times, cpu_times):
        med = statistics.median(ts)
        row = dict(dataclasses.asdict(bench.cfg), label=bench.cfg.label, params_m=round(bench.params / 1e6, 3),
                   step_time_s=round(med, 4), step_times_s=[round(t, 4) for t in ts],
                   step_cpu_s=round(statistics.median(cs), 4),
                   clips_per_s=round(bench.cfg.batch / med, 3), saved_mb=saved_tensor_mb(bench))
        if ops:
            row["block_ops"] = block_op_counts(bench)
        results.append(row)
    ignore = {"impl", "compile"}
    for j, (row, bench) in enumerate(zip(results, benches)):
        # Compared with the first earlier config that differs only in impl / compile (same weights and clips).
        twin = next((i for i in range(j) if all(getattr(benches[i].cfg, f.name) == getattr(bench.cfg, f.name)
                                                for f in dataclasses.fields(RunConfig) if f.name not in ignore)), None)
        row["max_abs_diff"] = None if twin is None else float((outputs[j] - outputs[twin]).abs().max())
        row["diff_vs"] = None if twin is None else results[twin]["label"]
    del benches
    gc.collect()
    for row, cfg in zip(results, cfgs):
        row.update(peak_memory(cfg) if memory else {"peak_mb": None, "peak_total_mb": None, "memory_method": None})
    return results


def environment() -> dict:
    info = {"torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d")}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def ratios(rows: list[dict]) -> list[dict]:
    """Each row's step time and peak memory relative to the first row."""
    first = rows[0]
    out = []
    for r in rows:
        out.append({"label": r["label"],
                    "time_ratio": round(r["step_time_s"] / first["step_time_s"], 3),
                    "cpu_time_ratio": (round(r["step_cpu_s"] / first["step_cpu_s"], 3)
                                       if r.get("step_cpu_s") and first.get("step_cpu_s") else None),
                    "memory_ratio": (round(r["peak_mb"] / first["peak_mb"], 3)
                                     if r.get("peak_mb") and first.get("peak_mb") else None),
                    "saved_ratio": (round(r["saved_mb"] / first["saved_mb"], 3)
                                    if r.get("saved_mb") and first.get("saved_mb") else None)})
        if r.get("block_ops") and first.get("block_ops"):
            out[-1]["ops_ratio"] = {k: round(r["block_ops"][k] / first["block_ops"][k], 3)
                                    for k in ("ops", "ops_top", "ops_compute")}
    return out


def format_table(rows: list[dict]) -> str:
    rel = ratios(rows)
    head = (f"{'config':90s} {'params':>8s} {'step s':>8s} {'clips/s':>8s} {'peak MiB':>9s} {'saved MiB':>9s} "
            f"{'time x':>7s} {'cpu x':>6s} {'mem x':>6s}")
    lines = [head, "-" * len(head)]
    for r, q in zip(rows, rel):
        peak = "-" if r.get("peak_mb") is None else f"{r['peak_mb']:.0f}"
        saved = "-" if r.get("saved_mb") is None else f"{r['saved_mb']:.0f}"
        mem = "-" if q["memory_ratio"] is None else f"{q['memory_ratio']:.2f}"
        cpu = "-" if q.get("cpu_time_ratio") is None else f"{q['cpu_time_ratio']:.2f}"
        lines.append(f"{r['label'][:90]:90s} {r['params_m']:7.2f}M {r['step_time_s']:8.3f} {r['clips_per_s']:8.2f} "
                     f"{peak:>9s} {saved:>9s} {q['time_ratio']:7.2f} {cpu:>6s} {mem:>6s}")
    diffs = [r for r in rows if r.get("max_abs_diff") is not None]
    if diffs:
        lines += ["", "encoder outputs before training, max |difference| from the same config's first row:"]
        lines += [f"  {r['max_abs_diff']:.2e}  {r['label']}" for r in diffs]
    if any(r.get("block_ops") for r in rows):
        head = (f"{'operators in one block, forward + backward':90s} {'all':>8s} {'top':>8s} {'compute':>8s} "
                f"{'ratios':>20s}")
        lines += ["", head, "-" * len(head)]
        for r, q in zip(rows, rel):
            c = r.get("block_ops")
            if not c:
                continue
            ratio = "/".join(f"{v:.2f}" for v in q["ops_ratio"].values()) if q.get("ops_ratio") else "-"
            lines.append(f"{r['label'][:90]:90s} {c['ops']:8d} {c['ops_top']:8d} {c['ops_compute']:8d} {ratio:>20s}")
    return "\n".join(lines)


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--probe":
    fields = json.loads(sys.argv[2])
    if fields.get("region"):
        fields["region"] = tuple(fields["region"])
    print(json.dumps(_probe_in_process(RunConfig(**fields))))
