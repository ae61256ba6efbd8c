"""The report's retrieval section: tables and figures from the runs' retrieval results.

Input: the result files' ``"retrieval"`` sections (metrics computed by ``ltbench.retrieval.run_pass``
on the stored float16 embeddings) and, for the curves and the example queries, the embedding
files beside them (``runs/<row>/seed<k>.emb.npz``). Nothing is trained, no pixel is read: the
example thumbnails travel in the embedding file. Runs without retrieval results (finished before
retrieval was asked for) are listed, never filled in.

Outputs (only when at least one run has retrieval results): ``retrieval.md`` (protocol, a table
per aggregation, the runs without results), ``retrieval.csv`` (unrounded), ``retrieval_per_class.png``
(per-class mAP@all heat map, classes in the report's head → tail order), ``retrieval_pr.png`` (precision–recall by rank,
``feature`` space, one line per method) and ``retrieval_examples_<row>.png`` (query + its top-5
training images, hits and misses marked). Deterministic bytes, like the rest of ``ltbench.report``.
Head / medium / tail mAP follow the report's grouping (``ltbench.report.groups``) when it passes one;
the kNN columns are titled with the k the runs used (``ltbench.retrieval.metrics.knn_k_for``).
"""
from __future__ import annotations

import io
import math
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tabulate import tabulate

from ltbench.report.groups import class_labels, class_order
from ltbench.report.summary import leak_text

#: File name -> description, for the report README's file list.
RETRIEVAL_FILES = {
    "retrieval.md": "retrieval (database = train, queries = test): mAP@all, mAP@10, P@10, MRR@10, kNN votes",
    "retrieval.csv": "the retrieval numbers, unrounded (mean and std over seeds)",
    "retrieval_per_class.png": "per-class retrieval mAP@all, classes head → tail",
    "retrieval_pr.png": "retrieval precision–recall by rank (feature space)",
}
EXAMPLES_PREFIX = "retrieval_examples_"

#: (column, title, getter) of the headline (class-macro) table.
_MACRO = [
    ("map_all", "mAP@all", lambda s: s["map_all"]["macro"]),
    ("map_10", "mAP@10", lambda s: s["map_10"]["macro"]),
    ("p_10", "P@10", lambda s: s["p_10"]["macro"]),
    ("mrr_10", "MRR@10", lambda s: s["mrr_10"]["macro"]),
    ("knn_bacc", "{knn} bal. acc", lambda s: s["knn_weighted"]["balanced_acc"]),
    ("vote_bacc", "16-NN bal. acc", lambda s: s["knn_majority"]["balanced_acc"]),
    ("knn_f1", "{knn} F1", lambda s: s["knn_weighted"]["f1"]),
    ("vote_f1", "16-NN F1", lambda s: s["knn_majority"]["f1"]),
    ("head_map", "Head mAP", lambda s: s["map_all"]["groups"]["head"]),
    ("medium_map", "Medium mAP", lambda s: s["map_all"]["groups"]["medium"]),
    ("tail_map", "Tail mAP", lambda s: s["map_all"]["groups"]["tail"]),
    ("p10_r4_macro", "p10_r4_macro", lambda s: s["p10_r4"]["p10_r4_macro"]),
]
_MICRO = [
    ("map_all_micro", "mAP@all", lambda s: s["map_all"]["micro"]),
    ("map_10_micro", "mAP@10", lambda s: s["map_10"]["micro"]),
    ("p_10_micro", "P@10", lambda s: s["p_10"]["micro"]),
    ("mrr_10_micro", "MRR@10", lambda s: s["mrr_10"]["micro"]),
    ("knn_acc", "{knn} acc", lambda s: s["knn_weighted"]["acc"]),
    ("vote_acc", "16-NN acc", lambda s: s["knn_majority"]["acc"]),
    ("p10_r4_micro", "p10_r4_micro", lambda s: s["p10_r4"]["p10_r4_micro"]),
]


