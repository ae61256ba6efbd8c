"""Test-set metrics of one run, as a JSON-ready dict.

Conventions (they differ from the ECL reference code; keep this in mind when cross-checking):

* The confusion matrix is ``cm[true][pred]`` (scikit-learn's layout). ECL stores its matrix as
  ``[pred, true]``, i.e. the transpose.
* AUC is the macro one-vs-rest ROC AUC computed on softmax *probabilities*. ECL feeds raw logits
  to its AUC; ROC AUC is defined on scores of each class, and the per-class ranking of logits can
  differ from that of probabilities (softmax couples the classes), so the numbers can differ.
* F1 is the macro mean of per-class F1 computed from *unrounded* precision and recall. ECL
  derives F1 from rounded precision/recall, which shifts it by up to a few hundredths.
* Every score is computed over ``labels=range(C)`` with ``zero_division=0``: a class that is
  never predicted has precision 0, a class absent from the labels has recall 0, and both still
  count in the macro means (scikit-learn's behaviour with explicit labels). Note that this makes
  ``sen`` differ from ``sklearn.metrics.balanced_accuracy_score`` only when a class is absent from
  the test labels (that function drops such classes).

ltbench uses the standard scikit-learn definitions so its numbers can be reproduced with a few
lines of scikit-learn by anyone, independently of ltbench.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from ltbench.errors import LtbenchError

HEADLINE = ("acc", "sen", "pre", "f1", "auc")
HEADLINE_LABELS = {"acc": "Acc", "sen": "Sen", "pre": "Pre", "f1": "F1", "auc": "AUC"}
# Metrics the best-validation checkpoint may be selected by. ``group_acc``: the mean of the
# head/medium/tail mean recalls, MONICA's headline "accuracy" (Ju et al.'s MONICA suite,
# utils/log_accuracy.py ``avg_acc``); with ``group_sizes`` (2, 3) on 8 classes its grouping.
# ``last``: no selection, the last selectable epoch (ECL's released train.py; ltbench.trainer.selection).
SELECTABLE = (*HEADLINE, "group_acc", "last")
GROUPS = ("head", "medium", "tail")


def compute_metrics(labels: np.ndarray, probs: np.ndarray, class_names: Sequence[str],
                    train_counts: Sequence[int] | None = None, group_sizes: Sequence[int] = ()) -> dict:
    """Headline, per-class and confusion-matrix metrics (percent) of predictions ``argmax(probs)``.

    ``labels`` are int class indices [N], ``probs`` softmax probabilities [N, C]. With
    ``train_counts`` the classes are also split into head/medium/tail groups by training count
    (:func:`group_classes`; terciles unless ``group_sizes``), with each group's mean recall and
    ``group_acc``, the mean of those (groups without a class left out).
    """
    labels, probs = _check_inputs(labels, probs, class_names, train_counts)
    num_classes = probs.shape[1]
    class_ids = list(range(num_classes))
    preds = probs.argmax(axis=1)

    precision, recall, f1, support = precision_recall_fscore_support(
        labels, preds, labels=class_ids, average=None, zero_division=0)
    cm = confusion_matrix(labels, preds, labels=class_ids)

    out: dict = {
        "acc": _pct(float(np.mean(preds == labels))),
        "sen": _pct(float(np.mean(recall))),
        "pre": _pct(float(np.mean(precision))),
        "f1": _pct(float(np.mean(f1))),
        "auc": macro_ovr_auc(labels, probs),
        "per_class": {
            "name": [str(name) for name in class_names],
            "precision": [_pct(float(v)) for v in precision],
            "recall": [_pct(float(v)) for v in recall],
            "f1": [_pct(float(v)) for v in f1],
            "support": [int(v) for v in support],
        },
        "confusion_matrix": cm.astype(int).tolist(),
        "confusion_matrix_normalized": row_normalize(cm).tolist(),
    }
    if train_counts is not None:
        groups = group_classes(train_counts, group_sizes)
        out["groups"] = {g: [str(class_names[i]) for i in ids] for g, ids in groups.items()}
        out["group_recall"] = {
            g: _pct(float(np.mean(recall[ids]))) if ids else float("nan")
            for g, ids in groups.items()
        }
        means = [float(np.mean(recall[ids])) for ids in groups.values() if ids]
        out["group_acc"] = _pct(float(np.mean(means)))
    return out


def macro_ovr_auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean one-vs-rest ROC AUC (percent) over classes with both positives and negatives; else NaN.

    Each class's AUC is the Mann-Whitney statistic ``(R_pos − n_pos(n_pos+1)/2) / (n_pos·n_neg)``
    with average ranks for ties — exactly ``roc_auc_score`` (tested), for all classes in one
    vectorised pass: scikit-learn's per-class input checks cost ~30 ms per validation epoch.
    """
    onehot = labels[:, None] == np.arange(probs.shape[1])[None, :]
    n_pos = onehot.sum(axis=0)
    n_neg = len(labels) - n_pos
    scorable = (n_pos > 0) & (n_neg > 0)
    if not scorable.any():
        return float("nan")
    ranks = rankdata(probs[:, scorable], axis=0)  # average ranks for ties
    pos = n_pos[scorable]
    aucs = ((ranks * onehot[:, scorable]).sum(axis=0) - pos * (pos + 1) / 2) / (pos * n_neg[scorable])
    return _pct(float(np.mean(aucs)))


