"""Per-method tuning on validation (issue 20): a small grid of training settings per row.

A benchmark's ``tune: {lr: [0.01, 0.05, 0.1]}`` (or ``ltbench bench --tune lr=0.01,0.1``) makes every
row train each combination of the grid on the benchmark's **first seed**, then pick the combination
with the best validation score of its tested checkpoint (``select_metric``; ``last`` has no metric and
tunes by validation Sen, balanced accuracy). The test set is never read for the choice. Every seed then
runs with the chosen values. Published comparisons are criticised for running every method at one lr
tuned for the baseline; this lets each method have its own, chosen by the same rule.

Tuning runs are ordinary runs of the run store under ``<out>/tuning/`` (keyed, resumable, spread by
``--jobs`` and SLURM like any run), named ``<row>.tune.<key>-<value>...``. The choice is written to
``<out>/tuning.json``, which the report reads: ``summary.md``/``README.md`` say what was chosen from
which grid; ``evidence.md`` lists every tuning run's validation score. The main row's first-seed run
repeats the chosen tuning run under the row's name (one extra run per row, kept simple: a result is
never copied between rows).
"""
from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Mapping

from ltbench import config as cfg
from ltbench.errors import LtbenchError
from ltbench.store.files import atomic_write
from ltbench.report.tuning import TUNING_FILE  # the report reads what the bench writes
TUNING_DIR = "tuning"
#: Settings that are the bench's or the machine's, not a recipe's: one pixel cache, one device.
#: Settings of the bench or the machine, never a recipe's or a tuning grid's (one pixel cache, one device).
BENCH_WIDE = ("image_size", "device", "seed", "eval_batch_size", "amp", "channels_last", "compile")
NOT_TUNABLE = BENCH_WIDE + ("eval_view",)


def tuning_metric(select_metric: str) -> str:
    """The validation metric the grid is compared by (``last`` selects no epoch: balanced accuracy)."""
    return "sen" if select_metric == "last" else select_metric


def parse_tune(raw: object, label: str) -> dict[str, list]:
    """``{setting: [values...]}`` converted by each training setting's declared type."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping) or not raw:
        raise LtbenchError(f"{label}: expected a mapping of training settings to lists of values, "
                           "e.g. {lr: [0.01, 0.1]}")
    settings = cfg.train_settings()
    out: dict[str, list] = {}
    for key, values in raw.items():
        if key not in settings:
            raise LtbenchError(f"{label}.{key}: not a training setting")
        if key in NOT_TUNABLE:
            raise LtbenchError(f"{label}.{key}: not tunable (one per bench: {', '.join(NOT_TUNABLE)})")
        if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)) or not values:
            raise LtbenchError(f"{label}.{key} = {values!r}: expected a non-empty list of values")
        converted = []
        for value in values:
            try:
                converted.append(settings[key].convert(value, text=isinstance(value, str)))
            except ValueError as exc:
                raise LtbenchError(f"{label}.{key}: {value!r}: {exc}") from None
        if len(set(map(repr, converted))) != len(converted):
            raise LtbenchError(f"{label}.{key}: a value is listed twice")
        out[key] = converted
    if math.prod(len(v) for v in out.values()) > 64:
        raise LtbenchError(f"{label}: the grid has {math.prod(len(v) for v in out.values())} combinations "
                           "(at most 64 per row)")
    return out


def parse_tune_flags(pairs: Mapping[str, str], option: str = "--tune") -> dict[str, list]:
    """``--tune lr=0.01,0.1`` pairs (already split at ``=``) as a ``tune:`` mapping."""
    return parse_tune({k: [v.strip() for v in text.split(",")] for k, text in pairs.items()}, option)


def combinations(tune: Mapping[str, list]) -> list[dict]:
    """Every combination of the grid, in the order the file lists keys and values."""
    keys = list(tune)
    return [dict(zip(keys, values)) for values in itertools.product(*(tune[k] for k in keys))]


def _token(value: object) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return "".join(ch if ch.isalnum() or ch in "._+-" else "_" for ch in text.replace(" ", ""))


def tuning_row(row: str, values: Mapping[str, object]) -> str:
    """The run-store name of one tuning run: ``<row>.tune.lr-0.01.weight_decay-0.0001``."""
    return ".".join([row, "tune", *(f"{k}-{_token(v)}" for k, v in values.items())])


def choose(row: str, tried: list[tuple[dict, dict | None]], metric: str) -> dict:
    """The row's tuning record from ``[(values, result or None), ...]`` in grid order.

    The best validation ``metric`` wins; ties keep the earlier combination (the file's order). A
    combination whose run failed or is stale competes with nothing.
    """
    scores = []
    for values, result in tried:
        score = None if result is None else (result.get("val") or {}).get(metric)
        scores.append({"values": dict(values), "run": tuning_row(row, values),
                       "val": None if score is None else float(score)})
    finished = [s for s in scores if s["val"] is not None and math.isfinite(s["val"])]
    best = max(finished, key=lambda s: s["val"], default=None)  # max keeps the first of equal scores
    return {"metric": metric, "scores": scores, "chosen": None if best is None else dict(best["values"])}


def write_tuning(out_dir: Path, grid: Mapping[str, list], records: Mapping[str, dict], seed: int) -> Path:
    """``tuning.json``: the bench's grid, the seed, and per row its grid, scores and choice."""
    path = Path(out_dir) / TUNING_FILE
    payload = {"grid": {k: list(v) for k, v in grid.items()}, "seed": seed, "rows": dict(records)}
    atomic_write(path, json.dumps(payload, indent=1))
    return path
