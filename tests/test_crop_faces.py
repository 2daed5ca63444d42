"""Raw footage to face crops: ``python -m data_lists crop-faces`` (list in, crops and a new list out, resumable) and
``python -m lgiformer.predict --crop-faces`` (the same crops, then the finetuned model)."""
import json

import numpy as np
import pytest

from _cli import run
from _tools import face_video, tiny_release
from data_lists.__main__ import main as data_lists_main
from lgiformer.data import open_video, read_video_list
from lgiformer.data.faces import FaceCropSettings, HaarFaceDetector, crop_to


@pytest.fixture(scope="module")
def footage(tmp_path_factory):
    """Two raw mp4s of a moving face, one frame folder of it, and a video without a face; a labeled list of all."""
    from conftest import write_frame_folder, write_mp4

    root = tmp_path_factory.mktemp("raw")
    a, _ = face_video(num_frames=10, step=(6, 2))
    b, _ = face_video(num_frames=12, step=(-4, 3), start=(200, 20), seed=1)
    write_mp4(root / "clips" / "a.mp4", a)
    write_mp4(root / "clips" / "b.mp4", b)
    write_frame_folder(root / "clips" / "c", a[:8], ext="png")
    write_mp4(root / "other" / "empty.mp4", np.full((6, 64, 64, 3), 90, np.uint8))
    lines = ["clips/a.mp4 0", "clips/b.mp4 1", "# a comment", "other/empty.mp4 2", "", "clips/c 3"]
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    return root


def _crop_faces(footage, out, *extra):
    return data_lists_main(["crop-faces", "--list", str(footage / "train.txt"), "--data-root", str(footage),
                            "--out", str(out), "--size", "64", "--no-progress", *extra])


def test_crop_faces_builds_crops_and_a_list_and_resumes(footage, tmp_path, capsys, monkeypatch):
    out = tmp_path / "faces"
    assert _crop_faces(footage, out, "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["entries"] == 4 and summary["cropped"] == 3 and summary["reused"] == 0
    assert summary["skipped"] == {"no face found": 1} and summary["frames"] == 10 + 12 + 8
    assert summary["frames_detected"] > 0.7 * summary["frames"]
    # the new list: same labels and order, the face-less video left out, paths relative to --out
    lines = (out / "train.txt").read_text().splitlines()
    assert lines == ["crops/clips/a 0", "crops/clips/b 1", "crops/clips/c 3"]
    samples = read_video_list(out / "train.txt", out, num_classes=4)
    assert [s.total for s in samples] == [10, 12, 8]           # every frame kept: start / total stay valid
    frames = open_video(samples[0].path).get([0, 9])
    assert frames.shape == (2, 64, 64, 3)
    # the crops are the library's crops of the same video (one implementation for the builder and predict)
    reference = crop_to(footage / "clips" / "a.mp4", tmp_path / "ref", FaceCropSettings(size=64))
    assert reference.num_frames == 10
    assert np.array_equal(open_video(tmp_path / "ref").get(range(10)), open_video(samples[0].path).get(range(10)))
    assert json.loads((out / "crop_faces.json").read_text())["margin"] == 0.25

    # a rerun reuses every crop and writes the same list; only the face-less video is tried again (6 frames)
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "crops").rglob("*.jpg")}
    calls = []
    detect = HaarFaceDetector.detect
    monkeypatch.setattr(HaarFaceDetector, "detect", lambda self, *a, **k: calls.append(1) or detect(self, *a, **k))
    assert _crop_faces(footage, out, "--json") == 0
    again = json.loads(capsys.readouterr().out)
    assert again["reused"] == 3 and again["cropped"] == 0 and len(calls) == 6
    assert (out / "train.txt").read_text().splitlines() == lines
    assert {p: p.stat().st_mtime_ns for p in (out / "crops").rglob("*.jpg")} == mtimes


