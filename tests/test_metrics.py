"""compute_metrics against numbers worked out by hand."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ltbench.metrics import HEADLINE, HEADLINE_LABELS, compute_metrics, group_classes


def probs_for(preds: list[int], num_classes: int) -> np.ndarray:
    """Probabilities whose argmax is ``preds`` (0.8 on the prediction, the rest shared)."""
    probs = np.full((len(preds), num_classes), 0.2 / (num_classes - 1))
    probs[np.arange(len(preds)), preds] = 0.8
    return probs


def test_three_class_by_hand():
    # cm[true][pred] = [[2,1,0],[0,1,1],[0,0,1]]
    labels = np.array([0, 0, 0, 1, 1, 2])
    preds = [0, 0, 1, 1, 2, 2]
    m = compute_metrics(labels, probs_for(preds, 3), ["a", "b", "c"])
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    # precision per column: 2/2, 1/2, 1/2; recall per row: 2/3, 1/2, 1/1
    # F1: 2·1·(2/3)/(5/3) = 0.8, 2·.5·.5/1 = 0.5, 2·.5·1/1.5 = 2/3
    assert m["acc"] == pytest.approx(100 * 4 / 6)
    assert m["pre"] == pytest.approx(100 * (1 + 0.5 + 0.5) / 3)
    assert m["sen"] == pytest.approx(100 * (2 / 3 + 0.5 + 1) / 3)
    assert m["f1"] == pytest.approx(100 * (0.8 + 0.5 + 2 / 3) / 3)
    pc = m["per_class"]
    assert pc["name"] == ["a", "b", "c"]
    assert pc["precision"] == pytest.approx([100, 50, 50])
    assert pc["recall"] == pytest.approx([100 * 2 / 3, 50, 100])
    assert pc["f1"] == pytest.approx([80, 50, 100 * 2 / 3])
    assert pc["support"] == [3, 2, 1]
    norm = m["confusion_matrix_normalized"]
    assert norm[0] == pytest.approx([2 / 3, 1 / 3, 0])
    assert norm[1] == pytest.approx([0, 0.5, 0.5])
    assert norm[2] == pytest.approx([0, 0, 1])


def test_f1_uses_unrounded_precision_recall():
    # recall 2/3 and precision 1: F1 is exactly 0.8, not the 0.7988... from 66.67 rounded
    labels = np.array([0, 0, 0, 1])
    m = compute_metrics(labels, probs_for([0, 0, 1, 1], 2), ["a", "b"])
    assert m["per_class"]["f1"][0] == pytest.approx(80.0, abs=1e-12)


def test_auc_by_hand_on_probabilities():
    # class 1 scores: negatives {0.1, 0.6}, positives {0.4, 0.9} -> 3 of 4 pairs ordered = 0.75
    labels = np.array([0, 0, 1, 1])
    p1 = np.array([0.1, 0.6, 0.4, 0.9])
    m = compute_metrics(labels, np.stack([1 - p1, p1], axis=1), ["a", "b"])
    assert m["auc"] == pytest.approx(75.0)


def test_never_predicted_class_has_precision_zero():
    labels = np.array([0, 1, 2, 2])
    m = compute_metrics(labels, probs_for([0, 1, 1, 1], 3), ["a", "b", "c"])
    assert m["per_class"]["precision"] == pytest.approx([100, 100 / 3, 0])
    assert m["pre"] == pytest.approx((100 + 100 / 3 + 0) / 3)
    assert m["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [0, 2, 0]]


def test_absent_class_counts_zero_and_auc_stays_finite():
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.8, 0.1]])
    m = compute_metrics(labels, probs, ["a", "b", "c"])
    assert m["acc"] == pytest.approx(100.0)
    # class c: no support, never predicted -> recall 0, precision 0, still in the macro mean
    assert m["per_class"]["recall"] == pytest.approx([100, 100, 0])
    assert m["per_class"]["support"] == [2, 2, 0]
    assert m["sen"] == pytest.approx(200 / 3)
    assert m["pre"] == pytest.approx(200 / 3)
    # AUC over a and b only (both perfectly ranked); c has no positives and is skipped
    assert m["auc"] == pytest.approx(100.0)
    assert m["confusion_matrix_normalized"][2] == [0.0, 0.0, 0.0]


def test_auc_nan_when_no_class_has_both_positives_and_negatives():
    m = compute_metrics(np.array([1, 1]), probs_for([1, 1], 3), ["a", "b", "c"])
    assert math.isnan(m["auc"])


def test_perfect_predictions_give_100():
    labels = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    m = compute_metrics(labels, probs_for(list(labels), 4), list("abcd"))
    for key in HEADLINE:
        assert m[key] == pytest.approx(100.0), key


def test_head_medium_tail_terciles_seven_classes():
    counts = [10, 50, 50, 5, 100, 1, 7]
    # sorted desc, ties by index: 4(100) 1(50) 2(50) 0(10) 6(7) 3(5) 5(1) -> 3/2/2
    assert group_classes(counts) == {"head": [4, 1, 2], "medium": [0, 6], "tail": [3, 5]}
    names = [f"c{i}" for i in range(7)]
    labels = np.arange(7).repeat(2)
    preds = labels.copy()
    preds[labels == 0] = 4                  # medium class c0: recall 0
    preds[(labels == 3)] = [3, 4]           # tail class c3: recall 1/2
    m = compute_metrics(labels, probs_for(list(preds), 7), names, train_counts=counts)
    assert m["groups"] == {"head": ["c4", "c1", "c2"], "medium": ["c0", "c6"], "tail": ["c3", "c5"]}
    assert m["group_recall"]["head"] == pytest.approx(100.0)
    assert m["group_recall"]["medium"] == pytest.approx(50.0)
    assert m["group_recall"]["tail"] == pytest.approx(75.0)


def test_no_groups_without_train_counts():
    m = compute_metrics(np.array([0, 1]), probs_for([0, 1], 2), ["a", "b"])
    assert "groups" not in m and "group_recall" not in m


def test_output_is_plain_json():
    labels = np.array([0, 1, 2, 2, 1])
    m = compute_metrics(labels, probs_for([0, 1, 1, 2, 1], 3), ["a", "b", "c"],
                        train_counts=np.array([5, 3, 1]))
    text = json.dumps(m, allow_nan=False)
    assert json.loads(text) == m

    def walk(value):
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        else:
            assert type(value) in (int, float, str), type(value)

    walk(m)


def test_headline_labels_cover_headline():
    assert set(HEADLINE_LABELS) == set(HEADLINE)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        compute_metrics(np.array([0, 1]), np.zeros((2, 3)), ["a", "b"])


def test_auc_equals_scikit_learn_class_by_class_with_ties():
    from sklearn.metrics import roc_auc_score

    from ltbench.metrics import macro_ovr_auc

    rng = np.random.default_rng(4)
    labels = rng.integers(0, 5, 200)
    labels[labels == 3] = 4  # class 3 absent: skipped, not an error
    probs = np.round(rng.random((200, 5)), 1)  # coarse values: many ties
    probs /= probs.sum(axis=1, keepdims=True)
    expected = np.mean([roc_auc_score(labels == c, probs[:, c]) for c in (0, 1, 2, 4)])
    assert macro_ovr_auc(labels, probs) == pytest.approx(100 * expected, abs=1e-9)
