"""Published numbers beside ltbench's own: "paper / ltbench / difference" per method and metric.

A benchmark file may carry them::

    references:
      source: "Zhang et al., ECL, MICCAI 2023, Table 1 (ISIC 2019, ECL split)"
      tolerance: 2.0          # points; |ltbench − paper| beyond it is flagged
      note: "..."             # optional: what is missing and why
      values:
        ce:  {acc: 82.41, sen: 67.02, pre: 77.32, f1: 70.90, auc: 95.37}
        ecl: {acc: 86.11, ...}

Keys of ``values`` are the benchmark's row names; metrics are the headline ones (acc, sen, pre,
f1, auc), in percent. The references are read by the report only: they are not a training
setting and never enter a run key. The bench copies them (and ``groups``) into
``report_settings.json`` beside the results so that ``ltbench report DIR`` shows them too.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from ltbench.errors import LtbenchError
from ltbench.metrics import HEADLINE, HEADLINE_LABELS

SETTINGS_FILE = "report_settings.json"
_KEYS = ("source", "tolerance", "note", "values")


def _number(value: object) -> float | None:
    """A YAML number (PyYAML reads ``1e-3`` as text, so text that is a plain number counts)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def parse_references(raw: object, where: str, rows: Sequence[str] | None = None) -> dict | None:
    """The ``references:`` setting, checked (one LtbenchError line naming ``where`` and the key).

    ``rows``: the benchmark's row names; a reference for another row is refused (a typo would
    otherwise show as "not run").
    """
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise LtbenchError(f"{where}: references = {raw!r}: expected a mapping with source, tolerance and values")
    extra = [k for k in raw if k not in _KEYS]
    if extra:
        raise LtbenchError(f"{where}: references.{extra[0]}: unknown key; allowed: {', '.join(_KEYS)}")
    source = raw.get("source")
    if not isinstance(source, str) or not source.strip():
        raise LtbenchError(f"{where}: references.source: name where the numbers come from (paper, table, split)")
    note = raw.get("note", "")
    if not isinstance(note, str):
        raise LtbenchError(f"{where}: references.note = {note!r}: expected text")
    if raw.get("tolerance") is None:  # absent (or null): say so, not "= None"
        raise LtbenchError(f"{where}: references.tolerance: missing; give the points a published number may differ "
                           "by before it is flagged (a number, 0 or more)")
    tolerance = _number(raw.get("tolerance"))
    if tolerance is None or not math.isfinite(tolerance) or tolerance < 0:
        raise LtbenchError(f"{where}: references.tolerance = {raw.get('tolerance')!r}: expected a number of "
                           "points, 0 or more")
    values = raw.get("values")
    if not isinstance(values, Mapping) or not values:
        raise LtbenchError(f"{where}: references.values: expected a mapping row -> {{metric: value}}")
    parsed: dict[str, dict[str, float]] = {}
    for row, metrics in values.items():
        if rows is not None and str(row) not in rows:
            raise LtbenchError(f"{where}: references.values.{row}: not a row of methods ({', '.join(rows)})")
        if not isinstance(metrics, Mapping) or not metrics:
            raise LtbenchError(f"{where}: references.values.{row} = {metrics!r}: expected a mapping metric -> value")
        parsed[str(row)] = {}
        for metric, value in metrics.items():
            if metric not in HEADLINE:
                raise LtbenchError(f"{where}: references.values.{row}.{metric}: not a metric; "
                                   f"allowed: {', '.join(HEADLINE)}")
            number = _number(value)
            if number is None or not 0 <= number <= 100:
                raise LtbenchError(f"{where}: references.values.{row}.{metric} = {value!r}: expected a percentage "
                                   "from 0 to 100")
            parsed[str(row)][metric] = number
    return {"source": source.strip(), "tolerance": tolerance, "note": note.strip(), "values": parsed}


def write_settings(out_dir: Path, references: dict | None, groups: dict | None) -> Path | None:
    """``report_settings.json`` (references and groups of the benchmark file) for ``ltbench report``."""
    from ltbench.store.files import atomic_write

    path = Path(out_dir) / SETTINGS_FILE
    if references is None and groups is None:
        path.unlink(missing_ok=True)  # a benchmark file that dropped them: the report drops them too
        return None
    return atomic_write(path, json.dumps({"references": references, "groups": groups}, indent=1, sort_keys=True))


def read_settings(*folders: Path | None) -> tuple[dict | None, dict | None]:
    """References and groups from the first ``report_settings.json`` found in ``folders``."""
    from ltbench.report.groups import parse_groups

    for folder in folders:
        if folder is None:
            continue
        path = Path(folder) / SETTINGS_FILE
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LtbenchError(f"{path}: unreadable ({str(exc).splitlines()[0]}); rerun the bench or remove it") from None
        if not isinstance(data, dict):
            raise LtbenchError(f"{path}: expected a JSON object; rerun the bench or remove it")
        return (parse_references(data.get("references"), str(path)),
                parse_groups(data.get("groups"), str(path)))
    return None, None


def compare(references: dict, summary: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, metric) of the references: paper, ltbench mean, difference, flag."""
    rows = []
    means = summary.set_index("method")
    for method, metrics in references["values"].items():
        for metric in HEADLINE:
            if metric not in metrics:
                continue
            paper = metrics[metric]
            ours = float(means.loc[method, f"{metric}_mean"]) if method in means.index else math.nan
            seeds = int(means.loc[method, "n_seeds"]) if method in means.index else 0
            diff = ours - paper
            rows.append({"method": method, "metric": metric, "paper": paper, "ltbench": ours,
                         "n_seeds": seeds, "difference": diff,
                         "flagged": bool(math.isfinite(diff) and abs(diff) > references["tolerance"])})
    return pd.DataFrame(rows, columns=["method", "metric", "paper", "ltbench", "n_seeds", "difference", "flagged"])


def references_markdown(references: dict, table: pd.DataFrame) -> str:
    """The comparison as a Markdown table, with its source and tolerance stated."""
    tol = references["tolerance"]
    lines = [f"Published numbers: {references['source']}. ltbench = mean over its seeds. "
             f"Difference = ltbench − paper, in points; ⚠ marks |difference| > {tol:g} (the tolerance the "
             "benchmark file declares).", ""]
    if references.get("note"):
        lines += [f"Note: {references['note']}", ""]
    rows = []
    for _, r in table.iterrows():
        if math.isnan(r["ltbench"]):
            ours, diff = "not run", "—"
        else:
            ours = f"{r['ltbench']:.2f}"
            diff = f"{r['difference']:+.2f}" + (" ⚠" if r["flagged"] else "")
        rows.append([r["method"], HEADLINE_LABELS[r["metric"]], f"{r['paper']:.2f}", ours, diff])
    lines.append(tabulate(rows, headers=["Method", "Metric", "Paper", "ltbench", "Difference"],
                          tablefmt="github", disable_numparse=True))
    flagged = int(table["flagged"].sum())
    lines += ["", f"{flagged} of {int(table['ltbench'].notna().sum())} compared values differ by more than {tol:g} points."]
    return "\n".join(lines) + "\n"