def row_normalize(cm: np.ndarray) -> np.ndarray:
    """Each row divided by its sum; a row with no samples stays all zeros (not NaN)."""
    cm = np.asarray(cm, dtype=float)
    totals = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, totals, out=np.zeros_like(cm), where=totals > 0)


def group_classes(train_counts: Sequence[int], sizes: Sequence[int] = ()) -> dict[str, list[int]]:
    """Class indices of the head/medium/tail groups, by training count descending.

    Ties are broken by class index so the grouping is deterministic. Default: terciles, with
    ``np.array_split`` putting the extra classes in the first groups (7 classes -> 3/2/2).
    ``sizes = (h, m)``: the h most frequent classes are head, the next m medium, the rest tail
    (MONICA's ``head: 2, medium: 5`` on ISIC-2019-LT is ``(2, 3)``: classes 0–1 / 2–4 / 5–7).
    """
    order = sorted(range(len(train_counts)), key=lambda i: (-int(train_counts[i]), i))
    if sizes:
        head, medium = (int(n) for n in sizes)
        if head + medium >= len(order):
            raise LtbenchError(f"group_sizes {list(sizes)}: {head} head + {medium} medium classes leave no tail "
                               f"class of {len(order)}")
        return {"head": order[:head], "medium": order[head:head + medium], "tail": order[head + medium:]}
    parts = np.array_split(np.array(order, dtype=int), len(GROUPS))
    return {g: [int(i) for i in part] for g, part in zip(GROUPS, parts)}


def _check_inputs(labels: np.ndarray, probs: np.ndarray, class_names: Sequence[str],
                  train_counts: Sequence[int] | None) -> tuple[np.ndarray, np.ndarray]:
    """Shapes must agree; mismatches are programming errors, hence ValueError."""
    labels = np.asarray(labels).astype(int).reshape(-1)
    probs = np.asarray(probs, dtype=float)
    if probs.ndim != 2 or probs.shape[0] != labels.shape[0]:
        raise ValueError(f"probs must be [N, C] with N={labels.shape[0]}, got {probs.shape}")
    num_classes = probs.shape[1]
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
    if train_counts is not None and len(train_counts) != num_classes:
        raise ValueError(f"{len(train_counts)} train counts for {num_classes} classes")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got {labels.min()}..{labels.max()}")
    return labels, probs


def _pct(fraction: float) -> float:
    return 100.0 * fraction
