"""Evidence beyond mean ± std, computed from the saved test labels and probabilities alone.

* **Bootstrap confidence intervals** (percentile bootstrap over test images, resampled *within
  each class* so every class keeps its support; 2,000 resamples, seed 0 by default). One set of
  resampled image indices serves every method and seed of a benchmark: the test set is the same
  for all of them, so the resamples pair up. Pooled over seeds, each resample's metric is the
  mean of the seeds' metrics on that resample.
* **Paired comparison with a baseline** (paired bootstrap, Koehn 2004): per resample r,
  ``Δ_r = mean over seeds of metric(method) − metric(baseline)`` on the same images; two-sided
  ``p = min(1, 2·min(P(Δ ≤ 0), P(Δ ≥ 0)))``. It assumes the test images are an i.i.d. sample of
  each class's population (the resampling is within class) and treats the seeds as fixed: it
  measures how sure we can be *on this population of images*, not across training randomness
  (the ± std over seeds shows that). Several methods against one baseline are several tests:
  :func:`holm` adjusts the p-values (Holm 1979; Benavoli et al., JMLR 2016).
* **Calibration**: ECE (Guo et al., ICML 2017: confidence = max probability, 15 equal-width bins
  on [0, 1], ``Σ_b n_b/N · |acc_b − conf_b|``), NLL (probabilities clipped at 1e-12) and the
  multiclass Brier score ``mean_i Σ_c (p_ic − 1[c = y_i])²`` (Brier 1950; not divided by C).

``scipy.stats.bootstrap`` resamples each sample independently and cannot stratify by class or share
one index set across many (method, seed) pairs, so the resampling here is written out; every
metric is vectorised over the resamples (confusion matrices by ``bincount``, AUC by a weighted
Mann–Whitney statistic), so 2,000 resamples of a 5,000-image test set take about a second per run.
All metrics are in percent, as in :mod:`ltbench.metrics`, whose definitions they follow exactly
(a resample of the identity gives the same numbers).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95
ECE_BINS = 15
NLL_CLIP = 1e-12
RESAMPLED_METRICS = ("acc", "sen", "pre", "f1", "auc")


# ----------------------------------------------------------------------------- resampling

def stratified_bootstrap_counts(labels: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES,
                                seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """How often each test image is drawn in each resample: int32 [R, N].

    Within each class, ``n_c`` images are drawn with replacement from that class's ``n_c``
    images, so every resample keeps the class supports. Multiplicities (not index lists) make
    every metric below a weighted sum, vectorised over the resamples.
    """
    labels = np.asarray(labels).astype(int).reshape(-1)
    rng = np.random.default_rng(seed)
    picks = [members[rng.integers(0, members.size, size=(resamples, members.size))]
             for members in (np.flatnonzero(labels == c) for c in np.unique(labels))]
    flat = (np.arange(resamples)[:, None] * labels.size + np.concatenate(picks, axis=1)).ravel()
    counts = np.bincount(flat, minlength=resamples * labels.size).reshape(resamples, labels.size)
    counts = counts.astype(np.int32)
    return counts


def resampled_metrics(labels: np.ndarray, probs: np.ndarray, counts: np.ndarray,
                      metrics: Sequence[str] = RESAMPLED_METRICS) -> dict[str, np.ndarray]:
    """Each metric (percent) on each resample given by ``counts`` [R, N]: metric -> float [R].

    Definitions as :func:`ltbench.metrics.compute_metrics` (macro means over all C classes with
    zero_division = 0; AUC over classes that have positives and negatives).
    """
    labels = np.asarray(labels).astype(int).reshape(-1)
    probs = np.asarray(probs, dtype=float)
    num_classes = probs.shape[1]
    preds = probs.argmax(axis=1)
    w = counts.astype(np.float64)  # [R, N]
    onehot_true = labels[:, None] == np.arange(num_classes)[None, :]  # [N, C]
    onehot_pred = preds[:, None] == np.arange(num_classes)[None, :]
    correct = (preds == labels).astype(np.float64)
    support = w @ onehot_true  # [R, C]
    predicted = w @ onehot_pred
    hits = w @ (onehot_true * correct[:, None])  # true positives per class
    recall = np.divide(hits, support, out=np.zeros_like(hits), where=support > 0)
    precision = np.divide(hits, predicted, out=np.zeros_like(hits), where=predicted > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    out: dict[str, np.ndarray] = {}
    for name in metrics:
        if name == "acc":
            out[name] = 100.0 * (w @ correct) / w.sum(axis=1)
        elif name == "sen":
            out[name] = 100.0 * recall.mean(axis=1)
        elif name == "pre":
            out[name] = 100.0 * precision.mean(axis=1)
        elif name == "f1":
            out[name] = 100.0 * f1.mean(axis=1)
        elif name == "auc":
            out[name] = weighted_macro_auc(labels, probs, w)
        else:
            raise ValueError(f"resampled_metrics: unknown metric {name!r}; choose from {RESAMPLED_METRICS}")
    return out


def resampled_class_recall(labels: np.ndarray, probs: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per-class recall (percent) on each resample given by ``counts`` [R, N]: float [R, C].

    A class without images in a resample has recall 0, as in :func:`resampled_metrics`; the
    stratified resamples keep every class's support, so this never happens there.
    """
    labels = np.asarray(labels).astype(int).reshape(-1)
    probs = np.asarray(probs, dtype=float)
    onehot_true = labels[:, None] == np.arange(probs.shape[1])[None, :]
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    w = counts.astype(np.float64)
    support = w @ onehot_true
    hits = w @ (onehot_true * correct[:, None])
    return 100.0 * np.divide(hits, support, out=np.zeros_like(hits), where=support > 0)


