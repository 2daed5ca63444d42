"""The synthetic face-video generator: determinism, list formats, folds, AU labels, videos, ensure_synthetic."""
import csv
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from lgiformer.data import synthetic as syn

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(size=48, num_frames=6, labeled_frames=8, au_frames=8, unlabeled_clips=3, clips_per_identity=2,
            subjects=5, clips_per_class_per_subject=1, au_subjects=3, au_clips=6, progress=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn_a")
    meta = syn.generate(out, seed=0, **TINY)
    return out, meta


def _files(root: Path):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _decode(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def test_same_seed_is_byte_identical_and_other_seed_differs(tiny, tmp_path):
    out_a, meta_a = tiny
    out_b = tmp_path / "b"
    meta_b = syn.generate(out_b, seed=0, **TINY)
    assert meta_a == meta_b
    files = _files(out_a)
    assert files == _files(out_b)
    for rel in files:
        if rel.endswith((".txt", ".csv", ".jpg", ".json")):
            assert (out_a / rel).read_bytes() == (out_b / rel).read_bytes(), rel
    # The mp4s are compared between fresh processes (two runs of the generator's CLI): inside a process that has
    # done other work first (these tests), libx264 was seen to encode the odd frame differently.
    cli = [sys.executable, "-m", "lgiformer.data.synthetic", "--parts", "unlabeled", "--size", "48", "--num-frames",
           "6", "--unlabeled-clips", "3", "--clips-per-identity", "2"]
    runs = [tmp_path / "cli1", tmp_path / "cli2"]
    for out in runs:
        subprocess.run([*cli, "--out", str(out)], check=True, capture_output=True, cwd=ROOT)
    videos = sorted(p.name for p in (runs[0] / "unlabeled" / "videos").glob("*.mp4"))
    assert len(videos) == 3
    for name in videos:
        assert (runs[0] / "unlabeled/videos" / name).read_bytes() == (runs[1] / "unlabeled/videos" / name).read_bytes()
    # Another seed changes pixels and labels; generating one part alone gives the same bytes (order independence).
    out_c = tmp_path / "c"
    syn.generate(out_c, seed=1, **{**TINY, "parts": "labeled"})
    assert not (out_c / "unlabeled").exists() and not (out_c / "au").exists()
    assert (out_c / "labeled/frames/00000/1.jpg").read_bytes() != (out_a / "labeled/frames/00000/1.jpg").read_bytes()
    out_d = tmp_path / "d"
    syn.generate(out_d, seed=0, **{**TINY, "parts": ["au"]})
    assert (out_d / "au/labels.csv").read_bytes() == (out_a / "au/labels.csv").read_bytes()
    assert (out_d / "au/frames/00004/8.jpg").read_bytes() == (out_a / "au/frames/00004/8.jpg").read_bytes()


def test_labeled_lists_balanced_and_subject_disjoint_folds(tiny):
    out, meta = tiny
    assert (out / "labeled/classes.txt").read_text().split("\n")[:-1] == list(syn.CLASSES)
    subject_of = {row["path"]: row["subject"] for row in csv.DictReader(open(out / "labeled/clips.csv"))}
    test_subjects, all_test = [], []
    for f in range(1, 6):
        train = [ln.split(" ") for ln in (out / f"labeled/lists/train_fold{f}.txt").read_text().splitlines()]
        test = [ln.split(" ") for ln in (out / f"labeled/lists/test_fold{f}.txt").read_text().splitlines()]
        for path, label in train + test:
            assert not path.startswith("/") and " " not in path and 0 <= int(label) < len(syn.CLASSES)
            assert (out / path / "1.jpg").is_file()
        tr_s, te_s = {subject_of[p] for p, _ in train}, {subject_of[p] for p, _ in test}
        assert tr_s and te_s and not tr_s & te_s
        assert len(train) + len(test) == meta["counts"]["labeled_clips"]
        for split in (train, test):                                   # every class equally often
            counts = Counter(int(y) for _, y in split)
            assert set(counts) == set(range(7)) and len(set(counts.values())) == 1
        test_subjects.append(te_s)
        all_test += [p for p, _ in test]
        assert sorted(te_s) == meta["folds"]["labeled"][str(f)]
    assert sorted(all_test) == sorted(subject_of)                      # each clip in exactly one test fold
    assert set().union(*test_subjects) == set(subject_of.values())
    # Frame folders: 1.jpg .. T.jpg, not zero padded.
    names = sorted(p.name for p in (out / "labeled/frames/00000").iterdir())
    assert sorted(names, key=lambda n: int(n.split(".")[0])) == [f"{k}.jpg" for k in range(1, 9)]


def test_au_csv_values_and_folds(tiny):
    out, meta = tiny
    header = "path,frame,subject," + ",".join(syn.AU_NAMES)
    rows = list(csv.reader(open(out / "au/labels.csv")))
    assert ",".join(rows[0]) == header
    assert len(rows) - 1 == TINY["au_clips"] * TINY["au_frames"] == meta["counts"]["au_frames"]
    values = np.array([[int(x) for x in r[3:]] for r in rows[1:]])
    assert set(np.unique(values)) <= {0, 1, 9} and (values == 1).any()
    assert all((out / r[0] / f"{int(r[1]) + 1}.jpg").is_file() for r in rows[1:])
    seen = []
    for f in range(1, 4):
        tr = list(csv.reader(open(out / f"au/lists/train_fold{f}.csv")))
        te = list(csv.reader(open(out / f"au/lists/test_fold{f}.csv")))
        assert ",".join(tr[0]) == header == ",".join(te[0])
        assert not {r[2] for r in tr[1:]} & {r[2] for r in te[1:]}
        assert len(tr) + len(te) - 2 == len(rows) - 1
        seen += [tuple(r) for r in te[1:]]
    assert sorted(seen) == sorted(tuple(r) for r in rows[1:])


def test_mp4_decodes_and_pretrain_list(tiny):
    out, meta = tiny
    lines = (out / "unlabeled/pretrain.txt").read_text().splitlines()
    assert len(lines) == TINY["unlabeled_clips"] == meta["counts"]["unlabeled_videos"]
    path, start, total = lines[0].split(" ")
    assert path == "unlabeled/videos/00000.mp4" and start == "0" and int(total) == TINY["num_frames"]
    frames = _decode(out / path)
    assert frames.shape == (TINY["num_frames"], TINY["size"], TINY["size"], 3)
    assert meta["video_codec"] in ("libx264", "mpeg4")


@pytest.mark.parametrize("expression,defining", [("Happy", "AU12"), ("Sad", "AU15"), ("Surprise", "AU26"),
                                                 ("Angry", "AU4"), ("Disgust", "AU9"), ("Fear", "AU25")])
def test_defining_au_active_at_apex_and_neutral_inactive(expression, defining):
    ident = syn.Identity.sample(np.random.default_rng(3))
    k = syn.AU_NAMES.index(defining)
    for i in range(3):
        frames, aus = syn.render_clip(ident, expression, 16, 48, np.random.default_rng(i), talking=False)
        assert frames.shape == (16, 48, 48, 3) and frames.dtype == np.uint8
        assert aus.shape == (16, len(syn.AU_NAMES)) and aus.dtype == np.float32
        apex = int(np.argmax(aus[:, k]))
        assert aus[apex, k] >= 0.5
        assert not np.array_equal(frames[0], frames[apex])
    _, aus = syn.render_clip(ident, None, 16, 48, np.random.default_rng(0), talking=False)
    assert (aus == 0).all()


def test_classes_differ_in_dynamics():
    """Surprise rises within a few frames; Sad takes a large part of the clip."""
    def rise(expression, seed):
        curves, _ = syn.expression_curves(expression, 32, np.random.default_rng(seed), intensity=1.0)
        c = curves.max(axis=1)
        return int(np.argmax(c >= 0.9 * c.max())) - int(np.argmax(c >= 0.1 * c.max()))
    assert max(rise("Surprise", s) for s in range(5)) < min(rise("Sad", s) for s in range(5))


def test_ensure_synthetic_skips_when_present(tiny, caplog):
    out, meta = tiny
    stamp = (out / "meta.json").stat().st_mtime_ns
    options = {k: v for k, v in TINY.items() if k != "progress"}
    with caplog.at_level("INFO", logger="lgiformer.data.synthetic"):
        assert syn.ensure_synthetic(out, seed=0, **options) == meta
        assert syn.ensure_synthetic(out, seed=0, **{**options, "parts": "au,labeled"}) == meta   # a subset
    assert (out / "meta.json").stat().st_mtime_ns == stamp
    assert "skipping" in caplog.text
    assert json.loads((out / "meta.json").read_text())["options"]["size"] == TINY["size"]
    with pytest.raises(ValueError, match="subjects must be >= 5"):
        syn.ensure_synthetic(out, seed=0, **{**options, "subjects": 2})


def test_face_zoom_scales_the_face_and_zoom_one_changes_nothing():
    """The same clip with AU12 on and off differs only where the mouth moves; face_zoom scales that area about the
    head, and zoom 1 renders exactly what no zoom does."""
    ident = syn.Identity.sample(np.random.default_rng(5))
    t = 4
    off = np.zeros((t, len(syn.CHANNELS)))
    on = off.copy()
    on[:, syn.CHANNELS.index("AU12")] = 1.0

    def moved_box(zoom):
        a = syn.render_clip(ident, None, t, 96, np.random.default_rng(1), False, channels=off, blinks=False,
                            noise=False, zoom=zoom)[0]
        b = syn.render_clip(ident, None, t, 96, np.random.default_rng(1), False, channels=on, blinks=False,
                            noise=False, zoom=zoom)[0]
        rows, cols = np.nonzero(np.abs(a[0].astype(int) - b[0].astype(int)).max(-1) > 8)
        return rows.max() - rows.min() + 1, cols.max() - cols.min() + 1

    plain = syn.render_clip(ident, "Happy", t, 64, np.random.default_rng(2), False)[0]
    assert np.array_equal(plain, syn.render_clip(ident, "Happy", t, 64, np.random.default_rng(2), False, zoom=1.0)[0])
    h1, w1 = moved_box(1.0)
    h2, w2 = moved_box(1.6)
    assert 1.35 < w2 / w1 < 1.85 and 1.2 < h2 / h1 < 2.0
    with pytest.raises(ValueError, match="face_zoom"):
        syn.SyntheticOptions(face_zoom=5)


def test_auto_workers_renders_large_sets_in_parallel_and_small_ones_in_process(monkeypatch):
    """The runs' large demo set (1120 labeled clips) is rendered on every usable CPU up to 4; a tiny set, or one
    part of it, stays in the calling process, where spawning workers would cost more than it saves."""
    demo = dict(subjects=40, clips_per_class_per_subject=4, face_zoom=1.6)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert syn.auto_workers(syn.SyntheticOptions(**demo)) == 4
    assert syn.auto_workers(syn.SyntheticOptions(**demo, parts="au")) == 1          # 1536 frames
    assert syn.auto_workers(syn.SyntheticOptions(subjects=5, clips_per_class_per_subject=1)) == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert syn.auto_workers(syn.SyntheticOptions(**demo)) == 2


def _stamp(root: Path) -> int:
    return (root / "meta.json").stat().st_mtime_ns


def test_runs_without_a_data_root_get_one_folder_per_option_set(tmp_path, monkeypatch, caplog):
    """Before: every run without a data root used data/synthetic, and a recipe with other options regenerated the
    whole set there, so two recipes kept overwriting each other's data."""
    monkeypatch.chdir(tmp_path)
    small = {k: v for k, v in TINY.items() if k != "progress"}
    a = {**small, "parts": "labeled"}
    b = {**small, "parts": "labeled", "seed": 1}
    root_a, root_b = syn.resolve_root("", a), syn.resolve_root("", b)
    assert root_a != root_b and root_a.parent == root_b.parent == Path("data/synthetic")
    assert syn.resolve_root("", {**a, "subjects": "5", "overwrite": False}) == root_a        # resolved options
    assert syn.resolve_root("", {}) == Path("data/synthetic/default")
    assert syn.resolve_root("", {"face_zoom": 1.6, "subjects": 40, "clips_per_class_per_subject": 4}) == \
        Path("data/synthetic/demo")
    meta_a = syn.ensure_synthetic(root_a, progress=False, **a)
    stamp_a, frame_a = _stamp(root_a), (root_a / "labeled/frames/00000/1.jpg").read_bytes()
    meta_b = syn.ensure_synthetic(syn.resolve_root("", b), progress=False, **b)
    assert (meta_a["seed"], meta_b["seed"]) == (0, 1)
    assert _stamp(root_a) == stamp_a and (root_a / "labeled/frames/00000/1.jpg").read_bytes() == frame_a
    assert (root_b / "labeled/frames/00000/1.jpg").read_bytes() != frame_a
    stamp_b = _stamp(root_b)
    with caplog.at_level("INFO", logger="lgiformer.data.synthetic"):
        assert syn.ensure_synthetic(syn.resolve_root("", a), progress=False, **a) == meta_a
        assert syn.ensure_synthetic(syn.resolve_root("", b), progress=False, **b) == meta_b
    assert (_stamp(root_a), _stamp(root_b)) == (stamp_a, stamp_b)
    assert caplog.text.count("skipping generation") == 2 and "data/synthetic/" in caplog.text


def test_a_folder_with_another_set_is_refused_unless_overwrite(tmp_path, capsys):
    small = {k: v for k, v in TINY.items() if k != "progress"}
    mine = {**small, "parts": "labeled"}
    other = {**mine, "seed": 1, "subjects": 6}
    root = tmp_path / "explicit"
    syn.generate(root, progress=False, **mine)
    stamp = _stamp(root)
    message = (r"synthetic data set at .*explicit was made with other options \(seed 0 there, 1 wanted; subjects 5 "
               r"there, 6 wanted\); not replacing it: use another folder .* overwrite: true in the recipe's "
               r"data.synthetic, overwrite=True in Python, --force on the command line")
    with pytest.raises(syn.SyntheticSetConflict, match=message) as refused:
        syn.resolve_root(str(root), other)                     # every rank, before rank 0 generates
    assert "\n" not in str(refused.value)                      # one line
    with pytest.raises(syn.SyntheticSetConflict, match=message):
        syn.ensure_synthetic(root, progress=False, **other)
    cli = ["--out", str(root), "--parts", "labeled", "--size", "48", "--labeled-frames", "8", "--subjects", "6",
           "--clips-per-class-per-subject", "1", "--seed", "1"]
    with pytest.raises(SystemExit) as exit_info:
        syn.main(cli)
    assert exit_info.value.code == 2 and "made with other options" in capsys.readouterr().err
    assert _stamp(root) == stamp and json.loads((root / "meta.json").read_text())["seed"] == 0
    # The same options with a part missing are completed, keeping the part that was there.
    meta = syn.ensure_synthetic(root, progress=False, **{**mine, "parts": "au"})
    assert meta["options"]["parts"] == ["labeled", "au"] and (root / "au/labels.csv").is_file()
    (root / "meta.json").write_text(json.dumps({**meta, "version": 1}))     # made by an older generator
    assert syn.ensure_synthetic(root, progress=False, **mine) == meta
    # Asked for: replaced. A folder of other files and no set is refused too (e.g. the folder of all the sets).
    assert syn.resolve_root(str(root), {**other, "overwrite": True}) == root
    assert syn.ensure_synthetic(root, progress=False, overwrite=True, **other)["seed"] == 1
    (tmp_path / "sets" / "demo").mkdir(parents=True)
    with pytest.raises(syn.SyntheticSetConflict, match=r"sets holds demo but no synthetic data set \(no meta.json\)"):
        syn.ensure_synthetic(tmp_path / "sets", progress=False, **mine)
