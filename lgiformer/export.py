"""Export a finetuned release for deployment, as ONNX or TorchScript, checked against PyTorch.

    python -m lgiformer.export --model RELEASE --format onnx [--out model.onnx] [--clip VIDEO] [--json]
    python -m lgiformer.export --model RELEASE --format torchscript [--out model.pt]

The exported model maps normalised clips ``[B, 3, T, H, W]`` float32 (any batch size B) to logits ``[B, K]``. Beside
it, ``OUT.json`` says what is needed to use it without this package: the input's name, layout and shape, the
normalisation (``(rgb / 255 - mean) / std`` per channel), the class names in logit order, and the release's test
protocol (frames, sampling rate, short side, temporal clips x spatial crops, softmax averaged over the views).

Check: before anything is put in place, the exported model and the PyTorch model run on the test views of one clip
(``--clip VIDEO``, by default a synthetic face clip of :mod:`lgiformer.data.synthetic`), all views as one batch and
the first view alone, and their softmax probabilities must agree within ``--tolerance`` (1e-4). Otherwise the
command fails (exit 1) and writes nothing.

ONNX: the torch.export-based exporter (``torch.onnx.export(..., dynamo=True)``, which needs ``onnxscript``), opset
18, the batch axis dynamic, the weights inside the one file. The legacy TorchScript-based exporter is deprecated
since torch 2.9, and the graph it makes of the LGI-Former does not load in ONNX Runtime (a Transpose with a negative
permutation). The export is traced at batch size 2: torch.export specialises an example dimension of size 1.
TorchScript: ``torch.jit.trace``, deprecated in torch for torch.export but still the format libtorch (C++) loads; the
traced graph keeps the batch size dynamic, which the check confirms.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from lgiformer.data import TooManyBadSamples, Unreadable, VideoReadError
from lgiformer.data.faces import write_crops
from lgiformer.data.synthetic import Identity, render_clip
from lgiformer.models.release import read_release_config
from lgiformer.predict import build_views_dataset, load_model, read_release_info

log = logging.getLogger("lgiformer.export")

FORMATS = ("onnx", "torchscript")
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}
OPSET = 18
INSTALL_HINT = "pip install onnx onnxruntime onnxscript (or the project's extra: pip install -e '.[export]')"


class ExportCheckError(RuntimeError):
    """The exported model's probabilities differ from PyTorch's by more than the tolerance."""


def synthetic_clip(out_dir: str | os.PathLike, num_frames: int, size: int = 224, seed: int = 0) -> Path:
    """A frame folder of one synthetic face clip (a happy expression, face-crop framing): the default check clip."""
    rng = np.random.default_rng(seed)
    frames, _ = render_clip(Identity.sample(rng), "Happy", num_frames, size, rng, talking=False, zoom=1.6)
    return write_crops(frames, Path(out_dir) / "check_clip", "frames")


def check_views(release: str | os.PathLike, info: dict, clip: str | None, work_dir: str) -> torch.Tensor:
    """The release's test views ``[V, 3, T, H, W]`` of ``clip`` (or of :func:`synthetic_clip`)."""
    data, args = info["data"], info["config"].get("model_args", {})
    if clip is None:
        needed = args.get("num_frames", 16) * data.get("sampling_rate", 4)
        clip = str(synthetic_clip(work_dir, needed))
    item = build_views_dataset([clip], data, args, None, None)[0]
    if isinstance(item, Unreadable):
        raise VideoReadError(clip, item.reason)
    return item[0]


@contextlib.contextmanager
def torch_linear():
    """Trace with torch's own ``F.linear``. DeepSpeed ZeRO-3 replaces ``torch.nn.functional.linear`` for the rest of
    the process with a Python autograd function ("This will persist unless manually reset", it logs), which
    ``torch.jit`` cannot save: an export in a process that trained with ZeRO-3 would fail."""
    current = F.linear
    F.linear = torch._C._nn.linear
    try:
        yield
    finally:
        F.linear = current


def export_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path, opset: int = OPSET) -> None:
    try:
        import onnxscript  # noqa: F401  (the torch.export-based exporter needs it)
    except ImportError:
        raise ImportError(f"ONNX export needs onnxscript: {INSTALL_HINT}") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.onnx.export(model, (example,), str(path), dynamo=True, input_names=["clips"], output_names=["logits"],
                          dynamic_shapes=({0: torch.export.Dim("batch")},), opset_version=opset, verbose=False,
                          external_data=False)


