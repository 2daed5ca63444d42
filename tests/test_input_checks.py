"""Start-up checks of the inputs: every listed file exists, opens and is long enough for a clip; every problem is one
line naming the list, the line, the video and the reason, before anything is built or trained; the frame counts are
cached by size and modification time, so a second start-up reads no file."""
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _cli import run
from lgiformer.data import (AUVideo, InputCheckError, VideoReadError, VideoSample, check_inputs, open_video,
                            read_video_list)
from lgiformer.data import checks
from lgiformer.data.synthetic import generate

SYNTHETIC = "{size: 64, labeled_frames: 12, subjects: 5, clips_per_class_per_subject: 1, parts: labeled}"


@pytest.fixture(scope="module")
def labeled(tmp_path_factory):
    root = tmp_path_factory.mktemp("checks") / "data"
    generate(root, size=64, labeled_frames=12, subjects=5, clips_per_class_per_subject=1, parts="labeled",
             progress=False)
    return root


@pytest.fixture
def bad_train_list(labeled, tmp_path, media):
    """The fold's training list with three bad entries: a missing file (line 3), a 3-frame video (line 5) and a
    2-frame folder (last line), where clips need 4 frames."""
    media.mp4(tmp_path / "short.mp4", media.frames(3, 64))
    media.folder(tmp_path / "two", media.frames(2, 64), ext="jpg")
    lines = (labeled / "labeled" / "lists" / "train_fold1.txt").read_text().splitlines()
    lines.insert(2, f"{tmp_path / 'gone.mp4'} 1")
    lines.insert(4, f"{tmp_path / 'short.mp4'} 2")
    lines.append(f"{tmp_path / 'two'} 3")
    path = tmp_path / "train.txt"
    path.write_text("\n".join(lines) + "\n")
    return path, len(lines)


def _finetune(labeled, out, *extra, nproc=1):
    launcher = [] if nproc == 1 else ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return run([*launcher, "finetune/run.py", "--config", "tests/configs/tiny_finetune.yaml", "--run.output_dir", out,
                "--data.data_root", labeled, "--data.synthetic", SYNTHETIC, *extra], check=False)


@pytest.mark.parametrize("nproc", [1, 2])
def test_a_bad_training_list_stops_at_start_up_with_one_line_per_problem(labeled, bad_train_list, tmp_path, nproc):
    train, count = bad_train_list
    out = tmp_path / "run"
    proc = _finetune(labeled, out, "--data.train_list", train, nproc=nproc)
    assert not re.search(r'File ".*(lgiformer|finetune)/', proc.stderr) and "[rank0]" not in proc.stderr
    if nproc == 1:
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
    else:  # no process waits forever: they stop with exit 2 (torchrun may end the second one first when it sees the
        # first one's exit) and torchrun reports, with its own traceback, that they failed
        assert proc.returncode != 0 and "exitcode  : 2" in proc.stderr
    assert proc.stderr.count("finetune/run.py: error: 3 problem(s) in the") == 1  # rank 0's message, once
    expected = [f"  {train}:3: {tmp_path / 'gone.mp4'}: no such file or folder",
                f"  {train}:5: {tmp_path / 'short.mp4'}: too short: 3 frames, a clip needs 4",
                f"  {train}:{count}: {tmp_path / 'two'}: too short: 2 frames, a clip needs 4"]
    lines = proc.stderr.splitlines()
    start = lines.index(next(line for line in lines if "error: 3 problem(s)" in line))
    assert lines[start + 1:start + 4] == expected
    assert "--data.min_frames 1" in lines[start + 4]
    # nothing was built or trained
    assert not (out / "checkpoints").exists() and not (out / "log.jsonl").exists()
    assert not (out / "load_report.json").exists() and not (out / "release").exists()


def test_a_malformed_list_line_is_one_clean_message(labeled, tmp_path):
    bad = tmp_path / "train.txt"
    bad.write_text(f"{labeled / 'labeled' / 'frames' / '00000'} 0\n{labeled / 'labeled' / 'frames' / '00001'} happy\n")
    proc = _finetune(labeled, tmp_path / "run", "--data.train_list", bad)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{bad}:2: label 'happy' is not an integer" in proc.stderr
    proc = _finetune(labeled, tmp_path / "run2", "--data.train_list", tmp_path / "nope.txt")
    assert proc.returncode == 2 and f"finetune/run.py: error: {tmp_path / 'nope.txt'}: list file not found" in \
        proc.stderr.splitlines()


def _counting(monkeypatch):
    opened = []
    real = checks.count_frames

    def counted(path, **kwargs):
        opened.append(Path(path).name)
        return real(path, **kwargs)

    monkeypatch.setattr(checks, "count_frames", counted)
    return opened


def test_frame_counts_are_cached_by_size_and_mtime(tmp_path, media, monkeypatch):
    media.mp4(tmp_path / "v.mp4", media.frames(12, 32))
    media.folder(tmp_path / "f", media.frames(6, 32), ext="jpg")
    media.folder(tmp_path / "g", media.frames(8, 32), ext="jpg")
    lst = tmp_path / "lists" / "train.txt"
    lst.parent.mkdir()
    lst.write_text("../v.mp4 0\n../f 1\n../g 2\n../v.mp4 3\n")
    samples = read_video_list(lst, lst.parent, check_files=False)
    opened = _counting(monkeypatch)
    report = check_inputs(samples, min_frames=4)
    assert sorted(opened) == ["f", "g", "v.mp4"] and (report.checked, report.files, report.read) == (4, 3, 3)
    cache_files = list((lst.parent / checks.CACHE_DIR).iterdir())
    assert len(cache_files) == 1 and cache_files[0].name.startswith("train.txt.")

    opened.clear()
    assert check_inputs(samples, min_frames=4).read == 0 and opened == []      # the second start-up reads nothing
    with pytest.raises(InputCheckError, match="too short: 6 frames, a clip needs 7"):
        check_inputs(samples, min_frames=7)                                     # cached counts still judged anew
    assert opened == []

    os.utime(tmp_path / "g", ns=(1, 1))                                         # a changed folder is read again
    media.folder(tmp_path / "f", media.frames(2, 32, seed=3), ext="jpg")        # rewritten (same 6 frames remain)
    os.utime(tmp_path / "f", ns=(2, 2))
    check_inputs(samples, min_frames=4)
    assert sorted(opened) == ["f", "g"]


