"""UAR / WAR / recall / weighted F1 against a confusion matrix computed by hand."""
import json

import numpy as np
import pytest

import lgiformer  # noqa: F401
from lgiformer import metrics as M

# true class 0: 3 right, 1 -> class 1; class 1: 1 right, 1 -> class 2; class 2: 2 right, 2 -> class 0
Y_TRUE = [0, 0, 0, 0, 1, 1, 2, 2, 2, 2]
Y_PRED = [0, 0, 0, 1, 1, 2, 2, 2, 0, 0]
CM = [[3, 1, 0], [0, 1, 1], [2, 0, 2]]


def test_confusion_matrix_by_hand():
    assert M.confusion_matrix(Y_TRUE, Y_PRED, 3).tolist() == CM


def test_uar_war_f1_by_hand():
    m = M.classification_metrics(Y_TRUE, Y_PRED, 3, ["a", "b", "c"])
    assert m["per_class_recall"] == pytest.approx({"a": 3 / 4, "b": 1 / 2, "c": 2 / 4})
    assert m["uar"] == pytest.approx((3 / 4 + 1 / 2 + 2 / 4) / 3)
    assert m["war"] == pytest.approx(6 / 10)
    f1 = [2 * 3 / (5 + 4), 2 * 1 / (2 + 2), 2 * 2 / (3 + 4)]  # 2 tp / (predicted + support)
    assert m["weighted_f1"] == pytest.approx((f1[0] * 4 + f1[1] * 2 + f1[2] * 4) / 10)
    assert m["support"] == {"a": 4, "b": 2, "c": 4}
    json.dumps(m)  # JSON-ready


def test_absent_class_left_out_of_uar():
    m = M.classification_metrics([0, 0, 1], [0, 1, 1], 3)
    assert m["per_class_recall"]["2"] is None
    assert m["uar"] == pytest.approx((0.5 + 1.0) / 2)
    assert "warning" in m
    assert "n/a" in M.format_metrics(m)


def test_bad_labels_rejected():
    with pytest.raises(ValueError):
        M.confusion_matrix([0, 3], [0, 1], 3)


def test_confusion_png(tmp_path):
    M.save_confusion_png(np.array(CM), ["a", "b", "c"], tmp_path / "cm.png", title="t")
    assert (tmp_path / "cm.png").read_bytes()[:4] == b"\x89PNG"
