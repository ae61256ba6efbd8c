"""Benchmark report: summary tables (Markdown, CSV, LaTeX), confusion-matrix figures and a README.

Issue 12: a best mean is bold only when a paired bootstrap separates it from the runner-up
(``ltbench.report_evidence.best_tests``); confusion matrices come row-normalised (mean over seeds)
and as counts (summed over seeds); head/medium/tail groups and published numbers come from the
benchmark file (``report_groups``, ``report_references``; ``report_settings.json`` beside the runs).

Input is the run result files (one JSON per method x seed, see ``load_results``). Every output is
written atomically, and none contains a timestamp, so re-running on the same results gives the
same bytes.
"""
from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tabulate import tabulate

from ltbench.errors import LtbenchError
from ltbench.fileio import atomic_write
from ltbench.metrics import GROUPS, HEADLINE, HEADLINE_LABELS
from ltbench.report_retrieval import RETRIEVAL_FILES, retrieval_outputs

GROUP_LABELS = {"head": "Head", "medium": "Medium", "tail": "Tail"}
_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}


# ----------------------------------------------------------------------------- loading

def load_results(run_dir: Path) -> list[dict]:
    """All run result dicts under ``run_dir`` (recursive, sorted by path).

    JSON files without a ``"test"`` key (configs, histories, ...) are skipped.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise LtbenchError(f"{run_dir}: not a directory")
    results, seen = [], {}
    for path in sorted(run_dir.rglob("*.json")):
        data = _read_json(path)
        if not isinstance(data, dict) or "test" not in data:
            continue
        _check_result(path, data)
        key = (data["method"], data["seed"])
        if key in seen:
            raise LtbenchError(f"{path}: duplicate run method={key[0]} seed={key[1]} "
                               f"(also in {seen[key]})")
        seen[key] = path
        results.append(data)
    if not results:
        raise LtbenchError(f"no result files in {run_dir}")
    return results


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise LtbenchError(f"{path}: unreadable JSON ({reason})") from None


def _check_result(path: Path, data: dict) -> None:
    """The keys the report relies on, checked up front so errors name the file."""
    for key in ("method", "seed"):
        if key not in data:
            raise LtbenchError(f"{path}: result file has no {key!r} key")
    test = data["test"]
    missing = [k for k in (*HEADLINE, "confusion_matrix_normalized", "per_class")
               if not isinstance(test, dict) or k not in test]
    if missing:
        raise LtbenchError(f"{path}: 'test' metrics lack {', '.join(missing)}")


# ----------------------------------------------------------------------------- summary

def summarize(results: list[dict], order: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per method: ``n_seeds``, ``<metric>_mean``/``_std`` (percent, sample std).

    Metrics are the headline ones plus ``<group>_recall`` for head/medium/tail when the results
    carry ``group_recall``. The std of a single seed is NaN; a NaN metric in any seed (e.g. an
    undefined AUC) makes the mean NaN rather than silently averaging fewer seeds.
    """
    _check_consistent(results)
    keys = _metric_keys(results)
    rows = []
    for method in method_order(results, order):
        runs = [r for r in results if r["method"] == method]
        row: dict = {"method": method, "n_seeds": len(runs)}
        for key in keys:
            values = np.array([_metric(r, key) for r in runs], dtype=float)
            row[f"{key}_mean"] = float(np.mean(values))
            row[f"{key}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def method_order(results: list[dict], order: Sequence[str] | None = None) -> list[str]:
    """Methods in ``order`` first (those present), then the rest sorted by name."""
    present = sorted({str(r["method"]) for r in results})
    first = [m for m in dict.fromkeys(order or []) if m in present]
    return first + [m for m in present if m not in first]


def _metric_keys(results: list[dict]) -> list[str]:
    keys = list(HEADLINE)
    if any("group_recall" in r["test"] for r in results):
        keys += [f"{g}_recall" for g in GROUPS]
        if any(_uses_group_acc(r) for r in results):
            keys.append("group_acc")
    return keys


def _uses_group_acc(result: dict) -> bool:
    """A run selected by, or grouped for, MONICA's headline metric (benchmarks/isic2019-monica.yaml)."""
    config = result.get("config", {})
    return config.get("select_metric") == "group_acc" or bool(config.get("group_sizes"))


def _metric(result: dict, key: str) -> float:
    test = result["test"]
    if key.endswith("_recall"):
        value = test.get("group_recall", {}).get(key[: -len("_recall")])
    elif key == "group_acc" and "group_acc" not in test:  # results written before the key existed
        recalls = [v for v in test.get("group_recall", {}).values() if v is not None and not math.isnan(v)]
        value = float(np.mean(recalls)) if recalls else None
    else:
        value = test[key]
    return math.nan if value is None else float(value)


def _check_consistent(results: list[dict]) -> None:
    """Refuse to average or compare runs of different data: the table would be meaningless."""
    if not results:
        raise LtbenchError("no results to summarize")
    seen: dict = {}
    for r in results:
        key = (r["method"], r["seed"])
        if key in seen:
            raise LtbenchError(f"duplicate run method={key[0]} seed={key[1]}")
        seen[key] = r
    for label, get in (("datasets", _dataset_name), ("split hashes", _split_hash),
                       ("class names", lambda r: tuple(r["test"]["per_class"]["name"]))):
        values = {get(r) for r in results}
        if len(values) > 1:
            shown = "; ".join(sorted(str(v) for v in values))
            raise LtbenchError(f"results mix {len(values)} {label} ({shown}); report one at a time")


def _dataset_name(result: dict) -> str:
    return str(result.get("dataset", {}).get("name", result.get("benchmark", "?")))


def _split_hash(result: dict) -> str:
    return str(result.get("split", {}).get("hash", "?"))


# ----------------------------------------------------------------------------- context

def _context(results: list[dict]) -> dict[str, str]:
    """Dataset/split/config facts shared by the runs; differing config values are all listed."""
    def values(get) -> str:
        found = {str(get(r)) for r in results}
        return ", ".join(sorted(found, key=_natural_key))

    return {
        "dataset": values(_dataset_name),
        "split_kind": values(lambda r: r.get("split", {}).get("kind", "?")),
        "split_hash": values(_split_hash),
        "backbone": values(lambda r: r.get("config", {}).get("backbone", "?")),
        "image_size": values(lambda r: r.get("config", {}).get("image_size", "?")),
        "epochs": values(lambda r: r.get("config", {}).get("epochs", "?")),
        "pretrained": values(lambda r: r.get("config", {}).get("pretrained") or "none"),
        "batch_size": values(lambda r: r.get("config", {}).get("batch_size", "?")),
        "lr": values(lambda r: r.get("config", {}).get("lr", "?")),
        "select_metric": values(lambda r: r.get("config", {}).get("select_metric", "acc")),
        "selection": selection_text(results),
        "protocol": values(_protocol_options),
        "seeds": values(lambda r: r["seed"]),
        "leak": values(lambda r: leak_text(r.get("split", {}).get("lesion_leak"))),
        "runs": str(len(results)),
    }


def leak_text(leak: dict | None) -> str:
    """The lesion leak of a run's split in words; images without a lesion id are never "none".

    ``leak`` is ``ltbench.data.splits.leak_report``'s dict (older results lack the count of images
    without an id, and hold None when the data had no lesion ids).
    """
    if not leak:
        return "unknown (no lesion ids)"
    shared, total = leak["test_lesions_also_in_train"], leak["test_lesions"]
    unknown = leak.get("test_images_without_lesion_id", 0)
    if unknown and not total:
        return f"unknown: {unknown} test images without a lesion id"
    known = f"{shared} of {total} test lesions also have images in train"
    if unknown:
        return f"{known}; {unknown} test images without a lesion id (leak unknown for them)"
    return "none: no test lesion has images in train" if shared == 0 else known


def _natural_key(text: str) -> tuple:
    # so seeds sort 0, 1, 2, 10 rather than 0, 1, 10, 2
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", text))


def _protocol_options(result: dict) -> str:
    """The optimiser and schedule, and any other result-changing setting away from its default."""
    from ltbench.config import train_settings

    settings = train_settings()
    # A result written before a setting existed ran at its default (the run key says the same).
    config = {k: result.get("config", {}).get(k, s.default) for k, s in settings.items()}
    config = {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in config.items()}
    text = (f"sgd (momentum {config['momentum']}" if config["optimizer"] == "sgd"
            else f"{config['optimizer']} (betas {tuple(config['betas'])}")
    text += f", weight decay {config['weight_decay']}), {config['lr_schedule']} lr"
    shown = {"backbone", "pretrained", "image_size", "epochs", "batch_size", "lr", "select_metric", "optimizer",
             "momentum", "betas", "weight_decay", "lr_schedule", "device", "seed", "eval_batch_size"}
    for key, setting in settings.items():
        default = list(setting.default) if isinstance(setting.default, (list, tuple)) else setting.default
        if key not in shown and config[key] != default:
            text += f", {key} {config[key]}"
    return text


def selection_text(results: Sequence[dict]) -> str:
    """Which rule chose each row's tested checkpoint (one rule: said once; several: rows per rule)."""
    from ltbench.selection import RULE_TEXT

    rows: dict[str, list[str]] = {}
    for r in results:
        rule = str(r.get("config", {}).get("select_metric", "acc"))
        rows.setdefault(rule, [])
        if str(r["method"]) not in rows[rule]:
            rows[rule].append(str(r["method"]))
    if len(rows) == 1:
        rule = next(iter(rows))
        return f"{RULE_TEXT.get(rule, rule)} (select_metric {rule}), every row"
    return "; ".join(f"{RULE_TEXT.get(rule, rule)} (select_metric {rule}): {', '.join(methods)}"
                     for rule, methods in sorted(rows.items()))


def _header_line(ctx: dict[str, str]) -> str:
    # Every setting that changes results, so a table is never read without its protocol.
    return (f"Dataset: {ctx['dataset']} · split: {ctx['split_kind']} ({ctx['split_hash']}) · "
            f"backbone: {ctx['backbone']} · pretrained: {ctx['pretrained']} · image size: {ctx['image_size']} · "
            f"epochs: {ctx['epochs']} · batch: {ctx['batch_size']} · lr: {ctx['lr']} · "
            f"optimiser: {ctx.get('protocol', '?')} · "
            f"checkpoint: {ctx.get('selection', ctx['select_metric'])} · "
            f"head/medium/tail: {ctx.get('groups', '?')} · seeds: {ctx['seeds']}")


# ----------------------------------------------------------------------------- tables

def _columns(summary: pd.DataFrame) -> list[tuple[str, str]]:
    """(metric key, column title) of the metric columns present in ``summary``."""
    cols = [(k, HEADLINE_LABELS[k]) for k in HEADLINE]
    cols += [(f"{g}_recall", GROUP_LABELS[g]) for g in GROUPS if f"{g}_recall_mean" in summary]
    if "group_acc_mean" in summary:  # MONICA's headline "accuracy": the mean of the three group means
        cols.append(("group_acc", "Group-mean acc (MONICA)"))
    return cols


def _best_rows(summary: pd.DataFrame, key: str) -> set[int]:
    """Rows whose mean, as displayed (2 decimals), equals the column's best; ties all win."""
    shown = summary[f"{key}_mean"].round(2)
    if shown.isna().all():
        return set()
    return set(summary.index[shown == shown.max()])


BoldRows = Mapping[str, "set[str]"]  # metric key -> the methods whose cell is bold


def _cells(summary: pd.DataFrame, bold: Callable[[str], str], pm: str, nan: str,
           bold_rows: BoldRows | None = None, marks: Mapping[str, str] | None = None) -> list[list[str]]:
    """Table body: method, [seeds], then ``mean pm std`` per metric.

    Bold: the methods ``bold_rows`` names per metric (the report passes those whose best mean the
    paired test separates from the runner-up); None: every best mean as displayed. ``marks``: text
    after a method's name (the ⚠ of flagged runs).
    """
    cols = _columns(summary)
    if bold_rows is None:
        best = {key: set(summary.loc[sorted(_best_rows(summary, key)), "method"]) for key, _ in cols}
    else:
        best = {key: set(bold_rows.get(key, ())) for key, _ in cols}
    show_seeds = summary["n_seeds"].nunique() > 1
    rows = []
    for i, row in summary.iterrows():
        cells = [row["method"] + (marks or {}).get(row["method"], "")] + ([str(row["n_seeds"])] if show_seeds else [])
        for key, _ in cols:
            mean, std = row[f"{key}_mean"], row[f"{key}_std"]
            text = nan if math.isnan(mean) else f"{mean:.2f}"
            if row["method"] in best[key] and not math.isnan(mean):
                text = bold(text)
            if not math.isnan(std):
                text += f" {pm} {std:.2f}"
            cells.append(text)
        if "failed" in summary:
            cells.append(str(row["failed"] or ""))
        rows.append(cells)
    return rows


def _headers(summary: pd.DataFrame) -> list[str]:
    seeds = ["Seeds"] if summary["n_seeds"].nunique() > 1 else []
    failed = ["Failed runs"] if "failed" in summary else []
    return ["Method", *seeds, *(title for _, title in _columns(summary)), *failed]


def with_failures(summary: pd.DataFrame, failures: Sequence[dict], order: Sequence[str] | None = None) -> pd.DataFrame:
    """The summary with a ``failed`` column naming each failed run (seed, epoch, reason) in its row.

    A method whose every seed failed gets a row of its own (0 seeds, no metrics), so a failure is
    never hidden by its absence. Unchanged (no column) when nothing failed.
    """
    if not failures:
        return summary
    notes: dict[str, list[str]] = {}
    for f in sorted(failures, key=lambda f: (str(f["method"]), f["seed"])):
        notes.setdefault(str(f["method"]), []).append(
            f"seed {f['seed']}: {'before training' if f['epoch'] is None else 'epoch ' + str(f['epoch'])}, {f['reason']}")
    extra = [{"method": m, "n_seeds": 0} for m in notes if m not in set(summary["method"])]
    table = pd.concat([summary, pd.DataFrame(extra)], ignore_index=True) if extra else summary.copy()
    rank = {m: k for k, m in enumerate(dict.fromkeys([*(order or []), *summary["method"]]))}
    table = table.sort_values("method", key=lambda col: col.map(lambda m: rank.get(m, len(rank))), kind="stable")
    table = table.reset_index(drop=True)
    table["failed"] = ["; ".join(notes.get(m, [])) for m in table["method"]]
    return table


def stale_lines(stale: Sequence[dict]) -> list[str]:
    """Markdown lines listing results of another configuration (kept, not in the table)."""
    if not stale:
        return []
    return ["Stale results (made with another configuration; kept, left out of the table; "
            "`--force` retrains them):", "",
            *(f"- {s['method']} seed {s['seed']}: `{s['path']}` (run key {s['stored_key']}, now {s['current_key']})"
              for s in stale), ""]


def markdown_table(summary: pd.DataFrame, bold_rows: BoldRows | None = None,
                   marks: Mapping[str, str] | None = None) -> str:
    """GitHub-flavoured Markdown table, ``mean ± std``; bold and marks: see :func:`_cells`."""
    rows = _cells(summary, bold=lambda t: f"**{t}**", pm="±", nan="n/a", bold_rows=bold_rows, marks=marks)
    return tabulate(rows, headers=_headers(summary), tablefmt="github", disable_numparse=True)


def latex_table(summary: pd.DataFrame, bold_rows: BoldRows | None = None) -> str:
    """booktabs ``tabular`` (needs ``\\usepackage{booktabs}``); bold (``\\textbf``): see :func:`_cells`."""
    rows = _cells(summary, bold=lambda t: rf"\textbf{{{t}}}", pm=r"$\pm$", nan="--", bold_rows=bold_rows)
    headers = _headers(summary)
    lines = [
        "% ltbench summary; requires \\usepackage{booktabs}",
        rf"\begin{{tabular}}{{l{'r' * (len(headers) - 1)}}}",
        r"\toprule",
        " & ".join(headers) + r" \\",
        r"\midrule",
        *(" & ".join([latex_escape(r[0]), *r[1:-1], latex_escape(r[-1]) if "failed" in summary else r[-1]])
          + r" \\" for r in rows),
        r"\bottomrule",
        r"\end{tabular}",
    ]
    return "\n".join(lines) + "\n"


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters (method names often contain underscores)."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


# ----------------------------------------------------------------------------- figures

def mean_confusion(results: list[dict], method: str) -> np.ndarray:
    """Row-normalised confusion matrix of ``method`` averaged over its seeds."""
    mats = [np.asarray(r["test"]["confusion_matrix_normalized"], dtype=float)
            for r in results if r["method"] == method]
    return np.mean(mats, axis=0)


def summed_confusion(results: list[dict], method: str) -> tuple[np.ndarray | None, int]:
    """Raw confusion counts of ``method`` summed over its seeds, and how many seeds stored them."""
    mats = [np.asarray(r["test"]["confusion_matrix"], dtype=np.int64)
            for r in results if r["method"] == method and "confusion_matrix" in r["test"]]
    return (np.sum(mats, axis=0) if mats else None), len(mats)


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


def confusion_counts_csv(results: list[dict], methods: Sequence[str], class_names: list[str],
                         order: Sequence[int] | None = None) -> str:
    """Long table: method, true, predicted, count (summed over seeds), seeds, normalised (mean over seeds).

    Classes in ``order`` (indices; the report passes head → tail), default the stored order.
    """
    order = list(range(len(class_names))) if order is None else list(order)
    rows = []
    for m in methods:
        total, n = summed_confusion(results, m)
        if total is None:
            continue
        norm = mean_confusion(results, m)
        for i in order:
            t = class_names[i]
            for j in order:
                p = class_names[j]
                rows.append({"method": m, "true": t, "predicted": p, "count": int(total[i, j]), "seeds": n,
                             "normalized_mean": float(norm[i, j])})
    frame = pd.DataFrame(rows, columns=["method", "true", "predicted", "count", "seeds", "normalized_mean"])
    return frame.to_csv(index=False, lineterminator="\n")


def _safe_filename(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


# ----------------------------------------------------------------------------- writing

def write_report(results: list[dict], out_dir: Path, order: Sequence[str] | None = None,
                 run_dir: Path | None = None, baseline: str | None = "ce", failures: Sequence[dict] = (),
                 stale: Sequence[dict] = (), references: dict | None = None,
                 groups: dict | None = None) -> dict[str, Path]:
    """Write summary.{md,csv,tex}, confusion figures (normalised and counts), the evidence
    (``evidence.md``, calibration, metric bars, per-class recall, reliability diagrams, training
    curves; computed from the runs' saved probabilities under ``run_dir``, default ``out_dir/runs``),
    the published-number comparison (``references.{md,csv}``) and README.md.

    ``baseline`` is the method the paired tests compare against (skipped when absent).
    ``failures`` (failure records of ``ltbench.runs``) appear in their method's row of the tables;
    ``stale`` (results of another configuration) are listed below the table, never averaged.
    ``references`` / ``groups``: the benchmark file's (``ltbench.report_references``,
    ``ltbench.report_groups``); when both are None they are read from ``report_settings.json``
    beside the runs (written by the bench), if any. Returns file name -> path.
    """
    from ltbench.report_evidence import (best_tests, best_tests_markdown, evidence_outputs, flag_marks, flagged_runs,
                                         flags_line, gather_evidence)
    from ltbench.report_groups import apply_groups, class_order, resolve
    from ltbench.report_references import compare, read_settings, references_markdown
    from ltbench.recipes import recipe_lines
    from ltbench.tuning import read_tuning, tuning_evidence, tuning_summary

    out_dir = Path(out_dir)
    run_dir = Path(run_dir) if run_dir else out_dir / "runs"
    if references is None and groups is None:
        references, groups = read_settings(run_dir.parent, out_dir)
    spec, grouping = resolve(groups, results)  # groups: > stored group_sizes > the dataset's literature > terciles
    results = apply_groups(results, spec)
    summary = summarize(results, order)
    ctx = _context(results)
    ctx["groups"] = grouping
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}

    def put(name: str, data: str | bytes) -> None:
        written[name] = atomic_write(out_dir / name, data)

    methods = list(summary["method"])
    gathered = gather_evidence(results, run_dir, methods, baseline)
    keys = [k for k, _ in _columns(summary)]
    tests = best_tests(gathered[0], summary, keys, results)
    bold_rows = {k: {t.best} for k, t in tests.items() if t.significant}

    shown = with_failures(summary, failures, order)  # the tables; figures and evidence use finished runs
    flagged = flagged_runs(results)  # collapse and non-convergence (issue 20 item 4)
    notes = "\n".join([*stale_lines(stale), *([flags_line(flagged, methods)] if flagged else [])])
    table = markdown_table(shown, bold_rows, marks=flag_marks(flagged)) + ("\n\n" + notes.rstrip("\n") if notes else "")
    tuning = read_tuning(run_dir.parent)  # the bench's tuning.json (ltbench/tuning.py), if it tuned
    protocol_notes = recipe_lines(results) + (tuning_summary(tuning) if tuning else [])
    if protocol_notes:  # which rows ran a paper recipe, which settings tuning chose (issue 20)
        table += "\n\n" + "\n".join(protocol_notes).rstrip("\n")
    put("summary.md", f"{_header_line(ctx)}\n\n{table}\n\n{BOLD_RULE}\n")
    put("summary.csv", shown.to_csv(index=False, lineterminator="\n"))
    put("summary.tex", latex_table(shown, bold_rows))

    stored_names = [str(n) for n in results[0]["test"]["per_class"]["name"]]
    classes = class_order(results)  # one class order, head -> tail, in every table and figure
    class_names = [stored_names[i] for i in classes]
    reorder = np.ix_(classes, classes)
    panels = [(f"{m} (n={int(n)})", mean_confusion(results, m)[reorder])
              for m, n in zip(summary["method"], summary["n_seeds"])]
    layout = _panel_layout(len(panels), class_names)  # every panel drawn once, pasted where it is shown
    normalised = [_render_panel(title, mat, None, class_names, layout) for title, mat in panels]
    ncols = _grid_shape(len(panels))[1]
    put("confusion_matrices.png", _compose(normalised, ncols))
    summed = [(total[reorder] if total is not None else None, n)
              for total, n in (summed_confusion(results, m) for m in methods)]
    counted = {m: _render_panel(f"{m} (counts, {n} seed{'s' * (n != 1)})", mat, total, class_names, layout)
               for m, (_, mat), (total, n) in zip(methods, panels, summed) if total is not None}
    with_counts = bool(counted)
    if counted:
        put("confusion_counts.png", _compose(list(counted.values()), _grid_shape(len(counted))[1]))
        put("confusion_counts.csv", confusion_counts_csv(results, methods, stored_names, classes))
    no_counts = [m for m in methods if m not in counted]
    per_method = []
    for method, image in zip(methods, normalised):
        name = f"confusion_{_safe_filename(method)}.png"
        # the normalised matrix and, beside it, the counts summed over seeds
        put(name, _compose([image, counted[method]] if method in counted else [image], 2))
        per_method.append((method, name))

    evidence = evidence_outputs(results, run_dir, summary, methods, baseline, gathered=gathered,
                                grouping=ctx["groups"], bold=best_tests_markdown(tests, dict(_columns(summary))))
    index = {n: i for i, n in enumerate(stored_names)}  # the report's groups, also for the retrieval columns
    retrieval_groups = {g: [index[n] for n in members if n in index]
                        for g, members in (results[0]["test"].get("groups") or {}).items()} or None
    evidence.update(retrieval_outputs(results, run_dir, methods, groups=retrieval_groups,
                                      grouping=grouping))  # retrieval tables/figures, if the runs have them
    if tuning and "evidence.md" in evidence:
        evidence["evidence.md"] = evidence["evidence.md"].rstrip("\n") + "\n\n" + "\n".join(tuning_evidence(tuning))
    for name, content in evidence.items():
        put(name, content)
    reference_text = ""
    if references is not None:
        compared = compare(references, summary)
        reference_text = references_markdown(references, compared)
        put("references.md", f"# Published numbers\n\n{_header_line(ctx)}\n\n{reference_text}")
        put("references.csv", compared.to_csv(index=False, lineterminator="\n"))
    put("README.md", _readme(ctx, table, per_method, sorted(evidence), with_counts=with_counts,
                             no_counts=no_counts, references=reference_text))
    return written


BOLD_RULE = ("Bold: a column's best mean, only when a paired bootstrap over the test images (seeds pooled) "
             "separates it from the runner-up at p < 0.05 (details: evidence.md).")

_EVIDENCE_FILES = {
    "evidence.md": "95 % bootstrap intervals, paired tests against the baseline (Holm), calibration, collapse and "
                   "convergence flags, selection sensitivity (acc / sen / f1 / last), "
                   "the tests behind the bold, per-class and cost tables",
    "calibration.csv": "ECE, NLL, Brier, worst-class recall and best epoch per run",
    "metrics.png": "headline metrics per method, error bars = std over seeds",
    "per_class_recall.png": "test recall per method and class, classes head → tail",
    "reliability.png": "reliability diagrams, seeds pooled",
    "training_curves.png": "validation Acc and Sen per epoch (shared axes per metric), one line per seed, "
                           "the tested epoch marked",
    **RETRIEVAL_FILES,
}


def _readme(ctx: dict[str, str], table: str, per_method: list[tuple[str, str]],
            evidence: Sequence[str] = (), with_counts: bool = False, no_counts: Sequence[str] = (),
            references: str = "") -> str:
    lines = [
        f"# ltbench report: {ctx['dataset']}",
        "",
        f"- Dataset: {ctx['dataset']}",
        f"- Split: {ctx['split_kind']} (hash `{ctx['split_hash']}`; the bench writes it to `split.csv`)",
        f"- Lesion leak: {ctx.get('leak', '?')}",
        f"- Backbone: {ctx['backbone']} (pretrained: {ctx['pretrained']}), image size {ctx['image_size']}, "
        f"epochs {ctx['epochs']}, batch {ctx['batch_size']}, lr {ctx['lr']}, "
        f"checkpoint: {ctx.get('selection', ctx['select_metric'])}",
        f"- Seeds: {ctx['seeds']} ({ctx['runs']} runs)",
        f"- Head / medium / tail: {ctx.get('groups', '?')}",
        "",
        "Test-set metrics in percent, mean ± sample std over seeds. " + BOLD_RULE,
        "",
        table,
        "",
    ]
    if references:
        lines += ["## Published numbers", "", references, "Also as [references.md](references.md) and "
                  "[references.csv](references.csv).", ""]
    lines += [
        "## Files",
        "",
        "- [summary.md](summary.md): the table above",
        "- [summary.csv](summary.csv): the same numbers, unrounded",
        "- [summary.tex](summary.tex): LaTeX booktabs table",
        "- [confusion_matrices.png](confusion_matrices.png): all methods, row-normalised",
    ]
    if with_counts:
        lines += ["- [confusion_counts.png](confusion_counts.png): all methods, counts summed over seeds",
                  "- [confusion_counts.csv](confusion_counts.csv): counts summed over seeds and the "
                  "normalised means, per method, true and predicted class"]
    lines += [f"- [{name}]({name}): {method}, normalised" + (" and counts" if with_counts and method not in no_counts
                                                                else "")
              for method, name in per_method]
    if references:
        lines += ["- [references.md](references.md): paper / ltbench / difference",
                  "- [references.csv](references.csv): the same, unrounded"]
    lines += [f"- [{name}]({name}): {_EVIDENCE_FILES.get(name, name)}" for name in evidence]
    lines += [
        "",
        "## Confusion matrices",
        "",
        "Row-normalised (true class on y, predicted class on x; classes head → tail by training count on both "
        "axes, as in every table and figure of this report), averaged over seeds.",
        "",
        "![Confusion matrices](confusion_matrices.png)",
        "",
    ]
    if with_counts:
        lines += ["Counts: each cell is the number of test images, summed over the seeds (a test image is "
                  "counted once per seed); colour = the row-normalised mean above.", "",
                  "![Confusion counts](confusion_counts.png)", ""]
    if no_counts:
        lines += [f"No counts stored (results of an older version): {', '.join(no_counts)}.", ""]
    if "evidence.md" in evidence:
        lines += ["## Evidence", "",
                  "Confidence intervals, paired tests against the baseline, calibration, collapse and convergence "
                  "flags, and what each checkpoint rule would have tested: "
                  "[evidence.md](evidence.md).", ""]
        lines += [f"![{name}]({name})\n" for name in
                  ("metrics.png", "per_class_recall.png", "reliability.png", "training_curves.png")
                  if name in evidence]
    return "\n".join(lines)
