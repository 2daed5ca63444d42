"""Can a small model learn the synthetic expressions at all, before any pretraining question? A diagnostic.

    python benchmarks/learnability.py --data output/exp/data40 --model lgiformer --epochs 30
    python benchmarks/learnability.py --data output/exp/data40 --model cnn3d --epochs 24
    python benchmarks/learnability.py --data output/exp/data40 --model lgiformer --init output/pretrain/demo/release

Trains on one fold of a synthetic labeled set with the simplest possible loop: every clip decoded
once (the validation transform: centre window, centre crop, no augmentation), cached in memory, plain AdamW with a
one-cycle schedule, random horizontal flips. It prints training accuracy and subject-disjoint test UAR every few
epochs. It bypasses the pipeline on purpose: if a model cannot learn here, no recipe of ``finetune/run.py`` will
make it learn in the same budget. ``--make-data`` writes the labeled set first (e.g. ``--subjects 40
--clips-per-class 1``: as many clips as the demo, four times the identities).

Models: the demo-size LGI-Former (width 128, depth 4, 96 px, 8 frames), a ViT of the same size, or a small 3D CNN
(4 conv layers with BatchNorm, about 0.8 M parameters), the kind of model that usually learns from little data.
``--init RELEASE`` starts a transformer from a pretrained encoder (``pretrain/run.py``'s release) instead of random
init, so the same loop measures what pretraining gives; ``--pool`` picks its ``global_pool`` (``spatial`` keeps the
position of each feature; ``label_token`` is the library's label-token head, one attention query per class, here
with the sizes of ``LABEL_TOKEN_ARGS``); ``--freeze`` trains the head alone (a linear probe of the encoder's
features, random or pretrained).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lgiformer.data import VideoClassificationDataset, ensure_synthetic, read_video_list  # noqa: E402
from lgiformer.data.transforms import EvalTransform  # noqa: E402
from lgiformer.metrics import classification_metrics  # noqa: E402
from lgiformer.models import create_model  # noqa: E402
from lgiformer.interop.pretrained import load_pretrained  # noqa: E402

NUM_CLASSES = 7
# The label-token head at this encoder's width, with 2-D sine positions added to its keys (as first measured here).
LABEL_TOKEN_ARGS = dict(dim=128, depth=2, num_heads=4, pos_embed="sincos2d")


def small_cnn3d(num_classes: int = NUM_CLASSES) -> nn.Module:
    def block(cin, cout, kernel, stride, pad):
        return [nn.Conv3d(cin, cout, kernel, stride, pad, bias=False), nn.BatchNorm3d(cout), nn.ReLU(inplace=True)]

    return nn.Sequential(*block(3, 32, (3, 5, 5), (1, 2, 2), (1, 2, 2)), *block(32, 64, 3, (1, 2, 2), 1),
                         *block(64, 128, 3, 2, 1), *block(128, 128, 3, 2, 1),
                         nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(128, num_classes))


def build(name: str, size: int, frames: int, pool: str | None = None, patch: int = 16,
          region: list[int] | None = None) -> nn.Module:
    if name == "cnn3d":
        return small_cnn3d()
    args = dict(num_classes=NUM_CLASSES, img_size=size, num_frames=frames, embed_dim=128, depth=4, num_heads=4,
                patch_size=patch)
    if pool:
        args["global_pool"] = pool
    if pool == "label_token":
        args["head_args"] = LABEL_TOKEN_ARGS
    if name == "vit":
        return create_model("vit_tiny_patch16_160", **args)
    return create_model("lgiformer_tiny_patch16_160", region_size=region or [2, 3, 6], **args)


def cached(root: Path, split: str, fold: int, frames: int, stride: int, size: int,
           zoom: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    samples = read_video_list(root / "labeled" / "lists" / f"{split}_fold{fold}.txt", root, labeled=True,
                              num_classes=NUM_CLASSES)
    # The short side is resized to 1.15 x size (the test views' margin), then the centre is cropped: the input shows
    # the centre 87 % of the frame. zoom > 1 resizes it further, so the crop is tighter around the face (the head sits
    # in the frame's centre): 1/(1.15 x zoom) of the frame, 54 % at zoom 1.6.
    short_side = round(EvalTransform.MULTI_CROP_ZOOM * size * zoom)
    ds = VideoClassificationDataset(samples, mode="val", num_frames=frames, sampling_rate=stride, img_size=size,
                                    num_classes=NUM_CLASSES, frame_ext="jpg", short_side_size=short_side)
    items = [ds[i] for i in range(len(ds))]
    return torch.stack([it[0] for it in items]), torch.tensor([it[1] for it in items])


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="output/exp/data40")
    p.add_argument("--make-data", action="store_true")
    p.add_argument("--subjects", type=int, default=40)
    p.add_argument("--clips-per-class", type=int, default=1)
    p.add_argument("--fold", type=int, default=1)
    p.add_argument("--model", choices=("lgiformer", "vit", "cnn3d"), default="lgiformer")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--stride", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", default=None, help="start the transformer from this release (default: random init)")
    p.add_argument("--pool", default=None, help="the transformer's global_pool (default: the model's own)")
    p.add_argument("--patch", type=int, default=16, help="the transformer's patch size (16: 6 x 6 tokens at 96 px)")
    p.add_argument("--region", type=int, nargs=3, default=None, help="LGI-Former region (t h w tokens)")
    p.add_argument("--freeze", action="store_true",
                   help="train only the head (and its input norm) on the frozen encoder: a linear probe with a "
                        "pooling, an attentive probe with --pool label_token")
    p.add_argument("--center", action="store_true",
                   help="subtract each clip's temporal mean from it: the model sees what changes, not the face")
    p.add_argument("--zoom", type=float, default=1.0,
                   help="crop tighter around the face: the centre 1/(1.15 x zoom) of the frame fills the input")
    p.add_argument("--data-size", type=int, default=112, help="--make-data: the generator's frame size")
    a = p.parse_args(argv)
    root = Path(a.data)
    if a.make_data:
        ensure_synthetic(root, parts="labeled", subjects=a.subjects, clips_per_class_per_subject=a.clips_per_class,
                         size=a.data_size)
    torch.manual_seed(a.seed)
    start = time.time()
    x_train, y_train = cached(root, "train", a.fold, a.frames, a.stride, a.size, a.zoom)
    x_test, y_test = cached(root, "test", a.fold, a.frames, a.stride, a.size, a.zoom)
    if a.center:
        x_train, x_test = x_train - x_train.mean(2, keepdim=True), x_test - x_test.mean(2, keepdim=True)
    print(f"{a.model}: {len(x_train)} train / {len(x_test)} test clips of {tuple(x_train.shape[1:])}, "
          f"decoded in {time.time() - start:.0f} s", flush=True)
    model = build(a.model, a.size, a.frames, a.pool, a.patch, a.region)
    loaded = []
    if a.init:
        report = load_pretrained(model, a.init)
        loaded = report.loaded
        print(report.summary(), flush=True)
    if a.freeze:  # a linear probe: only the head (and its input norm) learns
        for name, param in model.named_parameters():
            param.requires_grad = name.startswith(("head.", "fc_norm."))
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=a.lr, weight_decay=0.05)
    steps_per_epoch = len(x_train) // a.batch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, a.lr, total_steps=a.epochs * steps_per_epoch, pct_start=0.1)
    history = []
    for epoch in range(1, a.epochs + 1):
        model.train()
        order, correct, loss_sum = torch.randperm(len(x_train)), 0, 0.0
        for i in range(steps_per_epoch):
            idx = order[i * a.batch:(i + 1) * a.batch]
            clips = x_train[idx].flip(-1) if torch.rand(()) < 0.5 else x_train[idx]
            logits = model(clips)
            loss = F.cross_entropy(logits, y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            correct += int((logits.argmax(-1) == y_train[idx]).sum())
            loss_sum += loss.item() * len(idx)
        if epoch % 3 == 0 or epoch == a.epochs:
            model.eval()
            with torch.no_grad():
                pred = torch.cat([model(x_test[i:i + 16]).argmax(-1) for i in range(0, len(x_test), 16)])
            m = classification_metrics(y_test.numpy(), pred.numpy(), NUM_CLASSES)
            seen = steps_per_epoch * a.batch
            history.append(dict(epoch=epoch, loss=loss_sum / seen, train_acc=correct / seen, uar=m["uar"],
                                war=m["war"]))
            print(f"epoch {epoch:3d}  loss {loss_sum / seen:.3f}  train acc {correct / seen:.2f}  "
                  f"test UAR {100 * m['uar']:.1f}  WAR {100 * m['war']:.1f}  [{time.time() - start:.0f} s]",
                  flush=True)
    trainable = sum(q.numel() for q in model.parameters() if q.requires_grad)
    return dict(history=history, loaded=loaded, train_clips=len(x_train), test_clips=len(x_test), trainable=trainable)


if __name__ == "__main__":
    main()
