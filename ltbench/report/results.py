"""A run's result files, read and checked once: the JSON (metrics) and the NPZ beside it (arrays).

ltbench writes both atomically (``ltbench/runs.py``), so a file that does not parse, or lacks what
the report and the bench read, was damaged or made outside ltbench. :func:`check_result` and
:func:`load_arrays` turn each such problem into one ``LtbenchError`` line naming the file and what
is wrong, before anything uses it (issue 21): never a traceback from deep in the report, never a
run silently dropped. The bench (``--force``) retrains a damaged result; the report refuses it.

:func:`mixed_settings` finds the runs of a row made with other settings than the row's newest run
(a ``--force`` retrain of one seed after the benchmark file changed): the report keeps them out of
the table, as the bench keeps its stale results out.
"""
from __future__ import annotations

import json
import math
import re
import zipfile
from pathlib import Path

import numpy as np

from ltbench.errors import LtbenchError
from ltbench.metrics import HEADLINE

FIX = "remove it, or rerun the bench with --force to retrain it"
RESULT_NAME = re.compile(r"seed-?\d+\.json")  # runs/<row>/seed<k>.json; seed<k>.failed.json is not one


def read_json(path: Path) -> object:
    """A JSON file's value; unreadable or not JSON: one line naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise LtbenchError(f"{path}: unreadable JSON ({reason})") from None


def check_result(path: Path, data: object) -> dict:
    """``data`` (the parsed ``path``) if it is a result the report can read, else one line naming the problem."""
    problem = result_problem(data)
    if problem is not None:
        raise LtbenchError(f"{path}: {problem}; {FIX}")
    return data  # type: ignore[return-value]


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _matrix_problem(name: str, value, classes: int, integer: bool = False) -> str | None:
    ok = _is_int if integer else _is_number
    if not isinstance(value, list) or len(value) != classes or any(
            not isinstance(row, list) or len(row) != classes or not all(ok(v) for v in row) for row in value):
        shape = (f"{len(value)} rows" if isinstance(value, list) else type(value).__name__)
        kind = "integers" if integer else "numbers"
        return f"'test.{name}' is not a {classes}x{classes} matrix of {kind} (found {shape})"
    return None


def result_problem(data: object) -> str | None:
    """What makes ``data`` unusable as a result (text), or None."""
    if not isinstance(data, dict):
        return f"not a result file (a JSON {type(data).__name__}, expected an object)"
    if not data:
        return "not a result file (an empty JSON object)"
    missing = [k for k in ("method", "seed", "test") if k not in data]
    if missing:
        return f"not a complete result file (no {', '.join(repr(k) for k in missing)} key)"
    if not isinstance(data["method"], str) or not data["method"]:
        return f"'method' is {data['method']!r}, expected a row name (text)"
    if not _is_int(data["seed"]):
        return f"'seed' is {data['seed']!r}, expected an integer"
    for key in ("config", "dataset", "split", "method_params"):
        if key in data and not isinstance(data[key], dict):
            return f"{key!r} is a {type(data[key]).__name__}, expected an object"
    if "history" in data and not isinstance(data["history"], list):
        return f"'history' is a {type(data['history']).__name__}, expected a list"
    if "arrays" in data and (not isinstance(data["arrays"], str) or Path(data["arrays"]).name != data["arrays"]):
        return f"'arrays' is {data['arrays']!r}, expected a file name beside the result"
    test = data["test"]
    if not isinstance(test, dict):
        return f"'test' is a {type(test).__name__}, expected an object of metrics"
    lacking = [k for k in (*HEADLINE, "confusion_matrix_normalized", "per_class") if k not in test]
    if lacking:
        return f"'test' metrics lack {', '.join(lacking)}"
    for key in (*HEADLINE, "group_acc"):
        if key in test and test[key] is not None and not _is_number(test[key]):
            return f"'test.{key}' is {test[key]!r}, expected a number"
    per_class = test["per_class"]
    names = per_class.get("name") if isinstance(per_class, dict) else None
    if not isinstance(names, list) or not names or not all(isinstance(n, (str, int)) for n in names):
        return "'test.per_class.name' is not a list of class names"
    classes = len(names)
    for key, value in per_class.items():
        if key != "name" and (not isinstance(value, list) or len(value) != classes
                              or not all(v is None or _is_number(v) for v in value)):
            return f"'test.per_class.{key}' is not a list of {classes} numbers"
    problem = _matrix_problem("confusion_matrix_normalized", test["confusion_matrix_normalized"], classes)
    if problem is None and "confusion_matrix" in test:
        problem = _matrix_problem("confusion_matrix", test["confusion_matrix"], classes, integer=True)
    if problem is not None:
        return problem
    recall = test.get("group_recall", {})
    if not isinstance(recall, dict) or not all(v is None or _is_number(v) for v in recall.values()):
        return "'test.group_recall' is not an object of numbers"
    groups = test.get("groups", {})
    if not isinstance(groups, (dict, type(None))) or any(not isinstance(m, list) for m in (groups or {}).values()):
        return "'test.groups' is not an object of class lists"
    return None


def test_rows(result: dict) -> int | None:
    """How many test images the result counted (its confusion counts, else its per-class support)."""
    test = result["test"]
    if "confusion_matrix" in test:
        return int(sum(sum(row) for row in test["confusion_matrix"]))
    support = test["per_class"].get("support")
    return int(sum(support)) if support and all(_is_number(v) for v in support) else None


def arrays_path(json_path: Path, result: dict) -> Path:
    """The NPZ beside a result file (``runs/<row>/seed<k>.npz``)."""
    return Path(json_path).parent / str(result.get("arrays") or f"seed{result['seed']}.npz")


def load_arrays(path: Path, result: dict, wanted=None) -> dict[str, np.ndarray] | None:
    """The arrays of a result's NPZ that ``wanted(key)`` accepts (default all); None if the file is absent.

    Checked against the result: the test labels and probabilities exist, are one row per test image
    the result counted and one column per class (validation and per-rule arrays likewise). A file
    that is not a complete NPZ (truncated, ``zipfile.BadZipFile``) or disagrees is one line naming it.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zipfile.LargeZipFile) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise LtbenchError(f"{path}: damaged arrays file ({type(exc).__name__}: {reason}); {FIX}") from None
    problem = _arrays_problem(arrays, result)
    if problem is not None:
        raise LtbenchError(f"{path}: {problem}; {FIX}")
    return {k: v for k, v in arrays.items() if wanted is None or wanted(k)}


