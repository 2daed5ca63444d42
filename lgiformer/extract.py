"""Encoder features of every video of a list, in one safetensors file.

    python -m lgiformer.extract --model RELEASE --list LIST --out feats.safetensors [--pool region|local|spatial|tokens]
    torchrun --nproc_per_node 8 -m lgiformer.extract --model RELEASE --list LIST --out feats.safetensors

The features are the release's encoder output, ``model.forward_features(clips)``: ``[B, R + N, C]`` for the
LGI-Former (R representative tokens, then the N local tokens in raster (t, h, w) order), ``[B, N, C]`` for the ViT,
pooled by ``--pool``:

* ``region`` (LGI-Former only): the mean of the R representative tokens, ``[C]``: the paper's clip feature;
* ``local``: the mean of the N local tokens, ``[C]`` (for the ViT, of all its tokens);
* ``spatial``: each spatial position's local tokens averaged over time, ``[H' * W', C]`` (positions in raster order):
  what the ``spatial`` head sees;
* ``tokens``: every token, unpooled, ``[R + N, C]`` (large: 800 x 512 floats per clip for the base model).

No head is applied. An encoder release (from pretraining) ends ``forward_features`` with its final LayerNorm; a
classifier release normalises in its head, after pooling, so its features come before that norm.

Every entry of the list (any list format: ``path label``, ``path``, ``path start total``) is read as a test clip of
finetuning is (the release's frames, sampling rate, size and normalisation); ``--clips N --crops M`` average the
features over N temporal windows x M spatial crops (default 1 x 1: the centre window, the centre crop).

Output: ``features`` ``[entries, ...]`` float32, ``labels`` ``[entries]`` int64 when the list has labels, and in the
safetensors metadata the index ``paths`` (a JSON list: row i is the list's i-th entry), ``pool``, ``model`` and the
settings; :func:`load_features` reads it back.

Resumable: the entries are cut into chunks of ``--chunk-size``; each chunk is written atomically to ``OUT.parts/``
as soon as it is done, and a rerun skips every chunk already there (if its paths and settings match), so a killed
run goes on where it stopped; at the end the chunks are merged into ``OUT`` and the parts removed. Under torchrun,
rank r takes chunks r, r + W, r + 2W, ... of the W processes and rank 0 merges once all are done.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
from datetime import timedelta
from pathlib import Path
from typing import Callable, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lgiformer.data import (
    ListFormatError,
    VideoClassificationDataset,
    VideoReadError,
    read_video_list,
)
from lgiformer.models.release import load_release, read_release_config

log = logging.getLogger("lgiformer.extract")

POOLS = ("region", "local", "spatial", "tokens")
FORMAT = "lgiformer-features"
_DATASET_KEYS = ("num_frames", "sampling_rate", "img_size", "short_side_size", "mean", "std", "frame_ext",
                 "frame_template")


class ExtractError(ValueError):
    """Bad input to the extractor: names the file and what was expected."""


def pool_tokens(model: torch.nn.Module, tokens: torch.Tensor, pool: str) -> torch.Tensor:
    """``forward_features`` output ``[B, R + N, C]`` -> the ``pool`` features (module docstring)."""
    r = int(getattr(model, "num_prefix_tokens", 0))
    if pool == "region":
        if r == 0:
            raise ExtractError(f"--pool region needs an LGI-Former release (representative tokens); "
                               f"{getattr(model, 'model_name', type(model).__name__)} has none: use local, spatial "
                               "or tokens")
        return tokens[:, :r].mean(1)
    if pool == "local":
        return tokens[:, r:].mean(1)
    if pool == "spatial":
        return model.layout.time_average(tokens[:, r:])
    if pool == "tokens":
        return tokens
    raise ExtractError(f"--pool must be one of {', '.join(POOLS)}, got {pool!r}")


def read_entries(list_file: str | os.PathLike, data_root: str | os.PathLike | None = None):
    """``(samples, labeled)`` of a list in any format: labeled (``path label``) when its first entry has two fields."""
    path = Path(list_file)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such list file (expected 'path [label | start total]' lines)")
    first = next((line.split() for line in path.read_text().splitlines()
                  if line.strip() and not line.lstrip().startswith("#")), None)
    if first is None:
        raise ExtractError(f"{path}: the list holds no entries (expected 'path [label | start total]' lines)")
    labeled = len(first) == 2
    return read_video_list(path, data_root, labeled=labeled), labeled


class ViewsDataset(torch.utils.data.Dataset):
    """The finetuning test views ``[V, 3, T, H, W]`` of each entry, or for an unreadable entry the
    :class:`ExtractError` naming it, returned (not raised, so that it reaches the main process from a loader
    worker as it is) and raised there: an entry is never replaced by another one, as training data would be."""

    def __init__(self, samples, settings: dict) -> None:
        self.samples = samples
        self.views = VideoClassificationDataset(samples, mode="test", max_retries=0, **settings)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> torch.Tensor | ExtractError:
        try:
            views, _ = self.views.load(index, None)
        except (VideoReadError, OSError, ValueError) as err:
            s = self.samples[index]
            return ExtractError(f"{s.source}:{s.line}: {err} (expected a readable video file or frame folder)")
        return views


def dataset_settings(config: dict, clips: int, crops: int) -> dict:
    """Test-view settings of a release: its input size and frames, its finetuning data settings, ``clips x crops``."""
    args = config.get("model_args", {})
    settings = dict(num_frames=args.get("num_frames", 16), img_size=args.get("img_size", 160))
    settings.update({k: v for k, v in config.get("data", {}).items() if k in _DATASET_KEYS})
    settings.setdefault("mean", config.get("input", {}).get("mean"))
    settings.setdefault("std", config.get("input", {}).get("std"))
    settings = {k: v for k, v in settings.items() if v is not None}
    settings.update(test_num_clips=clips, test_num_crops=crops)
    return settings


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 23), b""):
            h.update(block)
    return h.hexdigest()


def run_key(release: Path, pool: str, settings: dict) -> str:
    """Identifies what the features are of: the release's weights and config, the pooling and the view settings."""
    parts = dict(weights=file_digest(release / "model.safetensors"), config=file_digest(release / "config.json"),
                 pool=pool, settings=settings)
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def _metadata(path: Path) -> dict:
    with safe_open(str(path), "pt") as f:
        return f.metadata() or {}


