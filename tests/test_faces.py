"""Face crops of raw footage (lgiformer.data.faces): tracking and smoothing on given detections, then the real
detector on a real photograph of a face moving through a synthetic video."""
import numpy as np
import pytest

from _tools import ASTRONAUT_FACE_CENTRE, astronaut, face_video
from lgiformer.data import faces
from lgiformer.data.faces import FaceCropSettings, NoFaceError, crop_square, smooth_boxes, track_faces


def _centres(boxes):
    return boxes[:, :2] + boxes[:, 2:] / 2


def _moving(n, start=(100.0, 50.0), step=(4.0, 1.0), side=60.0):
    return [np.array([[start[0] + step[0] * t, start[1] + step[1] * t, side, side]]) for t in range(n)]


def test_smoothing_follows_steady_motion_and_removes_jitter_and_outliers():
    dets = _moving(15)
    exact = track_faces(dets, FaceCropSettings(smooth=9)).boxes
    assert np.allclose(exact, np.concatenate(dets))           # the median of a linear motion is the motion itself
    rng = np.random.default_rng(0)
    still = np.array([200.0, 100.0, 60.0, 60.0])
    noisy = [(still + np.r_[rng.uniform(-2, 2, 2), 0, 0])[None] for _ in range(15)]
    noisy[7] = (still + [20, 0, 8, 8])[None]                  # one wild detection (same track: IoU > 0.3)
    smoothed = track_faces(noisy, FaceCropSettings(smooth=9)).boxes
    raw = track_faces(noisy, FaceCropSettings(smooth=1)).boxes
    assert np.abs(raw - still).max() >= 20 and np.abs(smoothed - still).max() < 2


def test_missed_frames_are_interpolated_inside_and_held_at_the_ends():
    dets = _moving(12)
    gappy = [d if t not in (0, 1, 5, 6, 11) else np.zeros((0, 4)) for t, d in enumerate(dets)]
    track = track_faces(gappy, FaceCropSettings(smooth=1))
    assert track.detected.tolist() == [t not in (0, 1, 5, 6, 11) for t in range(12)]
    truth = np.concatenate(dets)
    assert np.allclose(track.boxes[2:11], truth[2:11])        # interpolated where the face moved on steadily
    assert np.allclose(track.boxes[0], truth[2]) and np.allclose(track.boxes[1], truth[2])   # first box held
    assert np.allclose(track.boxes[11], truth[10])                                             # last box held


def test_the_largest_persistent_face_wins_over_others_and_false_detections():
    big, small = _moving(10, side=80.0), _moving(10, start=(400.0, 300.0), step=(0.0, 0.0), side=40.0)
    dets = [np.concatenate([s, b]) if t % 3 else s for t, (b, s) in enumerate(zip(big, small))]  # big missed 1/3
    dets[4] = np.concatenate([dets[4], [[10.0, 10.0, 150.0, 150.0]]])   # one huge false detection, one frame
    track = track_faces(dets, FaceCropSettings(smooth=1))
    known = [t for t in range(10) if t % 3]
    assert np.allclose(track.boxes[known], np.concatenate([big[t] for t in known]))
    assert track.detected.sum() == len(known)


def test_no_detection_at_all_is_an_error():
    with pytest.raises(NoFaceError, match="no face found in any of 3 frames"):
        track_faces([np.zeros((0, 4))] * 3)


def test_crop_square_has_the_margin_and_stays_inside_the_frame():
    box = np.array([100.0, 80.0, 40.0, 40.0])
    x0, y0, side = crop_square(box, (240, 320), margin=0.25)
    assert side == 60 and (x0 + side / 2, y0 + side / 2) == (120, 100)   # centred, 1.5 x the box
    x0, y0, side = crop_square(np.array([290.0, -5.0, 40.0, 40.0]), (240, 320), margin=0.25)
    assert (x0, y0, side) == (260, 0, 60)                                # moved inside, not padded
    assert crop_square(np.array([0.0, 0.0, 400.0, 400.0]), (240, 320), 0.25)[2] == 240   # at most the frame
    with pytest.raises(ValueError, match="odd"):
        FaceCropSettings(smooth=4)


