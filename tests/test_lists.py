"""List files: the reference format, the pretraining format, the AU CSV, and a validator that reports every bad
line with its file and line number."""
import numpy as np
import pytest

from lgiformer.data.lists import ListFormatError, VideoSample, read_au_csv, read_video_list


def _folder(path, n):
    path.mkdir(parents=True)
    for i in range(1, n + 1):
        (path / f"{i}.jpg").write_bytes(b"")        # only counted here, never decoded
    return path


def test_reference_format_resolves_paths_and_counts_frames(tmp_path):
    _folder(tmp_path / "clips" / "00001", 5)
    _folder(tmp_path / "clips" / "00002", 3)
    (tmp_path / "v.mp4").write_bytes(b"x")
    lst = tmp_path / "train.txt"
    lst.write_text("# comment\nclips/00001 3\n\nclips/00002 0\nv.mp4 6\n")
    samples = read_video_list(lst, tmp_path, num_classes=7)
    assert [s.label for s in samples] == [3, 0, 6]
    assert samples[0] == VideoSample(str(tmp_path / "clips" / "00001"), 3, 0, 5, str(lst), 2)
    assert samples[1].total == 3 and samples[1].line == 4
    assert samples[2].total is None                   # a video file's length is not probed at start-up
    absolute = tmp_path / "abs.txt"
    absolute.write_text(f"{tmp_path / 'v.mp4'} 1\n")
    assert read_video_list(absolute, "/elsewhere")[0].path == str(tmp_path / "v.mp4")


def test_validator_names_file_and_line_of_every_bad_line(tmp_path):
    _folder(tmp_path / "ok", 16)
    _folder(tmp_path / "short", 2)
    lst = tmp_path / "bad.txt"
    lst.write_text("\n".join([
        "ok 1",                 # 1 fine
        "ok",                   # 2 one field
        "ok 1 2",               # 3 three fields
        "ok happy",             # 4 label not an integer
        "ok 7",                 # 5 out of range for 7 classes
        "ok -1",                # 6 negative
        "missing 2",            # 7 no such folder
        "short 2",              # 8 too few frames
        "ok 6",                 # 9 fine
    ]) + "\n")
    with pytest.raises(ListFormatError) as err:
        read_video_list(lst, tmp_path, num_classes=7, min_frames=4)
    message = str(err.value)
    assert [line for line, _ in err.value.problems] == [2, 3, 4, 5, 6, 7, 8]
    for line in (2, 3, 4, 5, 6, 7, 8):
        assert f"{lst}:{line}:" in message
    for reason in ("2 fields", "not an integer", "out of range", "missing file or folder", "too few frames"):
        assert reason in message
    assert f"{lst}:1:" not in message and f"{lst}:9:" not in message
    assert "7 bad line(s)" in message


def test_empty_and_missing_lists_are_errors(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    with pytest.raises(ListFormatError, match="no samples"):
        read_video_list(empty)
    with pytest.raises(ListFormatError, match="nope.txt: list file not found"):
        read_video_list(tmp_path / "nope.txt")


def test_pretraining_format(tmp_path):
    _folder(tmp_path / "f", 10)
    (tmp_path / "a.mp4").write_bytes(b"x")
    lst = tmp_path / "pretrain.txt"
    lst.write_text("a.mp4\na.mp4 4 40\nf\nf 2 8\n")
    samples = read_video_list(lst, tmp_path, labeled=False)
    assert [(s.start, s.total, s.label) for s in samples] == [(0, None, -1), (4, 40, -1), (0, 10, -1), (2, 8, -1)]
    bad = tmp_path / "bad.txt"
    bad.write_text("a.mp4 4\na.mp4 x 40\na.mp4 -1 3\nf 5 8\nf 0 10\nmissing.mp4\n")
    with pytest.raises(ListFormatError) as err:
        read_video_list(bad, tmp_path, labeled=False, min_frames=16)
    assert [line for line, _ in err.value.problems] == [1, 2, 3, 4, 5, 6]
    assert "start 5 + total 8 > 10" in str(err.value) and "too few frames: 10 < 16" in str(err.value)
    # no file checks: paths are taken as written (the dataset replaces a missing one when it reads it)
    assert len(read_video_list(bad.parent / "pretrain.txt", "/nowhere", labeled=False, check_files=False)) == 4


def _au_csv(path, rows, header="path,frame,subject,AU1,AU2,AU4"):
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def test_au_csv_groups_frames_and_masks_unannotated(tmp_path):
    _folder(tmp_path / "v1", 4)
    _folder(tmp_path / "v2", 2)
    csv = _au_csv(tmp_path / "au.csv", ["v1,2,S1,1,0,9", "v1,0,S1,0,1,0", "v2,1,S2,-1,1,1", "v1,1,S1,1,1,1",
                                        "v2,0,S2,0,0,0"])
    videos, names = read_au_csv(csv, tmp_path)
    assert names == ["AU1", "AU2", "AU4"] and [v.subject for v in videos] == ["S1", "S2"]
    v1 = videos[0]
    assert v1.path == str(tmp_path / "v1") and v1.frames.tolist() == [0, 1, 2]          # sorted by frame
    np.testing.assert_array_equal(v1.labels, [[0, 1, 0], [1, 1, 1], [1, 0, 0]])
    np.testing.assert_array_equal(v1.valid, [[1, 1, 1], [1, 1, 1], [1, 1, 0]])          # 9 -> not annotated
    assert v1.labels.dtype == np.float32 and v1.valid.dtype == bool
    assert not videos[1].valid[1, 0] and videos[1].labels[1, 0] == 0                    # -1 -> not annotated
    picked, names = read_au_csv(csv, tmp_path, au_names=["AU4", "AU1"])
    assert names == ["AU4", "AU1"]
    np.testing.assert_array_equal(picked[0].labels[:, 1], v1.labels[:, 0])


def test_au_csv_intensities_are_thresholded(tmp_path):
    _folder(tmp_path / "v", 3)
    csv = _au_csv(tmp_path / "int.csv", ["v,0,S,0,3,9", "v,1,S,2,1,5", "v,2,S,5,0,1"])
    videos, _ = read_au_csv(csv, tmp_path, intensity_threshold=2)
    np.testing.assert_array_equal(videos[0].labels, [[0, 1, 0], [1, 0, 1], [1, 0, 0]])
    assert not videos[0].valid[0, 2]
    with pytest.raises(ListFormatError, match="0, 1 or 9"):
        read_au_csv(csv, tmp_path)                                      # intensities without a threshold


def test_au_csv_errors_name_lines(tmp_path):
    _folder(tmp_path / "v", 2)
    csv = _au_csv(tmp_path / "bad.csv", ["v,0,S,0,1,0", "v,1,S,0,1", "missing,0,S,0,0,0", "w,x,S,0,0,0",
                                         "v,5,S,0,0,0"])
    with pytest.raises(ListFormatError) as err:
        read_au_csv(csv, tmp_path)
    by_line = {line: reason for line, reason in err.value.problems}
    assert sorted(by_line) == [3, 4, 5, 6]
    for line, reason in ((3, "expected 6 fields"), (4, "missing file or folder"), (5, "must be numbers"),
                         (6, "holds 2 frames")):
        assert reason in by_line[line] and f"{csv}:{line}: {by_line[line]}" in str(err.value)
    with pytest.raises(ListFormatError, match=":1: expected the header"):
        read_au_csv(_au_csv(tmp_path / "nohead.csv", ["v,0,S,1"], header="video,frame,AU1"), tmp_path)
    with pytest.raises(ListFormatError, match="AU12"):
        read_au_csv(csv, tmp_path, au_names=["AU12"])
