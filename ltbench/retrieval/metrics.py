"""Retrieval metrics of a representation: rank the training split for every test image.

Pure functions of embeddings and labels; nothing here draws a random number. Conventions
(docs/retrieval.md; spec ``retrieval.md`` §5 and §8):

* **Protocol.** Database = training split, queries = test split, relevance = same label. Where
  both sides carry lesion (group) ids, the database images of the query's own lesion are removed
  from that query's ranking (``exclude_same_group=False`` keeps them); a missing id (None, NaN,
  "") never matches. N_q = the number of database images left for query q.
* **Distances.** ``"cosine"``: ``1 − <q, d>`` on L2-normalised float32 vectors. ``"hamming"``: the
  number of differing components of codes in {−1, 0, +1} (``sign(u − 0.5)``; a 0 differs from ±1).
* **Ranking** by (distance, database index): a stable sort of the distances in database order, so
  equal distances keep the lower database index first (hashing rankings have ≤ bits + 1 levels;
  an unstable sort moves AP).
* **Metrics per query** (then per class, class-macro = the headline, micro = mean over queries,
  head/medium/tail = macro over :func:`ltbench.metrics.group_classes` of the database counts):
  - ``map_all`` / ``map_10``: AP@k in the hashing convention (DeepHash-pytorch ``CalcTopMap``):
    ``AP@k = (1/R_k) Σ_{j=1..R_k} j / r_j`` with r_j the rank of the j-th relevant item within the
    top k and R_k the number of relevant items in the top k; 0 when R_k = 0 (the query still
    counts). k = all means k = N_q — *not* the ``[:-1]`` slice of that code, which drops the last
    ranked item.
  - ``p_10``: relevant items in the top min(10, N_q) / min(10, N_q).
  - ``mrr_10``: 1 / rank of the first relevant item if it is in the top 10, else 0.
  - precision–recall by rank, averaged over **all** queries at ranks 1..min_q N_q: precision
    ``hits(r)/r``, recall ``hits(r)/R`` (0 for a query with no relevant item, R = 0).
  - kNN classification from the same ranking: a weighted vote over the k nearest,
    k = min(200, max(1, ⌊0.15 · n_min⌋)) with n_min the smallest class's database count (classes absent
    from the database left out; :func:`knn_k_for`), ``score_c = Σ exp(s/τ)`` with τ = 0.1 and s the similarity (cosine: 1 − distance; Hamming:
    ``1 − 2·d/bits``, the cosine of ±1 codes), argmax with ties to the lower class index (InstDisc's
    kNN monitor as in the MoCo demo / lightly ``knn_predict``; their ``topk`` breaks ties arbitrarily);
    and a majority vote over the 16 nearest (Tschandl et al., Br J Dermatol 2019), ties to the
    smaller summed distance, then the lower class index. Each gives accuracy (micro), balanced
    accuracy (class-macro recall, the headline), macro F1, per-class recall and F1, and
    head/medium/tail recall — as :func:`ltbench.metrics.compute_metrics` (zero_division 0).
* **Percent**, as :mod:`ltbench.metrics`. Classes without a query get NaN per class and are left
  out of the macro means.
* **Memory.** Queries are processed in chunks of ``chunk_size`` (results do not depend on it):
  a chunk × N distance matrix, its sort, int32 labels and hit counts, bool relevance and one
  float64 temporary at a time (~60 bytes per entry: ~230 MB for 256 × 15,000), plus the
  normalised database. Measured on 15,000 × 2,048 vs 5,000 queries on CPU: docs/retrieval.md.

:func:`p10_r4_macro` is the rotation-hashing paper's own metric (spec §5), under its own name.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from sklearn.metrics import precision_recall_fscore_support

from ltbench.metrics import GROUPS, group_classes

METRICS = ("cosine", "hamming")
TOP_K = 10
KNN_K = 200  # the cap: InstDisc's k (Wu et al., CVPR 2018; the MoCo demo, lightly knn_predict)
# k as a fraction of the smallest class's database count: 200 is ~15 % of an ImageNet class (~1,300
# images), the setting k = 200 was made for. A fixed 200 on a small long-tailed database is a vote
# of the head: with 906 ISIC images it returned the majority class for almost every query.
KNN_FRACTION = 0.15
KNN_TEMPERATURE = 0.1
VOTE_K = 16
CHUNK_SIZE = 256
RANKING = "stable by (distance, database index)"


# ----------------------------------------------------------------------------- distances

def _as_tensor(x, device: torch.device | str | None) -> Tensor:
    t = x if isinstance(x, Tensor) else torch.from_numpy(np.asarray(x))
    return t.to(device=device if device is not None else t.device, dtype=torch.float32)


def pairwise_distances(queries: Tensor, database: Tensor, metric: str = "cosine") -> Tensor:
    """Distances [Q, N] (float32): cosine ``1 − <q̂, d̂>`` or Hamming count (see module docstring).

    ``database`` of a Hamming metric may be given pre-split as its three one-hot planes
    (:func:`_code_planes`), as :func:`ranked_relevance` does once for all chunks.
    """
    if metric == "cosine":
        return 1.0 - torch.nn.functional.normalize(queries, dim=1) @ torch.nn.functional.normalize(database, dim=1).T
    if metric == "hamming":
        planes = database if isinstance(database, tuple) else _code_planes(database)
        matches = sum(q @ d.T for q, d in zip(_code_planes(queries), planes))
        return queries.shape[1] - matches
    raise ValueError(f"retrieval: metric must be one of {METRICS}, got {metric!r}")


def _code_planes(codes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    # Equality counts as three 0/1 matrix products (one per symbol −1, 0, +1): exact in float32.
    return tuple((codes == s).to(torch.float32) for s in (-1.0, 0.0, 1.0))


def _group_codes(query_groups, database_groups) -> tuple[np.ndarray, np.ndarray]:
    """Integer ids shared by both sides; −1 (query) and −2 (database) for a missing id."""
    def missing(g) -> bool:
        return g is None or g == "" or (isinstance(g, float) and np.isnan(g))

    table: dict = {}
    q = np.array([-1 if missing(g) else table.setdefault(g, len(table)) for g in query_groups], dtype=np.int64)
    d = np.array([-2 if missing(g) else table.setdefault(g, len(table)) for g in database_groups], dtype=np.int64)
    return q, d


def ranked_relevance(queries, query_labels, database, database_labels, metric: str = "cosine",
                     query_groups: Sequence | None = None, database_groups: Sequence | None = None,
                     exclude_same_group: bool = True, chunk_size: int = CHUNK_SIZE,
                     device: torch.device | str | None = None):
    """Yield, per chunk of queries, ``(rows, order, distances, relevant, kept)``.

    ``order`` [q, N] are database indices in ranked order (stable by (distance, index)), with the
    excluded same-lesion images moved to the end; ``distances`` and ``relevant`` (bool) follow
    ``order``; ``kept`` [q] is N_q. All tensors on ``device`` (default: the queries' device).
    """
    if metric not in METRICS:
        raise ValueError(f"retrieval: metric must be one of {METRICS}, got {metric!r}")
    if chunk_size < 1:
        raise ValueError(f"retrieval: chunk_size must be >= 1, got {chunk_size}")
    q_all = _as_tensor(queries, device)
    dev = q_all.device
    db = _as_tensor(database, dev)
    if q_all.ndim != 2 or db.ndim != 2 or q_all.shape[1] != db.shape[1]:
        raise ValueError(f"retrieval: queries {tuple(q_all.shape)} and database {tuple(db.shape)} must be [*, D]")
    q_labels = torch.as_tensor(np.asarray(query_labels), dtype=torch.int32, device=dev).reshape(-1)
    d_labels = torch.as_tensor(np.asarray(database_labels), dtype=torch.int32, device=dev).reshape(-1)
    if len(q_labels) != len(q_all) or len(d_labels) != len(db):
        raise ValueError("retrieval: one label per query and per database row")
    exclude = exclude_same_group and query_groups is not None and database_groups is not None
    if exclude:
        qg, dg = _group_codes(query_groups, database_groups)
        if len(qg) != len(q_all) or len(dg) != len(db):
            raise ValueError("retrieval: one lesion id per query and per database row")
        qg, dg = torch.from_numpy(qg).to(dev), torch.from_numpy(dg).to(dev)
    if metric == "cosine":
        db_prepared = torch.nn.functional.normalize(db, dim=1)
    else:
        db_prepared = _code_planes(db)
    n = db.shape[0]
    for start in range(0, len(q_all), chunk_size):
        rows = torch.arange(start, min(start + chunk_size, len(q_all)), device=dev)
        q = q_all[rows]
        if metric == "cosine":
            dist = 1.0 - torch.nn.functional.normalize(q, dim=1) @ db_prepared.T
        else:
            dist = pairwise_distances(q, db_prepared, "hamming")
        if exclude:
            same = qg[rows][:, None] == dg[None, :]
            dist = dist.masked_fill(same, float("inf"))  # to the end of the ranking
            kept = n - same.sum(dim=1)
            del same
        else:
            kept = torch.full((len(rows),), n, device=dev, dtype=torch.long)
        dist, order = torch.sort(dist, dim=1, stable=True)
        relevant = d_labels[order] == q_labels[rows][:, None]
        relevant &= torch.arange(n, device=dev)[None, :] < kept[:, None]
        yield rows, order, dist, relevant, kept


# ----------------------------------------------------------------------------- per-query metrics

def per_query_metrics(relevant: Tensor, kept: Tensor, top_k: int = TOP_K,
                      hits: Tensor | None = None) -> dict[str, Tensor]:
    """``map_all``, ``map_{k}``, ``p_{k}``, ``mrr_{k}`` (fractions, float64 [q]) of ranked relevance [q, N].

    ``hits`` (optional) is ``cumsum(relevant, dim=1)`` if the caller already has it.
    """
    if hits is None:
        hits = torch.cumsum(relevant, dim=1, dtype=torch.int32)
    n = relevant.shape[1]
    ranks = torch.arange(1, n + 1, dtype=torch.float64, device=relevant.device)
    k = min(top_k, n)

    def ap(upto: int) -> Tensor:
        found = hits[:, upto - 1].to(torch.float64)
        # Σ_j j / r_j over the relevant positions; one float64 [q, upto] temporary at a time
        total = torch.where(relevant[:, :upto], hits[:, :upto] / ranks[:upto], 0.0).sum(dim=1)
        return torch.where(found > 0, total / found.clamp(min=1), torch.zeros_like(total))

    top = relevant[:, :k]
    first = torch.where(top.any(dim=1), top.to(torch.uint8).argmax(dim=1).to(torch.float64) + 1, torch.inf)
    denom = torch.minimum(kept.to(torch.float64), torch.tensor(float(k), dtype=torch.float64, device=relevant.device))
    at_k = hits[:, k - 1].to(torch.float64)
    return {"map_all": ap(n), f"map_{top_k}": ap(k),
            f"p_{top_k}": torch.where(denom > 0, at_k / denom.clamp(min=1), torch.zeros_like(denom)),
            f"mrr_{top_k}": 1.0 / first}


def knn_k_for(database_counts: Sequence[int], cap: int = KNN_K, fraction: float = KNN_FRACTION) -> int:
    """The weighted vote's k: ``min(cap, max(1, ⌊fraction · n_min⌋))``, n_min = the smallest non-zero count."""
    present = [int(n) for n in database_counts if int(n) > 0]
    if not present:
        return 1
    return int(min(cap, max(1, math.floor(fraction * min(present)))))


def knn_weighted_vote(labels_ranked: Tensor, similarity_ranked: Tensor, num_classes: int, k: int = KNN_K,
                      temperature: float = KNN_TEMPERATURE) -> Tensor:
    """Predicted class [q]: argmax_c Σ_{top-k neighbours of class c} exp(s/τ); ties to the lower class."""
    weights = torch.exp(similarity_ranked[:, :k].to(torch.float64) / temperature)
    scores = torch.zeros(labels_ranked.shape[0], num_classes, dtype=torch.float64, device=weights.device)
    scores.scatter_add_(1, labels_ranked[:, :k], weights)
    return _argmax_first(scores)


def knn_majority_vote(labels_ranked: Tensor, distance_ranked: Tensor, num_classes: int, k: int = VOTE_K) -> Tensor:
    """Predicted class [q]: most votes among the top k; ties to the smaller summed distance, then lower class.

    Neighbours at infinite distance (excluded same-lesion images, when N_q < k) do not vote.
    """
    lab = labels_ranked[:, :k]
    dist = distance_ranked[:, :k].to(torch.float64)
    valid = torch.isfinite(dist)
    votes = torch.zeros(lab.shape[0], num_classes, dtype=torch.float64, device=lab.device)
    votes.scatter_add_(1, lab, valid.to(torch.float64))
    summed = torch.zeros_like(votes).scatter_add_(1, lab, torch.where(valid, dist, 0.0))
    best = votes == votes.max(dim=1, keepdim=True).values
    summed = torch.where(best, summed, torch.inf)
    closest = summed == summed.min(dim=1, keepdim=True).values
    return _argmax_first(closest.to(torch.float64))


def _argmax_first(scores: Tensor) -> Tensor:
    # The first (lowest-index) maximum: torch.argmax returns the first maximal index (documented).
    top = scores == scores.max(dim=1, keepdim=True).values
    return top.to(torch.uint8).argmax(dim=1)


# ----------------------------------------------------------------------------- aggregation

def summarize(values: np.ndarray, labels: np.ndarray, num_classes: int, train_counts: Sequence[int]) -> dict:
    """Per-query fractions -> percent ``per_class`` / ``macro`` / ``micro`` / ``groups``."""
    values = np.asarray(values, dtype=np.float64)
    per_class = np.array([values[labels == c].mean() if np.any(labels == c) else np.nan
                          for c in range(num_classes)])
    groups = group_classes(train_counts)
    return {
        "per_class": [100.0 * float(v) for v in per_class],
        "macro": 100.0 * float(np.nanmean(per_class)) if np.isfinite(per_class).any() else float("nan"),
        "micro": 100.0 * float(values.mean()) if values.size else float("nan"),
        "groups": {g: 100.0 * float(np.nanmean(per_class[ids])) if np.isfinite(per_class[ids]).any()
                   else float("nan") for g, ids in groups.items()},
    }


def classification_summary(labels: np.ndarray, preds: np.ndarray, num_classes: int,
                           train_counts: Sequence[int]) -> dict:
    """Accuracy (micro), balanced accuracy (macro recall, the headline), macro F1, per class, groups (percent)."""
    ids = list(range(num_classes))
    _, recall, f1, support = precision_recall_fscore_support(labels, preds, labels=ids, average=None,
                                                             zero_division=0)
    groups = group_classes(train_counts)
    return {
        "acc": 100.0 * float(np.mean(preds == labels)) if labels.size else float("nan"),
        "balanced_acc": 100.0 * float(np.mean(recall)),
        "f1": 100.0 * float(np.mean(f1)),
        "per_class": {"recall": [100.0 * float(v) for v in recall], "f1": [100.0 * float(v) for v in f1],
                      "support": [int(v) for v in support]},
        "groups": {g: 100.0 * float(np.mean(recall[m])) if m else float("nan") for g, m in groups.items()},
    }


def retrieval_metrics(queries, query_labels, database, database_labels, num_classes: int,
                      metric: str = "cosine", query_groups: Sequence | None = None,
                      database_groups: Sequence | None = None, exclude_same_group: bool = True,
                      top_k: int = TOP_K, knn_k: int | None = None, knn_temperature: float = KNN_TEMPERATURE,
                      vote_k: int = VOTE_K, chunk_size: int = CHUNK_SIZE, keep_top: int = 0,
                      device: torch.device | str | None = None) -> dict:
    """Every retrieval metric of one representation (module docstring), as a JSON-ready dict.

    ``queries`` [Q, D] / ``database`` [N, D]: numpy arrays or torch tensors (any float dtype; cast to
    float32). ``keep_top`` > 0 also returns the database indices of each query's top results
    (``top`` [Q, keep_top], for example figures). ``knn_k`` None: :func:`knn_k_for` of the database counts.
    """
    with torch.no_grad():
        return _retrieval_metrics(queries, query_labels, database, database_labels, num_classes, metric,
                                  query_groups, database_groups, exclude_same_group, top_k, knn_k,
                                  knn_temperature, vote_k, chunk_size, keep_top, device)


def _retrieval_metrics(queries, query_labels, database, database_labels, num_classes, metric, query_groups,
                       database_groups, exclude_same_group, top_k, knn_k, knn_temperature, vote_k, chunk_size,
                       keep_top, device) -> dict:
    q_labels = np.asarray(query_labels).astype(np.int64).reshape(-1)
    d_labels = np.asarray(database_labels).astype(np.int64).reshape(-1)
    if d_labels.size and (d_labels.min() < 0 or d_labels.max() >= num_classes):
        raise ValueError(f"retrieval: database labels must lie in [0, {num_classes})")
    if q_labels.size and (q_labels.min() < 0 or q_labels.max() >= num_classes):
        raise ValueError(f"retrieval: query labels must lie in [0, {num_classes})")
    train_counts = np.bincount(d_labels, minlength=num_classes).tolist()
    if knn_k is None:
        knn_k = knn_k_for(train_counts)
    dim = (queries.shape[1] if hasattr(queries, "shape") else len(queries[0]))
    per_query: dict[str, list] = {}
    preds_weighted, preds_majority, tops = [], [], []
    hits_by_total: dict[int, Tensor] = {}
    min_kept, excluded = None, 0
    d_labels_t = None
    for rows, order, dist, relevant, kept in ranked_relevance(
            queries, q_labels, database, d_labels, metric, query_groups, database_groups,
            exclude_same_group, chunk_size, device):
        if d_labels_t is None:
            d_labels_t = torch.from_numpy(d_labels).to(order.device)
        hits = torch.cumsum(relevant, dim=1, dtype=torch.int32)
        for name, v in per_query_metrics(relevant, kept, top_k, hits).items():
            per_query.setdefault(name, []).append(v.cpu().numpy())
        excluded += int((order.shape[1] - kept).sum())
        # PR by rank from integer sums of hits(r), grouped by R_q, so the result does not depend
        # on the chunking: precision(r) = Σ_q hits_q(r) / r, recall(r) = Σ_R Σ_{q: R_q = R} hits_q(r) / R.
        total = hits[:, -1]
        for r_value in torch.unique(total).tolist():
            part = hits[total == r_value].sum(dim=0, dtype=torch.int64)
            hits_by_total[r_value] = part if r_value not in hits_by_total else hits_by_total[r_value] + part
        del hits
        chunk_min = int(kept.min())
        min_kept = chunk_min if min_kept is None else min(min_kept, chunk_min)
        labels_ranked = d_labels_t[order[:, :max(knn_k, vote_k)]]
        dist_top = dist[:, :max(knn_k, vote_k)]
        similarity = 1.0 - dist_top if metric == "cosine" else 1.0 - 2.0 * dist_top / dim
        preds_weighted.append(knn_weighted_vote(labels_ranked, similarity, num_classes, knn_k,
                                                knn_temperature).cpu().numpy())
        preds_majority.append(knn_majority_vote(labels_ranked, dist_top, num_classes, vote_k).cpu().numpy())
        if keep_top:
            tops.append(order[:, :keep_top].cpu().numpy())
        del order, dist, relevant
    n_queries = len(q_labels)
    out: dict = {
        "metric": metric, "ranking": RANKING, "queries": n_queries, "database": len(d_labels),
        "same_lesion_excluded": excluded if (exclude_same_group and query_groups is not None
                                             and database_groups is not None) else None,
    }
    for name, parts in per_query.items():
        out[name] = summarize(np.concatenate(parts), q_labels, num_classes, train_counts)
    cut = min_kept or 0
    if n_queries:
        summed = sum(hits_by_total.values()).cpu().to(torch.float64)[:cut]
        ranks = torch.arange(1, cut + 1, dtype=torch.float64)
        recall = torch.zeros(cut, dtype=torch.float64)
        for r_value in sorted(hits_by_total):
            if r_value > 0:
                recall += hits_by_total[r_value].cpu().to(torch.float64)[:cut] / r_value
        out["pr_curve"] = {"precision": (100.0 * summed / ranks / n_queries).tolist(),
                           "recall": (100.0 * recall / n_queries).tolist()}
    present = [n for n in train_counts if n > 0]
    out["knn_weighted"] = {"k": knn_k, "k_rule": f"min({KNN_K}, max(1, floor({KNN_FRACTION} x smallest class)))",
                           "smallest_class": min(present) if present else 0, "temperature": knn_temperature,
                           **classification_summary(q_labels, _cat(preds_weighted), num_classes, train_counts)}
    out["knn_majority"] = {"k": vote_k,
                           **classification_summary(q_labels, _cat(preds_majority), num_classes, train_counts)}
    if keep_top:
        out["top"] = _cat(tops).tolist()
    return out


def _cat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


# ----------------------------------------------------------------------------- the paper's metric

def p10_r4_macro(query_codes, query_binary, query_labels, database_codes, database_binary, database_labels,
                 num_classes: int, radius: int = 4, top_k: int = TOP_K, chunk_size: int = CHUNK_SIZE) -> dict:
    """The rotation-hashing paper's retrieval score (Zhang et al., MedIA 2022, ``HashRetrieval.py``).

    Per query: candidates = database images whose binary code is within Hamming distance
    ``radius`` (4) of the query's (codes in {−1, 0, +1}: a 0 differs from ±1); candidates ranked
    by the cosine distance ``1 − <u_q, u_d> / (‖u_q‖ ‖u_d‖)`` of the continuous codes in float32,
    ties by **database index** (the code breaks them by file path — a departure); top
    ``top_k`` (10) kept. ``precision`` = relevant in the top min(10, n_cand) / min(10, n_cand), 0 if
    no candidate; ``rr`` = 1 / rank of the first relevant item within the top 10, else 0.
    Returns percent: ``per_class`` precision and RR (NaN for a class without query), ``p10_r4_macro``
    (what the code prints as "mAP of all classes": the unweighted mean over classes — it is a
    class-macro precision@10, **not** a mean average precision), ``mrr_r4_macro``, and the
    query-weighted ``p10_r4_micro`` (the first upload's "PA"). Classes without a query are left out
    of the macro means (the code would print NaN).
    """
    qu, du = _as_tensor(query_codes, "cpu"), _as_tensor(database_codes, "cpu")
    qb, db = _as_tensor(query_binary, "cpu"), _as_tensor(database_binary, "cpu")
    q_labels = np.asarray(query_labels).astype(np.int64).reshape(-1)
    d_labels = torch.as_tensor(np.asarray(database_labels).astype(np.int64).reshape(-1))
    planes = _code_planes(db)
    du_norm = torch.linalg.vector_norm(du, dim=1)
    precision, rr = [], []
    for start in range(0, len(qu), chunk_size):
        rows = slice(start, start + chunk_size)
        hamming = pairwise_distances(qb[rows], planes, "hamming")
        cosine = 1.0 - (qu[rows] @ du.T) / (torch.linalg.vector_norm(qu[rows], dim=1)[:, None] * du_norm[None, :])
        cosine = cosine.masked_fill(hamming > radius, float("inf"))
        cand = (hamming <= radius).sum(dim=1)
        dist, order = torch.sort(cosine, dim=1, stable=True)
        k = min(top_k, order.shape[1])
        rel = (d_labels[order[:, :k]] == torch.from_numpy(q_labels[rows])[:, None]) & torch.isfinite(dist[:, :k])
        shown = torch.clamp(cand, max=k).to(torch.float64)
        hits = rel.sum(dim=1).to(torch.float64)
        precision.append(torch.where(shown > 0, hits / shown.clamp(min=1), torch.zeros_like(hits)).numpy())
        first = torch.where(rel.any(dim=1), rel.to(torch.int8).argmax(dim=1).to(torch.float64) + 1, torch.inf)
        rr.append((1.0 / first).numpy())
    precision = np.concatenate(precision) if precision else np.zeros(0)
    rr = np.concatenate(rr) if rr else np.zeros(0)
    per_p = np.array([precision[q_labels == c].mean() if np.any(q_labels == c) else np.nan for c in range(num_classes)])
    per_rr = np.array([rr[q_labels == c].mean() if np.any(q_labels == c) else np.nan for c in range(num_classes)])
    return {
        "radius": radius, "top_k": top_k, "ties": "database index (the official code: file path)",
        "per_class": {"precision": [100.0 * float(v) for v in per_p], "rr": [100.0 * float(v) for v in per_rr]},
        "p10_r4_macro": 100.0 * float(np.nanmean(per_p)) if np.isfinite(per_p).any() else float("nan"),
        "mrr_r4_macro": 100.0 * float(np.nanmean(per_rr)) if np.isfinite(per_rr).any() else float("nan"),
        "p10_r4_micro": 100.0 * float(precision.mean()) if precision.size else float("nan"),
    }


__all__ = ["METRICS", "RANKING", "pairwise_distances", "ranked_relevance", "per_query_metrics",
           "knn_k_for", "knn_weighted_vote", "knn_majority_vote", "summarize", "classification_summary",
           "retrieval_metrics", "p10_r4_macro", "GROUPS"]