def _arrays_problem(arrays: dict[str, np.ndarray], result: dict) -> str | None:
    classes = len(result["test"]["per_class"]["name"])
    for key in ("test_labels", "test_probs"):
        if key not in arrays:
            return f"no {key!r} array"
    rows = test_rows(result)
    labels, probs = arrays["test_labels"], arrays["test_probs"]
    if labels.ndim != 1 or (rows is not None and len(labels) != rows):
        return f"'test_labels' has shape {labels.shape}, expected ({rows},) (the result's test images)"
    if probs.shape != (len(labels), classes):
        return f"'test_probs' has shape {probs.shape}, expected ({len(labels)}, {classes})"
    if labels.dtype.kind not in "iu" or (labels.size and (labels.min() < 0 or labels.max() >= classes)):
        return f"'test_labels' are not class indices 0..{classes - 1}"
    if "val_probs" in arrays and "val_labels" in arrays and arrays["val_probs"].shape != (len(arrays["val_labels"]), classes):
        return f"'val_probs' has shape {arrays['val_probs'].shape}, expected ({len(arrays['val_labels'])}, {classes})"
    if "selection_test_probs" in arrays and arrays["selection_test_probs"].shape[1:] != (len(labels), classes):
        return (f"'selection_test_probs' has shape {arrays['selection_test_probs'].shape}, expected "
                f"(k, {len(labels)}, {classes})")
    return None


# ----------------------------------------------------------------------------- mixed settings

def settings_of(result: dict) -> dict:
    """What a result's run key hashes apart from the seed: the row's settings (flat, dotted keys).

    The config without ``seed`` and ``device`` (as ``ltbench.runs.run_identity``), the method's
    parameters, the registered method, the data and the pipeline version.
    """
    flat = {f"config.{k}": v for k, v in (result.get("config") or {}).items() if k not in ("seed", "device")}
    flat.update({f"params.{k}": v for k, v in (result.get("method_params") or {}).items()})
    data = result.get("dataset") or {}
    flat.update({"dataset": data.get("name"), "dataset.options": data.get("options"),
                 "split": (result.get("split") or {}).get("hash"),
                 "registered_method": result.get("registered_method"), "pipeline": result.get("pipeline")})
    return flat


def _differences(a: dict, b: dict) -> list[str]:
    """The settings two results both record with different values (a setting one of them lacks was added
    later at its former default, ``ltbench.runs.KEY_NEUTRAL``: not a difference)."""
    def same(x, y) -> bool:
        if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
            return True
        return json.dumps(x, sort_keys=True, default=str) == json.dumps(y, sort_keys=True, default=str)

    return [f"{k.split('.', 1)[-1] if k.startswith('config.') else k} {a[k]!r} vs {b[k]!r}"
            for k in sorted(set(a) & set(b)) if a[k] is not None and b[k] is not None and not same(a[k], b[k])]


def mixed_settings(files: list[tuple[Path, dict]]) -> tuple[list[tuple[Path, dict]], list[dict]]:
    """(the runs to average, the stale ones) — a row's runs made with other settings than its newest run.

    The newest is the result file written last (mtime), i.e. the run the user retrained last, as the
    bench would judge it after the benchmark file changed. Stale entries are the bench's stale records
    (``method``, ``seed``, ``path``) with ``why``: the differing settings.
    """
    by_row: dict[str, list[tuple[Path, dict]]] = {}
    for path, result in files:
        by_row.setdefault(result["method"], []).append((path, result))
    keep, stale = [], []
    for row, runs in by_row.items():
        newest_path, newest = max(runs, key=lambda pr: (_mtime(pr[0]), pr[1]["seed"]))
        current = settings_of(newest)
        for path, result in runs:
            diff = _differences(settings_of(result), current)
            if diff:
                stale.append({"method": row, "seed": result["seed"], "path": str(path),
                              "stored_key": result.get("run_key"), "current_key": newest.get("run_key"),
                              "why": f"{', '.join(diff)} in the row's newest run, seed {newest['seed']} "
                                     f"({newest_path.name})"})
            else:
                keep.append((path, result))
    return keep, stale


def _mtime(path: Path) -> int:
    try:
        return Path(path).stat().st_mtime_ns
    except OSError:
        return 0
