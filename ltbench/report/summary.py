"""The report's summary: loading the run results, the summary table (Markdown, CSV, LaTeX), its context.

Issue 12: a best mean is bold only when a paired bootstrap separates it from the runner-up
(``ltbench.report.evidence.best_tests``); confusion matrices come row-normalised (mean over seeds)
and as counts (summed over seeds; the long CSV is here, the panels in ``ltbench.report.figures``).

Input is the run result files (one JSON per method x seed, see ``load_results``).
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

from ltbench.errors import LtbenchError
from ltbench.metrics import GROUPS, HEADLINE, HEADLINE_LABELS
from ltbench.report.results import RESULT_NAME, arrays_path, check_result, load_arrays, read_json

GROUP_LABELS = {"head": "Head", "medium": "Medium", "tail": "Tail"}
_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}


# ----------------------------------------------------------------------------- loading

def load_results(run_dir: Path) -> list[dict]:
    """All run result dicts under ``run_dir`` (recursive, sorted by path): :func:`result_files` without paths."""
    return [result for _, result in result_files(run_dir)]


def result_files(run_dir: Path, arrays: bool = True) -> list[tuple[Path, dict]]:
    """(path, result) of every run result under ``run_dir`` (recursive, sorted by path), each checked.

    A file named like a result (``seed<k>.json``) must be one: empty, incomplete or mistyped, it is
    one line naming it (``ltbench.report.results``), never silently dropped; so must its NPZ beside it
    (``arrays``). Other JSON files without a ``"test"`` key (configs, failure records) are skipped.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise LtbenchError(f"{run_dir}: not a directory")
    found, seen = [], {}
    for path in sorted(run_dir.rglob("*.json")):
        data = read_json(path)
        if not RESULT_NAME.fullmatch(path.name) and not (isinstance(data, dict) and "test" in data):
            continue
        check_result(path, data)
        if arrays:
            load_arrays(arrays_path(path, data), data)
        key = (data["method"], data["seed"])
        if key in seen:
            raise LtbenchError(f"{path}: duplicate run method={key[0]} seed={key[1]} "
                               f"(also in {seen[key]})")
        seen[key] = path
        found.append((path, data))
    if not found:
        raise LtbenchError(f"no result files in {run_dir}")
    return found


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
    """Dataset/split/config facts shared by the runs; differing config values are all listed.

    The training settings are those of the rows on the shared protocol: a row on a paper recipe
    (``recipe`` in its result) is named under the table instead (``ltbench.recipes.recipe_lines``).
    """
    shared = [r for r in results if not (r.get("recipe") or r.get("row_train"))] or results

    def values(get, runs=results) -> str:
        found = {str(get(r)) for r in runs}
        return ", ".join(sorted(found, key=_natural_key))

    return {
        "dataset": values(_dataset_name),
        "split_kind": values(lambda r: r.get("split", {}).get("kind", "?")),
        "split_hash": values(_split_hash),
        "backbone": values(lambda r: r.get("config", {}).get("backbone", "?"), shared),
        "image_size": values(lambda r: r.get("config", {}).get("image_size", "?"), shared),
        "epochs": values(lambda r: r.get("config", {}).get("epochs", "?"), shared),
        "pretrained": values(lambda r: r.get("config", {}).get("pretrained") or "none", shared),
        "batch_size": values(lambda r: r.get("config", {}).get("batch_size", "?"), shared),
        "lr": values(lambda r: r.get("config", {}).get("lr", "?"), shared),
        "select_metric": values(lambda r: r.get("config", {}).get("select_metric", "acc")),
        "selection": selection_text(results),
        "protocol": values(_protocol_options, shared),
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
    from ltbench.trainer.selection import RULE_TEXT

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
            f"seed {f['seed']}: {f['reason']}" if f.get("lost") else  # a dead worker: not "before training"
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
            *(f"- {s['method']} seed {s['seed']}: `{s['path']}` ({s['why']})" if s.get("why") else
              f"- {s['method']} seed {s['seed']}: `{s['path']}` (run key {s['stored_key']}, now {s['current_key']})"
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
