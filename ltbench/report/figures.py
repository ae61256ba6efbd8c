"""The report's figures: confusion-matrix panels, and the evidence figures from the saved arrays.

Confusion panels are drawn once each on an Agg canvas (no pyplot state) and pasted into the grids
and per-method files. Evidence figures: metric bars with error bars, per-class recall across methods
(classes head → tail), reliability diagrams, training curves (validation Acc and Sen per epoch on one
y-range per metric, one line per seed, the tested epoch marked, stage boundaries dotted).
"""
from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ltbench.metrics import HEADLINE, HEADLINE_LABELS
from ltbench.report import statistics as ev
from ltbench.report.flags import _number
from ltbench.report.groups import class_labels, class_order

# A grid never grows wider than this (inches): more methods wrap into more rows, panels shrink.
MAX_FIGURE_WIDTH = 26.0


def _grid_shape(n: int) -> tuple[int, int]:
    """(rows, cols) of a panel grid: 3 columns up to 9 panels, then up to 5 (14 methods: 3 × 5)."""
    ncols = min(n, 3 if n <= 9 else 5)
    return math.ceil(n / ncols), ncols


def _panel_layout(n_panels: int, class_names: Sequence[str]) -> tuple[float, float, int]:
    """(side, margin, font) of the square confusion panels of a grid of ``n_panels``, in inches/points.

    A panel holds the matrix plus room for its rotated class names, axis labels and title; it
    shrinks (and its font with it) so that a grid is never wider than ``MAX_FIGURE_WIDTH``.
    """
    ncols = _grid_shape(n_panels)[1]
    longest = max((len(str(n)) for n in class_names), default=1)
    for font in (8, 7, 6, 5):
        margin = 0.45 + 0.75 * longest * font * 0.6 / 72
        side = min(margin + 0.4 + (0.6 if font >= 7 else 0.45) * len(class_names), MAX_FIGURE_WIDTH / ncols)
        if (side - margin - 0.4) / max(len(class_names), 1) >= 0.045 * font:  # a cell holds "0.00"
            break
    return side, margin, font


PANEL_DPI = 120


def panel_figure(title: str, mat: np.ndarray, labels: np.ndarray | None, class_names: Sequence[str],
                 layout: tuple[float, float, int]) -> Figure:
    """One confusion panel (Agg canvas, no pyplot state); ``mat``/``class_names`` already in the report's
    class order (head → tail), which the axis titles say."""
    side, margin, font = layout
    fig = Figure(figsize=(side, side), dpi=PANEL_DPI)
    FigureCanvasAgg(fig)
    box = side - margin - 0.4
    ax = fig.add_axes([margin / side, (side - 0.4 - box) / side, box / side, box / side])
    _heatmap(ax, mat, labels, class_names, font)
    ax.set_title(title, fontsize=font + 1)
    ax.set_xlabel("Predicted (head → tail)", fontsize=font + 1)
    ax.set_ylabel("True (head → tail)", fontsize=font + 1)
    ax.tick_params(axis="both", labelsize=font)
    return fig


def _render_panel(title: str, mat: np.ndarray, labels: np.ndarray | None, class_names: Sequence[str],
                  layout: tuple[float, float, int]) -> np.ndarray:
    """One confusion panel (:func:`panel_figure`) as an RGBA pixel array.

    Panels are drawn once and pasted into the grids and per-method figures: matplotlib's text
    layout is the cost (one text per cell), and constrained layout measured every text again.
    """
    fig = panel_figure(title, mat, labels, class_names, layout)
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba()).copy()


def _compose(images: Sequence[np.ndarray], ncols: int) -> bytes:
    """PNG bytes of equally sized panel images in rows of ``ncols`` (white where a row is short)."""
    from PIL import Image

    h, w = images[0].shape[:2]
    ncols = min(ncols, len(images))
    nrows = math.ceil(len(images) / ncols)
    sheet = np.full((nrows * h, ncols * w, 4), 255, dtype=np.uint8)
    for k, image in enumerate(images):
        r, c = divmod(k, ncols)
        sheet[r * h:(r + 1) * h, c * w:(c + 1) * w] = image
    buf = io.BytesIO()
    Image.fromarray(sheet[..., :3]).save(buf, format="PNG", dpi=(PANEL_DPI, PANEL_DPI))
    return buf.getvalue()


