"""Flexible Sampling's data selection as the official ``flexsampling/core`` computes it (PyJulie/FlexSampling).

Pure functions, each mirroring one official function (values checked against the code): anchors
(``anchor.py``), the curriculum query's class weights and quotas (``curriculum.py``), BALD
(``bald.py``), the query trigger and the active-set counts. ``ltbench.methods.flexsampling`` (the
method, which re-exports them) runs them; docs/flexsampling.md maps them onto the paper.
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from ltbench.errors import LtbenchError


def anchor_counts(class_counts: Sequence[int], scaling: float = 0.1, min_per_class: int = 2,
                  rounding: str = "float") -> list[int]:
    """Anchors per class, as ``AnchorSelector.select`` (``flexsampling/core/anchor.py``, 17745eb = 8f31c0c).

    With n_min, n_max over the classes present (count > 0), ``r = n_max / max(1, n_min)``,
    ``t = r·s``::

        n_anchor_c = min(n_c, max(min_per_class, int(n_min · min(n_c / n_min, t))))

    in float64 as the code (``rounding="float"``): ``int`` truncates, and ``n_min · (n_c/n_min)``
    can fall just below n_c (376 → 375). ``rounding="exact"`` computes the same expression exactly,
    ``min(n_c, max(min_per_class, min(n_c, floor(n_max · s))))`` with s taken as its decimal value.
    A class with count 0 (absent from the code's ``np.unique(labels)``) gets 0.
    """
    if rounding not in ("float", "exact"):
        raise LtbenchError(f"anchor_counts: rounding must be 'float' or 'exact', got {rounding!r}")
    counts = [int(n) for n in class_counts]
    present = [n for n in counts if n > 0]
    if not present:
        return [0 for _ in counts]
    n_min, n_max = min(present), max(present)
    target_ratio = n_max / max(1, n_min) * scaling
    out = []
    for n in counts:
        if n <= 0:
            out.append(0)
            continue
        if rounding == "float":
            proportion = n / max(1, n_min)
            k = max(min_per_class, int(n_min * min(proportion, target_ratio)))
        else:
            k = max(min_per_class, min(n, math.floor(Fraction(n_max) * Fraction(str(scaling)))))
        out.append(min(k, n))
    return out


def class_prototypes(features: np.ndarray, labels: np.ndarray) -> dict[int, np.ndarray]:
    """Mean feature per class present (``AnchorSelector.compute_prototypes``), in the features' dtype."""
    features, labels = np.asarray(features), np.asarray(labels)
    return {int(c): features[labels == c].mean(axis=0) for c in np.unique(labels)}


def select_anchors(features: np.ndarray, labels: np.ndarray, scaling: float = 0.1, min_per_class: int = 2,
                   prototypes: Mapping[int, np.ndarray] | None = None, rounding: str = "float") -> list[int]:
    """Anchor indices, ascending (``AnchorSelector.select``, ``flexsampling/core/anchor.py``).

    Per class c (sorted): the :func:`anchor_counts` samples of c nearest its prototype μ_c in
    Euclidean distance ``‖f_i − μ_c‖₂`` (``np.linalg.norm``, features not normalised), ordered by
    ``np.argsort`` (numpy's default sort, as the code: ties are not guaranteed to keep index order).
    Spatial features (> 2-D) are averaged over their spatial axes first, as ``extract_features``.
    """
    features, labels = np.asarray(features), np.asarray(labels)
    if features.ndim > 2:
        features = features.mean(axis=tuple(range(1, features.ndim - 1)))
    if prototypes is None:
        prototypes = class_prototypes(features, labels)
    classes = sorted(prototypes)
    counts = [int((labels == c).sum()) for c in classes]
    quota = dict(zip(classes, anchor_counts(counts, scaling, min_per_class, rounding)))
    selected: list[int] = []
    for c in classes:
        indices = np.where(labels == c)[0]
        distances = np.linalg.norm(features[indices] - prototypes[c], axis=1)
        order = np.argsort(distances)
        selected.extend(indices[order[:quota[c]]].tolist())
    return sorted(selected)


def class_probabilities(val_accuracy_per_class: Mapping[int, float], num_classes: int) -> dict[int, float]:
    """``p_c = (1 − a_c) · C / Σ_k (1 − a_k)`` (``CurriculumSampler.compute_class_probabilities``).

    ``a_c`` are fractions in [0, 1]; a class missing from the dict counts as ``a_c = 0``; if
    ``Σ(1 − a_k) < 1e-8`` (every class perfect) every ``p_c = 1``. The p_c sum to C (mean 1).
    """
    raw = {c: 1.0 - val_accuracy_per_class.get(c, 0.0) for c in range(num_classes)}
    total = sum(raw.values())
    if total < 1e-8:
        return {c: 1.0 for c in range(num_classes)}
    delta = num_classes / total
    return {c: raw[c] * delta for c in range(num_classes)}


def class_quotas(pool_sizes: Sequence[int], probabilities: Mapping[int, float] | Sequence[float],
                 query_ratio: float = 0.1, divide_by_classes: bool = True) -> list[int]:
    """Samples to query per class (``CurriculumSampler.query``, ``flexsampling/core/curriculum.py``).

    17745eb (``divide_by_classes=True``): ``n_c = min(|pool_c|, max(1, int(|pool_c| · q · p_c / C)))``;
    8f31c0c (``False``): ``n_c = min(|pool_c|, max(1, int(|pool_c| · q · p_c)))``. An empty pool gets 0
    (the code skips it); a class with p_c = 0 still gets 1. Evaluated left to right in float64 as the code.
    """
    num_classes = len(pool_sizes)
    out = []
    for c, size in enumerate(pool_sizes):
        size = int(size)
        if size <= 0:
            out.append(0)
            continue
        if divide_by_classes:
            n = max(1, int(size * query_ratio * probabilities[c] / num_classes))
        else:
            n = max(1, int(size * query_ratio * probabilities[c]))
        out.append(min(n, size))
    return out


def bald_scores(mc_probs: Tensor) -> Tensor:
    """BALD from Monte-Carlo softmax probabilities ``[T, N, C]`` (``BALDUncertainty.score``, bald.py).

    ``BALD_i = H(mean_t p_t) − mean_t H(p_t)``, ``H(p) = −Σ_c p_c log(p_c + 1e-10)``, in the input's
    dtype (the code: float32). Higher = more uncertain. The 2023 ``InstanceWiseSampling.py`` ranks
    by the same quantity (without the epsilon).
    """
    if mc_probs.ndim != 3:
        raise LtbenchError(f"bald_scores: expected MC probabilities [T, N, C], got shape {tuple(mc_probs.shape)}")
    mean_probs = mc_probs.mean(dim=0)
    h_mean = -(mean_probs * torch.log(mean_probs + 1e-10)).sum(dim=1)
    h_per_sample = -(mc_probs * torch.log(mc_probs + 1e-10)).sum(dim=2)
    return h_mean - h_per_sample.mean(dim=0)


def curriculum_query(all_labels: Sequence[int], current_indices: Iterable[int], uncertainty_scores,
                     val_accuracy_per_class: Mapping[int, float], num_classes: int, query_ratio: float = 0.1,
                     divide_by_classes: bool = True) -> list[int]:
    """New indices to add (``CurriculumSampler.query``, ``flexsampling/core/curriculum.py``).

    Pools = training indices not in ``current_indices``, per class in index order; quotas by
    :func:`class_quotas` from :func:`class_probabilities`; per class the ``n_c`` pool samples with the
    highest ``uncertainty_scores[idx]`` (indexed by training index; Python's stable sort, descending:
    ties keep index order). Returned class by class (not sorted).
    """
    current = set(int(i) for i in current_indices)
    probs = class_probabilities(val_accuracy_per_class, num_classes)
    pools: list[list[int]] = [[] for _ in range(num_classes)]
    for idx, label in enumerate(all_labels):
        if idx not in current:
            pools[int(label)].append(idx)
    quotas = class_quotas([len(p) for p in pools], probs, query_ratio, divide_by_classes)
    selected: list[int] = []
    for c, pool in enumerate(pools):
        if not pool:
            continue
        ranked = sorted(((idx, uncertainty_scores[idx]) for idx in pool), key=lambda x: x[1], reverse=True)
        selected.extend(idx for idx, _ in ranked[:quotas[c]])
    return selected


def query_trigger(epoch: int, warmup_epochs: int, epochs_without_improvement: int, patience: int,
                  epochs_since_last_query: int, query_interval: int = 0) -> str | None:
    """Why a query fires after 0-indexed main epoch ``epoch`` (``FlexSamplingTrainer.run``, pipeline.py).

    None before ``warmup_epochs``; ``"plateau"`` when ``epochs_without_improvement >= patience``
    (17745eb's only trigger); else ``"scheduled"`` when ``query_interval > 0`` and
    ``epochs_since_last_query >= query_interval`` (8f31c0c; its counter counts epochs ≥ warm-up since
    the last query that added samples, this epoch included); else None. The caller also requires a
    non-empty pool.
    """
    if epoch < warmup_epochs:
        return None
    if epochs_without_improvement >= patience:
        return "plateau"
    if query_interval > 0 and epochs_since_last_query >= query_interval:
        return "scheduled"
    return None


def active_class_counts(labels: Sequence[int], active: Tensor | np.ndarray, num_classes: int) -> list[int]:
    """Active-set counts with 1 for an absent class (``FlexSamplingTrainer._build_criterion``, 8f31c0c)."""
    labels = np.asarray(labels)[np.asarray(torch.as_tensor(active).cpu().numpy(), dtype=bool)]
    counts = np.bincount(labels, minlength=num_classes)
    return [int(n) if n > 0 else 1 for n in counts]
