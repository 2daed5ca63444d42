"""LGI-Former vs ViT: finetuning-step time and peak memory as the clip grows (frames 16 -> 32, size 160 -> 224).

    python benchmarks/scaling.py --depth 2 --batch 1 --iters 3 --out docs/images/scaling.png
    python benchmarks/scaling.py --device cuda --precision bf16 --batch 8 --iters 10 --json

Grid points: every (frames, size) pair of ``--frames`` x ``--sizes``; models ``--lgi`` and ``--vit``. All configs
are timed in one process with interleaved repetitions (see ``benchmarks/common.py``).

LGI-Former regions must tile the token grid. At 160 px the grid is T/2 x 10 x 10 and the paper's regions are
2 x 5 x 10 tokens (M = 100 tokens per region). At 224 px the grid is T/2 x 14 x 14, which 5 and 10 do not divide; we
use 2 x 7 x 7 (M = 98), the tiling closest to the paper's M, so that the number of regions N grows with the token
count K while M stays put -- the regime of the paper's complexity analysis. ``--region-224`` changes it (2x7x14 gives
M = 196 and half as many regions).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.common import RunConfig, environment, parse_region, run_interleaved  # noqa: E402

REGION_160 = (2, 5, 10)


def region_for(size: int, region_224: tuple[int, int, int]) -> tuple[int, int, int]:
    if size == 224:
        return region_224
    if size == 160:
        return REGION_160
    raise ValueError(f"no default region size for {size} px; use 160 or 224")


def plot(rows: list[dict], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for model in dict.fromkeys(r["model"] for r in rows):
        pts = sorted((r["tokens"], r["step_time_s"], r["peak_mb"], r["point"]) for r in rows if r["model"] == model)
        tokens = [p[0] for p in pts]
        axes[0].plot(tokens, [p[1] for p in pts], "o-", label=model)
        if all(p[2] is not None for p in pts):
            axes[1].plot(tokens, [p[2] for p in pts], "o-", label=model)
        for p in pts:
            axes[0].annotate(p[3], (p[0], p[1]), fontsize=7, textcoords="offset points", xytext=(3, 3))
    axes[0].set(xlabel="tokens per clip (K)", ylabel="training step, s (median)", title="step time")
    axes[1].set(xlabel="tokens per clip (K)", ylabel="peak step memory, MiB", title="peak memory")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lgi", default="lgiformer_base_patch16_160")
    p.add_argument("--vit", default="vit_base_patch16_160")
    p.add_argument("--frames", type=int, nargs="+", default=[16, 32])
    p.add_argument("--sizes", type=int, nargs="+", default=[160, 224])
    p.add_argument("--region-224", default="2x7x7", help="LGI-Former region (tokens) at 224 px")
    p.add_argument("--mode", choices=("pretrain", "finetune"), default="finetune")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--depth", type=int, default=None, help="same reduced depth for both models (CPU)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--out", default=None, help="PNG plot path, e.g. docs/images/scaling.png")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    region_224 = parse_region(args.region_224)

    cfgs, points = [], []
    for frames in args.frames:
        for size in args.sizes:
            for model in (args.lgi, args.vit):
                region = region_for(size, region_224) if model.startswith("lgiformer") else None
                cfgs.append(RunConfig(model=model, mode=args.mode, batch=args.batch, frames=frames, img_size=size,
                                      depth=args.depth, region=region, precision=args.precision,
                                      device=args.device))
                points.append(f"{frames}x{size}")
    log = None if args.json else (lambda msg: print(msg, file=sys.stderr, flush=True))
    rows = run_interleaved(cfgs, args.iters, args.warmup, memory=not args.no_memory, log=log)
    for row, point in zip(rows, points):
        t, h, w = row["frames"] // 2, row["img_size"] // 16, row["img_size"] // 16
        row["point"], row["tokens"] = point, t * h * w
        if row["region"]:
            m = row["region"][0] * row["region"][1] * row["region"][2]
            row["tokens_per_region"], row["regions"] = m, t * h * w // m
    pairs = []
    for i in range(0, len(rows), 2):
        lgi, vit = rows[i], rows[i + 1]
        pairs.append({"point": lgi["point"], "tokens": lgi["tokens"],
                      "time_ratio_lgi_vs_vit": round(lgi["step_time_s"] / vit["step_time_s"], 3),
                      "memory_ratio_lgi_vs_vit": (round(lgi["peak_mb"] / vit["peak_mb"], 3)
                                                  if lgi["peak_mb"] and vit["peak_mb"] else None)})
    result = {"environment": environment(), "iters": args.iters, "warmup": args.warmup, "results": rows,
              "lgi_vs_vit": pairs}
    if args.out:
        title = (f"{args.mode} step, batch {args.batch}, depth {args.depth or 'full'}, {args.precision}, "
                 f"{args.device}, torch {result['environment']['torch']}")
        plot(rows, Path(args.out), title)
        result["plot"] = args.out
    if args.json:
        print(json.dumps(result, indent=1))
        return result
    print(f"{'point':>8s} {'K':>6s} {'model':28s} {'M':>4s} {'N':>4s} {'step s':>8s} {'peak MiB':>9s}")
    for r in rows:
        peak = "-" if r["peak_mb"] is None else f"{r['peak_mb']:.0f}"
        print(f"{r['point']:>8s} {r['tokens']:6d} {r['model']:28s} {r.get('tokens_per_region', r['tokens']):4d} "
              f"{r.get('regions', 1):4d} {r['step_time_s']:8.3f} {peak:>9s}")
    print("LGI-Former / ViT: " + "; ".join(
        f"{q['point']} time x{q['time_ratio_lgi_vs_vit']:.2f}"
        + ("" if q["memory_ratio_lgi_vs_vit"] is None else f" mem x{q['memory_ratio_lgi_vs_vit']:.2f}")
        for q in pairs))
    if args.out:
        print(f"plot: {args.out}")
    return result


if __name__ == "__main__":
    main()
