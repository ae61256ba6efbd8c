"""ltbench.retrieval.metrics against naive loop implementations of each definition (docs/retrieval.md)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ltbench.retrieval.metrics import (knn_majority_vote, knn_weighted_vote, p10_r4_macro, pairwise_distances,
                                       retrieval_metrics)
from ltbench.metrics import group_classes
import torch


# ----------------------------------------------------------------------------- naive references

def naive_ranking(q, db, metric, exclude=()):
    """(index, distance) pairs sorted by (distance, index) in float64, excluded indices dropped."""
    pairs = []
    for j, d in enumerate(db):
        if j in exclude:
            continue
        if metric == "cosine":  # normalised first, in float64
            q64, d64 = np.asarray(q, np.float64), np.asarray(d, np.float64)
            dist = 1.0 - float(np.dot(q64 / np.linalg.norm(q64), d64 / np.linalg.norm(d64)))
        else:
            dist = float(sum(1 for a, b in zip(q, d) if a != b))
        pairs.append((dist, j))
    pairs.sort()
    return [(j, dist) for dist, j in pairs]


def same(a: dict, b: dict) -> bool:
    """Equal results, NaN equal to NaN."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def naive_ap(rel, k):
    hits, total = 0, 0.0
    for r, x in enumerate(rel[:k], start=1):
        if x:
            hits += 1
            total += hits / r
    return total / hits if hits else 0.0


def naive_p(rel, k):
    k = min(k, len(rel))
    return sum(rel[:k]) / k


def naive_rr(rel, k):
    for r, x in enumerate(rel[:k], start=1):
        if x:
            return 1.0 / r
    return 0.0


def naive_all(queries, q_labels, db, d_labels, metric, num_classes, q_groups=None, d_groups=None, knn_k=200):
    per = {"map_all": [], "map_10": [], "p_10": [], "mrr_10": []}
    prec_curves, rec_curves, weighted, majority = [], [], [], []
    for qi, q in enumerate(queries):
        exclude = set()
        if q_groups is not None and q_groups[qi] is not None:
            exclude = {j for j, g in enumerate(d_groups) if g is not None and g == q_groups[qi]}
        ranking = naive_ranking(q, db, metric, exclude)
        rel = [d_labels[j] == q_labels[qi] for j, _ in ranking]
        per["map_all"].append(naive_ap(rel, len(rel)))
        per["map_10"].append(naive_ap(rel, 10))
        per["p_10"].append(naive_p(rel, 10))
        per["mrr_10"].append(naive_rr(rel, 10))
        total = sum(rel)
        prec_curves.append([sum(rel[:r]) / r for r in range(1, len(rel) + 1)])
        rec_curves.append([sum(rel[:r]) / total if total else 0.0 for r in range(1, len(rel) + 1)])
        # weighted kNN, tau = 0.1
        scores = [0.0] * num_classes
        for j, dist in ranking[:knn_k]:
            sim = 1.0 - dist if metric == "cosine" else 1.0 - 2.0 * dist / len(q)
            scores[d_labels[j]] += math.exp(sim / 0.1)
        weighted.append(max(range(num_classes), key=lambda c: (scores[c], -c)))
        votes, summed = [0] * num_classes, [0.0] * num_classes
        for j, dist in ranking[:16]:
            votes[d_labels[j]] += 1
            summed[d_labels[j]] += dist
        majority.append(min(range(num_classes), key=lambda c: (-votes[c], summed[c], c)))
    return per, prec_curves, rec_curves, np.array(weighted), np.array(majority)


def macro_micro(values, labels, num_classes):
    values, labels = np.asarray(values), np.asarray(labels)
    per_class = [values[labels == c].mean() if np.any(labels == c) else np.nan for c in range(num_classes)]
    return 100 * np.nanmean(per_class), 100 * values.mean(), per_class


# ----------------------------------------------------------------------------- ties and rounding
# A float32 distance carries rounding error whose sign depends on the kernel (vector width, FMA,
# summation order; issue 25: [0.9]*8 and [0.8]*8 "tied" differently on another CPU). Items whose exact
# distances to a query differ by less than that error may be ranked either way, here, on another CPU
# or in the float64 loops above. So the tests' data has exact ties only where every summation order
# gives bit-equal distances (``exact_tie``: identical vectors, power-of-two multiples, axis vectors of
# one sign), and otherwise no two items of different labels closer than the error bound (checked below).

