"""``python -m lgiformer.predict`` never answers for a file it could not read: each unreadable input gets its own
error line (file and reason), the others are predicted exactly as on their own, and the exit code says that some
failed (0 all predicted, 1 some could not be read, 2 nothing could run)."""
import json

import pytest

from _cli import run
from lgiformer.models import create_model
from lgiformer.models.release import write_release

TINY = dict(img_size=32, num_frames=4, region_size=[2, 2, 2], embed_dim=32, depth=2, num_heads=2)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    model = create_model("lgiformer_tiny_patch16_160", num_classes=3, **TINY).eval()
    return write_release(model, tmp_path_factory.mktemp("rel") / "release", task="dfer", source={"format": "test"},
                         class_names=["calm", "happy", "sad"],
                         data=dict(num_frames=4, sampling_rate=2, img_size=32, test_num_clips=2, test_num_crops=2))


def _predict(release, *inputs, json_out=True):
    return run(["-m", "lgiformer.predict", "--model", release, *inputs, *(["--json"] if json_out else [])],
               check=False)


def test_unreadable_inputs_get_their_own_error_and_the_good_one_is_unchanged(release, tmp_path, media):
    good = media.folder(tmp_path / "good", media.frames(10, 32), ext="jpg")
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not a video\n")
    inputs = [str(tmp_path / "empty.mp4"), str(good), str(tmp_path / "notes.txt")]
    mixed = _predict(release, *inputs)
    alone = _predict(release, str(good))
    assert alone.returncode == 0 and mixed.returncode == 1 and "Traceback" not in mixed.stderr
    assert "2 of 3 inputs could not be read" in mixed.stderr
    results = json.loads(mixed.stdout)["results"]
    assert [r["input"] for r in results] == inputs
    assert results[0] == {"input": inputs[0], "error": "empty file (0 bytes)"}
    assert set(results[2]) == {"input", "error"} and "PyAV cannot open it" in results[2]["error"]
    assert results[1] == json.loads(alone.stdout)["results"][0]          # the same probabilities as on its own
    assert set(results[1]["probabilities"]) == {"calm", "happy", "sad"}

    text = _predict(release, *inputs, json_out=False)
    lines = text.stdout.splitlines()
    assert text.returncode == 1 and lines[0] == f"{inputs[0]}: error: empty file (0 bytes)"
    assert lines[1].startswith(f"{inputs[1]}: ") and lines[-1].startswith(f"{inputs[2]}: error: ")


def test_only_bad_or_missing_inputs_each_get_an_error_line(release, tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    missing = str(tmp_path / "nowhere" / "clip.mp4")
    proc = _predict(release, missing, str(tmp_path / "empty.mp4"), json_out=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stdout.splitlines() == [f"{missing}: error: no such file",
                                        f"{tmp_path / 'empty.mp4'}: error: empty file (0 bytes)"]
    assert _predict(release, missing, "--model", str(tmp_path)).returncode == 2  # not a release: nothing runs
