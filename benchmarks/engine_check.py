"""The real training engine (DeepSpeed, our loop, checkpoints, release) on random clips, for a device check.

    python benchmarks/engine_check.py --model lgiformer_base_patch16_160 --batch 32 --steps 30 --precision bf16
    torchrun --standalone --nproc_per_node 2 benchmarks/engine_check.py --model lgiformer_tiny_patch16_160 ...

It pretrains (masked MAE) for ``--steps`` steps through ``lgiformer.engine`` exactly as ``pretrain/run.py`` does,
but with random clips in memory so that only the engine is measured (no decoding), saves a checkpoint, consolidates
it (ZeRO shards / bf16 master weights) into an encoder release and loads it back. Prints JSON: step time, clips/s,
peak memory, the precision and ZeRO stage really used, and the release round-trip error.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from lgiformer.engine import ds  # noqa: E402
from lgiformer.engine.checkpointer import save_checkpoint  # noqa: E402
from lgiformer.distributed import barrier, destroy, init_distributed  # noqa: E402
from lgiformer.engine.logger import RunLogger  # noqa: E402
from lgiformer.engine.loop import LoopState, Training, train_one_epoch  # noqa: E402
from lgiformer.models import build_pretrain_model  # noqa: E402
from lgiformer.optim import param_groups  # noqa: E402
from lgiformer.models.release import load_release  # noqa: E402
from lgiformer.release import release_from_checkpoint  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="lgiformer_base_patch16_160")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--precision", default="auto")
    p.add_argument("--zero-stage", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="")
    p.add_argument("--mode", choices=("pretrain", "finetune"), default="pretrain",
                   help="finetune: all tokens through the encoder + a 7-class head (no release written)")
    args = p.parse_args()
    env = init_distributed(args.device)
    torch.manual_seed(0)
    if args.mode == "finetune":
        from lgiformer.models import create_model

        model = create_model(args.model, num_classes=7, drop_path_rate=0.1)
    else:
        model = build_pretrain_model(args.model)
    precision = ds.resolve_precision(args.precision, env.device)
    model.to(env.device)
    engine, _ = ds.initialize(model, param_groups(model, 0.05), lr=1.5e-4, betas=(0.9, 0.95), eps=1e-8,
                              micro_batch=args.batch, accum_steps=1, world_size=env.world_size, precision=precision,
                              zero_stage=args.zero_stage, clip_grad=None)
    a = (model if args.mode == "finetune" else model.encoder).model_args
    clips = torch.randn(args.batch, 3, a["num_frames"], a["img_size"], a["img_size"], device=env.device,
                        dtype=ds.input_dtype(precision))
    if args.mode == "finetune":
        labels = torch.randint(0, 7, (args.batch,), device=env.device)
        batches = [(clips, labels)] * (args.warmup + args.steps)

        def step_fn(eng, batch):
            return {"loss": torch.nn.functional.cross_entropy(eng(batch[0]).float(), batch[1])}
    else:
        batches = [(clips, model.masker(args.batch, env.device))] * (args.warmup + args.steps)

        def step_fn(eng, batch):
            return eng(batch[0], batch[1])

    def timed(n: int) -> float:
        state = LoopState()
        if env.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        training = Training(engine, env, RunLogger(".", enabled=False), precision, lr=1.5e-4, total_batch=args.batch,
                            steps_per_epoch=n, batches_per_epoch=n, lr_values=np.full(n, 1.5e-4),
                            wd_values=np.full(n, 0.05), log_every=10 ** 6, max_nonfinite=3, progress=False)
        train_one_epoch(training, batches[:n], step_fn, state)
        if env.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    timed(args.warmup)
    if env.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = timed(args.steps)
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if env.device.type == "cuda" else None
    result = dict(model=args.model, mode=args.mode, device=str(env.device),
                  gpu=torch.cuda.get_device_name() if env.device.type == "cuda" else None,
                  world_size=env.world_size, precision=precision, zero_stage=args.zero_stage,
                  batch_per_process=args.batch, step_s=seconds / args.steps,
                  clips_per_s=args.batch * env.world_size * args.steps / seconds, peak_mem_gib=peak)
    if args.mode == "finetune":
        if env.is_main:
            print(json.dumps(result))
        destroy()
        return
    out = Path(args.out or tempfile.mkdtemp(prefix="engine_check_"))
    state = dict(epoch=0, step=args.steps, loop={}, model_name=model.encoder.model_name,
                 model_args=model.encoder.model_args, precision=precision, zero_stage=args.zero_stage)
    ckpt = save_checkpoint(engine, out / "checkpoints", state, keep_last=1, is_main=env.is_main)
    if env.is_main:
        release_from_checkpoint(ckpt, out / "release", overwrite=True)
        encoder = load_release(out / "release").to(env.device)
        live = engine.module.encoder
        x = torch.randn(1, 3, a["num_frames"], a["img_size"], a["img_size"], device=env.device)
        with torch.no_grad():
            ref = live.float()(x) if precision == "fp32" else None
            got = encoder(x)
        result["release_max_abs_diff_vs_live_fp32"] = None if ref is None else float((ref - got).abs().max())
        result["release_dtype"] = str(next(encoder.parameters()).dtype)
        print(json.dumps(result))
    barrier()
    destroy()


if __name__ == "__main__":
    main()
