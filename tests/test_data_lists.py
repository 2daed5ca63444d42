"""data_lists: every builder on a small fake tree in the official release layout of its dataset."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from data_lists import bp4d, dfew, disfa, ferv39k, mafw, voxceleb2
from data_lists.__main__ import BUILDERS, main
from data_lists.common import (BuildOptions, ListBuildError, frame_index_by_number, list_frames, list_path,
                               natural_key, subject_folds)


# ----------------------------------------------------------------------------------------------- fake trees
def frames(folder: Path, n: int, ext: str = "jpg", names=None) -> Path:
    """A frame folder of ``n`` (empty) images named 1..n, or the given names."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names or [f"{i}.{ext}" for i in range(1, n + 1)]:
        (folder / name).write_bytes(b"")
    return folder


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def opts(root: Path, out: Path, **kw) -> BuildOptions:
    return BuildOptions(root=root, out=out, **kw)


def mp4(path: Path, n: int) -> Path:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=25)
        s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
        for i in range(n):
            for p in s.encode(av.VideoFrame.from_ndarray(np.full((32, 32, 3), 20 * i, np.uint8), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


# ----------------------------------------------------------------------------------------------- common
def test_natural_order_matches_training_reader(tmp_path):
    from lgiformer.data.readers import list_frames as reader_frames

    folder = frames(tmp_path / "v", 0, names=["10.jpg", "9.jpg", "1.jpg", "100.png", "note.txt", "2.JPG"])
    assert [p.name for p in list_frames(folder)] == ["1.jpg", "2.JPG", "9.jpg", "10.jpg", "100.png"]
    assert [p.name for p in list_frames(folder)] == [p.name for p in reader_frames(folder)]
    assert frame_index_by_number(folder) == {1: 0, 2: 1, 9: 2, 10: 3, 100: 4}
    assert sorted(["a10", "a9", "A1"], key=natural_key) == ["A1", "a9", "a10"]


def test_paths_with_spaces_and_outside_root_are_refused(tmp_path):
    root = tmp_path / "root"
    with pytest.raises(ListBuildError, match="whitespace"):
        list_path(root / "my clip", opts(root, tmp_path))
    with pytest.raises(ListBuildError, match="--absolute"):
        list_path(tmp_path / "elsewhere", opts(root, tmp_path))
    assert list_path(tmp_path / "elsewhere", opts(root, tmp_path, absolute=True)).startswith("/")


def test_subject_folds_are_exclusive_and_cover_everyone():
    folds = subject_folds(["S3", "S1", "S2", "S10", "S4"], num_folds=3)
    assert folds == [["S1", "S4"], ["S2", "S10"], ["S3"]]
    with pytest.raises(ListBuildError, match="no fold"):
        subject_folds(["X9"], parts=[["S1"], ["S2"]])
    with pytest.raises(ListBuildError, match="no test subject"):
        subject_folds(["S1"], parts=[["S1"], ["S2"]])


def test_published_au_folds_cover_all_subjects_once():
    bp4d_subjects = [s for part in bp4d.PARTS for s in part]
    expected = {f"F{i:03d}" for i in range(1, 24)} | {f"M{i:03d}" for i in range(1, 19)}
    assert len(bp4d_subjects) == 41 and set(bp4d_subjects) == expected
    disfa_subjects = [s for part in disfa.PARTS for s in part]
    absent = {14, 15, 19, 20, 22}
    assert len(disfa_subjects) == 27 and set(disfa_subjects) == {f"SN{i:03d}" for i in range(1, 33) if i not in absent}


# ----------------------------------------------------------------------------------------------- VoxCeleb2
def voxceleb2_tree(root: Path) -> None:
    mp4(root / "dev/mp4/id00012/abcDEF/00001.mp4", 5)
    mp4(root / "dev/mp4/id00012/abcDEF/00010.mp4", 3)
    mp4(root / "dev/mp4/id00002/zz_9-x/00002.mp4", 4)
    write(root / "dev/mp4/id00002/zz_9-x/00003.mp4", "not a video")


def test_voxceleb2(tmp_path):
    root, out = tmp_path / "VoxCeleb2", tmp_path / "lists"
    voxceleb2_tree(root)
    report = voxceleb2.build(opts(root, out, workers=2))
    assert lines(out / "pretrain.txt") == ["dev/mp4/id00002/zz_9-x/00002.mp4 0 4",
                                           "dev/mp4/id00012/abcDEF/00001.mp4 0 5",
                                           "dev/mp4/id00012/abcDEF/00010.mp4 0 3"]
    assert report.skipped == {"unreadable video": 1}
    with pytest.raises(ListBuildError, match="unreadable video"):
        voxceleb2.build(opts(root, out, strict=True))

    exclude = write(tmp_path / "broken.txt", "# known broken\n/other/machine/dev/mp4/id00002/zz_9-x/00003.mp4\n"
                                             "/x/dev/mp4/id00012/abcDEF/00010.mp4\n/x/id09999/v/00001.mp4\n")
    report = voxceleb2.build(opts(root, out, probe=False, exclude=exclude))
    assert lines(out / "pretrain.txt") == ["dev/mp4/id00002/zz_9-x/00002.mp4", "dev/mp4/id00012/abcDEF/00001.mp4"]
    assert report.skipped == {"excluded (--exclude)": 2, "--exclude entries not found": 1}


# ----------------------------------------------------------------------------------------------- DFEW
def dfew_tree(root: Path, clips: int = 10) -> None:
    for v in range(1, clips + 1):
        frames(root / "Clip/clip_224x224" / f"{v:05d}", 3)
    for k in range(1, 6):
        test = [v for v in range(1, clips + 1) if v % 5 == k - 1]
        train = [v for v in range(1, clips + 1) if v % 5 != k - 1]
        for split, vids in (("train", train), ("test", test)):
            rows = "".join(f"{v},{(v - 1) % 7 + 1}\n" for v in vids)
            path = root / "EmoLabel_DataSplit" / f"{split}(single-labeled)" / f"set_{k}.csv"
            write(path, "video_name,label\n" + rows)


def test_dfew(tmp_path):
    root, out = tmp_path / "DFEW", tmp_path / "lists"
    dfew_tree(root)
    report = dfew.build(opts(root, out))
    assert lines(out / "classes.txt") == list(dfew.CLASSES)
    for k in range(1, 6):
        train, test = lines(out / f"train_fold{k}.txt"), lines(out / f"test_fold{k}.txt")
        assert (len(train), len(test)) == (8, 2)
        assert not {t.split()[0] for t in train} & {t.split()[0] for t in test}
    assert "Clip/clip_224x224/00001 0" in lines(out / "test_fold2.txt")            # label 1 (Happy) -> 0
    assert "Clip/clip_224x224/00007 6" in lines(out / "train_fold1.txt")            # label 7 (Fear) -> 6
    assert report.outputs["train_fold1.txt"] == 8 and not report.skipped

    from lgiformer.data.lists import read_video_list                               # the training-time reader agrees
    samples = read_video_list(out / "train_fold1.txt", root, num_classes=7)
    assert len(samples) == 8 and samples[0].total == 3


def test_dfew_errors_and_missing_frames(tmp_path):
    root, out = tmp_path / "DFEW", tmp_path / "lists"
    dfew_tree(root)
    for f in (root / "Clip/clip_224x224/00003").iterdir():                       # an empty frame folder
        f.unlink()
    report = dfew.build(opts(root, out))
    assert report.skipped == {"missing or empty frame folder": 5}                   # once per fold
    with pytest.raises(ListBuildError, match=r"set_1\.csv:\d+: missing or empty frame folder"):
        dfew.build(opts(root, out, strict=True))
    bad = root / "EmoLabel_DataSplit/test(single-labeled)/set_2.csv"
    write(bad, "video_name,label\n1,1\n2,8\n")
    with pytest.raises(ListBuildError, match=r"set_2\.csv:3: expected label \(1\.\.7\) in \[1, 7\], got 8"):
        dfew.build(opts(root, out))
    write(bad, "video_name,label\n1,1\n2,2\n")                                     # clip 2 also in train of fold 2
    with pytest.raises(ListBuildError, match="both train and test"):
        dfew.build(opts(root, out))


# ----------------------------------------------------------------------------------------------- FERV39k
def ferv39k_tree(root: Path) -> None:
    train = ["Action/ActionScene/0001 Happy", "Daily/Home/0002 Angry", "Action/ActionScene/0003 Surprise"]
    test = ["Crime/Street/0004 Fear", "Daily/Home/0005 neutral"]
    for line in train + test:
        frames(root / "2_ClipsforFaceCrop" / line.split()[0], 2)
    write(root / "4_setups/All_scenes/train_All.csv", "\n".join(train) + "\n")
    write(root / "4_setups/All_scenes/test_All.csv", "\n".join(test) + "\n")


def test_ferv39k(tmp_path):
    root, out = tmp_path / "FERV39k", tmp_path / "lists"
    ferv39k_tree(root)
    ferv39k.build(opts(root, out))
    assert lines(out / "train.txt") == ["2_ClipsforFaceCrop/Action/ActionScene/0001 3",
                                        "2_ClipsforFaceCrop/Daily/Home/0002 0",
                                        "2_ClipsforFaceCrop/Action/ActionScene/0003 6"]
    assert lines(out / "test.txt") == ["2_ClipsforFaceCrop/Crime/Street/0004 2", "2_ClipsforFaceCrop/Daily/Home/0005 4"]
    assert lines(out / "classes.txt") == ["Angry", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise"]
    ferv39k.build(opts(root, out, class_order="mae-dfer", absolute=True))
    assert lines(out / "train.txt")[0] == f"{root}/2_ClipsforFaceCrop/Action/ActionScene/0001 0"
    assert lines(out / "classes.txt")[0] == "Happy"
    write(root / "4_setups/All_scenes/test_All.csv", "Crime/Street/0004 Fear\nDaily/Home/0005 Bored\n")
    with pytest.raises(ListBuildError, match=r"test_All\.csv:2: unknown label 'Bored'"):
        ferv39k.build(opts(root, out))
    write(root / "4_setups/All_scenes/test_All.csv", "Daily/Home/0002 Angry\n")      # a train clip
    with pytest.raises(ListBuildError, match="both train and test"):
        ferv39k.build(opts(root, out))


# ----------------------------------------------------------------------------------------------- MAFW
def test_mafw(tmp_path):
    root, out = tmp_path / "MAFW", tmp_path / "lists"
    for c in range(1, 12):
        frames(root / "data/frames" / f"{c:05d}", 4, ext="png")
    for k in range(1, 6):
        split = root / "Train & Test Set/single/no_caption" / f"set_{k}"
        test = [c for c in range(1, 12) if c % 5 == k - 1]
        train = [c for c in range(1, 12) if c not in test]
        write(split / "train.txt", "".join(f"{c:05d}.mp4 {mafw.CLASSES[c - 1]}\n" for c in train))
        write(split / "test.txt", "".join(f"{c:05d}.mp4 {mafw.CLASSES[c - 1]}\n" for c in test))
    mafw.build(opts(root, out))
    assert len(lines(out / "classes.txt")) == 11
    total = set()
    for k in range(1, 6):
        train, test = lines(out / f"train_fold{k}.txt"), lines(out / f"test_fold{k}.txt")
        assert len(train) + len(test) == 11 and not set(train) & set(test)
        total |= set(test)
    assert len(total) == 11                                                       # every clip tested once
    assert "data/frames/00011 10" in total                                        # disappointment -> 10
    write(root / "Train & Test Set/single/no_caption/set_3/test.txt", "00003.mp4\n")
    with pytest.raises(ListBuildError, match=r"set_3/test\.txt:1: expected '<clip>\.mp4 <label name>'"):
        mafw.build(opts(root, out))


# ----------------------------------------------------------------------------------------------- BP4D
BP4D_SUBJECTS = ("F001", "M011", "F007", "M007")          # parts 1, 2, 3, 1


def bp4d_tree(root: Path) -> None:
    header = ",".join(str(c) for c in range(0, 28))     # frame column "0", then AU 1..27
    for s, subject in enumerate(BP4D_SUBJECTS):
        for task in ("T1", "T8"):
            frames(root / "BP4D-training" / subject / task, 0, names=[f"{f:04d}.jpg" for f in range(10, 14)])
            rows = []
            for f in range(10, 15):                      # frame 14 has no image
                values = [(f + a + s) % 2 for a in range(1, 28)]
                values[0] = 9 if f == 11 else values[0]   # AU1 unknown on frame 11
                rows.append(",".join(map(str, [f, *values])))
            write(root / "AUCoding/AU_OCC" / f"{subject}_{task}.csv", header + "\n" + "\n".join(rows) + "\n")


def test_bp4d(tmp_path):
    root, out = tmp_path / "BP4D", tmp_path / "lists"
    bp4d_tree(root)
    report = bp4d.build(opts(root, out))
    assert report.skipped == {"labelled frame without image": 8}
    rows = read_csv(out / "test_fold1.csv")                                       # fold 1 tests part 3
    assert list(rows[0]) == ["path", "frame", "subject", *(f"AU{a}" for a in bp4d.AUS)]
    assert {r["subject"] for r in rows} == {"F007"}
    assert [r["frame"] for r in rows[:4]] == ["0", "1", "2", "3"]                 # 0010.jpg is frame 0
    assert rows[0]["path"] == "BP4D-training/F007/T1" and rows[1]["AU1"] == "9"
    assert rows[0]["AU2"] == str((10 + 2 + 2) % 2)
    for k in range(1, 4):
        train = {r["subject"] for r in read_csv(out / f"train_fold{k}.csv")}
        test = {r["subject"] for r in read_csv(out / f"test_fold{k}.csv")}
        assert not train & test and train | test == set(BP4D_SUBJECTS)
    assert {r["subject"] for r in read_csv(out / "test_fold3.csv")} == {"F001", "M007"}

    from lgiformer.data.lists import read_au_csv
    videos, names = read_au_csv(out / "train_fold1.csv", root)
    assert len(videos) == 6 and names[0] == "AU1"
    assert not videos[0].valid[1, 0] and videos[0].valid[0, 0]                   # 9 -> not annotated


def test_bp4d_errors(tmp_path):
    root, out = tmp_path / "BP4D", tmp_path / "lists"
    bp4d_tree(root)
    with pytest.raises(ListBuildError, match="labelled frame without image"):
        bp4d.build(opts(root, out, strict=True))
    path = root / "AUCoding/AU_OCC/F001_T1.csv"
    text = path.read_text().splitlines()
    text[2] = text[2][:3] + "7" + text[2][4:]                                     # AU1 code 7 on line 3
    write(path, "\n".join(text) + "\n")
    with pytest.raises(ListBuildError, match=r"F001_T1\.csv:3: expected AU codes 0, 1 or 9"):
        bp4d.build(opts(root, out))
    write(path, "0,1,2\n10,0,0\n")
    with pytest.raises(ListBuildError, match=r"F001_T1\.csv:1: .*missing \[4, 6"):
        bp4d.build(opts(root, out))


# ----------------------------------------------------------------------------------------------- DISFA
DISFA_SUBJECTS = ("SN001", "SN013", "SN003")              # parts 1, 2, 3


def disfa_tree(root: Path) -> None:
    for s, subject in enumerate(DISFA_SUBJECTS):
        frames(root / "frames" / subject, 6)
        for a in disfa.AUS:
            frames_of_au = range(1, 7) if a != 26 else range(1, 6)               # AU26 misses frame 6
            rows = "".join(f"{f},{(f + s) % 6}\n" for f in frames_of_au)
            write(root / "ActionUnit_Labels" / subject / f"{subject}_au{a}.txt", rows)


def test_disfa(tmp_path):
    root, out = tmp_path / "DISFA", tmp_path / "lists"
    disfa_tree(root)
    report = disfa.build(opts(root, out))
    assert not report.skipped
    rows = read_csv(out / "test_fold3.csv")                                       # fold 3 tests part 1
    assert {r["subject"] for r in rows} == {"SN001"} and len(rows) == 6
    intensities = [(f + 0) % 6 for f in range(1, 7)]                              # 1, 2, 3, 4, 5, 0
    assert [r["AU1"] for r in rows] == [str(int(i >= 2)) for i in intensities] == ["0", "1", "1", "1", "1", "0"]
    assert rows[5]["AU26"] == "9" and rows[0]["frame"] == "0" and rows[0]["path"] == "frames/SN001"
    for k in range(1, 4):
        train = {r["subject"] for r in read_csv(out / f"train_fold{k}.csv")}
        test = {r["subject"] for r in read_csv(out / f"test_fold{k}.csv")}
        assert len(test) == 1 and not train & test and train | test == set(DISFA_SUBJECTS)

    write(root / "ActionUnit_Labels/SN013/SN013_au4.txt", "1,0\n2,6\n")
    with pytest.raises(ListBuildError, match=r"SN013_au4\.txt:2: expected intensity \(0\.\.5\) in \[0, 5\], got 6"):
        disfa.build(opts(root, out))


def test_disfa_frame_offset_and_sorted_split(tmp_path):
    root, out = tmp_path / "DISFA", tmp_path / "lists"
    disfa_tree(root)
    for subject in DISFA_SUBJECTS:                                                # frames extracted from 0
        for f in range(1, 7):
            (root / "frames" / subject / f"{f}.jpg").rename(root / "frames" / subject / f"{f - 1}.jpg")
    disfa.build(opts(root, out, frame_offset=-1, split="sorted"))
    assert {r["subject"] for r in read_csv(out / "test_fold1.csv")} == {"SN001"}
    assert len(read_csv(out / "test_fold2.csv")) == 6
    write(root / "ActionUnit_Labels/SN099/SN099_au1.txt", "1,0\n")               # not in the published split
    with pytest.raises(ListBuildError, match="missing label file for AU2"):
        disfa.build(opts(root, out))


# ----------------------------------------------------------------------------------------------- CLI
def test_cli(tmp_path, caplog):
    root, out = tmp_path / "DISFA", tmp_path / "lists"
    disfa_tree(root)
    assert set(BUILDERS) == {"voxceleb2", "dfew", "ferv39k", "mafw", "bp4d", "disfa"}
    assert main(["disfa", "--root", str(root), "--out", str(out)]) == 0
    assert (out / "train_fold1.csv").is_file() and (out / "folds.txt").is_file()
    assert main(["dfew", "--root", str(root), "--out", str(out)]) == 2             # wrong layout: clear error
    assert "Clip/clip_224x224" in caplog.text
    with pytest.raises(SystemExit):
        main(["--help"])
