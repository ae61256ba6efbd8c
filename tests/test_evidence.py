"""Bootstrap intervals, paired tests, Holm, calibration and the majority baseline (ltbench.report.statistics)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from ltbench.report import statistics as ev
from ltbench.metrics import compute_metrics


def _random_run(rng, n=60, num_classes=4):
    labels = np.repeat(np.arange(num_classes), n // num_classes)
    logits = rng.normal(size=(labels.size, num_classes))
    logits[np.arange(labels.size), labels] += 1.0
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return labels, probs


def test_resampling_keeps_every_class_support():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
    counts = ev.stratified_bootstrap_counts(labels, resamples=50, seed=3)
    assert counts.shape == (50, labels.size)
    for c in range(4):
        np.testing.assert_array_equal(counts[:, labels == c].sum(1), (labels == c).sum())
    # seeded: the same resamples every time
    np.testing.assert_array_equal(counts, ev.stratified_bootstrap_counts(labels, resamples=50, seed=3))


def test_the_identity_resample_gives_the_metrics_of_ltbench_metrics():
    labels, probs = _random_run(np.random.default_rng(0))
    probs[:5, 1] = probs[5:10, 1]  # some tied scores
    ones = np.ones((1, labels.size), dtype=np.int32)
    got = ev.resampled_metrics(labels, probs, ones)
    want = compute_metrics(labels, probs, ["a", "b", "c", "d"])
    for name in ev.RESAMPLED_METRICS:
        assert got[name][0] == pytest.approx(want[name], abs=1e-9), name


def test_weighted_auc_equals_the_auc_of_the_duplicated_sample():
    rng = np.random.default_rng(1)
    labels, probs = _random_run(rng, n=40)
    probs = np.round(probs, 1)  # many ties
    counts = ev.stratified_bootstrap_counts(labels, resamples=5, seed=0)
    got = ev.weighted_macro_auc(labels, probs, counts.astype(float))
    for r in range(5):
        idx = np.repeat(np.arange(labels.size), counts[r])
        y, p = labels[idx], probs[idx]
        want = np.mean([roc_auc_score(y == c, p[:, c]) for c in range(4)])
        assert got[r] == pytest.approx(100 * want, abs=1e-9)


def test_the_interval_covers_the_true_accuracy_at_about_the_stated_rate():
    # Class c's images are correct with probability q_c; supports fixed, as the stratified
    # bootstrap assumes. The true accuracy is Σ n_c q_c / N.
    rng = np.random.default_rng(2026)
    supports, q = np.array([60, 30, 10]), np.array([0.9, 0.7, 0.4])
    labels = np.repeat(np.arange(3), supports)
    truth = 100 * float((supports * q).sum() / supports.sum())
    trials, covered = 200, 0
    for t in range(trials):
        correct = rng.random(labels.size) < q[labels]
        preds = np.where(correct, labels, (labels + 1) % 3)
        probs = np.eye(3)[preds] * 0.8 + 0.2 / 3
        acc = ev.resampled_metrics(labels, probs, ev.stratified_bootstrap_counts(labels, 400, seed=t),
                                   metrics=("acc",))["acc"]
        low, high = ev.percentile_interval(acc)
        covered += low <= truth <= high
    # 95 % nominal; the percentile bootstrap under-covers slightly at n = 100 (binomial sd ≈ 1.5 %).
    assert 0.88 <= covered / trials <= 0.99


def test_paired_test_p_is_one_for_identical_predictions_and_small_for_a_clearly_better_model():
    rng = np.random.default_rng(5)
    labels, probs = _random_run(rng, n=200)
    counts = ev.stratified_bootstrap_counts(labels, 1000, seed=0)
    same = ev.resampled_metrics(labels, probs, counts)["acc"]
    assert ev.paired_bootstrap_p([same, same], [same, same]) == 1.0
    better = np.eye(4)[labels] * 0.9 + 0.1 / 4  # always right
    good = ev.resampled_metrics(labels, better, counts)["acc"]
    assert ev.paired_bootstrap_p([good], [same]) < 0.01


def test_pooled_interval_averages_the_seeds_per_resample():
    a, b = np.arange(100.0), np.arange(100.0)[::-1]
    assert ev.pooled_interval([a, b]) == (49.5, 49.5)


def test_holm_matches_the_hand_worked_step_down():
    # sorted p: 0.01 (×3 = 0.03), 0.02 (×2 = 0.04), 0.04 (×1 = 0.04) -> monotone
    assert ev.holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert ev.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    out = ev.holm([float("nan"), 0.01])
    assert math.isnan(out[0]) and out[1] == pytest.approx(0.01)


def test_calibration_scores_on_hand_worked_values():
    labels = np.array([0, 1, 1, 0])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.55, 0.45]])
    # confidences 0.9, 0.8, 0.6, 0.55 (15 bins: 0.9 -> bin 13, 0.8 -> 11, 0.6 -> 8, 0.55 -> 8);
    # correct 1, 1, 0, 1. ECE = 1/4·|1−0.9| + 1/4·|1−0.8| + 2/4·|0.5−0.575| = 0.025 + 0.05 + 0.0375
    assert ev.expected_calibration_error(labels, probs) == pytest.approx(100 * 0.1125)
    nll = -np.mean(np.log([0.9, 0.8, 0.4, 0.55]))
    assert ev.negative_log_likelihood(labels, probs) == pytest.approx(nll)
    brier = np.mean([0.01 + 0.01, 0.04 + 0.04, 0.36 + 0.36, 0.2025 + 0.2025])
    assert ev.brier_score(labels, probs) == pytest.approx(brier)
    bins = ev.reliability_bins(labels, probs)
    assert sum(bins["count"]) == 4 and bins["count"][8] == 2
    assert bins["accuracy"][8] == pytest.approx(0.5) and bins["confidence"][8] == pytest.approx(0.575)


def test_a_confidence_of_one_falls_in_the_last_bin_and_clipping_keeps_nll_finite():
    labels = np.array([0, 1])
    probs = np.array([[1.0, 0.0], [1.0, 0.0]])
    assert ev.expected_calibration_error(labels, probs) == pytest.approx(50.0)
    assert ev.negative_log_likelihood(labels, probs) == pytest.approx(-0.5 * math.log(1e-12))


def test_majority_baseline():
    out = ev.majority_baseline([5, 20, 10], np.array([0, 1, 1, 2]))
    assert out["acc"] == 50.0 and out["sen"] == pytest.approx(100 / 3)
    assert out["auc"] == 50.0


def test_resampled_class_recall_is_the_per_class_recall_of_each_resample():
    labels, probs = _random_run(np.random.default_rng(7))
    ones = np.ones((1, labels.size), dtype=np.int32)
    want = compute_metrics(labels, probs, ["a", "b", "c", "d"])["per_class"]["recall"]
    np.testing.assert_allclose(ev.resampled_class_recall(labels, probs, ones)[0], want, atol=1e-9)
    counts = ev.stratified_bootstrap_counts(labels, 20, seed=1)
    per_class = ev.resampled_class_recall(labels, probs, counts)
    assert per_class.shape == (20, 4)
    # their mean over classes is the resampled Sen
    np.testing.assert_allclose(per_class.mean(axis=1), ev.resampled_metrics(labels, probs, counts)["sen"])