def export_torchscript(model: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation of torch.jit, and the tracer's notes on shape-based branches
        traced = torch.jit.trace(model, example, check_trace=False)
    traced.save(str(path))


def exported_logits(fmt: str, path: Path, clips: torch.Tensor) -> torch.Tensor:
    """Logits of the exported file, loaded the way a deployment loads it (ONNX Runtime on the CPU, torch.jit.load)."""
    if fmt == "onnx":
        try:
            import onnxruntime as ort
        except ImportError:
            raise ImportError(f"checking the ONNX export needs onnxruntime: {INSTALL_HINT}") from None
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(["logits"], {"clips": clips.numpy()})[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return module(clips)


def sidecar(fmt: str, out: Path, info: dict, num_classes: int, check: dict, opset: int | None) -> dict:
    config, data = info["config"], info["data"]
    args = config.get("model_args", {})
    shape = [args.get("in_chans", 3), args.get("num_frames", 16), args.get("img_size", 160), args.get("img_size", 160)]
    mean = data.get("mean") or config.get("input", {}).get("mean")
    std = data.get("std") or config.get("input", {}).get("std")
    clips, crops = data.get("test_num_clips", 2), data.get("test_num_crops", 2)
    return dict(
        format=fmt, file=out.name, model_name=config.get("model_name"), source_release=str(info["release"]),
        input=dict(name="clips", dtype="float32", layout="B x C x T x H x W", shape=["batch", *shape],
                   color="RGB", normalisation="(pixel / 255 - mean) / std per channel", mean=mean, std=std),
        output=dict(name="logits", shape=["batch", num_classes],
                    postprocess="softmax over the classes, then the mean over a clip's views"),
        class_names=info["class_names"],
        sampling=dict(num_frames=shape[1], sampling_rate=data.get("sampling_rate", 4), test_num_clips=clips,
                      test_num_crops=crops, short_side_size=data.get("short_side_size"),
                      windows=f"{clips} evenly spaced windows of num_frames frames, sampling_rate apart",
                      crops=(f"resize the short side to short_side_size (or img_size when one crop, round(1.15 x "
                             f"img_size) for several), then {crops} img_size crops spread along the long side (the "
                             "diagonal of square frames)")),
        exporter=dict(torch=torch.__version__, opset=opset,
                      method="torch.onnx.export(dynamo=True)" if fmt == "onnx" else "torch.jit.trace"),
        check=check)


def default_out(release: str | os.PathLike, fmt: str) -> Path:
    """``RELEASE.onnx`` / ``RELEASE.pt`` beside the release directory (which stays as it was published)."""
    release = Path(release)
    return release.parent / (release.name + SUFFIX[fmt])


def export(release: str | os.PathLike, fmt: str = "onnx", out: str | os.PathLike | None = None,
           clip: str | None = None, tolerance: float = 1e-4, opset: int = OPSET) -> dict:
    """Export ``release`` to ``out`` (default: beside the release, ``RELEASE.onnx`` / ``RELEASE.pt``) with its
    ``OUT.json`` sidecar, after the check of the module docstring; returns the sidecar."""
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    release = Path(release)
    read_release_config(release)           # a release directory of the current format
    info = dict(read_release_info(release), release=release)   # refuses an encoder without a classifier head
    out = Path(out) if out else default_out(release, fmt)
    out.parent.mkdir(parents=True, exist_ok=True)
    if clip is not None and not Path(clip).exists():
        raise FileNotFoundError(f"{clip}: no such file or folder (--clip: a video file or a folder of frames)")
    model = load_model(release, "cpu")
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        views = check_views(release, info, clip, tmp)
        batches = dict(all_views=views, one_view=views[:1])
        # PyTorch's answers first, from the untouched model: this also fills the models' lazily computed token
        # permutations with real tensors; the exporter works on a copy (it would cache fake tensors there).
        with torch.no_grad():
            expected = {name: model(batch).softmax(-1) for name, batch in batches.items()}
        example = views[:1].repeat(2, 1, 1, 1, 1) if len(views) == 1 else views[:2]
        staged = Path(tmp) / out.name
        exported = copy.deepcopy(model)
        with torch_linear():
            if fmt == "onnx":
                export_onnx(exported, example, staged, opset)
            else:
                export_torchscript(exported, example, staged)
        diffs = {name: float((exported_logits(fmt, staged, batch).softmax(-1) - expected[name]).abs().max())
                 for name, batch in batches.items()}
        worst = max(diffs.values())
        check = dict(clip=str(clip) if clip else "synthetic face clip (lgiformer.data.synthetic, seed 0)",
                     views=len(views), max_abs_diff_probabilities=worst, per_batch=diffs, tolerance=tolerance,
                     passed=worst <= tolerance)
        if worst > tolerance:
            raise ExportCheckError(f"{out}: the {fmt} export's probabilities differ from PyTorch's by {worst:.2e} "
                                   f"(> {tolerance:.0e}) on {check['clip']}; nothing written")
        meta = sidecar(fmt, out, info, len(info["class_names"]), check, opset if fmt == "onnx" else None)
        meta_tmp = Path(tmp) / "sidecar.json"
        meta_tmp.write_text(json.dumps(meta, indent=1) + "\n")
        os.replace(staged, out)
        os.replace(meta_tmp, out.with_name(out.name + ".json"))
    return meta


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lgiformer.export", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="finetuned release directory (with a classifier head)")
    parser.add_argument("--format", choices=FORMATS, default="onnx")
    parser.add_argument("--out", default=None, help="output file (default: RELEASE.onnx / RELEASE.pt beside it)")
    parser.add_argument("--clip", default=None, help="check clip, a video or frame folder (default: synthetic)")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest probability difference allowed")
    parser.add_argument("--opset", type=int, default=OPSET, help="ONNX opset")
    parser.add_argument("--json", action="store_true", help="print the sidecar JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        meta = export(args.model, args.format, args.out, args.clip, args.tolerance, args.opset)
    except (FileNotFoundError, ValueError, ImportError, VideoReadError, TooManyBadSamples) as err:
        print("error: " + " ".join(str(err).split()), file=sys.stderr)
        return 2
    except ExportCheckError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    out = Path(args.out) if args.out else default_out(args.model, args.format)
    if args.json:
        print(json.dumps(meta, indent=1))
    else:
        print(f"{out} (+ {out.name}.json): {args.format}, check on {meta['check']['views']} views: max probability "
              f"difference {meta['check']['max_abs_diff_probabilities']:.1e} <= {args.tolerance:.0e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
