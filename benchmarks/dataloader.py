"""Data-loading speed on the synthetic set: is the pipeline close to raw decoding, and how many workers are needed?

    python benchmarks/dataloader.py --json            # 160 px videos generated under output/bench_data
    python benchmarks/dataloader.py --data output/bench_data_224 --video-size 224 --video-frames 200  # VoxCeleb2-like

1. Decode cost of one 16-frame clip (stride 4) from a generated mp4 (160 px, 64 frames unless told): raw decord
   (``VideoReader`` + ``get_batch``) against our reader path (``open_video`` + ``get``), interleaved in one process,
   and the ratio.
2. Loader throughput (clips/s) and mean data time per batch for 0, 1 and 2 workers, for decord, PyAV and frame
   folders, through the real pretraining dataset (sampling, multi-scale crop, mask) or finetuning dataset.
3. Repeated sampling (``data.repeat_aug``): the decord pretraining loader with 1, 2 and 4 views per decoded window,
   at the same number of clips per batch (``--repeat-aug 1,2,4``).
Prints a table; ``--json`` prints the figures as JSON.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import lgiformer  # noqa: E402,F401
from lgiformer.data import (VideoClassificationDataset, VideoPretrainDataset, build_loader,  # noqa: E402
                            collate_repeated, ensure_synthetic, open_video, pretrain_indices, read_video_list)


def decode_ratio(videos: list[str], repeats: int) -> dict:
    import decord

    rng = np.random.default_rng(0)
    raw, ours = [], []
    for r in range(repeats):
        path = videos[r % len(videos)]
        n = len(decord.VideoReader(path, num_threads=1))
        idx = pretrain_indices(n, 16, 4, rng).tolist()
        for which in ((0, 1) if r % 2 == 0 else (1, 0)):  # interleave to cancel drift
            start = time.perf_counter()
            if which == 0:
                decord.VideoReader(path, num_threads=1).get_batch(idx).asnumpy()
                raw.append(time.perf_counter() - start)
            else:
                open_video(path, "decord").get(idx)
                ours.append(time.perf_counter() - start)
    r_ms, o_ms = 1000 * statistics.median(raw), 1000 * statistics.median(ours)
    return dict(raw_decord_ms=round(r_ms, 2), pipeline_reader_ms=round(o_ms, 2), ratio=round(o_ms / r_ms, 3))


def loader_speed(dataset, workers: int, batch: int, batches: int) -> dict:
    """``batch`` counts clips; with repeated sampling a loader batch is ``batch / repeat_aug`` videos."""
    repeat = getattr(dataset, "repeat_aug", 1)
    loader = build_loader(dataset, batch // repeat, shuffle=True, drop_last=True, num_workers=workers, seed=0,
                          collate_fn=collate_repeated if repeat > 1 else None)
    it = iter(loader)
    next(it)  # start-up (worker fork) not counted
    waits, start = [], time.perf_counter()
    for _ in range(batches):
        t = time.perf_counter()
        try:
            next(it)
        except StopIteration:
            it = iter(loader)
            next(it)
        waits.append(time.perf_counter() - t)
    total = time.perf_counter() - start
    return dict(workers=workers, clips_per_s=round(batch * batches / total, 1),
                data_time_ms=round(1000 * statistics.mean(waits), 1))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="output/bench_data")
    p.add_argument("--video-size", type=int, default=160, help="side of the generated videos (VoxCeleb2: 224)")
    p.add_argument("--video-frames", type=int, default=64, help="frames per generated video (VoxCeleb2: ~200)")
    p.add_argument("--repeats", type=int, default=40)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--batches", type=int, default=12)
    p.add_argument("--workers", default="0,1,2")
    p.add_argument("--repeat-aug", default="1,2,4", help="views per decoded window to compare (decord, pretraining)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    root = Path(a.data)
    ensure_synthetic(root, size=a.video_size, num_frames=a.video_frames, unlabeled_clips=24, labeled_frames=64,
                     subjects=5, clips_per_class_per_subject=1, parts="unlabeled,labeled", progress=False)
    torch.set_num_threads(1)
    videos = [s.path for s in read_video_list(root / "unlabeled" / "pretrain.txt", root, labeled=False)]
    result = {"videos": f"{len(videos)} x {a.video_frames} frames at {a.video_size} px",
              "decode_16_frames": decode_ratio(videos, a.repeats), "loaders": []}
    pretrain_list = root / "unlabeled" / "pretrain.txt"
    workers = [int(x) for x in a.workers.split(",")]
    runs = [("decord", int(r)) for r in a.repeat_aug.split(",")] + [("pyav", 1)]
    for backend, repeat in runs:
        if a.batch % repeat:
            raise SystemExit(f"--batch {a.batch} must be a multiple of every --repeat-aug value (got {repeat})")
        ds = VideoPretrainDataset(str(pretrain_list), str(root), num_frames=16, stride=4, input_size=160,
                                  backend=backend, repeat_aug=repeat)
        views = f", {repeat} views per video" if repeat > 1 else ""
        for w in workers:
            result["loaders"].append(dict(source=f"mp4 ({backend}), pretrain transform{views}",
                                          **loader_speed(ds, w, a.batch, a.batches)))
    frames = read_video_list(root / "labeled" / "lists" / "train_fold1.txt", root, num_classes=7)
    ds = VideoClassificationDataset(frames, mode="train", num_frames=16, sampling_rate=4, img_size=160,
                                    auto_augment=None, reprob=0.0)
    for w in (int(x) for x in a.workers.split(",")):
        result["loaders"].append(dict(source="jpg frame folders, finetune transform (no RandAugment)",
                                      **loader_speed(ds, w, a.batch, a.batches)))
    if a.json:
        print(json.dumps(result, indent=1))
        return result
    d = result["decode_16_frames"]
    print(f"decode 16 frames ({result['videos']} mp4): raw decord {d['raw_decord_ms']} ms, our reader "
          f"{d['pipeline_reader_ms']} ms, ratio {d['ratio']}")
    print("| source | workers | clips/s | data time per batch (ms) |\n|---|---|---|---|")
    for r in result["loaders"]:
        print(f"| {r['source']} | {r['workers']} | {r['clips_per_s']} | {r['data_time_ms']} |")
    return result


if __name__ == "__main__":
    main()
