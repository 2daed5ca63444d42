"""AU heads side by side on the synthetic AU set, from one (pretrained) encoder, with the same budget.

    python benchmarks/au_heads.py                                   # demo release if present, fold 1, CPU
    python benchmarks/au_heads.py --encoder output/pretrain/demo/release --folds 1 2 3 --epochs 60 --json out.json
    python benchmarks/au_heads.py --encoder none                    # random-init encoder

Protocol (frozen encoder, "linear / attentive probing"): the encoder (a release, or random init) is frozen; its
tokens are computed once for every training window (one clip centred on every ``--train-stride``-th labelled frame
of each training video) and every test frame (the clip centred on it), the same windows for every head. Each head
then trains for ``--epochs`` epochs of AdamW (lr ``--lr``, batch ``--batch-size``) on those tokens with its own
loss (linear / label_token: masked inverse-frequency BCE (U1/U3); fantrans_okd: OKD; monet: mixture NLL), all with
the prior-bias init (U2) and the fold's training occurrence rates. Reported per head: test mean F1 over the 9 AUs at
0.5 (frame-wise, and with the moving mean of ``--smooth-window`` frames), the mean ROC AUC over the AUs (frame-wise,
threshold-free: it separates heads that all stay below 0.5 on rare AUs), trainable parameters, and inference ms
per clip (encoder + head, batch 1, median of ``--timing-runs``). Heads: ``linear`` = LayerNorm + Linear on the
mean-pooled local tokens (pooled-feature baseline), ``label_token``, ``fantrans_okd``, ``monet`` (docs/AU_METHODS.md).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lgiformer.au import auc_per_au  # noqa: E402
from lgiformer.data import AUFrameWindows, split_validation  # noqa: E402
from lgiformer.heads import build_au_head  # noqa: E402
from lgiformer.inference import au_metrics  # noqa: E402
from lgiformer.models.au import au_head_inputs  # noqa: E402
from lgiformer.tasks.au import build_loss, training_rates  # noqa: E402
from lgiformer.tasks.common import build_finetune_model  # noqa: E402

HEADS = ("linear", "label_token", "fantrans_okd", "monet")
DEMO_RELEASE = "output/pretrain/demo/release"
# Head sizes for a small encoder (C = 128): d = C for the token heads, 2 decoder layers / 2 FAN-Trans blocks.
HEAD_ARGS = {"linear": {}, "label_token": {"dim": 128, "depth": 2, "num_heads": 4},
             "fantrans_okd": {"dim": 128, "depth": 2, "num_heads": 2},
             "monet": {"hidden": 64, "num_orders": 64, "keep_orders": 16, "mean_field": True}}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoder", default="auto", help="release dir / checkpoint, 'none' (random), 'auto' (the demo "
                                                      "release when present, else random)")
    p.add_argument("--data-root", default="", help="'' (default): data/synthetic/<name of the --synthetic options>")
    p.add_argument("--synthetic", default="clips_per_class_per_subject=4",
                   help="generator options (k=v,...) when the set must be generated; the demo's by default")
    p.add_argument("--heads", nargs="+", default=list(HEADS), choices=HEADS)
    p.add_argument("--folds", nargs="+", type=int, default=[1])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--sampling-rate", type=int, default=2)
    p.add_argument("--train-stride", type=int, default=1, help="training windows every N labelled frames")
    p.add_argument("--smooth-window", type=int, default=5)
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--timing-runs", type=int, default=20)
    p.add_argument("--device", default="auto")
    p.add_argument("--img-size", type=int, default=96, help="random-init encoder only (a release fixes it)")
    p.add_argument("--num-frames", type=int, default=8, help="random-init encoder only")
    p.add_argument("--pixel-probe", action="store_true",
                   help="also train a logistic probe on pixels (no encoder): is the AU signal in the input at all?")
    p.add_argument("--json", default="", help="also write the results as JSON ('-': stdout only)")
    return p.parse_args(argv)


def build_encoder(source: str, img_size: int, num_frames: int):
    if source == "auto":
        source = DEMO_RELEASE if Path(DEMO_RELEASE, "model.safetensors").is_file() else "none"
    kwargs = dict(img_size=img_size, num_frames=num_frames, region_size=[2, 3, 6], embed_dim=128, depth=4,
                  num_heads=4)
    torch.manual_seed(0)  # a random-init encoder is the same one in every run
    enc, report = build_finetune_model("lgiformer_tiny_patch16_160", 0, None if source == "none" else source,
                                       global_pool="", **kwargs)
    return enc.eval().requires_grad_(False), source, report


@torch.no_grad()
def encode(encoder, dataset, device, batch_size: int = 16) -> torch.Tensor:
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    out = [encoder.forward_features(b[0].to(device)).cpu() for b in loader]
    return torch.cat(out)


@torch.no_grad()
def pixel_features(dataset, batch_size: int = 64) -> torch.Tensor:
    """The pixel probe's input, no encoder: each window's centre frame and its change from the window's first frame,
    both average-pooled to 8 x 8-pixel cells and flattened ([N, 2 x 3 x (S / 8)^2]). A calibration of the task, not
    a head: what a linear read-out of the raw input reaches."""
    out = []
    for clips, *_ in torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False):
        centre, first = clips[:, :, clips.shape[2] // 2], clips[:, :, 0]
        cells = [torch.nn.functional.avg_pool2d(x, 8).flatten(1) for x in (centre, centre - first)]
        out.append(torch.cat(cells, 1))
    return torch.cat(out)


def labels_of(dataset):
    y = torch.stack([torch.from_numpy(dataset.videos[vi].labels[p]) for vi, p in dataset.items])
    v = torch.stack([torch.from_numpy(dataset.videos[vi].valid[p]) for vi, p in dataset.items])
    return y, v


def _au_loss(head_name: str, rates, device):
    """The AU task's default loss for ``head_name`` (masked inverse-frequency BCE, or the head's own)."""
    from types import SimpleNamespace

    au = SimpleNamespace(loss="wbce", head=head_name, au_weighting="inverse_freq", target_transform="none",
                         ls_convention="halved", loss_args={})
    return build_loss(au, rates)[0].to(device)


def fit(module, forward, y, v, loss_fn, args, seed, device):
    """The same budget for every head: ``args.epochs`` of AdamW with a one-cycle schedule over shuffled batches;
    ``forward(idx, y_batch)`` is the head's output dict for the training items ``idx``."""
    n = y.shape[0]
    opt = torch.optim.AdamW(module.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps = args.epochs * max(1, n // args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    module.train()
    for _ in range(args.epochs):
        order = torch.randperm(n, generator=gen)
        for s in range(0, n - args.batch_size + 1, args.batch_size):
            idx = order[s:s + args.batch_size]
            yy, vv = y[idx].to(device).float(), v[idx].to(device).float()
            loss = loss_fn(forward(idx, yy), yy, vv)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return module.eval()


def train_pixel_probe(x, y, v, tx, rates, args, seed):
    """Logistic regression per AU on :func:`pixel_features` (standardised with the training statistics), with the
    heads' loss and budget (:func:`fit`); returns the test probabilities and the parameter count."""
    torch.manual_seed(seed)
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    x, tx = (x - mean) / std, (tx - mean) / std
    probe = torch.nn.Linear(x.shape[1], y.shape[1])
    with torch.no_grad():
        probe.bias.copy_(torch.logit(rates.clamp(1e-3, 1 - 1e-3)))  # U2, as the heads
    fit(probe, lambda idx, _: {"logits": probe(x[idx])}, y, v, _au_loss("linear", rates, "cpu"), args, seed, "cpu")
    with torch.no_grad():
        return torch.sigmoid(probe(tx)), sum(p.numel() for p in probe.parameters())


def train_head(name, tokens, y, v, rates, encoder, args, seed, device):
    torch.manual_seed(seed)
    head = build_au_head(name, rates=rates, **au_head_inputs(name, encoder, y.shape[1], False, HEAD_ARGS[name]))
    head = head.to(device)
    grid, ns = tuple(encoder.grid_size), int(encoder.num_prefix_tokens)

    def forward(idx, yy):
        extra = {"y": yy} if name == "monet" else {}
        return head(tokens[idx].to(device), grid=grid, n_special=ns, **extra)

    return fit(head, forward, y, v, _au_loss(name, rates, device), args, seed, device)


@torch.no_grad()
def predict(head, tokens, encoder, device, batch_size=64):
    grid, ns = tuple(encoder.grid_size), int(encoder.num_prefix_tokens)
    probs = []
    for s in range(0, tokens.shape[0], batch_size):
        out = head(tokens[s:s + batch_size].to(device), grid=grid, n_special=ns)
        probs.append((out["probs"] if "probs" in out else torch.sigmoid(out["logits"])).float().cpu())
    return torch.cat(probs)


@torch.no_grad()
def time_per_clip(encoder, head, device, runs: int, img: int, frames: int) -> float:
    clip = torch.randn(1, 3, frames, img, img, device=device)
    grid, ns = tuple(encoder.grid_size), int(encoder.num_prefix_tokens)
    times = []
    for i in range(runs + 3):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        head(encoder.forward_features(clip), grid=grid, n_special=ns)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 3:
            times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def main(argv=None) -> dict:
    args = parse_args(argv)
    from lgiformer.data import get_dataset_spec, read_au_csv
    from lgiformer.data.synthetic import ensure_synthetic, resolve_root

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    opts = {}
    for item in filter(None, args.synthetic.split(",")):
        k, val = item.split("=")
        opts[k.strip()] = int(val) if val.strip().isdigit() else val.strip()
    root = resolve_root(args.data_root, opts)
    ensure_synthetic(root, progress=False, **opts)
    encoder, source, report = build_encoder(args.encoder, args.img_size, args.num_frames)
    encoder.to(device)
    margs = encoder.model_args
    print(f"encoder: {source or 'random init'} ({report.format}: {len(report.loaded)} loaded, {len(report.new)} new); "
          f"{margs['img_size']} px, {margs['num_frames']} frames, C {margs['embed_dim']}; device {device}",
          file=sys.stderr)
    spec = get_dataset_spec("synthetic_au")
    names_run = list(args.heads) + (["pixel_probe"] if args.pixel_probe else [])
    results: dict = {h: {"folds": {}, "params": 0, "ms_per_clip": 0.0} for h in names_run}
    window = dict(num_frames=margs["num_frames"], sampling_rate=args.sampling_rate, img_size=margs["img_size"])
    for fold in args.folds:
        videos, names = read_au_csv(root / spec.lists["train"].format(fold=fold), root, au_names=spec.au_names)
        test_videos, _ = read_au_csv(root / spec.lists["test"].format(fold=fold), root, au_names=names)
        train_videos, _ = split_validation(videos, 0.0, by="subject")
        rates = training_rates(train_videos).clamp_min(1e-3)
        train_set = AUFrameWindows(train_videos, frame_stride=args.train_stride, **window)
        test_set = AUFrameWindows(test_videos, **window)
        t0 = time.perf_counter()
        tr_tokens, te_tokens = encode(encoder, train_set, device), encode(encoder, test_set, device)
        print(f"fold {fold}: {len(train_set)} training windows, {len(test_set)} test frames encoded in "
              f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)
        y, v = labels_of(train_set)
        ty, tv = labels_of(test_set)
        vids = [vi for vi, _ in test_set.items]
        if args.pixel_probe:
            pixels = (pixel_features(train_set), pixel_features(test_set))

        def scored(name, seed, probs, t0) -> dict:
            m, _ = au_metrics(probs, ty, tv, vids, threshold=args.threshold, smooth_window=args.smooth_window,
                              au_names=names)
            auc = auc_per_au(probs, ty, tv)
            run = dict(seed=seed, frame_f1=m["frame"]["mean_f1"], smoothed_f1=m.get("smoothed", m["frame"])["mean_f1"],
                       per_au=m["frame"]["per_au"], auc=float(np.nanmean(auc)), per_au_auc=dict(zip(names, auc)),
                       train_s=time.perf_counter() - t0)
            print(f"  {name:13s} fold {fold} seed {seed}: mean F1 {100 * run['frame_f1']:.1f} (smoothed "
                  f"{100 * run['smoothed_f1']:.1f}), mean AUC {100 * run['auc']:.1f} in {run['train_s']:.0f} s",
                  file=sys.stderr)
            return run

        for name in names_run:
            runs = []
            for seed in args.seeds:
                t0 = time.perf_counter()
                if name == "pixel_probe":
                    probs, results[name]["params"] = train_pixel_probe(pixels[0], y, v, pixels[1], rates, args, seed)
                    runs.append(scored(name, seed, probs, t0))
                    continue
                head = train_head(name, tr_tokens, y, v, rates, encoder, args, seed, device)
                runs.append(scored(name, seed, predict(head, te_tokens, encoder, device), t0))
            results[name]["folds"][fold] = runs
            if name == "pixel_probe":
                continue
            results[name]["params"] = sum(p.numel() for p in head.parameters() if p.requires_grad)
            if not results[name]["ms_per_clip"]:
                results[name]["ms_per_clip"] = time_per_clip(encoder, head, device, args.timing_runs,
                                                             margs["img_size"], margs["num_frames"])
    for name, r in results.items():
        frame = [run["frame_f1"] for runs in r["folds"].values() for run in runs]
        smooth = [run["smoothed_f1"] for runs in r["folds"].values() for run in runs]
        r["mean_f1"], r["mean_f1_smoothed"] = float(np.mean(frame)), float(np.mean(smooth))
        r["std_f1"] = float(np.std(frame))
        aucs = [run["auc"] for runs in r["folds"].values() for run in runs]
        r["mean_auc"], r["std_auc"] = float(np.mean(aucs)), float(np.std(aucs))
    summary = dict(encoder=source or "random", device=str(device), folds=args.folds, seeds=args.seeds,
                   epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, smooth_window=args.smooth_window,
                   threshold=args.threshold, protocol="frozen encoder, cached tokens", heads=results)
    print(f"\nAU heads on synthetic_au (frozen encoder: {summary['encoder']}; folds {args.folds}, seeds {args.seeds}, "
          f"{args.epochs} epochs each)")
    print(f"{'head':14s} {'mean F1':>8s} {'± std':>6s} {'smoothed':>9s} {'mean AUC':>9s} {'± std':>6s} "
          f"{'trainable':>10s} {'ms/clip':>8s}")
    for name, r in results.items():
        ms = f"{r['ms_per_clip']:.2f}" if r["ms_per_clip"] else "-"   # the pixel probe has no encoder to time
        print(f"{name:14s} {100 * r['mean_f1']:8.1f} {100 * r['std_f1']:6.1f} {100 * r['mean_f1_smoothed']:9.1f} "
              f"{100 * r['mean_auc']:9.1f} {100 * r['std_auc']:6.1f} {r['params']:10,d} {ms:>8s}")
    if args.json:
        text = json.dumps(summary, indent=1)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    return summary


if __name__ == "__main__":
    main()