def _matches(path: Path, key: str, paths: Sequence[str]) -> bool:
    try:
        meta = _metadata(path)
    except Exception:  # a foreign or damaged file: recompute
        return False
    return meta.get("key") == key and json.loads(meta.get("paths", "null")) == list(paths)


def _save_atomic(tensors: dict, path: Path, metadata: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@torch.no_grad()
def encode(model: torch.nn.Module, views: torch.Tensor, pool: str, device: torch.device) -> torch.Tensor:
    """``[B, V, 3, T, H, W]`` -> the ``pool`` features averaged over the V views, float32 on the CPU."""
    b, v = views.shape[:2]
    feats = pool_tokens(model, model.forward_features(views.flatten(0, 1).to(device)), pool)
    return feats.float().view(b, v, *feats.shape[1:]).mean(1).cpu()


def extract(release: str | os.PathLike, list_file: str | os.PathLike, out: str | os.PathLike, pool: str = "region",
            *, data_root: str | os.PathLike | None = None, clips: int = 1, crops: int = 1, batch_size: int = 4,
            chunk_size: int = 64, workers: int = 0, device: str = "cpu", rank: int = 0, world_size: int = 1,
            barrier: Callable[[], None] = lambda: None, progress: bool = False, overwrite: bool = False) -> dict:
    """Write the features of ``list_file``'s entries to ``out`` (module docstring); returns a summary. With
    ``world_size`` > 1 every rank calls it with its ``rank`` and a ``barrier`` (the process group's)."""
    from tqdm.auto import tqdm

    if pool not in POOLS:
        raise ExtractError(f"--pool must be one of {', '.join(POOLS)}, got {pool!r}")
    if chunk_size < 1 or batch_size < 1 or clips < 1 or crops < 1:
        raise ExtractError("--chunk-size, --batch-size, --clips and --crops must be >= 1")
    release, out = Path(release), Path(out)
    config = read_release_config(release)
    if pool == "region" and not config["model_name"].startswith("lgiformer"):
        raise ExtractError(f"{release}: --pool region needs an LGI-Former release (representative tokens); "
                           f"{config['model_name']} has none: use local, spatial or tokens")
    samples, labeled = read_entries(list_file, data_root)
    paths = [s.path for s in samples]
    settings = dataset_settings(config, clips, crops)
    key = run_key(release, pool, settings)
    meta = dict(format=FORMAT, key=key, pool=pool, model=str(release), model_name=config["model_name"],
                settings=json.dumps(settings), paths=json.dumps(paths))
    summary = dict(out=str(out), entries=len(samples), pool=pool, model=str(release), chunks=0, computed=0,
                   reused=0)
    if out.exists() and not overwrite:
        if _matches(out, key, paths):
            with safe_open(str(out), "pt") as f:
                shape = f.get_slice("features").get_shape()
            return dict(summary, up_to_date=True, shape=list(shape))
        raise ExtractError(f"{out} exists and holds other features (another model, list or setting); pass "
                           "--overwrite to replace it")
    parts = out.with_name(out.name + ".parts")
    if overwrite and rank == 0 and out.exists():
        out.unlink()
    parts.mkdir(parents=True, exist_ok=True)
    chunks = [range(i, min(i + chunk_size, len(samples))) for i in range(0, len(samples), chunk_size)]
    mine = [c for c in range(len(chunks)) if c % world_size == rank]
    summary["chunks"] = len(chunks)

    model, views = None, ViewsDataset(samples, settings)
    bar = tqdm(total=sum(len(chunks[c]) for c in mine), desc=f"extract {pool}", unit="clip", disable=not progress,
               dynamic_ncols=True)
    try:
        for c in mine:
            target = parts / f"chunk-{c:06d}.safetensors"
            indices = chunks[c]
            if target.exists() and _matches(target, key, paths[indices.start:indices.stop]):
                summary["reused"] += 1
                bar.update(len(indices))
                continue
            if model is None:
                model = load_release(release).to(device).eval()
            loader = torch.utils.data.DataLoader(torch.utils.data.Subset(views, list(indices)),
                                                 batch_size=batch_size, num_workers=workers, collate_fn=list)
            feats = []
            for items in loader:
                errors = [x for x in items if isinstance(x, ExtractError)]
                if errors:
                    raise errors[0]
                feats.append(encode(model, torch.stack(items), pool, torch.device(device)))
                bar.update(len(items))
            tensors = dict(features=torch.cat(feats))
            if labeled:
                tensors["labels"] = torch.tensor([samples[i].label for i in indices], dtype=torch.int64)
            _save_atomic(tensors, target, dict(key=key, paths=json.dumps(paths[indices.start:indices.stop])))
            summary["computed"] += 1
    finally:
        bar.close()
    barrier()
    if rank == 0:
        merged: dict[str, list] = {}
        for c in range(len(chunks)):
            target = parts / f"chunk-{c:06d}.safetensors"
            if not _matches(target, key, paths[chunks[c].start:chunks[c].stop]):
                raise ExtractError(f"{target}: missing or from another run after all ranks finished")
            for name, tensor in load_file(str(target)).items():
                merged.setdefault(name, []).append(tensor)
        tensors = {name: torch.cat(items) for name, items in merged.items()}
        _save_atomic(tensors, out, meta)
        shutil.rmtree(parts, ignore_errors=True)
        summary["shape"] = list(tensors["features"].shape)
    barrier()
    return summary


def load_features(path: str | os.PathLike) -> dict:
    """An ``extract`` output: ``features``, ``paths`` (row order), ``labels`` (or None), ``pool`` and ``metadata``."""
    path = Path(path)
    meta = _metadata(path)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a features file of lgiformer.extract (format {meta.get('format')!r})")
    tensors = load_file(str(path))
    return dict(features=tensors["features"], labels=tensors.get("labels"), paths=json.loads(meta["paths"]),
                pool=meta["pool"], metadata=meta)


def _distributed() -> tuple[int, int, Callable[[], None]]:
    """(rank, world size, barrier) under torchrun (a gloo group, for the barrier only), else (0, 1, no-op)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, lambda: None
    import torch.distributed as dist

    if not dist.is_initialized():
        # generous: ranks wait here for the slowest one (e.g. resuming after only one rank was killed)
        dist.init_process_group("gloo", timeout=timedelta(hours=24))
    return dist.get_rank(), dist.get_world_size(), dist.barrier


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lgiformer.extract", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="release directory (encoder or finetuned)")
    parser.add_argument("--list", required=True, help="list file (path label | path | path start total)")
    parser.add_argument("--out", required=True, help="output .safetensors file")
    parser.add_argument("--pool", choices=POOLS, default="region", help="see the module docstring (default region)")
    parser.add_argument("--data-root", default=None, help="folder the list's relative paths are relative to")
    parser.add_argument("--clips", type=int, default=1, help="temporal windows averaged per entry (default 1)")
    parser.add_argument("--crops", type=int, default=1, help="spatial crops averaged per window (default 1)")
    parser.add_argument("--batch-size", type=int, default=4, help="entries per forward pass")
    parser.add_argument("--chunk-size", type=int, default=64, help="entries per resumable chunk")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers decoding videos")
    parser.add_argument("--device", default=None, help="default: this rank's GPU, else cpu")
    parser.add_argument("--overwrite", action="store_true", help="replace an OUT that holds other features")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        rank, world, barrier = _distributed()
        device = args.device or (f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available()
                                 else "cpu")
        summary = extract(args.model, args.list, args.out, args.pool, data_root=args.data_root, clips=args.clips,
                          crops=args.crops, batch_size=args.batch_size, chunk_size=args.chunk_size,
                          workers=args.workers, device=device, rank=rank, world_size=world, barrier=barrier,
                          progress=rank == 0 and sys.stderr.isatty(), overwrite=args.overwrite)
    except (FileNotFoundError, ValueError, ListFormatError) as err:
        print("error: " + " ".join(str(err).split()), file=sys.stderr)
        return 2
    if rank == 0:
        if args.json:
            print(json.dumps(summary, indent=1))
        else:
            state = "up to date" if summary.get("up_to_date") else (
                f"{summary['computed']} chunk(s) computed, {summary['reused']} reused")
            print(f"{summary['out']}: features {summary['shape']} ({summary['pool']}) of {summary['entries']} "
                  f"entries; {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
