"""Benchmark report: summary tables (Markdown, CSV, LaTeX), confusion-matrix figures and a README.

Input is the run result files (one JSON per method x seed, see ``load_results``). Every output is
written atomically, and none contains a timestamp, so re-running on the same results gives the
same bytes.
"""
from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tabulate import tabulate

from ltbench.errors import LtbenchError
from ltbench.fileio import atomic_write
from ltbench.metrics import GROUPS, HEADLINE, HEADLINE_LABELS

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
    return keys


def _metric(result: dict, key: str) -> float:
    test = result["test"]
    if key.endswith("_recall"):
        value = test.get("group_recall", {}).get(key[: -len("_recall")])
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


def _header_line(ctx: dict[str, str]) -> str:
    # Every setting that changes results, so a table is never read without its protocol.
    return (f"Dataset: {ctx['dataset']} · split: {ctx['split_kind']} ({ctx['split_hash']}) · "
            f"backbone: {ctx['backbone']} · pretrained: {ctx['pretrained']} · image size: {ctx['image_size']} · "
            f"epochs: {ctx['epochs']} · batch: {ctx['batch_size']} · lr: {ctx['lr']} · "
            f"best checkpoint by val {ctx['select_metric']} · seeds: {ctx['seeds']}")


# ----------------------------------------------------------------------------- tables

def _columns(summary: pd.DataFrame) -> list[tuple[str, str]]:
    """(metric key, column title) of the metric columns present in ``summary``."""
    cols = [(k, HEADLINE_LABELS[k]) for k in HEADLINE]
    cols += [(f"{g}_recall", GROUP_LABELS[g]) for g in GROUPS if f"{g}_recall_mean" in summary]
    return cols


def _best_rows(summary: pd.DataFrame, key: str) -> set[int]:
    """Rows whose mean, as displayed (2 decimals), equals the column's best; ties all win."""
    shown = summary[f"{key}_mean"].round(2)
    if shown.isna().all():
        return set()
    return set(summary.index[shown == shown.max()])


def _cells(summary: pd.DataFrame, bold: Callable[[str], str], pm: str, nan: str) -> list[list[str]]:
    """Table body: method, [seeds], then ``mean pm std`` per metric with the best mean bolded."""
    cols = _columns(summary)
    best = {key: _best_rows(summary, key) for key, _ in cols}
    show_seeds = summary["n_seeds"].nunique() > 1
    rows = []
    for i, row in summary.iterrows():
        cells = [row["method"]] + ([str(row["n_seeds"])] if show_seeds else [])
        for key, _ in cols:
            mean, std = row[f"{key}_mean"], row[f"{key}_std"]
            text = nan if math.isnan(mean) else f"{mean:.2f}"
            if i in best[key]:
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


def markdown_table(summary: pd.DataFrame) -> str:
    """GitHub-flavoured Markdown table, ``mean ± std``, best mean in bold."""
    rows = _cells(summary, bold=lambda t: f"**{t}**", pm="±", nan="n/a")
    return tabulate(rows, headers=_headers(summary), tablefmt="github", disable_numparse=True)


def latex_table(summary: pd.DataFrame) -> str:
    """booktabs ``tabular`` (needs ``\\usepackage{booktabs}``), best mean in ``\\textbf``."""
    rows = _cells(summary, bold=lambda t: rf"\textbf{{{t}}}", pm=r"$\pm$", nan="--")
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