def test_the_cache_goes_to_the_run_folder_when_the_lists_folder_is_unusable(tmp_path, media, monkeypatch):
    media.folder(tmp_path / "f", media.frames(6, 32), ext="jpg")
    (tmp_path / "train.txt").write_text("f 0\n")
    (tmp_path / checks.CACHE_DIR).write_text("a file where the cache folder would go")
    samples = read_video_list(tmp_path / "train.txt", tmp_path, check_files=False)
    opened = _counting(monkeypatch)
    check_inputs(samples, min_frames=4, cache_dir=tmp_path / "run" / "input_cache")
    assert opened == ["f"] and len(list((tmp_path / "run" / "input_cache").iterdir())) == 1
    check_inputs(samples, min_frames=4, cache_dir=tmp_path / "run" / "input_cache")
    assert opened == ["f"]


def test_pretraining_and_au_entries_need_their_frames(tmp_path, media):
    media.mp4(tmp_path / "v.mp4", media.frames(10, 32))
    media.folder(tmp_path / "f", media.frames(5, 32), ext="jpg")
    src = str(tmp_path / "list.txt")
    samples = [VideoSample(str(tmp_path / "v.mp4"), start=2, total=8, source=src, line=1),     # fits exactly
               VideoSample(str(tmp_path / "v.mp4"), start=4, total=8, source=src, line=2),     # 12 > 10 frames
               VideoSample(str(tmp_path / "v.mp4"), start=8, source=src, line=3),              # 2 left
               VideoSample(str(tmp_path / "f"), source=src, line=4)]
    with pytest.raises(InputCheckError) as err:
        check_inputs(samples, min_frames=4)
    assert [(p.line, p.reason.split(": ", 1)[1]) for p in err.value.problems] == [
        (2, "start 4 + total 8 > the 10 frames of the video"), (3, "too short: 2 frames from frame 8, a clip needs 4")]
    labels = np.zeros((5, 2), np.float32)
    au = [AUVideo(str(tmp_path / "f"), np.arange(5), labels, labels > -1, "s", src, 5),
          AUVideo(str(tmp_path / "f"), np.array([0, 5]), labels[:2], labels[:2] > -1, "s", src, 6)]
    with pytest.raises(InputCheckError) as err:
        check_inputs(au, min_frames=3)
    assert [(p.line, p.reason.split(": ", 1)[1]) for p in err.value.problems] == [
        (6, "frame 5 is labelled but the video holds 5 frames")]
    check_inputs(samples[:1] + samples[3:], min_frames=1)                      # min_frames 1: short videos accepted


def test_greyscale_frames_become_rgb_and_16_bit_frames_are_refused(tmp_path):
    grey = np.random.default_rng(0).integers(0, 256, (3, 24, 24), dtype=np.uint8)
    (tmp_path / "grey").mkdir()
    for i, g in enumerate(grey, start=1):
        Image.fromarray(g).save(tmp_path / "grey" / f"{i}.png")
    frames = open_video(tmp_path / "grey").get([0, 2])
    assert frames.shape == (2, 24, 24, 3) and all(np.array_equal(frames[..., c], grey[[0, 2]]) for c in range(3))
    (tmp_path / "deep").mkdir()
    for i in range(1, 4):
        Image.fromarray(grey[0].astype(np.uint16) * 257).save(tmp_path / "deep" / f"{i}.png")
    with pytest.raises(VideoReadError, match="16-bit"):
        open_video(tmp_path / "deep").get([0])
    src = str(tmp_path / "list.txt")
    with pytest.raises(InputCheckError, match=r"list.txt:2: .*deep/1.png: I;16 frames \(16-bit or float\) are not"):
        check_inputs([VideoSample(str(tmp_path / "grey"), source=src, line=1),
                      VideoSample(str(tmp_path / "deep"), source=src, line=2)], min_frames=3)


def test_unreadable_files_are_named_with_every_readers_reason(tmp_path):
    (tmp_path / "zero.mp4").write_bytes(b"")
    (tmp_path / "notes.mp4").write_text("not a video\n")
    src = str(tmp_path / "list.txt")
    samples = [VideoSample(str(tmp_path / name), source=src, line=i) for i, name in enumerate(["zero.mp4", "notes.mp4"],
                                                                                            start=1)]
    with pytest.raises(InputCheckError) as err:
        check_inputs(samples, min_frames=1)
    assert [str(p) for p in err.value.problems] == [
        f"{src}:1: {tmp_path / 'zero.mp4'}: empty file (0 bytes)",
        f"{src}:2: {tmp_path / 'notes.mp4'}: not a video PyAV can open (Invalid data found when processing input)"]
    with pytest.raises(InputCheckError, match=r"\.\.\. and 10 more"):  # a long list of problems is capped
        check_inputs(samples * 30, min_frames=1)
