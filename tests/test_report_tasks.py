"""The summary marks a retrieval method's accuracy row (issue 20 item 6; ltbench/report/tasks.py)."""
from __future__ import annotations

from ltbench.registry import get_method_class
from ltbench.report.tasks import retrieval_rows, task_lines, task_marks


def test_rotation_hashing_rows_are_marked_and_explained():
    assert get_method_class("rotation_hashing").retrieval_method and not get_method_class("ce").retrieval_method
    results = [{"method": "ce", "registered_method": "ce"},
               {"method": "rh_paper", "registered_method": "rotation_hashing"},
               {"method": "rh_paper", "registered_method": "rotation_hashing"},
               {"method": "gone", "registered_method": "not_registered_here"}]
    rows = retrieval_rows(results)
    assert rows == ["rh_paper"]
    assert task_marks(rows, {"rh_paper": " ⚠", "ce": ""}) == {"rh_paper": " ⚠ †", "ce": ""}
    (line, _) = task_lines(rows)
    assert line.startswith("†: `rh_paper` — a retrieval method") and "retrieval.md" in line
    assert task_lines([]) == []