def float32_error_bound(dim: int) -> float:
    """Worst-case error of a float32 cosine distance of dim-vectors: (2·dim + 5)·u, u = 2⁻²⁴ (norms,
    dot product, division, 1 − x; any summation order, with or without FMA)."""
    return (2 * dim + 5) * 2.0 ** -24


def exact_tie(x, y) -> bool:
    """x and y are at bit-equal float32 cosine distances from any query, whatever the kernel: y = 2^k·x
    (a power of two commutes with every rounding), or both on one axis with one sign (normalised, both
    are exactly ±e_i; p10_r4_macro, which does not normalise first, needs the first kind)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    nz = np.flatnonzero(x)
    if nz.size == 0 or not np.array_equal(nz, np.flatnonzero(y)):
        return False
    if nz.size == 1:
        return bool(np.sign(x[nz]) == np.sign(y[nz]))
    ratio = y[nz] / x[nz]  # float32 inputs: exactly 2^k in float64 only if y = 2^k·x exactly
    return bool((ratio == ratio[0]).all() and np.frexp(ratio[0])[0] == 0.5)


def rounding_dependent_pairs(queries, database, labels) -> list[tuple]:
    """(query, row, row, gap): items of different labels whose float64 cosine distances to a query are
    closer than twice the float32 error bound and that are no ``exact_tie`` (nor both, like the query,
    axis vectors: distances exactly 0, 1 or 2): their order would depend on rounding."""
    q, d = np.asarray(queries, np.float64), np.asarray(database, np.float64)
    dist = 1.0 - (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (d / np.linalg.norm(d, axis=1, keepdims=True)).T
    limit = 2 * float32_error_bound(d.shape[1])
    q_axis, d_axis = np.count_nonzero(q, axis=1) == 1, np.count_nonzero(d, axis=1) == 1
    out = []
    for i, row in enumerate(dist):
        order = np.argsort(row, kind="stable")
        ranked = row[order]
        ends = np.searchsorted(ranked, ranked + limit, side="left")  # items closer than the limit
        for p, end in enumerate(ends):
            for r in range(p + 1, end):
                a, b = order[p], order[r]
                exact = q_axis[i] and d_axis[a] and d_axis[b]
                if labels[a] != labels[b] and not exact and not exact_tie(database[a], database[b]):
                    out.append((i, int(a), int(b), float(ranked[r] - ranked[p])))
    return out


def test_the_tie_check_finds_the_rounding_dependent_tie_of_issue_25():
    # All parallel to the query: cosine distance 0 for each, but only 0.8 and 1.6 = 2 x 0.8 tie exactly.
    db, labels, query = np.array([[0.9] * 8, [0.8] * 8, [1.6] * 8], np.float32), [0, 1, 0], np.array([[0.7] * 8], np.float32)
    assert exact_tie(db[1], db[2]) and not exact_tie(db[0], db[1]) and not exact_tie(db[0], 3 * db[0])
    assert exact_tie([0, -3, 0], [0, -1, 0]) and not exact_tie([0, -3, 0], [0, 1, 0])
    assert {tuple(sorted(p[1:3])) for p in rounding_dependent_pairs(query, db, labels)} == {(0, 1)}
    assert rounding_dependent_pairs(query, db[1:], labels[1:]) == []
    assert rounding_dependent_pairs(query, db, [0, 0, 0]) == []  # same labels: the order changes nothing


# ----------------------------------------------------------------------------- hand-built tables

def test_hand_computed_ranking_with_ties_and_the_last_item():
    # One query [1, 0] (class 0); database distances 0, 0, 1, 1, 2 (cosine of axis vectors), ties by index.
    db = np.array([[1, 0], [1, 0], [0, 1], [0, 1], [-1, 0]], dtype=np.float32)
    d_labels = [1, 0, 1, 1, 0]  # relevant at ranks 2 and 5 (the last item: the [:-1] slice would drop it)
    out = retrieval_metrics(np.array([[1, 0]], np.float32), [0], db, d_labels, num_classes=2)
    assert out["map_all"]["micro"] == pytest.approx(100 * (1 / 2 + 2 / 5) / 2)
    assert out["map_10"]["micro"] == pytest.approx(100 * (1 / 2 + 2 / 5) / 2)
    assert out["p_10"]["micro"] == pytest.approx(100 * 2 / 5)  # N = 5 < 10
    assert out["mrr_10"]["micro"] == pytest.approx(50.0)
    assert out["pr_curve"]["precision"] == pytest.approx([0, 50, 100 / 3, 25, 40])
    assert out["pr_curve"]["recall"] == pytest.approx([0, 50, 50, 50, 100])
    assert out["ranking"] == "stable by (distance, database index)"


@pytest.mark.parametrize("metric", ["cosine", "hamming"])
def test_every_metric_matches_the_naive_loops(metric):
    rng = np.random.default_rng(1)
    num_classes = 4
    if metric == "hamming":  # 6 bits in {-1, 0, 1}: many distance ties, and zeros
        db = rng.choice([-1.0, 0.0, 1.0], p=[0.45, 0.1, 0.45], size=(260, 6)).astype(np.float32)
        queries = rng.choice([-1.0, 0.0, 1.0], p=[0.45, 0.1, 0.45], size=(30, 6)).astype(np.float32)
    else:  # scaled signed axis vectors (exact ties in float32: they normalise exactly) and random ones
        def axes(n):
            x = np.zeros((n, 4), np.float32)
            x[np.arange(n), rng.integers(0, 4, n)] = rng.choice([-3.0, -1.0, 2.0, 5.0], n)
            return x
        db = np.concatenate([axes(200), rng.normal(size=(60, 4)).astype(np.float32)])
        queries = np.concatenate([axes(20), rng.normal(size=(10, 4)).astype(np.float32)])
    d_labels = rng.choice(3, p=[0.6, 0.3, 0.1], size=260)  # class 3 never in the database
    q_labels = rng.integers(0, num_classes, size=30)
    q_labels[0] = 3  # a query with no relevant item
    if metric == "cosine":  # (Hamming distances are small integers: exact)
        assert rounding_dependent_pairs(queries, db, d_labels) == []
    out = retrieval_metrics(queries, q_labels, db, d_labels, num_classes, metric=metric, chunk_size=7)
    counts = np.bincount(d_labels, minlength=num_classes)
    knn_k = min(200, max(1, math.floor(0.15 * min(n for n in counts if n))))  # the smallest present class
    assert out["knn_weighted"]["k"] == knn_k and out["knn_weighted"]["smallest_class"] == min(n for n in counts if n)
    per, prec, rec, weighted, majority = naive_all(queries, q_labels, db, d_labels, metric, num_classes, knn_k=knn_k)
    fixed = retrieval_metrics(queries, q_labels, db, d_labels, num_classes, metric=metric, knn_k=200)
    *_, weighted_200, _ = naive_all(queries, q_labels, db, d_labels, metric, num_classes, knn_k=200)
    assert fixed["knn_weighted"]["acc"] == pytest.approx(100 * np.mean(weighted_200 == q_labels))
    for name, values in per.items():
        macro, micro, per_class = macro_micro(values, q_labels, num_classes)
        assert out[name]["macro"] == pytest.approx(macro), name
        assert out[name]["micro"] == pytest.approx(micro), name
        np.testing.assert_allclose(out[name]["per_class"], 100 * np.array(per_class), equal_nan=True)
        for g, ids in group_classes(counts).items():
            assert out[name]["groups"][g] == pytest.approx(100 * np.nanmean(np.array(per_class)[ids]))
    assert per["map_all"][0] == 0 and per["mrr_10"][0] == 0  # the no-hit query counts as 0
    np.testing.assert_allclose(out["pr_curve"]["precision"], 100 * np.mean(prec, axis=0))
    np.testing.assert_allclose(out["pr_curve"]["recall"], 100 * np.mean(rec, axis=0))
    for key, preds in (("knn_weighted", weighted), ("knn_majority", majority)):
        assert out[key]["acc"] == pytest.approx(100 * np.mean(preds == q_labels))
        recall = [np.mean(preds[q_labels == c] == c) if np.any(q_labels == c) else 0.0 for c in range(num_classes)]
        assert out[key]["balanced_acc"] == pytest.approx(100 * np.mean(recall))


def test_chunked_equals_unchunked_and_torch_equals_numpy():
    rng = np.random.default_rng(2)
    db, q = rng.normal(size=(120, 8)).astype(np.float32), rng.normal(size=(33, 8)).astype(np.float32)
    dl, ql = rng.integers(0, 3, 120), rng.integers(0, 3, 33)
    assert rounding_dependent_pairs(q, db, dl) == []  # chunks are other matrix shapes: other roundings
    whole = retrieval_metrics(q, ql, db, dl, 3, chunk_size=10_000, keep_top=5)
    for chunk in (1, 4, 32):
        assert same(retrieval_metrics(q, ql, db, dl, 3, chunk_size=chunk, keep_top=5), whole), chunk
    assert retrieval_metrics(torch.from_numpy(q).half(), ql, torch.from_numpy(db).half(), dl, 3)["queries"] == 33
    assert same(retrieval_metrics(torch.from_numpy(q), ql, torch.from_numpy(db), dl, 3, keep_top=5), whole)


def test_same_lesion_images_are_left_out_of_the_query_ranking():
    rng = np.random.default_rng(3)
    db, q = rng.normal(size=(40, 4)).astype(np.float32), rng.normal(size=(6, 4)).astype(np.float32)
    db[7] = q[0]  # the query's own lesion is its nearest and relevant neighbour
    dl, ql = rng.integers(0, 2, 40), rng.integers(0, 2, 6)
    dl[7] = ql[0]
    assert rounding_dependent_pairs(q, db, dl) == []
    d_groups = [f"L{j}" for j in range(40)]
    d_groups[9] = None
    q_groups = ["L7", None, float("nan"), "Lq", "L9x", ""]
    d_groups[12] = "L7"  # a second image of the same lesion
    out = retrieval_metrics(q, ql, db, dl, 2, query_groups=q_groups, database_groups=d_groups)
    assert out["same_lesion_excluded"] == 2
    per, prec, _, _, _ = naive_all(q, ql, db, dl, "cosine", 2, q_groups=[g if isinstance(g, str) and g else None
                                                                        for g in q_groups], d_groups=d_groups)
    for name, values in per.items():
        assert out[name]["micro"] == pytest.approx(100 * np.mean(values)), name
    assert len(out["pr_curve"]["precision"]) == 38  # ranks 1..min_q N_q
    kept = retrieval_metrics(q, ql, db, dl, 2, query_groups=q_groups, database_groups=d_groups,
                             exclude_same_group=False)
    assert kept["same_lesion_excluded"] is None
    assert kept["mrr_10"]["per_class"] != out["mrr_10"]["per_class"]
    assert same(kept, retrieval_metrics(q, ql, db, dl, 2))


def test_majority_vote_ties_go_to_the_smaller_summed_distance_then_the_lower_class():
    labels = torch.tensor([[2, 1, 1, 2], [1, 2, 2, 1], [0, 3, 3, 0]])
    dist = torch.tensor([[0.1, 0.2, 0.3, 0.5],   # 2: 0.6, 1: 0.5 -> 1
                         [0.1, 0.2, 0.3, 0.2],   # 1: 0.3, 2: 0.5 -> 1
                         [0.1, 0.1, 0.1, 0.1]])  # equal sums -> lower class 0
    assert knn_majority_vote(labels, dist, 4, k=4).tolist() == [1, 1, 0]
    assert knn_majority_vote(labels, dist, 4, k=3).tolist() == [1, 2, 3]  # plain majorities


def test_weighted_vote_sums_exp_similarity_over_tau_and_ties_to_the_lower_class():
    labels = torch.tensor([[1, 0, 0], [2, 1, 0]])
    sim = torch.tensor([[0.9, 0.8, 0.8], [0.5, 0.5, 0.5]])
    # tau 0.1: exp(9) = 8103 > 2 exp(8) = 5962 -> class 1; row 2: three equal scores -> class 0
    assert knn_weighted_vote(labels, sim, 3, k=3, temperature=0.1).tolist() == [1, 0]
    assert knn_weighted_vote(labels, sim, 3, k=3, temperature=1.0).tolist() == [0, 0]  # e^.9 < 2 e^.8
    assert knn_weighted_vote(labels, sim, 3, k=1).tolist() == [1, 2]


def test_hamming_counts_a_zero_component_as_different():
    codes = torch.tensor([[1.0, -1.0, 0.0, 1.0]])
    db = torch.tensor([[1.0, -1.0, 1.0, 1.0], [1.0, -1.0, 0.0, 1.0], [-1.0, 1.0, -1.0, -1.0]])
    assert pairwise_distances(codes, db, "hamming").tolist() == [[1.0, 0.0, 4.0]]
    with pytest.raises(ValueError, match="metric"):
        retrieval_metrics(codes, [0], db, [0, 0, 0], 1, metric="euclid")


# ----------------------------------------------------------------------------- the paper's metric

def naive_p10_r4(qu, qb, ql, du, dbin, dl, num_classes, radius=4, top=10):
    """HashRetrieval.py's loop, with (distance, database index) sorting instead of (distance, path)."""
    buckets = {}
    for j, b in enumerate(dbin):
        buckets.setdefault(tuple(b), []).append(j)
    acc, rr = [], []
    for i in range(len(qu)):
        cands = [j for key, js in buckets.items() if sum(a != b for a, b in zip(key, qb[i])) <= radius for j in js]
        scored = sorted((1.0 - float(np.dot(qu[i], du[j]) / (np.linalg.norm(qu[i]) * np.linalg.norm(du[j]))), j)
                        for j in cands)[:top]
        rel = [dl[j] == ql[i] for _, j in scored]
        acc.append(sum(rel) / len(rel) if rel else 0.0)
        rr.append(next((1.0 / r for r, x in enumerate(rel, 1) if x), 0.0))
    per_acc = [np.mean([a for a, c in zip(acc, ql) if c == k]) for k in range(num_classes) if k in set(ql)]
    per_rr = [np.mean([a for a, c in zip(rr, ql) if c == k]) for k in range(num_classes) if k in set(ql)]
    return 100 * np.mean(per_acc), 100 * np.mean(per_rr), 100 * np.mean(acc)


