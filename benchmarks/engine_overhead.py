"""What one optimiser step costs through the training engine beyond a plain loop, call by call, with the gradients
already set (no forward or backward): operators counted by ``torch.profiler`` (on CUDA: kernels launched) and the
median time of each call.

    python benchmarks/engine_overhead.py [--model lgiformer_base_patch16_160] [--device cuda] [--json]

Rows: the plain loop's ``opt.step(); opt.zero_grad(set_to_none=True)`` (torch AdamW, fused on CUDA); DeepSpeed's
``engine.step()`` as ``lgiformer.engine.ds`` configures it now, and with ``gradient_clipping`` 1.0 (what DeepSpeed did
when the key was left out, before 2026-12-04); the backward all-reduce DeepSpeed ran on one process at ZeRO 0
(``engine.allreduce_gradients()``, now skipped); the training loop's own gradient norm (``_grad_norm`` in
``lgiformer/engine/loop.py``, a ``torch._foreach_norm`` since 2026-12-05) read on the host, and the same norm left on
the device. Finetuning groups
(layer decay 0.75), bf16 autocast configured as for training.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402


def measure(fn: Callable[[], object], refill: Callable[[], None], device: torch.device, reps: int = 5) -> dict:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    refill()
    fn()
    times = []
    for _ in range(reps):
        refill()
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    from torch.profiler import ProfilerActivity, profile

    refill()
    sync()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        sync()
    ops = [e for e in prof.events() if e.name.startswith("aten::")]
    top = [e for e in ops if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")]
    row = {"ms": round(1e3 * statistics.median(times), 3), "ops": len(ops), "ops_top": len(top)}
    if device.type == "cuda":
        from torch.autograd import DeviceType

        row["kernels"] = sum(1 for e in prof.events() if e.device_type == DeviceType.CUDA)
    return row


def run(model_name: str, device_name: str, depth: int | None = None, reps: int = 5) -> dict:
    from lgiformer.engine import ds
    from lgiformer.distributed import init_distributed
    from lgiformer.engine.loop import _grad_norm
    from lgiformer.models import create_model
    from lgiformer.optim import param_groups

    device = init_distributed(device_name).device
    model = create_model(model_name, num_classes=7, **({"depth": depth} if depth else {})).to(device)

    def groups() -> list[dict]:
        return param_groups(model, 0.05, layer_decay=0.75)

    fused = True if device.type == "cuda" else None
    opt = torch.optim.AdamW(groups(), lr=1e-4, betas=(0.9, 0.95), fused=fused)
    engine_kw = dict(lr=1e-4, betas=(0.9, 0.95), eps=1e-8, micro_batch=2, accum_steps=1, world_size=1,
                     precision="bf16", zero_stage=0)
    engine, _ = ds.initialize(model, groups(), clip_grad=None, **engine_kw)
    clipped, _ = ds.initialize(model, groups(), clip_grad=1.0, **engine_kw)
    params = list(model.parameters())

    def refill() -> None:
        for q in params:
            q.grad = torch.ones_like(q)

    def plain() -> None:
        opt.step()
        opt.zero_grad(set_to_none=True)

    def foreach_norm() -> torch.Tensor:
        return torch.linalg.vector_norm(torch.stack(torch._foreach_norm([q.grad for q in params])))

    rows = {
        "plain loop: opt.step + zero_grad": measure(plain, refill, device, reps),
        "DeepSpeed engine.step (now)": measure(engine.step, refill, device, reps),
        "DeepSpeed engine.step, clipping at 1.0 (the old default)": measure(clipped.step, refill, device, reps),
        "DeepSpeed one-process all-reduce (now skipped)": measure(engine.allreduce_gradients, refill, device, reps),
        "loop _grad_norm (now the foreach norm, read on the host)": measure(lambda: float(_grad_norm(model)), refill,
                                                                              device, reps),
        "foreach norm, kept on the device": measure(foreach_norm, refill, device, reps),
    }
    for q in params:
        q.grad = None
    return {"model": model_name, "device": str(device), "parameters": len(params),
            "values_m": round(sum(q.numel() for q in params) / 1e6, 1), "groups": len(groups()), "rows": rows}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="lgiformer_base_patch16_160")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--depth", type=int, default=None)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    result = run(args.model, args.device, args.depth, args.reps)
    rows = result["rows"]
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"{args.model} on {result['device']}: {result['parameters']} parameter tensors, {result['values_m']} M values, "
              f"{result['groups']} groups")
        for name, r in rows.items():
            extra = f"  kernels {r['kernels']:6d}" if "kernels" in r else ""
            print(f"{name:58s} {r['ms']:9.2f} ms  ops {r['ops']:6d}  top-level {r['ops_top']:6d}{extra}")
    return result


if __name__ == "__main__":
    main()