def _confusion_figure(panels: list[tuple[str, np.ndarray]], class_names: list[str],
                      counts: Sequence[np.ndarray | None] | None = None) -> bytes:
    """PNG bytes of one heatmap panel per (title, row-normalised matrix), wrapped into rows.

    With ``counts`` the cells are coloured by the normalised value and labelled with the counts.
    """
    layout = _panel_layout(len(panels), class_names)
    images = [_render_panel(title, mat, counts[k] if counts is not None else None, class_names, layout)
              for k, (title, mat) in enumerate(panels)]
    return _compose(images, _grid_shape(len(panels))[1])


def _heatmap(ax, mat: np.ndarray, labels: np.ndarray | None, class_names: Sequence[str], font: int) -> None:
    """A confusion heat map: colour = ``mat`` on [0, 1], text = ``labels`` (counts) or the value.

    Drawn with ``imshow`` and one text per cell: ``seaborn.heatmap`` redraws the whole figure for
    every panel to pick its text colours, which made a grid of 14 methods take most of a minute.
    """
    mat = np.asarray(mat, dtype=float)
    ax.imshow(mat, cmap="Blues", vmin=0.0, vmax=1.0, aspect="equal", interpolation="nearest")
    for (i, j), value in np.ndenumerate(mat):
        text = f"{int(labels[i, j])}" if labels is not None else f"{value:.2f}"
        ax.text(j, i, text, ha="center", va="center", fontsize=font,
                color="white" if value > 0.6 else "black")
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(ticks, class_names)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)


# ----------------------------------------------------------------------------- evidence figures

def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    return buf.getvalue()


def _grid(n: int, panel: tuple[float, float], max_cols: int = 4) -> tuple[Figure, list]:
    cols = min(n, max_cols)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(panel[0] * cols, panel[1] * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(rows, cols, squeeze=False).ravel())
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def metric_bars_figure(summary: pd.DataFrame) -> bytes:
    """One panel per headline metric: a bar per method, error bar = std over seeds."""
    fig, axes = _grid(len(HEADLINE), (0.5 * len(summary) + 2.0, 3.2), max_cols=3)
    for ax, k in zip(axes, HEADLINE):
        means = summary[f"{k}_mean"].to_numpy()
        stds = np.nan_to_num(summary[f"{k}_std"].to_numpy())
        ax.bar(range(len(summary)), means, yerr=stds, capsize=3, color="#4c72b0")
        ax.set_xticks(range(len(summary)), summary["method"], rotation=60, ha="right", fontsize=8)
        finite = means[np.isfinite(means)]
        low = max(0.0, float(np.min(finite - 5))) if finite.size else 0.0
        ax.set_ylim(low, 100)
        ax.set_title(f"{HEADLINE_LABELS[k]} (%)")
    return _png(fig)


