"""Head / medium / tail groups of the report, set in the benchmark file (terciles stay the default)."""
from __future__ import annotations

import numpy as np
import pytest

from ltbench.errors import LtbenchError
from ltbench.metrics import compute_metrics, group_classes
from ltbench.report import summarize, write_report
from ltbench.report.groups import apply_groups, class_groups, describe, parse_groups

NAMES = ["NV", "MEL", "BCC", "BKL", "AK", "SCC", "DF"]
TRAIN = [600, 450, 300, 120, 90, 40, 12]


@pytest.mark.parametrize("raw, key", [
    ([500, 100], "groups"),
    ({"head": 500, "tial": 100}, "groups.tial"),
    ({"head": 500}, "groups"),
    ({"head": 500, "medium": 200, "tail": 100}, "groups"),
    ({"head": 100, "tail": 500}, "groups.tail"),
    ({"head": -1, "tail": -5}, "groups.head"),
    ({"head": ["NV"], "tail": 12}, "groups"),
    ({"head": ["NV"], "tail": ["NV"]}, "groups.tail"),
    ({"head": [3]}, "groups.head"),
])
def test_bad_groups_are_one_line_naming_the_file_and_key(raw, key):
    with pytest.raises(LtbenchError) as info:
        parse_groups(raw, "b.yaml")
    assert str(info.value).startswith(f"b.yaml: {key}") and "\n" not in str(info.value), str(info.value)


def test_thresholds_and_class_lists():
    spec = parse_groups({"head": 300, "tail": 50}, "b.yaml")
    got = class_groups(spec, TRAIN, NAMES)
    assert got == {"head": [0, 1, 2], "medium": [3, 4], "tail": [5, 6]}  # 300 is head (>=), 40 < 50 tail
    lists = parse_groups({"head": ["NV"], "tail": ["DF", "SCC"]}, "b.yaml")
    assert class_groups(lists, TRAIN, NAMES) == {"head": [0], "medium": [1, 2, 3, 4], "tail": [5, 6]}
    with pytest.raises(LtbenchError, match=r"groups.tail: VASC is not a class"):
        class_groups({"tail": ["VASC"]}, TRAIN, NAMES)
    # no spec: exactly the terciles ltbench.metrics computes at test time
    assert class_groups(None, TRAIN, NAMES) == group_classes(TRAIN)
    assert "terciles" in describe(None) and "≥ 300" in describe(spec) and "DF, SCC" in describe(lists)


def _results():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(7), 10)
    out = []
    for method in ("ce", "ecl"):
        for seed in range(2):
            probs = rng.dirichlet(np.ones(7), size=labels.size)
            probs[np.arange(labels.size), labels] += 0.2 if method == "ecl" else 0.0
            out.append({"method": method, "seed": seed, "dataset": {"name": "toy", "class_counts": {"train": TRAIN}},
                        "split": {"kind": "grouped", "hash": "h"}, "config": {},
                        "test": compute_metrics(labels, probs, NAMES, TRAIN)})
    return out


def test_the_summary_group_columns_follow_the_benchmark_groups():
    results = _results()
    assert apply_groups(results, None) == results  # default: the stored terciles, untouched
    spec = {"head": ["NV"], "tail": ["DF"]}
    regrouped = apply_groups(results, spec)
    assert results[0]["test"]["groups"]["head"] == ["NV", "MEL", "BCC"]  # inputs untouched
    for r, g in zip(results, regrouped):
        recall = r["test"]["per_class"]["recall"]
        assert g["test"]["group_recall"]["head"] == pytest.approx(recall[0])
        assert g["test"]["group_recall"]["tail"] == pytest.approx(recall[6])
        assert g["test"]["group_recall"]["medium"] == pytest.approx(np.mean(recall[1:6]))
    summary = summarize(regrouped).set_index("method")
    want = np.mean([r["test"]["per_class"]["recall"][6] for r in results if r["method"] == "ecl"])
    assert summary.loc["ecl", "tail_recall_mean"] == pytest.approx(want)


def test_the_report_names_its_grouping_and_uses_it_in_the_per_class_table(tmp_path):
    files = write_report(_results(), tmp_path, groups={"head": 300, "tail": 50}, baseline=None)
    readme = files["README.md"].read_text()
    assert "- Head / medium / tail: training count ≥ 300: head, < 50: tail" in readme
    evidence = files["evidence.md"].read_text()
    per_class = evidence[evidence.index("## Per class"):evidence.index("## Cost")]
    assert "≥ 300: head" in per_class
    row = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in per_class.splitlines()
           if line.startswith("| ") and "Class" not in line}
    assert row["BCC"] == "head" and row["BKL"] == "medium" and row["SCC"] == "tail"
    default = write_report(_results(), tmp_path / "default", baseline=None)["README.md"].read_text()
    assert "- Head / medium / tail: terciles of the sorted training counts" in default
