"""Training-step throughput, step time and peak memory of one model, or several side by side.

    python benchmarks/throughput.py --model lgiformer_base_patch16_160 --mode finetune --batch 2 --depth 2
    python benchmarks/throughput.py --model lgiformer_base_patch16_160 --impl reference --depth 2 --json
    python benchmarks/throughput.py --depth 2 --batch 2 --iters 5 --compare \\
        lgiformer_base_patch16_160 lgiformer_base_patch16_160:impl=reference
    python benchmarks/throughput.py --device cuda --precision bf16 --batch 32 --compare \\
        lgiformer_base_patch16_160 vit_base_patch16_160 lgiformer_base_patch16_160:impl=reference

``--mode pretrain``: masked MAE forward (encoder on the visible tokens, decoder, appearance + motion loss),
backward, AdamW step. ``--mode finetune``: classification over all tokens, cross-entropy, backward, AdamW step.
``--impl reference`` times the LGI-Former computed the reference way (``benchmarks/_reference_lgi.py``: explicit
attention, separate q/kv projections, per-region loops), with the same weights. ``--impl baseline`` times the
LGI-Former blocks as they were before the lean block (``benchmarks/_baseline_lgi.py``). ``--ops`` counts the
operators one block launches, forward + backward, with ``torch.profiler`` (see ``benchmarks/common.py``):

    python benchmarks/throughput.py --depth 2 --batch 2 --iters 9 --warmup 2 --no-memory --ops --compare \
        lgiformer_base_patch16_160:impl=baseline lgiformer_base_patch16_160
``--compare SPEC [SPEC ...]`` runs every spec in this one process with interleaved repetitions (one step of each
config per round), and prints each config's ratios to the first. A spec is ``MODEL[:key=value,...]`` with keys
impl, mode, batch, frames, img_size, depth, region, precision, compile, grad_checkpointing; keys left out take the
command line's values.

Step time is the median of ``--iters`` timed steps after ``--warmup`` steps; clips/s = batch / step time. The CPU
time of the process per step is reported too (``cpu x``: its ratio to the first config): on a shared machine other
jobs stretch the wall time, hardly the CPU time. Peak memory
is the peak of a steady-state step above the resident weights and optimizer state; on CPU it is read from VmHWM
in a fresh subprocess per config, on CUDA from ``torch.cuda.max_memory_allocated`` (see ``benchmarks/common.py``).
The optimizer is plain ``torch.optim.AdamW``: DeepSpeed is not needed for this micro-benchmark.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.common import IMPLS, RunConfig, environment, format_table, parse_region, parse_spec  # noqa: E402
from benchmarks.common import ratios  # noqa: E402
from benchmarks.common import run_interleaved  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="lgiformer_base_patch16_160", help="any registered lgiformer_* or vit_* name")
    p.add_argument("--impl", choices=IMPLS, default="ours")
    p.add_argument("--mode", choices=("pretrain", "finetune"), default="finetune")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--img-size", type=int, default=160)
    p.add_argument("--depth", type=int, default=None, help="override the variant's depth (short CPU runs)")
    p.add_argument("--region", default=None, help="LGI-Former region size in tokens, e.g. 2x7x7")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="bf16 = autocast bf16")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--iters", type=int, default=5, help="timed steps (per config)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (per config)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--compare", nargs="+", metavar="SPEC", help="configs to run side by side, ratios vs the first")
    p.add_argument("--ops", action="store_true",
                   help="also count the operators one block launches, forward + backward (torch.profiler)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace) -> dict:
    base = RunConfig(model=args.model, impl=args.impl, mode=args.mode, batch=args.batch, frames=args.frames,
                     img_size=args.img_size, depth=args.depth, region=parse_region(args.region),
                     precision=args.precision, device=args.device, compile=args.compile,
                     grad_checkpointing=args.grad_checkpointing)
    cfgs = [parse_spec(s, base) for s in args.compare] if args.compare else [base]
    log = None if args.json else (lambda msg: print(msg, file=sys.stderr, flush=True))
    rows = run_interleaved(cfgs, args.iters, args.warmup, memory=not args.no_memory, log=log, ops=args.ops)
    result = {"environment": environment(), "iters": args.iters, "warmup": args.warmup, "results": rows}
    if len(rows) > 1:
        result["ratios"] = ratios(rows)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        env = result["environment"]
        print(f"torch {env['torch']}, {args.device}, {env['threads']} threads, "
              f"{args.iters} timed steps after {args.warmup} warm-up, median")
        print(format_table(rows))
        if rows[0].get("memory_method"):
            print(f"peak = {rows[0]['memory_method']}; saved = tensors autograd keeps for backward")
    return result


if __name__ == "__main__":
    main()
