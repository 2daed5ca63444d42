"""Start-up input check (lgiformer.data.checks): its cost per listed file, first and with the cache.

    python benchmarks/input_check.py --files 2000 --json

Writes ``--files`` copies of one mp4 (160 px, 64 frames) and as many frame folders (16 jpg frames) under a temporary
folder, lists them, and times, side by side in one process:
1. the first check (every file opened: PyAV header for videos, listing + first frame header for folders);
2. the second check (counts from the cache: a ``stat`` per file);
3. for comparison, counting the same files by opening them with the training readers (``len(open_video(path))``:
   decord builds its frame index).
Prints milliseconds per file and the ratios; ``--json`` prints them as JSON. The files are in the page cache, so
these are CPU costs; on a network file system every open costs a round trip more.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import av  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from lgiformer.data import check_inputs, open_video, read_video_list  # noqa: E402


def write_inputs(root: Path, files: int) -> Path:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (64, 160, 160, 3), dtype=np.uint8)
    first = root / "v0.mp4"
    with av.open(str(first), "w") as out:
        stream = out.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=25)
        stream.width = stream.height = 160
        stream.pix_fmt = "yuv420p"
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    folder = root / "f0"
    folder.mkdir()
    for i, f in enumerate(frames[:16], start=1):
        Image.fromarray(f).save(folder / f"{i}.jpg", quality=90)
    for k in range(1, files):
        shutil.copyfile(first, root / f"v{k}.mp4")
        shutil.copytree(folder, root / f"f{k}")
    lst = root / "list.txt"
    lst.write_text("".join(f"v{k}.mp4 0\nf{k} 1\n" for k in range(files)))
    return lst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=2000, help="videos, and as many frame folders")
    parser.add_argument("--workers", type=int, default=None, help="threads of the check (default: its own)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        samples = read_video_list(write_inputs(root, args.files), root, check_files=False)
        n = len(samples)
        times = {}
        for name in ("first", "cached"):
            start = time.perf_counter()
            report = check_inputs(samples, min_frames=16, workers=args.workers)
            times[name] = time.perf_counter() - start
            assert report.read == (n if name == "first" else 0)
        start = time.perf_counter()
        for s in samples:
            len(open_video(s.path))
        times["reader_count_1_thread"] = time.perf_counter() - start
    result = dict(files=n, **{f"{k}_ms_per_file": 1000 * v / n for k, v in times.items()},
                  first_over_cached=times["first"] / times["cached"])
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for k, v in result.items():
            print(f"{k:>34s}: {v:.3f}" if isinstance(v, float) else f"{k:>34s}: {v}")


if __name__ == "__main__":
    main()