def test_p10_r4_macro_on_a_hand_built_code_table():
    # Continuous codes in eighths: every product and sum is exact in float32, and rows 0, 1 and 2 (= 2 x row 0)
    # are exact ties for any query, so the tie order below is the same on every CPU; no other two distances
    # are within rounding of each other. Binary codes: rows 0-2 ++++++++, row 3 +-------, row 4 +++++++-.
    du = np.array([[0.875] * 8, [0.875] * 8, [1.75] * 8, [0.625] + [0.25] * 3 + [0.125] * 4, [0.875] * 7 + [0.125]],
                  dtype=np.float32)
    dl = [1, 0, 0, 1, 1]
    qu = np.array([[0.75] * 8, [0.25] * 8, [0.625] * 4 + [0.375] * 4], dtype=np.float32)  # ++++++++, --------, ++++----
    ql = [0, 0, 1]
    assert exact_tie(du[0], du[1]) and exact_tie(du[0], du[2]) and rounding_dependent_pairs(qu, du, dl) == []
    sign = lambda u: np.sign(u - 0.5)
    out = p10_r4_macro(qu, sign(qu), ql, du, sign(du), dl, num_classes=2, radius=4)
    # Query 0: candidates 0, 1, 2 (Hamming 0) and 4 (Hamming 1); 0, 1, 2 tie at cosine 0 -> index order, then 4;
    #          relevant (class 0): 1, 2 -> precision 2/4, first hit at rank 2 (rank 1 if the tie went 1 first).
    # Query 1: only row 3 (Hamming 1, class 1) is in the radius-4 ball -> precision 0, RR 0.
    # Query 2: Hamming 4 from rows 0-2, 3 from row 3 and row 4; cosine ranks 0, 1, 2 (tie), 4, 3;
    #          relevant (class 1): 0, 4, 3 -> precision 3/5, RR 1 (1/3 if the tie went 2, 1, 0).
    assert out["per_class"]["precision"] == pytest.approx([100 * (2 / 4 + 0) / 2, 100 * 3 / 5])
    assert out["per_class"]["rr"] == pytest.approx([100 * (1 / 2 + 0) / 2, 100.0])
    assert (out["p10_r4_macro"], out["mrr_r4_macro"], out["p10_r4_micro"]) == pytest.approx(
        (100 * (0.25 + 0.6) / 2, 100 * (0.25 + 1.0) / 2, 100 * (0.5 + 0 + 0.6) / 3))
    ref = naive_p10_r4(qu, sign(qu), ql, du, sign(du), dl, 2)
    assert (out["p10_r4_macro"], out["mrr_r4_macro"], out["p10_r4_micro"]) == pytest.approx(ref)
    # An empty ball: radius 0 for a query whose code is in no bucket.
    empty = p10_r4_macro(qu[1:2], sign(qu[1:2]), [0], du, sign(du), dl, 2, radius=0)
    assert empty["p10_r4_macro"] == 0.0 and empty["mrr_r4_macro"] == 0.0
    assert math.isnan(empty["per_class"]["precision"][1])  # a class without a query


