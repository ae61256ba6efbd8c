"""The report's tuning notes: what a bench's per-row tuning chose, read from ``tuning.json``.

``ltbench.bench.tuning`` writes the record (issue 20: a small grid of training settings per row, on the
first seed, chosen by validation); the report says in ``summary.md`` / ``README.md`` what was chosen
from which grid and lists every tuning run's validation score in ``evidence.md``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

from ltbench.errors import LtbenchError

TUNING_FILE = "tuning.json"


def read_tuning(out_dir: Path) -> dict | None:
    """The bench's tuning record, or None (no ``tune:``); a damaged file is one clear line."""
    path = Path(out_dir) / TUNING_FILE
    if not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise LtbenchError(f"{path}: unreadable tuning record ({exc}); rerun the bench to rewrite it") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("rows"), dict):
        raise LtbenchError(f"{path}: not a tuning record (no 'rows' mapping); rerun the bench to rewrite it")
    return payload


def _values(values: Mapping | None) -> str:
    if not values:
        return "—"
    return ", ".join(f"{k} = {v:g}" if isinstance(v, float) else f"{k} = {v}" for k, v in values.items())


def _grid(grid: Mapping) -> str:
    return ", ".join(f"{k} ∈ {{{', '.join(f'{v:g}' if isinstance(v, float) else str(v) for v in vs)}}}"
                     for k, vs in grid.items())


def tuning_summary(tuning: Mapping) -> list[str]:
    """Markdown lines for summary.md / README.md: what was chosen from which grid."""
    lines = [f"**Tuned on validation** (seed {tuning.get('seed', 0)}; the test set is never read for the choice):", ""]
    for row, record in tuning["rows"].items():
        chosen = record.get("chosen")
        text = _values(chosen) if chosen else "no tuning run finished: the untuned settings"
        grid = record.get("grid") or tuning.get("grid") or {}
        lines.append(f"- `{row}`: {text} from {_grid(grid)} (by validation {record.get('metric', '?')})")
    return lines + [""]


def tuning_evidence(tuning: Mapping) -> list[str]:
    """Markdown for evidence.md: every tuning run's validation score."""
    lines = ["## Tuning runs (validation only)", "",
             f"Each row trained every combination on seed {tuning.get('seed', 0)} (runs under `tuning/`); "
             "the best validation score of the tested checkpoint chose the settings (ties: the first listed).",
             "", "| row | settings | validation | chosen |", "|---|---|---:|:---:|"]
    for row, record in tuning["rows"].items():
        for score in record.get("scores", []):
            val = "failed / missing" if score.get("val") is None else f"{score['val']:.2f}"
            mark = "✓" if record.get("chosen") == score.get("values") else ""
            lines.append(f"| {row} | {_values(score.get('values'))} | {record.get('metric', '?')} {val} | {mark} |")
    return lines + [""]
