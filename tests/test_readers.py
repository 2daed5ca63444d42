"""Video readers: decord and PyAV agree, frame folders sort naturally, failures are VideoReadError, fallback."""
import numpy as np
import pytest

from lgiformer.data import readers
from lgiformer.data.readers import (FrameFolderReader, PyAVReader, VideoReadError, natural_key, open_video,
                                    read_frames)


def test_natural_key_orders_numbers_as_numbers():
    names = ["10.jpg", "9.jpg", "frame10.png", "frame2.png", "1.jpg", "100.jpg"]
    assert sorted(names, key=natural_key) == ["1.jpg", "9.jpg", "10.jpg", "100.jpg", "frame2.png", "frame10.png"]


def test_frame_folder_natural_order_and_exact_frames(tmp_path, media):
    frames = media.frames(12)
    reader = open_video(media.folder(tmp_path / "clip", frames))        # auto: a directory is a frame folder
    assert isinstance(reader, FrameFolderReader) and len(reader) == 12
    assert [p.name for p in reader.files] == [f"{i}.png" for i in range(1, 13)]   # 10.png after 9.png
    got = reader.get([9, 1, 1, 11])                                     # order kept, repeats allowed
    assert got.dtype == np.uint8 and got.shape == (4, 48, 48, 3)
    np.testing.assert_array_equal(got, frames[[9, 1, 1, 11]])           # png is lossless


def test_frame_folder_extension_and_template(tmp_path, media):
    frames = media.frames(4)
    folder = media.folder(tmp_path / "c", frames, names=[f"img_{i:05d}.png" for i in range(1, 5)])
    (folder / "notes.txt").write_text("not a frame")
    media.folder(folder, frames[:1], names=["thumb.jpg"])
    assert len(open_video(folder)) == 5                                 # every image
    assert len(open_video(folder, frame_ext="png")) == 4
    by_name = open_video(folder, frame_template="img_{:05d}.png")
    assert len(by_name) == 4
    np.testing.assert_array_equal(by_name.get([3]), frames[[3]])
    with pytest.raises(VideoReadError, match="no frames"):
        open_video(folder, frame_ext="bmp")


def test_decord_and_pyav_give_the_same_frames(tmp_path, media):
    pytest.importorskip("decord")
    frames = media.frames(12, 64)
    path = media.mp4(tmp_path / "v.mp4", frames)
    dec, pyav = open_video(path, "decord"), open_video(path, "pyav")
    assert len(dec) == len(pyav) == 12
    idx = [0, 3, 7, 11, 3]
    a, b = dec.get(idx), pyav.get(idx)
    assert a.shape == b.shape == (5, 64, 64, 3) and a.dtype == b.dtype == np.uint8
    assert np.abs(a.astype(float) - b.astype(float)).mean() < 2           # same decode up to colour conversion
    assert np.abs(a.astype(float) - frames[idx].astype(float)).mean() < 8  # and close to what was encoded
    np.testing.assert_array_equal(read_frames(path, idx, "pyav"), b)


def test_auto_falls_back_to_pyav_when_decord_fails(tmp_path, media, monkeypatch):
    path = media.mp4(tmp_path / "v.mp4", media.frames(6))

    class Broken:
        def __init__(self, p):
            raise VideoReadError(p, "decord cannot open it (simulated)")

    monkeypatch.setattr(readers, "DecordReader", Broken)
    reader = open_video(path)
    assert isinstance(reader, PyAVReader) and reader.get([5]).shape[0] == 1
    with pytest.raises(VideoReadError, match="simulated"):
        open_video(path, "decord")                                      # an explicit backend does not fall back

    def missing(p):
        raise ImportError("no decord")

    monkeypatch.setattr(readers, "DecordReader", missing)
    assert isinstance(open_video(path), PyAVReader)


def test_a_real_decord_failure_falls_back_to_pyav(tmp_path, media):
    frames = media.frames(6, 48)  # decord 0.6 cannot copy frames 48 px wide (row alignment); PyAV can
    path = media.mp4(tmp_path / "narrow.mp4", frames)
    got = open_video(path).get([0, 5])
    assert got.shape == (2, 48, 48, 3) and np.abs(got.astype(int) - frames[[0, 5]].astype(int)).mean() < 12


def test_unreadable_inputs_raise_video_read_error(tmp_path):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    for backend in ("auto", "pyav"):
        with pytest.raises(VideoReadError) as err:
            open_video(corrupt, backend).get([0])
        assert err.value.path == str(corrupt)
    with pytest.raises(VideoReadError, match="no such file"):
        open_video(tmp_path / "missing.mp4")
    (tmp_path / "empty").mkdir()
    with pytest.raises(VideoReadError, match="no frames"):
        open_video(tmp_path / "empty")
    with pytest.raises(VideoReadError, match="folder"):
        open_video(tmp_path / "empty", "pyav")
    with pytest.raises(ValueError, match="backend"):
        open_video(corrupt, "opencv")


def test_pyav_pads_when_the_container_overstates_its_length(tmp_path, media):
    frames = media.frames(6)
    reader = PyAVReader(media.mp4(tmp_path / "v.mp4", frames))
    reader._count = 8                                                   # metadata says 8, the stream holds 6
    got = reader.get([4, 7])
    assert got.shape[0] == 2 and len(reader) == 6
    np.testing.assert_array_equal(got[1], reader.get([5])[0])