def test_p10_r4_macro_matches_the_loop_on_random_codes():
    rng = np.random.default_rng(7)  # a seed whose codes have no rounding-dependent near tie (asserted)
    # Distinct directions, exact duplicate rows (cosine ties), and components exactly 0.5 (code 0). In
    # 1024ths: dot products and norms are exact in float32, so duplicates tie in any summation order.
    du = (rng.integers(51, 974, size=(150, 6)) / 1024).astype(np.float32)
    du[100:] = du[rng.integers(0, 100, 50)]
    du[rng.random(du.shape) < 0.05] = 0.5
    qu = (rng.integers(51, 974, size=(25, 6)) / 1024).astype(np.float32)
    qu[rng.random(qu.shape) < 0.05] = 0.5
    dl, ql = rng.integers(0, 3, 150), rng.integers(0, 3, 25)
    assert rounding_dependent_pairs(qu, du, dl) == []
    sign = lambda u: np.sign(u - 0.5)
    for radius in (0, 2, 4):
        out = p10_r4_macro(qu, sign(qu), ql, du, sign(du), dl, 3, radius=radius, chunk_size=4)
        ref = naive_p10_r4(qu, sign(qu), ql, du, sign(du), dl, 3, radius=radius)
        assert (out["p10_r4_macro"], out["mrr_r4_macro"], out["p10_r4_micro"]) == pytest.approx(ref), radius


