"""The data path: lists and their validator, readers, temporal sampling, clip-consistent transforms, mixup,
robust datasets and the resumable distributed loader."""
import random

import av
import numpy as np
import pytest
import torch
from PIL import Image

from lgiformer.data import (AUVideoDataset, ListFormatError, TooManyBadSamples, VideoClassificationDataset,
                            VideoPretrainDataset, build_loader, center_indices, multi_clip_indices, natural_key,
                            open_video, read_au_csv, read_video_list, set_epoch, split_validation, train_indices)
from lgiformer.data.mixup import VideoMixup
from lgiformer.data.readers import DecordReader, PyAVReader
from lgiformer.data.transforms import EvalTransform, PretrainTransform, TrainTransform


def _frames(t=12, size=48, seed=0):
    """A moving gradient: every frame differs, codec-friendly."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (size // 8, size // 8, 3)).astype(np.float32)
    big = np.kron(base, np.ones((8, 8, 1)))
    return np.stack([np.roll(big, i * 2, axis=1) for i in range(t)]).astype(np.uint8)


def _write_mp4(path, frames):
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": "10"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def _write_folder(folder, frames):
    folder.mkdir(parents=True)
    for i, f in enumerate(frames, start=1):  # 1.jpg ... 12.jpg: lexicographic order would put 10 before 2
        Image.fromarray(f).save(folder / f"{i}.png")
    return folder


def test_natural_sort_of_frame_folders(tmp_path):
    frames = _frames(12)
    reader = open_video(_write_folder(tmp_path / "clip", frames))
    assert [p.name for p in reader.files][:3] == ["1.png", "2.png", "3.png"] and reader.files[-1].name == "12.png"
    np.testing.assert_array_equal(reader.get([9, 1]), frames[[9, 1]])
    assert sorted(["10.jpg", "9.jpg", "frame2.jpg", "frame10.jpg"], key=natural_key) == \
        ["9.jpg", "10.jpg", "frame2.jpg", "frame10.jpg"]


def test_decord_and_pyav_return_the_same_frames(tmp_path):
    frames = _frames(12, 64)
    path = _write_mp4(tmp_path / "v.mp4", frames)
    dec, pyav = DecordReader(path), PyAVReader(path)
    assert len(dec) == len(pyav) == 12
    idx = [0, 3, 7, 11]
    a, b = dec.get(idx), pyav.get(idx)
    assert a.shape == b.shape == (4, 64, 64, 3)
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 2.0
    assert np.abs(a.astype(int) - frames[idx].astype(int)).mean() < 12  # close to what was encoded


def test_decord_failure_on_a_file_falls_back_to_pyav(tmp_path, caplog):
    frames = _frames(6, 48)  # decord 0.6 cannot copy frames 48 px wide (row alignment); PyAV can
    path = _write_mp4(tmp_path / "narrow.mp4", frames)
    got = open_video(path).get([0, 5])
    assert got.shape == (2, 48, 48, 3) and np.abs(got.astype(int) - frames[[0, 5]].astype(int)).mean() < 12


def test_list_validator_names_file_line_and_reason(tmp_path):
    ok = _write_folder(tmp_path / "ok", _frames(4))
    short = _write_folder(tmp_path / "short", _frames(2))
    lst = tmp_path / "train.txt"
    lst.write_text(f"{ok.name} 3\nmissing 1\n{ok.name} x\n{ok.name}\n{ok.name} 9\n{short.name} 0\n")
    with pytest.raises(ListFormatError) as err:
        read_video_list(lst, tmp_path, num_classes=7, min_frames=4)
    message = str(err.value)
    assert "5 bad line(s)" in message
    for line, reason in [(2, "missing file"), (3, "not an integer"), (4, "2 fields"), (5, "out of range"),
                         (6, "too few frames")]:
        assert f"{lst}:{line}: " in message and reason in message
    good = read_video_list(lst.write_text(f"{ok.name} 3\n") and lst, tmp_path, num_classes=7)
    assert good[0].label == 3 and good[0].total == 4 and good[0].line == 1


def test_pretrain_list_and_au_csv(tmp_path):
    lst = tmp_path / "pre.txt"
    lst.write_text("a.mp4 0 40\nb.mp4\nc.mp4 5\n")
    with pytest.raises(ListFormatError, match=r"pre.txt:3: expected 'path' or 'path start total'"):
        read_video_list(lst, tmp_path, labeled=False, check_files=False)
    lst.write_text("a.mp4 0 40\nb.mp4\n")
    samples = read_video_list(lst, tmp_path, labeled=False, check_files=False)
    assert (samples[0].start, samples[0].total, samples[1].total) == (0, 40, None)
    csv = tmp_path / "au.csv"
    csv.write_text("path,frame,subject,AU1,AU12\nv1,1,S1,1,0\nv1,0,S1,9,1\nv2,0,S2,0,7\n")
    with pytest.raises(ListFormatError, match=r"au.csv:4: AU values must be 0, 1 or 9"):
        read_au_csv(csv, check_files=False)
    csv.write_text("path,frame,subject,AU1,AU12\nv1,1,S1,1,0\nv1,0,S1,9,1\n")
    (video,), names = read_au_csv(csv, check_files=False)
    assert names == ["AU1", "AU12"] and video.frames.tolist() == [0, 1]
    np.testing.assert_array_equal(video.valid, [[False, True], [True, True]])
    np.testing.assert_array_equal(video.labels, [[0, 1], [1, 0]])


def test_temporal_sampling():
    rng = np.random.default_rng(0)
    for _ in range(20):
        idx = train_indices(100, 16, 4, rng)
        assert len(idx) == 16 and idx.min() >= 0 and idx.max() < 100 and np.all(np.diff(idx) == 4)
    short = train_indices(10, 8, 2, rng)
    assert short.tolist() == [0, 2, 4, 6, 8, 9, 9, 9]  # padded with the last frame
    assert center_indices(100, 16, 4).tolist() == center_indices(100, 16, 4).tolist()
    assert center_indices(100, 16, 4)[0] == (100 - 61) // 2
    views = multi_clip_indices(100, 16, 4, 3)
    assert len(views) == 3 and len({v[0] for v in views}) == 3 and views[0][0] == 0 and views[-1][-1] == 99


def _square_clip(t=8, size=64):
    return np.stack([np.full((size, size, 3), 10 * i, np.uint8) + _frames(1, size)[0] // 2 for i in range(t)])


@pytest.mark.parametrize("transform", [PretrainTransform(32), TrainTransform(32, reprob=1.0),
                                       TrainTransform(32, auto_augment="rand-m9-n4-mstd0.5-inc1", reprob=0.0)])
def test_one_random_draw_per_clip(transform):
    still = np.repeat(_frames(1, 64), 8, axis=0)
    for seed in range(4):
        random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
        out = transform(still)
        assert out.shape == (3, 8, 32, 32)
        assert all(torch.equal(out[:, 0], out[:, t]) for t in range(8)), "frames of a still clip must stay equal"
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    a = transform(still)
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    assert torch.equal(a, transform(still))


def test_eval_crops_are_deterministic_and_really_differ():
    clip = _frames(4, 64)
    t = EvalTransform(48)
    views = [t(clip, crop_index=i, num_crops=3) for i in range(3)]
    assert all(v.shape == (3, 4, 48, 48) for v in views)
    assert not torch.allclose(views[0], views[1]) and not torch.allclose(views[1], views[2])
    assert torch.equal(views[1], t(clip, crop_index=1, num_crops=3))
    centre = EvalTransform(64)(clip)  # one crop, same size: just normalisation
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    expected = (torch.from_numpy(clip).float() / 255 - mean) / std
    torch.testing.assert_close(centre, expected.permute(3, 0, 1, 2))


def test_cutmix_box_spans_all_frames_and_targets_match_area():
    torch.manual_seed(0)
    clips, labels = torch.zeros(4, 3, 5, 32, 32), torch.tensor([0, 1, 2, 3])
    clips[2:] = 1.0  # partner of clip 0 is clip 3 (flipped batch)
    mix = VideoMixup(mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0, num_classes=4)
    np.random.seed(3)
    out, target = mix(clips, labels)
    assert mix.last_box is not None
    pasted = out[0, 0] == 1.0  # [T, H, W]
    assert all(torch.equal(pasted[0], pasted[t]) for t in range(5))
    frac = pasted[0].float().mean().item()
    assert target[0, 3].item() == pytest.approx(frac, abs=1 / (32 * 32)) and target[0, 0] == pytest.approx(1 - frac)
    torch.testing.assert_close(target.sum(1), torch.ones(4))
    plain = VideoMixup(mixup_alpha=0.0, cutmix_alpha=0.0, label_smoothing=0.1, num_classes=4)
    same, soft = plain(clips, labels)
    assert torch.equal(same, clips) and soft[0, 0].item() == pytest.approx(0.925)


@pytest.fixture()
def labeled_dir(tmp_path):
    for i in range(6):
        _write_folder(tmp_path / f"c{i}", _frames(10, 48, seed=i))
    lst = tmp_path / "list.txt"
    lst.write_text("".join(f"c{i} {i % 3}\n" for i in range(6)))
    return tmp_path, lst


def test_corrupt_file_is_skipped_counted_and_threshold_raises(tmp_path, caplog):
    (tmp_path / "bad.mp4").write_bytes(b"not a video" * 100)
    _write_mp4(tmp_path / "good.mp4", _frames(12, 64))
    lst = tmp_path / "pre.txt"
    lst.write_text("good.mp4\nbad.mp4\n")
    ds = VideoPretrainDataset(str(lst), str(tmp_path), num_frames=4, stride=2, input_size=32)
    clip, mask, index = ds[1]  # the corrupt one: replaced by the good one
    assert clip.shape == (3, 4, 32, 32) and index == 1
    counts = ds.bad_samples.snapshot()
    assert counts["bad"] >= 1 and counts["total"] > counts["bad"]
    assert "bad.mp4" in caplog.text
    with pytest.raises(TooManyBadSamples, match="could not be read"):
        ds.bad_samples.check(threshold=0.01)
    only_bad = tmp_path / "bad.txt"
    only_bad.write_text("bad.mp4\n")
    with pytest.raises(TooManyBadSamples, match="in a row"):
        VideoPretrainDataset(str(only_bad), str(tmp_path), num_frames=4, stride=2, input_size=32, max_retries=2)[0]


def test_samples_are_reproducible_per_index_and_epoch(labeled_dir):
    root, lst = labeled_dir
    ds = VideoClassificationDataset(str(lst), str(root), mode="train", num_frames=4, sampling_rate=2, img_size=32)
    a, b = ds[2][0], ds[2][0]
    assert torch.equal(a, b)
    ds.set_epoch(1)
    assert not torch.equal(a, ds[2][0])
    val = VideoClassificationDataset(str(lst), str(root), mode="val", num_frames=4, sampling_rate=2, img_size=32)
    assert torch.equal(val[0][0], val[0][0])
    test = VideoClassificationDataset(str(lst), str(root), mode="test", num_frames=4, sampling_rate=2, img_size=32,
                                      test_num_clips=2, test_num_crops=2)
    views, label, index = test[4]
    assert views.shape == (4, 3, 4, 32, 32) and label == 1 and index == 4
    assert len({tuple(v.flatten()[:50].tolist()) for v in views}) == 4  # clips x crops all distinct


def test_validation_split_is_held_out_of_training_and_stratified(labeled_dir):
    root, lst = labeled_dir
    samples = read_video_list(lst, root)
    train, val = split_validation(samples, 0.34, seed=0)
    assert len(val) == 3 and {s.label for s in val} == {0, 1, 2}
    assert not {s.path for s in train} & {s.path for s in val}
    assert split_validation(samples, 0.34, seed=0) == (train, val)


def test_loader_same_global_batches_for_one_or_two_ranks_and_resume(labeled_dir):
    root, lst = labeled_dir
    ds = VideoClassificationDataset(str(lst), str(root), mode="val", num_frames=2, sampling_rate=1, img_size=16)
    one = build_loader(ds, 2, shuffle=True, drop_last=True, seed=5, rank=0, world_size=1)
    ranks = [build_loader(ds, 1, shuffle=True, drop_last=True, seed=5, rank=r, world_size=2) for r in (0, 1)]
    for loader in (one, *ranks):
        set_epoch(loader, 3)
    global_one = [sorted(b[2].tolist()) for b in one]
    per_rank = [[b[2].tolist() for b in loader] for loader in ranks]
    global_two = [sorted(a + b) for a, b in zip(*per_rank)]
    assert global_one == global_two and len(global_one) == 3
    set_epoch(one, 3, start_index=2)  # resume after the first batch
    assert [sorted(b[2].tolist()) for b in one] == global_one[1:]


def test_au_dataset_clip_and_dense(tmp_path):
    _write_folder(tmp_path / "v", _frames(10))
    csv = tmp_path / "au.csv"
    rows = "".join(f"v,{i},S1,{int(i >= 5)},{9 if i == 3 else 0}\n" for i in range(10))
    csv.write_text("path,frame,subject,AU1,AU12\n" + rows)
    clip_ds = AUVideoDataset(str(csv), str(tmp_path), mode="val", num_frames=4, sampling_rate=2, img_size=32)
    clip, y, valid, _ = clip_ds[0]
    assert clip.shape == (3, 4, 32, 32) and y.tolist() == [1.0, 0.0] and valid.tolist() == [True, True]
    dense = AUVideoDataset(str(csv), str(tmp_path), mode="val", num_frames=4, sampling_rate=2, img_size=32,
                           dense=True)
    _, y, valid, _ = dense[0]
    assert y.shape == (4, 2) and valid[:, 1].tolist() == [True, False, True, True]  # centre window: frames 1, 3, 5, 7