def per_class_recall_fig(results: Sequence[dict], methods: Sequence[str]) -> Figure:
    """Heat map: mean test recall per method (rows) and class (columns, the report's head → tail order)."""
    import seaborn as sns

    order = class_order(results)
    matrix = np.array([[np.mean([r["test"]["per_class"]["recall"][i] for r in results if r["method"] == m])
                        for i in order] for m in methods])
    fig = Figure(figsize=(max(4.5, 1.5 + 0.7 * len(order)), 1.2 + 0.4 * len(methods)), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    sns.heatmap(matrix, ax=ax, vmin=0, vmax=100, cmap="viridis", annot=True, fmt=".0f",
                annot_kws={"fontsize": 7}, xticklabels=class_labels(results, order), yticklabels=list(methods),
                cbar=False)
    ax.set_xlabel("class (training images), head → tail")
    ax.set_title("Test recall (%), mean over seeds")
    ax.tick_params(axis="x", labelsize=7)
    return fig


def per_class_recall_figure(results: Sequence[dict], methods: Sequence[str]) -> bytes:
    return _png(per_class_recall_fig(results, methods))


def reliability_figure(runs: Sequence, methods: Sequence[str]) -> bytes:
    """Reliability diagram per method, seeds pooled: accuracy vs confidence per bin."""
    fig, axes = _grid(len(methods), (2.6, 2.6))
    centres = (np.arange(ev.ECE_BINS) + 0.5) / ev.ECE_BINS
    for ax, m in zip(axes, methods):
        mine = [r for r in runs if r.method == m]
        labels = np.concatenate([r.test_labels for r in mine])
        probs = np.concatenate([r.test_probs for r in mine])
        bins = ev.reliability_bins(labels, probs)
        acc = np.asarray(bins["accuracy"], dtype=float)
        ax.bar(centres, np.nan_to_num(acc), width=1 / ev.ECE_BINS, edgecolor="black", linewidth=0.4)
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8)
        ece = ev.expected_calibration_error(labels, probs)
        ax.set_title(f"{m} (ECE {ece:.1f} %)", fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence", fontsize=8)
        ax.set_ylabel("accuracy", fontsize=8)
    return _png(fig)


CURVE_METRICS = ("acc", "sen")  # validation Acc and balanced accuracy: what the checkpoint rules weigh


def _curve(result: dict, metric: str) -> tuple[list[int], list[float]]:
    history = [h for h in result.get("history") or [] if isinstance(h, dict) and isinstance(h.get("epoch"), int)]
    values = [_number((h.get("val") or {}).get(metric)) for h in history]
    return [h["epoch"] for h in history], [math.nan if v is None else v for v in values]


def curve_limits(results: Sequence[dict], metric: str) -> tuple[float, float]:
    """One y-range for every panel of ``metric``: the data's, widened to whole tens and at least 20 points."""
    values = [v for r in results for v in _curve(r, metric)[1] if not math.isnan(v)]
    if not values:
        return 0.0, 100.0
    low, high = 10 * math.floor(min(values) / 10), 10 * math.ceil(max(values) / 10)
    while high - low < 20:
        low, high = (low - 10, high) if low >= 10 else (low, high + 10)
    return max(0.0, float(low)), min(100.0, float(high))


def training_curves_fig(results: Sequence[dict], methods: Sequence[str]) -> Figure:
    """Validation Acc and Sen per epoch: per method one panel per metric, one line per seed.

    Every panel of a metric shares one y-range (:func:`curve_limits`), so a flat line looks flat and
    methods compare at a glance; the tested epoch of each seed is a dot, stage boundaries are dotted.
    """
    cols = min(len(methods), 4)
    blocks = math.ceil(len(methods) / cols)
    fig = Figure(figsize=(2.9 * cols, 2.1 * len(CURVE_METRICS) * blocks), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.subplots(len(CURVE_METRICS) * blocks, cols, squeeze=False)
    limits = {metric: curve_limits([r for r in results if r["method"] in methods], metric) for metric in CURVE_METRICS}
    for k, m in enumerate(methods):
        block, col = divmod(k, cols)
        runs = sorted((r for r in results if r["method"] == m), key=lambda r: r["seed"])
        for row, metric in enumerate(CURVE_METRICS):
            ax = grid[block * len(CURVE_METRICS) + row, col]
            for r in runs:
                epochs, values = _curve(r, metric)
                line, = ax.plot(epochs, values, linewidth=1, label=f"seed {r['seed']}")
                if r.get("best_epoch") in epochs:
                    at = epochs.index(r["best_epoch"])
                    ax.plot([epochs[at]], [values[at]], "o", color=line.get_color(), markersize=4)
            if runs:
                history = [h for h in runs[0].get("history") or [] if isinstance(h, dict)]
                for before, after in zip(history, history[1:]):
                    if before.get("stage") != after.get("stage") and isinstance(after.get("epoch"), int):
                        ax.axvline(after["epoch"] - 0.5, color="grey", linestyle=":", linewidth=0.8)
            ax.set_ylim(*limits[metric])
            ax.set_title(f"{m}: val {HEADLINE_LABELS.get(metric, metric)}", fontsize=8)
            ax.set_xlabel("epoch", fontsize=7)
            ax.set_ylabel(f"{HEADLINE_LABELS.get(metric, metric)} (%)", fontsize=7)
            ax.tick_params(labelsize=6)
            if row == 0 and runs:
                ax.legend(fontsize=5)
    for k in range(len(methods), blocks * cols):
        block, col = divmod(k, cols)
        for row in range(len(CURVE_METRICS)):
            grid[block * len(CURVE_METRICS) + row, col].set_visible(False)
    return fig


def training_curves_figure(results: Sequence[dict], methods: Sequence[str]) -> bytes:
    return _png(training_curves_fig(results, methods))