def test_excluded_neighbours_do_not_vote_when_the_ranking_is_short():
    # Two database images, one of the query's own lesion: the 16-vote sees only the other one.
    db = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    out = retrieval_metrics(np.array([[1.0, 0.1]], np.float32), [1], db, [1, 0], 2,
                            query_groups=["a"], database_groups=["a", "b"])
    assert out["knn_majority"]["acc"] == 0.0 and out["knn_weighted"]["acc"] == 0.0
    assert out["map_all"]["micro"] == 0.0 and out["same_lesion_excluded"] == 1


def test_the_weighted_vote_k_follows_the_smallest_class_of_the_database():
    from ltbench.retrieval.metrics import knn_k_for

    assert knn_k_for([5000] * 10) == 200  # CIFAR-size classes: InstDisc's 200
    assert knn_k_for([1300, 1300]) == 195  # 15 % of an ImageNet class
    assert knn_k_for([540, 100, 20, 0]) == 3  # the absent class is left out
    assert knn_k_for([540, 3]) == 1 and knn_k_for([]) == 1


def test_a_small_long_tailed_database_no_longer_votes_for_the_head():
    """Three well-separated clusters of 60 / 12 / 8 images: 200 neighbours outvote every tail query."""
    rng = np.random.default_rng(0)
    centres = np.eye(3, dtype=np.float32) * 4
    d_labels = np.repeat([0, 1, 2], [60, 12, 8])
    db = centres[d_labels] + rng.normal(scale=1.0, size=(80, 3)).astype(np.float32)
    q_labels = np.repeat([0, 1, 2], 10)
    queries = centres[q_labels] + rng.normal(scale=1.0, size=(30, 3)).astype(np.float32)
    fixed = retrieval_metrics(queries, q_labels, db, d_labels, 3, knn_k=200, knn_temperature=1.0)
    adaptive = retrieval_metrics(queries, q_labels, db, d_labels, 3, knn_temperature=1.0)
    assert adaptive["knn_weighted"]["k"] == 1
    assert fixed["knn_weighted"]["per_class"]["recall"][2] == 0.0  # all 80 images vote: the head wins
    assert adaptive["knn_weighted"]["balanced_acc"] > fixed["knn_weighted"]["balanced_acc"] + 30