def test_crop_faces_mp4_output_resumes_a_partial_run(footage, tmp_path, capsys, caplog):
    out = tmp_path / "faces"
    assert _crop_faces(footage, out, "--format", "mp4", "--workers", "2") == 0   # two processes, in order
    assert (out / "train.txt").read_text().splitlines() == ["crops/clips/a.mp4 0", "crops/clips/b.mp4 1",
                                                            "crops/clips/c.mp4 3"]
    video = out / "crops" / "clips" / "b.mp4"
    assert len(open_video(video)) == 12
    video.unlink()                                             # as if the run had stopped before this one
    stamp = (out / "crops" / "clips" / "a.mp4").stat().st_mtime_ns
    assert _crop_faces(footage, out, "--format", "mp4", "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["cropped"] == 1 and summary["reused"] == 2 and len(open_video(video)) == 12
    assert (out / "crops" / "clips" / "a.mp4").stat().st_mtime_ns == stamp
    # other settings into the same folder are refused, not mixed
    assert _crop_faces(footage, out, "--format", "mp4", "--margin", "0.4") == 2
    assert "crop_faces.json: the crops there were made with other settings (margin: [0.25])" in caplog.text


def test_crop_faces_bad_input_is_one_clear_line(footage, tmp_path, caplog):
    def error_of(argv):
        caplog.clear()
        assert data_lists_main(["crop-faces", *map(str, argv), "--no-progress"]) == 2
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert len(errors) == 1 and "\n" not in errors[0]
        return errors[0]

    assert "train.txt:4: no face found" in error_of(["--list", footage / "train.txt", "--data-root", footage,
                                                     "--out", tmp_path / "o1", "--strict"])
    assert "nothing.txt: no such list file" in error_of(["--list", tmp_path / "nothing.txt", "--out", tmp_path])
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n")
    assert "empty.txt: the list holds no usable entries" in error_of(["--list", empty, "--out", tmp_path / "o3"])
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    listed = tmp_path / "one.txt"
    listed.write_text(f"{text} 0\n")
    message = error_of(["--list", listed, "--out", tmp_path / "o4", "--strict"])
    assert "one.txt:1: unreadable video" in message and "notes.mp4: not a readable video" in message
    missing = tmp_path / "gone.txt"
    missing.write_text("gone.mp4 0\n")
    assert "gone.txt:1: missing file or folder" in error_of(["--list", missing, "--out", tmp_path / "o5",
                                                             "--strict"])


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return tiny_release(tmp_path_factory.mktemp("release") / "release")


def test_predict_crop_faces_equals_predicting_the_crops(footage, release, tmp_path):
    raw = footage / "clips" / "a.mp4"
    crops = tmp_path / "a_faces"
    crop_to(raw, crops, FaceCropSettings())
    out = run(["-m", "lgiformer.predict", "--model", release, "--json", "--crop-faces", raw])
    cropped = json.loads(out.stdout)["results"][0]
    direct = json.loads(run(["-m", "lgiformer.predict", "--model", release, "--json", crops]).stdout)["results"][0]
    uncropped = json.loads(run(["-m", "lgiformer.predict", "--model", release, "--json", raw]).stdout)["results"][0]
    assert cropped["input"] == str(raw) and cropped["face"]["frames"] == 10 and cropped["face"]["detected"] >= 7
    p = np.array(list(cropped["probabilities"].values()))
    assert np.allclose(p, list(direct["probabilities"].values()), atol=2e-6)
    assert np.abs(p - list(uncropped["probabilities"].values())).max() > 1e-3   # cropping changes what it sees


def test_predict_bad_inputs_are_one_clear_line(footage, release, tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    no_face = "empty.mp4: no face found in any of 6 frames"
    for args, expected in (([footage / "other" / "empty.mp4", "--crop-faces"], no_face),
                           ([text], "notes.mp4: PyAV cannot open it"),
                           ([tmp_path / "missing.mp4"], "missing.mp4: no such file")):
        proc = run(["-m", "lgiformer.predict", "--model", release, *args], check=False)
        assert proc.returncode == 1  # the input could not be read; nothing else was wrong
        error = [line for line in proc.stdout.splitlines() if ": error: " in line]
        assert len(error) == 1 and expected.split(": ", 1)[1] in error[0] and "Traceback" not in proc.stderr, \
            proc.stdout + proc.stderr


def test_data_lists_command_line_lists_crop_faces():
    assert "crop-faces" in run(["-m", "data_lists", "--help"]).stdout
    assert "--margin" in run(["-m", "data_lists", "crop-faces", "--help"]).stdout
