"""Temporal sampling: random train windows (padded when short), deterministic centre windows, N test windows."""
import numpy as np
import pytest

from lgiformer.data import sampling


def test_train_windows_are_in_range_strided_and_random():
    starts = set()
    for seed in range(50):
        idx = sampling.train_indices(100, 8, 4, np.random.default_rng(seed))
        assert idx.dtype.kind == "i" and len(idx) == 8
        assert idx.min() >= 0 and idx.max() < 100 and (np.diff(idx) == 4).all()
        starts.add(int(idx[0]))
    assert len(starts) > 10 and max(starts) <= 100 - 29           # every start leaves room for the whole window
    a = sampling.train_indices(100, 8, 4, np.random.default_rng(3))
    np.testing.assert_array_equal(a, sampling.train_indices(100, 8, 4, np.random.default_rng(3)))


def test_short_videos_are_padded_with_the_last_frame():
    idx = sampling.train_indices(10, 8, 4, np.random.default_rng(0))
    np.testing.assert_array_equal(idx, [0, 4, 8, 9, 9, 9, 9, 9])
    np.testing.assert_array_equal(sampling.center_indices(1, 4, 2), [0, 0, 0, 0])
    np.testing.assert_array_equal(sampling.pretrain_indices(61, rng=np.random.default_rng(0)), np.arange(0, 61, 4))
    with pytest.raises(ValueError):
        sampling.train_indices(0, 8, 4, np.random.default_rng(0))


def test_validation_takes_the_centre_window():
    idx = sampling.center_indices(101, 8, 4)                      # span 29, room 72 -> start 36
    np.testing.assert_array_equal(idx, 36 + 4 * np.arange(8))
    np.testing.assert_array_equal(idx, sampling.center_indices(101, 8, 4))
    assert idx[0] - 0 == 100 - idx[-1]                            # centred


def test_test_clips_are_evenly_spaced_distinct_windows():
    windows = sampling.test_clip_indices(100, 8, 4, 3)
    assert len(windows) == 3 and all(len(w) == 8 for w in windows)
    assert windows[0][0] == 0 and windows[-1][-1] == 99           # first and last possible windows
    assert len({tuple(w) for w in windows}) == 3
    assert all(w.min() >= 0 and w.max() < 100 for w in windows)
    np.testing.assert_array_equal(sampling.test_clip_indices(100, 8, 4, 1)[0], sampling.center_indices(100, 8, 4))
    # shorter than a window: phase-shifted within the stride, still distinct views
    short = sampling.test_clip_indices(12, 8, 4, 2)
    assert len({tuple(w) for w in short}) == 2 and all(w.max() == 11 for w in short)
    # one frame: nothing to vary
    assert all((w == 0).all() for w in sampling.test_clip_indices(1, 8, 4, 2))
    assert sampling.multi_clip_indices is sampling.test_clip_indices