def _confusion_figure(panels: list[tuple[str, np.ndarray]], class_names: list[str]) -> bytes:
    """PNG bytes of one heatmap panel per (title, matrix); Agg canvas, no pyplot state."""
    ncols = min(len(panels), 3)
    nrows = math.ceil(len(panels) / ncols)
    side = 1.8 + 0.75 * len(class_names)
    fig = Figure(figsize=(side * ncols, side * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (title, mat) in zip(axes, panels):
        sns.heatmap(mat, ax=ax, vmin=0.0, vmax=1.0, cmap="Blues", annot=True, fmt=".2f",
                    annot_kws={"fontsize": 8}, cbar=False,
                    xticklabels=class_names, yticklabels=class_names)
        ax.set_title(title)
        ax.set_xlabel("Predicted")
        ax.set_ylabel("True")
        ax.tick_params(axis="x", labelrotation=45)
        ax.tick_params(axis="y", labelrotation=0)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    buf = io.BytesIO()
    # no Software metadata: keeps the bytes independent of the matplotlib version
    fig.savefig(buf, format="png", dpi=120, metadata={"Software": None})
    return buf.getvalue()


def _safe_filename(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


# ----------------------------------------------------------------------------- writing

def write_report(results: list[dict], out_dir: Path, order: Sequence[str] | None = None,
                 run_dir: Path | None = None, baseline: str | None = "ce", failures: Sequence[dict] = (),
                 stale: Sequence[dict] = ()) -> dict[str, Path]:
    """Write summary.{md,csv,tex}, confusion figures, the evidence (``evidence.md``, calibration,
    metric bars, per-class recall, reliability diagrams, training curves; computed from the runs'
    saved probabilities under ``run_dir``, default ``out_dir/runs``) and README.md.

    ``baseline`` is the method the paired tests compare against (skipped when absent).
    ``failures`` (failure records of ``ltbench.runs``) appear in their method's row of the tables;
    ``stale`` (results of another configuration) are listed below the table, never averaged.
    Returns file name -> path.
    """
    from ltbench.report_evidence import evidence_outputs

    summary = summarize(results, order)
    ctx = _context(results)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}

    def put(name: str, data: str | bytes) -> None:
        written[name] = atomic_write(out_dir / name, data)

    shown = with_failures(summary, failures, order)  # the tables; figures and evidence use finished runs
    notes = "\n".join(stale_lines(stale))
    table = markdown_table(shown) + ("\n\n" + notes.rstrip("\n") if notes else "")
    put("summary.md", f"{_header_line(ctx)}\n\n{table}\n")
    put("summary.csv", shown.to_csv(index=False, lineterminator="\n"))
    put("summary.tex", latex_table(shown))

    class_names = [str(n) for n in results[0]["test"]["per_class"]["name"]]
    panels = [(f"{m} (n={int(n)})", mean_confusion(results, m))
              for m, n in zip(summary["method"], summary["n_seeds"])]
    put("confusion_matrices.png", _confusion_figure(panels, class_names))
    per_method = []
    for method, panel in zip(summary["method"], panels):
        name = f"confusion_{_safe_filename(method)}.png"
        put(name, _confusion_figure([panel], class_names))
        per_method.append((method, name))

    evidence = evidence_outputs(results, Path(run_dir) if run_dir else out_dir / "runs", summary,
                                list(summary["method"]), baseline)
    for name, content in evidence.items():
        put(name, content)
    put("README.md", _readme(ctx, table, per_method, sorted(evidence)))
    return written


_EVIDENCE_FILES = {
    "evidence.md": "95 % bootstrap intervals, paired tests against the baseline (Holm), calibration, collapse flags",
    "calibration.csv": "ECE, NLL, Brier, worst-class recall and best epoch per run",
    "metrics.png": "headline metrics per method, error bars = std over seeds",
    "per_class_recall.png": "test recall per method and class, classes head → tail",
    "reliability.png": "reliability diagrams, seeds pooled",
    "training_curves.png": "validation metric per epoch, one line per seed",
}


def _readme(ctx: dict[str, str], table: str, per_method: list[tuple[str, str]],
            evidence: Sequence[str] = ()) -> str:
    lines = [
        f"# ltbench report: {ctx['dataset']}",
        "",
        f"- Dataset: {ctx['dataset']}",
        f"- Split: {ctx['split_kind']} (hash `{ctx['split_hash']}`; the bench writes it to `split.csv`)",
        f"- Lesion leak: {ctx.get('leak', '?')}",
        f"- Backbone: {ctx['backbone']} (pretrained: {ctx['pretrained']}), image size {ctx['image_size']}, "
        f"epochs {ctx['epochs']}, batch {ctx['batch_size']}, lr {ctx['lr']}, "
        f"best-validation checkpoint by {ctx['select_metric']}",
        f"- Seeds: {ctx['seeds']} ({ctx['runs']} runs)",
        "",
        "Test-set metrics in percent, mean ± sample std over seeds; best mean in bold.",
        "",
        table,
        "",
        "## Files",
        "",
        "- [summary.md](summary.md): the table above",
        "- [summary.csv](summary.csv): the same numbers, unrounded",
        "- [summary.tex](summary.tex): LaTeX booktabs table",
        "- [confusion_matrices.png](confusion_matrices.png): all methods",
        *(f"- [{name}]({name}): {method}" for method, name in per_method),
        *(f"- [{name}]({name}): {_EVIDENCE_FILES.get(name, name)}" for name in evidence),
        "",
        "## Confusion matrices",
        "",
        "Row-normalised (true class on y, predicted class on x), averaged over seeds.",
        "",
        "![Confusion matrices](confusion_matrices.png)",
        "",
    ]
    if "evidence.md" in evidence:
        lines += ["## Evidence", "",
                  "Confidence intervals, paired tests against the baseline, calibration and collapse flags: "
                  "[evidence.md](evidence.md).", ""]
        lines += [f"![{name}]({name})\n" for name in
                  ("metrics.png", "per_class_recall.png", "reliability.png", "training_curves.png")
                  if name in evidence]
    return "\n".join(lines)


