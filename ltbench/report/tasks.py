"""Rows whose method is built for another task than classification (``Method.retrieval_method``).

A retrieval method (rotation-invariance hashing, Zhang et al., MedIA 2022) trains a classifier only to
shape its hash codes, so its accuracy row is not a classifier's result: the summary marks it († and a
line under the table) and points to ``retrieval.md``, where its own task is scored (issue 20).
"""
from __future__ import annotations

from collections.abc import Sequence

from ltbench.errors import LtbenchError
from ltbench.registry import get_method_class

MARK = " †"


def retrieval_rows(results: Sequence[dict]) -> list[str]:
    """Report rows (in result order) whose registered method declares ``retrieval_method``."""
    rows: list[str] = []
    for result in results:
        name = result.get("registered_method") or result.get("method")
        try:
            is_retrieval = bool(getattr(get_method_class(str(name)), "retrieval_method", False))
        except LtbenchError:  # a method no longer registered here: no claim either way
            continue
        if is_retrieval and result["method"] not in rows:
            rows.append(result["method"])
    return rows


def task_marks(rows: Sequence[str], marks: dict[str, str]) -> dict[str, str]:
    """``marks`` (row -> suffix) with † added to the retrieval rows."""
    out = dict(marks)
    for row in rows:
        out[row] = out.get(row, "") + MARK
    return out


def task_lines(rows: Sequence[str]) -> list[str]:
    """The line under the table that says what † means."""
    if not rows:
        return []
    named = ", ".join(f"`{row}`" for row in rows)
    return [f"†: {named} — a retrieval method: it trains its classifier only to shape its hash codes, so this "
            "accuracy row is not a classifier's result; its own task is scored in [retrieval.md](retrieval.md).", ""]