def test_smooth_boxes_window_shrinks_symmetrically_at_the_ends():
    boxes = np.array([[0, 0, 10, 10], [100, 0, 10, 10], [2, 0, 10, 10], [3, 0, 10, 10]], float)
    out = smooth_boxes(boxes, 3)
    assert np.allclose(out[0], boxes[0]) and np.allclose(out[-1], boxes[-1])   # window of 1 at the ends
    assert np.allclose(out[1, 0], 2.0) and np.allclose(out[2, 0], 3.0)         # medians of 3: outlier gone


def test_detector_finds_the_astronauts_face_where_it_is():
    boxes = faces.HaarFaceDetector().detect(astronaut())
    assert len(boxes) == 1
    centre = _centres(boxes)[0]
    assert np.abs(centre - ASTRONAUT_FACE_CENTRE).max() < 15, centre
    assert 70 < boxes[0, 2] < 130                       # a face-sized box in the 512 px portrait


def test_crop_follows_a_moving_face_in_a_video(tmp_path, media):
    frames, centres = face_video(num_frames=20, step=(6, 2))
    path = media.mp4(tmp_path / "raw.mp4", frames)
    settings = FaceCropSettings(size=96)
    crops, track = faces.crop_video(path, settings)
    assert crops.shape == (20, 96, 96, 3) and crops.dtype == np.uint8
    assert track.detected.mean() > 0.7
    error = np.abs(_centres(track.boxes) - centres)
    assert error.max() < 8, error.max()                 # on the face in every frame, 120 px of motion
    side = track.boxes[:, 2]
    assert 40 < side.min() and side.max() < 65         # the face is 256 / 512 of the portrait's ~93 px box
    # what the crops show stays the same face (compared as 12 x 12 block means: a pixel of misalignment on this
    # textured photograph is no change of content), while a crop that stayed where the face was in the first frame
    # has lost it by the last
    def blocks(crop):
        return crop.astype(float).reshape(12, 8, 12, 8, 3).mean((1, 3))

    change = max(np.abs(blocks(crops[0]) - blocks(c)).mean() for c in crops)
    *_, raw_last = faces.iter_frames(path)
    fixed = faces.crop_frame(raw_last, track.boxes[0], settings)
    assert change < 25 and np.abs(blocks(crops[0]) - blocks(fixed)).mean() > 2.5 * change


def test_largest_face_is_kept_when_two_are_in_the_video(tmp_path, media):
    frames, centres = face_video(num_frames=8, second_face=0.4)
    detector = faces.HaarFaceDetector()
    assert len(faces.detect_faces(frames[0], detector, FaceCropSettings())) == 2     # both faces are found
    path = media.folder(tmp_path / "two", frames, ext="png")
    track = faces.find_face_track(path, FaceCropSettings(), detector)
    assert np.abs(_centres(track.boxes) - centres).max() < 8


def test_footage_without_a_face_and_non_videos_are_clear_errors(tmp_path, media):
    blank = media.mp4(tmp_path / "blank.mp4", np.full((6, 64, 64, 3), 90, np.uint8))
    with pytest.raises(NoFaceError, match=r"blank\.mp4: no face found in any of 6 frames"):
        faces.crop_video(blank)
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    with pytest.raises(faces.VideoReadError, match=r"notes\.mp4: not a readable video .*expected a video file"):
        faces.crop_video(text)
    with pytest.raises(faces.VideoReadError, match="no such file"):
        faces.crop_video(tmp_path / "missing.mp4")


def test_write_crops_is_atomic_and_readable(tmp_path):
    from lgiformer.data import open_video

    frames = np.random.default_rng(0).integers(0, 255, (5, 32, 32, 3)).astype(np.uint8)
    folder = faces.write_crops(frames, tmp_path / "clip", "frames")
    assert sorted(p.name for p in folder.iterdir()) == [f"{i}.jpg" for i in range(1, 6)]
    video = faces.write_crops(frames, tmp_path / "clip.mp4", "mp4")
    assert len(open_video(video)) == 5 and len(open_video(folder)) == 5
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []   # no temporary left


def test_crop_folders_follow_the_umask(tmp_path):
    """Not private (tempfile.mkdtemp's 0700): crops are shared on a cluster like any other output."""
    import os

    frames = np.zeros((2, 32, 32, 3), np.uint8)
    old = os.umask(0o022)
    try:
        folder = faces.write_crops(frames, tmp_path / "clip", "frames")
    finally:
        os.umask(old)
    assert folder.stat().st_mode & 0o777 == 0o755