def weighted_macro_auc(labels: np.ndarray, probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Macro one-vs-rest ROC AUC (percent) with per-image weights [R, N]: float [R].

    For class c, ``AUC = Σ_{i pos} w_i (W_neg(s < s_i) + ½ W_neg(s = s_i)) / (W_pos · W_neg)``,
    the Mann–Whitney statistic of a weighted sample (ties count ½, as average ranks do), from a
    cumulative sum of the sorted negatives' weights and two binary searches per positive. Classes
    without positives or negatives are left out, as in ``ltbench.metrics.macro_ovr_auc``.
    """
    num_classes = probs.shape[1]
    by_image = np.ascontiguousarray(np.asarray(weights, dtype=np.float64).T)  # [N, R]: rows gather fast
    zeros = np.zeros((1, by_image.shape[1]))
    per_class = []
    for c in range(num_classes):
        positive = labels == c
        if positive.all() or not positive.any():
            continue
        neg_idx = np.flatnonzero(~positive)
        neg_idx = neg_idx[np.argsort(probs[neg_idx, c], kind="stable")]
        neg_scores = probs[neg_idx, c]
        # cum_neg[k] = weight of the k lowest-scored negatives, per resample: [n_neg + 1, R]
        cum_neg = np.concatenate([zeros, np.cumsum(by_image[neg_idx], axis=0)])
        pos_idx = np.flatnonzero(positive)
        below = np.searchsorted(neg_scores, probs[pos_idx, c], side="left")
        up_to = np.searchsorted(neg_scores, probs[pos_idx, c], side="right")
        credit = 0.5 * (cum_neg[below] + cum_neg[up_to])  # negatives below + half the tied ones
        pos_w = by_image[pos_idx]
        per_class.append((pos_w * credit).sum(axis=0) / (pos_w.sum(axis=0) * cum_neg[-1]))
    if not per_class:
        return np.full(weights.shape[0], np.nan)
    return 100.0 * np.mean(per_class, axis=0)


def percentile_interval(samples: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The central ``confidence`` percentile interval of bootstrap ``samples``."""
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.nanpercentile(np.asarray(samples, dtype=float), [tail, 100.0 - tail])
    return float(low), float(high)


def pooled_interval(per_seed: Sequence[np.ndarray], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """CI of the seed-mean: each resample's metric averaged over seeds (same images), then percentiles."""
    return percentile_interval(np.mean(np.stack(per_seed), axis=0), confidence)


def paired_bootstrap_p(method: Sequence[np.ndarray], baseline: Sequence[np.ndarray]) -> float:
    """Two-sided paired-bootstrap p-value of ``mean_seeds(method − baseline)`` on shared resamples.

    ``method[k]`` and ``baseline[k]`` are the metric of seed k on the same R resamples; seeds pair
    by position (use the seeds both have). ``p = min(1, 2·min(P(Δ ≤ 0), P(Δ ≥ 0)))``: identical
    predictions give p = 1.
    """
    if len(method) != len(baseline) or not len(method):
        raise ValueError("paired_bootstrap_p: method and baseline need the same, non-zero number of seeds")
    delta = np.mean(np.stack(method) - np.stack(baseline), axis=0)
    p = 2.0 * min(np.mean(delta <= 0), np.mean(delta >= 0))
    return float(min(1.0, p))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979), in the input order; NaN stays NaN."""
    p = np.asarray(pvalues, dtype=float)
    valid = np.flatnonzero(~np.isnan(p))
    adjusted = np.full(p.shape, np.nan)
    if valid.size == 0:
        return adjusted.tolist()
    order = valid[np.argsort(p[valid], kind="stable")]
    m = order.size
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


# ----------------------------------------------------------------------------- calibration

def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE in percent: confidence = max probability, ``bins`` equal-width bins on [0, 1].

    A confidence of exactly 1 falls in the last bin; bin b holds (b/B, (b+1)/B] for b > 0 and
    [0, 1/B] for the first, as in Guo et al.'s reference code (``conf > lo and conf <= hi``).
    """
    labels, probs = np.asarray(labels).astype(int).reshape(-1), np.asarray(probs, dtype=float)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(float)
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            total += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return 100.0 * total


def reliability_bins(labels: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> dict[str, list]:
    """Per-bin count, mean confidence and accuracy (for the reliability diagram); NaN for empty bins."""
    labels, probs = np.asarray(labels).astype(int).reshape(-1), np.asarray(probs, dtype=float)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(float)
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    conf_sum = np.bincount(which, weights=confidence, minlength=bins)
    hit_sum = np.bincount(which, weights=correct, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"count": count.tolist(), "confidence": (conf_sum / count).tolist(),
                "accuracy": (hit_sum / count).tolist()}


def negative_log_likelihood(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean ``−log p_y`` with probabilities clipped at 1e-12."""
    labels, probs = np.asarray(labels).astype(int).reshape(-1), np.asarray(probs, dtype=float)
    p_true = probs[np.arange(labels.size), labels]
    return float(-np.mean(np.log(np.clip(p_true, NLL_CLIP, None))))


def brier_score(labels: np.ndarray, probs: np.ndarray) -> float:
    """Multiclass Brier score: mean over images of ``Σ_c (p_c − 1[c = y])²`` (not divided by C)."""
    labels, probs = np.asarray(labels).astype(int).reshape(-1), np.asarray(probs, dtype=float)
    target = np.zeros_like(probs)
    target[np.arange(labels.size), labels] = 1.0
    return float(np.mean(np.sum((probs - target) ** 2, axis=1)))


# ----------------------------------------------------------------------------- baselines

def majority_baseline(train_counts: Sequence[int], test_labels: np.ndarray) -> dict[str, float]:
    """Headline metrics (percent) of always predicting the training split's most frequent class.

    Ties go to the lower class index. Its probabilities are constant, so AUC is 50 for every class.
    """
    from ltbench.metrics import compute_metrics

    num_classes = len(train_counts)
    majority = int(np.argmax(train_counts))
    probs = np.zeros((len(test_labels), num_classes))
    probs[:, majority] = 1.0
    metrics = compute_metrics(np.asarray(test_labels), probs, [str(c) for c in range(num_classes)])
    return {k: metrics[k] for k in RESAMPLED_METRICS}