def _value(get, space: dict) -> float:
    try:
        value = get(space)
    except (KeyError, TypeError):
        return math.nan
    return math.nan if value is None else float(value)


def _order(results: Sequence[dict], order: Sequence[str] | None) -> list[str]:
    present = sorted({str(r["method"]) for r in results})
    first = [m for m in dict.fromkeys(order or []) if m in present]
    return first + [m for m in present if m not in first]


def _space_order(spaces) -> list[str]:
    rank = {"feature": 0, "embedding": 1, "hash": 2, "hash_binary": 3}
    return sorted(spaces, key=lambda s: (rank.get(s, 9), s))


def _regrouped(space: dict, groups: dict[str, list[int]]) -> dict:
    """``space`` with its head/medium/tail mAP@all recomputed from the per-class values under ``groups``."""
    per = np.asarray(space.get("map_all", {}).get("per_class") or [], dtype=float)
    if per.size == 0:
        return space
    recomputed = {g: float(np.nanmean(per[ids])) if ids and np.isfinite(per[ids]).any() else math.nan
                  for g, ids in groups.items()}
    return {**space, "map_all": {**space["map_all"], "groups": recomputed}}


def knn_label(results: Sequence[dict]) -> str:
    """``kNN-k`` with the weighted vote's k when every run used the same one, else ``kNN``."""
    ks = {s.get("knn_weighted", {}).get("k") for r in results for s in ((r.get("retrieval") or {}).get("spaces") or {}).values()}
    ks.discard(None)
    return f"kNN-{ks.pop()}" if len(ks) == 1 else "kNN"


def retrieval_summary(results: Sequence[dict], order: Sequence[str] | None = None,
                      groups: dict[str, list[int]] | None = None) -> pd.DataFrame:
    """One row per (method, space): ``n_seeds`` and ``<column>_mean`` / ``_std`` (percent, sample std).

    ``groups`` (class indices per group): the report's grouping for the head/medium/tail mAP columns
    (default: the terciles stored by the retrieval pass).
    """
    rows = []
    for method in _order(results, order):
        runs = [r for r in results if r["method"] == method and (r.get("retrieval") or {}).get("spaces")]
        spaces = _space_order({s for r in runs for s in r["retrieval"]["spaces"]})
        for space in spaces:
            found = [r["retrieval"]["spaces"][space] for r in runs if space in r["retrieval"]["spaces"]]
            if groups:
                found = [_regrouped(s, groups) for s in found]
            row = {"method": method, "space": space, "metric": found[0].get("metric", "?"), "n_seeds": len(found)}
            for key, _, get in _MACRO + _MICRO:
                values = np.array([_value(get, s) for s in found], dtype=float)
                row[f"{key}_mean"] = float(np.mean(values))
                row[f"{key}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
            rows.append(row)
    return pd.DataFrame(rows)


def _table(summary: pd.DataFrame, columns, knn: str = "kNN") -> str:
    present = [(k, t.format(knn=knn)) for k, t, _ in columns if not summary[f"{k}_mean"].isna().all()]
    show_seeds = summary["n_seeds"].nunique() > 1
    best = {}
    for key, _ in present:  # best mean per column among the feature rows (the cross-method headline)
        shown = summary.loc[summary["space"] == "feature", f"{key}_mean"].round(2)
        best[key] = shown.max() if shown.notna().any() else math.nan
    body = []
    for _, row in summary.iterrows():
        cells = [row["method"], row["space"]] + ([str(row["n_seeds"])] if show_seeds else [])
        for key, _ in present:
            mean, std = row[f"{key}_mean"], row[f"{key}_std"]
            text = "n/a" if math.isnan(mean) else f"{mean:.2f}"
            if row["space"] == "feature" and not math.isnan(mean) and round(mean, 2) == best[key]:
                text = f"**{text}**"
            if not math.isnan(std):
                text += f" ± {std:.2f}"
            cells.append(text)
        body.append(cells)
    headers = ["Method", "Space", *(["Seeds"] if show_seeds else []), *(t for _, t in present)]
    return tabulate(body, headers=headers, tablefmt="github", disable_numparse=True)


# ----------------------------------------------------------------------------- arrays

def _embedding_file(run_dir: Path, result: dict) -> Path | None:
    name = (result.get("retrieval") or {}).get("file")
    if not name:
        return None
    path = Path(run_dir) / str(result["method"]) / str(name)
    return path if path.is_file() else None


def _load(path: Path, wanted) -> dict[str, np.ndarray] | None:
    """The arrays of ``path`` whose key ``wanted(key)`` accepts; None if the file does not load."""
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files if wanted(k)}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


