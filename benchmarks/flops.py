"""Parameters and GMACs per 16 x 160 x 160 view, counted by ``torch.utils.flop_counter`` (not a hand formula).

    python benchmarks/flops.py [--json] [--models lgiformer_base_patch16_160 vit_base_patch16_160] [--classes 7]

One MAC = two FLOPs as torch counts them. Attention is counted through the explicit path (matmul + softmax), so
what is counted does not depend on which fused kernel the platform would pick.
"""
from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("LGIFORMER_FUSED_ATTN", "0")  # count attention as explicit matmuls, kernel-independent

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from lgiformer.models import create_model  # noqa: E402


def count(name: str, num_classes: int, frames: int, size: int) -> dict:
    model = create_model(name, num_classes=num_classes, num_frames=frames, img_size=size).eval()
    params = sum(p.numel() for p in model.parameters())
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, 3, frames, size, size))
    return {"model": name, "params_m": round(params / 1e6, 3), "gmac": round(counter.get_total_flops() / 2e9, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["lgiformer_base_patch16_160", "vit_base_patch16_160"])
    parser.add_argument("--classes", type=int, default=7)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = [count(m, args.classes, args.frames, args.size) for m in args.models]
    result = {"input": [3, args.frames, args.size, args.size], "models": rows}
    if len(rows) == 2:
        result["gmac_ratio"] = round(rows[0]["gmac"] / rows[1]["gmac"], 3)
    if args.json:
        print(json.dumps(result, indent=1))
        return
    for r in rows:
        print(f"{r['model']:32s} {r['params_m']:8.2f} M params {r['gmac']:8.2f} GMAC/view")
    if "gmac_ratio" in result:
        print(f"GMAC ratio {rows[0]['model']} / {rows[1]['model']}: {result['gmac_ratio']}")


if __name__ == "__main__":
    main()