def _example_key(key: str) -> bool:
    return key.startswith(("examples/", "top/")) or key.endswith("_labels")


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    return buf.getvalue()


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


# ----------------------------------------------------------------------------- figures

def per_class_fig(results: Sequence[dict], summary: pd.DataFrame) -> Figure:
    """Heat map: rows (method · space), columns classes head → tail, per-class mAP@all mean over seeds."""
    order = class_order(results)
    labels = class_labels(results, order)
    rows, values = [], []
    for _, row in summary.iterrows():
        runs = [r["retrieval"]["spaces"][row["space"]] for r in results
                if r["method"] == row["method"] and row["space"] in ((r.get("retrieval") or {}).get("spaces") or {})]
        per = np.nanmean(np.array([s["map_all"]["per_class"] for s in runs], dtype=float), axis=0)
        rows.append(f"{row['method']} · {row['space']}")
        values.append(per[order])
    mat = np.array(values)
    fig = Figure(figsize=(2.5 + 0.8 * len(labels), 1.2 + 0.32 * len(rows)), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    image = ax.imshow(mat, vmin=0, vmax=100, cmap="viridis", aspect="auto")
    for i in range(mat.shape[0]):
        for j in range(mat.shape[1]):
            if np.isfinite(mat[i, j]):
                ax.text(j, i, f"{mat[i, j]:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if mat[i, j] < 55 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_xlabel("class (training images), head → tail")
    ax.set_title("Per-class retrieval mAP@all (%), mean over seeds")
    fig.colorbar(image, ax=ax, shrink=0.8)
    return fig


def per_class_figure(results: Sequence[dict], summary: pd.DataFrame) -> bytes:
    return _png(per_class_fig(results, summary))


def pr_figure(curves: dict[str, tuple[np.ndarray, np.ndarray]]) -> bytes:
    """Precision–recall by rank, one line per method (``feature`` space, mean over seeds)."""
    fig = Figure(figsize=(6.0, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for method, (recall, precision) in curves.items():
        ax.plot(recall, precision, label=method, linewidth=1.2)
    ax.set_xlabel("recall (%)")
    ax.set_ylabel("precision (%)")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.set_title("Precision–recall by rank, feature space", fontsize=10)
    ax.legend(fontsize=7, ncol=2, loc="lower left")
    return _png(fig)


def examples_figure(method: str, seed: int, arrays: dict[str, np.ndarray], class_names: Sequence[str]) -> bytes:
    """Rows: an example query and its top-5 training images; hits framed green (✓), misses red (✗).

    One mosaic image on one axes (a grid of small axes costs seconds per figure).
    """
    picks = arrays["examples/queries"]
    q_thumbs, top_thumbs = arrays["examples/query_thumbs"], arrays["examples/top_thumbs"]
    space = str(arrays["examples/space"])
    top = arrays[f"top/{space}"][picks]
    q_labels, d_labels = arrays["query_labels"][picks], arrays["database_labels"]
    n, k = top.shape
    side = q_thumbs.shape[1] if n else 1
    scale = max(1, 48 // side)  # nearest-neighbour upscaling: small thumbnails stay legible
    tile, frame, gap = side * scale, 3, 22  # pixels: image, frame, room for the label above it
    mosaic = np.full((n * (tile + 2 * frame + gap) + 4, (k + 1) * (tile + 2 * frame + 8) + 8, 3), 255, np.uint8)
    colours = {"query": (0, 0, 0), "hit": (44, 160, 44), "miss": (214, 39, 40)}
    labels = []
    for i in range(n):
        cells = [(q_thumbs[i], f"query: {class_names[q_labels[i]]}", "query")]
        for j in range(k):
            label = d_labels[top[i, j]]
            hit = label == q_labels[i]
            cells.append((top_thumbs[i, j], f"{j + 1}. {class_names[label]} {'✓' if hit else '✗'}",
                          "hit" if hit else "miss"))
        for j, (image, text, kind) in enumerate(cells):
            y = i * (tile + 2 * frame + gap) + gap
            x = j * (tile + 2 * frame + 8) + 8
            mosaic[y:y + tile + 2 * frame, x:x + tile + 2 * frame] = colours[kind]
            mosaic[y + frame:y + frame + tile, x + frame:x + frame + tile] = np.kron(
                image, np.ones((scale, scale, 1), dtype=np.uint8))
            labels.append((x + frame + tile / 2, y - 3, text, kind))
    height, width = mosaic.shape[:2]
    fig = Figure(figsize=(width / 60, height / 60 + 0.4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.imshow(mosaic, interpolation="nearest")
    text_colour = {"query": "black", "hit": "tab:green", "miss": "tab:red"}
    for x, y, text, kind in labels:
        ax.text(x, y, text, ha="center", va="bottom", fontsize=6, color=text_colour[kind])
    ax.set_axis_off()
    ax.set_title(f"{method} (seed {seed}, {space} space): top-{k} training images per test query", fontsize=8)
    return _png(fig)


# ----------------------------------------------------------------------------- the section

def retrieval_outputs(results: Sequence[dict], run_dir: Path, order: Sequence[str] | None = None,
                      groups: dict[str, list[int]] | None = None, grouping: str | None = None) -> dict:
    """File name -> content of the retrieval section; ``{}`` when no run has retrieval results.

    ``groups`` / ``grouping``: the report's head/medium/tail classes (indices) and their name.
    """
    with_retrieval = [r for r in results if (r.get("retrieval") or {}).get("spaces")]
    if not with_retrieval:
        return {}
    summary = retrieval_summary(with_retrieval, order, groups)
    methods = _order(with_retrieval, order)
    class_names = [str(n) for n in results[0]["test"]["per_class"]["name"]]
    outputs: dict[str, str | bytes] = {}
    outputs["retrieval.csv"] = summary.to_csv(index=False, lineterminator="\n")
    outputs["retrieval_per_class.png"] = per_class_figure(with_retrieval, summary)

    curves, examples, unreadable = {}, [], []
    for method in methods:
        runs = sorted((r for r in with_retrieval if r["method"] == method), key=lambda r: r["seed"])
        pr = []
        for r in runs:
            path = _embedding_file(run_dir, r)
            arrays = _load(path, lambda k: k.startswith("pr/feature/")) if path else None
            if not arrays or "pr/feature/precision" not in arrays:
                unreadable.append(f"{method} seed {r['seed']}")
                continue
            pr.append((arrays["pr/feature/recall"], arrays["pr/feature/precision"]))
        if pr:
            cut = min(len(p) for _, p in pr)
            curves[method] = (np.mean([rc[:cut] for rc, _ in pr], axis=0), np.mean([p[:cut] for _, p in pr], axis=0))
        first = next((r for r in runs if _embedding_file(run_dir, r)), None)
        if first is not None:
            arrays = _load(_embedding_file(run_dir, first), _example_key)
            if arrays and "examples/queries" in arrays:
                name = f"{EXAMPLES_PREFIX}{_safe(method)}.png"
                outputs[name] = examples_figure(method, first["seed"], arrays, class_names)
                examples.append((method, name))
    if curves:
        outputs["retrieval_pr.png"] = pr_figure(curves)
    outputs["retrieval.md"] = _markdown(results, with_retrieval, summary, examples, sorted(set(unreadable)),
                                        "retrieval_pr.png" in outputs, grouping)
    return outputs


def _knn_text(with_retrieval: Sequence[dict]) -> str:
    """The weighted vote's k in words: the rule and, when the runs agree, its value and the smallest class."""
    found = {(s.get("knn_weighted", {}).get("k"), s.get("knn_weighted", {}).get("smallest_class"))
             for r in with_retrieval for s in r["retrieval"]["spaces"].values()}
    rule = ("k = min(200, max(1, ⌊0.15 · n_min⌋)), n_min = the smallest class's database count (200 neighbours "
            "are ~15 % of an ImageNet class, InstDisc's setting; a fixed 200 on a small long-tailed database is "
            "a vote of the head)")
    if len(found) == 1:
        k, smallest = found.pop()
        if smallest is None:  # results written before k followed the database
            return f"kNN-{k}: weighted vote exp(s/0.1) over a fixed k = {k} (results of an older version)"
        return f"kNN-{k}: weighted vote exp(s/0.1) over the k nearest, {rule}; here n_min = {smallest}, k = {k}"
    return f"kNN: weighted vote exp(s/0.1) over the k nearest, {rule}; k differs between runs (see retrieval.csv)"


def _markdown(results, with_retrieval, summary, examples, unreadable, has_pr, grouping=None) -> str:
    first = with_retrieval[0]["retrieval"]
    without = sorted(f"{r['method']} seed {r['seed']}" for r in results if not (r.get("retrieval") or {}).get("spaces"))
    excluded = sorted({str((r["retrieval"]).get("spaces", {}).get("feature", {}).get("same_lesion_excluded"))
                       for r in with_retrieval})
    dataset = str(results[0].get("dataset", {}).get("name", "?"))
    leak = results[0].get("split", {}).get("lesion_leak")

    lines = [
        f"# Retrieval: {dataset}", "",
        f"Database = the training split ({first.get('database', '?')} images), queries = the test split "
        f"({first.get('queries', '?')}), relevance = same label. Cosine distance on L2-normalised vectors "
        "(Hamming for `*_binary` codes); ranking stable by (distance, database index); metrics computed on the "
        "stored float16 embeddings (`runs/<row>/seed<k>.emb.npz`).",
        "Same-lesion exclusion: " + ("off" if not first.get("exclude_same_lesion", True) else
                                     "on (no lesion ids: nothing to exclude)" if excluded == ["None"] else
                                     f"on ((query, database image) pairs of one lesion removed, per run: "
                                     f"{', '.join(excluded)})") + f". Split lesion leak: {leak_text(leak)}.",
        "", "Class-macro (the headline; mean over classes of the per-query values), percent, mean ± sample std "
        "over seeds; bold: the best `feature` row (the cross-method headline). mAP in the hashing convention "
        f"(AP@k over the relevant items found in the top k; k = all is the whole ranking). {_knn_text(with_retrieval)}; "
        "16-NN: majority vote (Tschandl et al.). `p10_r4_macro`: the hashing paper's own score (class-macro P@10 "
        "after a Hamming-radius-4 lookup; not a mAP), hash spaces only. Head / medium / tail mAP: "
        f"{grouping or 'terciles of the database (training) counts'}.", "",
        _table(summary, _MACRO, knn_label(with_retrieval)), "",
        "Micro (mean over queries, what hashing papers report):", "",
        _table(summary, _MICRO, knn_label(with_retrieval)), "",
    ]
    if without:
        lines += [f"Runs without retrieval results (finished before retrieval was asked for; no weights were kept, "
                  f"so `ltbench bench --force` retrains them): {', '.join(without)}.", ""]
    if unreadable:
        lines += [f"Runs whose embedding file is missing or unreadable (left out of the curves): "
                  f"{', '.join(unreadable)}.", ""]
    lines += ["![Per-class mAP@all](retrieval_per_class.png)", ""]
    if has_pr:
        lines += ["![Precision–recall](retrieval_pr.png)", ""]
    for method, name in examples:
        lines += [f"![{method}: example queries]({name})", ""]
    return "\n".join(lines)
