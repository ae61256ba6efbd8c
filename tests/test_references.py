"""Published numbers in a benchmark file: parsing, the paper / ltbench / difference table, run keys."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from ltbench.errors import LtbenchError
from ltbench.report.references import compare, parse_references, read_settings, references_markdown

ROOT = Path(__file__).resolve().parents[1]
GOOD = {"source": "Zhang et al., ECL, MICCAI 2023, Table 1", "tolerance": 2.0,
        "values": {"ce": {"acc": 82.41, "sen": 67.02}, "ecl": {"acc": 86.11}}}


def _summary(**acc) -> pd.DataFrame:
    return pd.DataFrame([{"method": m, "n_seeds": 3, "acc_mean": a, "sen_mean": 60.0} for m, a in acc.items()])


@pytest.mark.parametrize("raw, key", [
    ("Table 1", "references"),
    ({**GOOD, "tolerence": 2}, "references.tolerence"),
    ({k: v for k, v in GOOD.items() if k != "source"}, "references.source"),
    ({**GOOD, "tolerance": -1}, "references.tolerance"),
    ({**GOOD, "tolerance": "two"}, "references.tolerance"),
    ({**GOOD, "values": {}}, "references.values"),
    ({**GOOD, "values": {"ce": {"accuracy": 80}}}, "references.values.ce.accuracy"),
    ({**GOOD, "values": {"ce": {"acc": 0.82}} | {"ecl": {"acc": 180}}}, "references.values.ecl.acc"),
    ({**GOOD, "values": {"ce": {"acc": "high"}}}, "references.values.ce.acc"),
    ({**GOOD, "values": {"ce": 82.4}}, "references.values.ce"),
    ({**GOOD, "values": {"cee": {"acc": 82.4}}}, "references.values.cee"),
])
def test_bad_references_are_one_line_naming_the_file_and_key(raw, key):
    with pytest.raises(LtbenchError) as info:
        parse_references(raw, "b.yaml", rows=["ce", "ecl"])
    message = str(info.value)
    assert message.startswith(f"b.yaml: {key}") and "\n" not in message, message


def test_references_parse_yaml_numbers_and_absent_is_none():
    assert parse_references(None, "b.yaml") is None
    got = parse_references({**GOOD, "tolerance": "1e0", "values": {"ce": {"acc": "8.241e1"}}}, "b.yaml")
    assert got["tolerance"] == 1.0 and got["values"] == {"ce": {"acc": 82.41}}


def test_the_comparison_flags_a_difference_beyond_the_tolerance():
    refs = parse_references(GOOD, "b.yaml")
    table = compare(refs, _summary(ce=80.0, ecl=85.5)).set_index(["method", "metric"])
    assert table.loc[("ce", "acc"), "difference"] == pytest.approx(80.0 - 82.41)
    assert bool(table.loc[("ce", "acc"), "flagged"])           # 2.41 > 2
    assert not bool(table.loc[("ecl", "acc"), "flagged"])      # 0.61
    assert bool(table.loc[("ce", "sen"), "flagged"])           # 60 vs 67.02
    text = references_markdown(refs, compare(refs, _summary(ce=80.0, ecl=85.5)))
    assert "| ce       | Acc      | 82.41   | 80.00     | -2.41 ⚠" in text
    assert "| ecl      | Acc      | 86.11   | 85.50     | -0.61 " in text
    assert "Zhang et al., ECL, MICCAI 2023, Table 1" in text and "2 of 3 compared values" in text
    # a method of the references that was not run is said so, never flagged
    missing = compare(refs, _summary(ce=82.0)).set_index("method")
    assert math.isnan(missing.loc["ecl", "ltbench"]) and not bool(missing.loc["ecl", "flagged"])
    assert "not run" in references_markdown(refs, missing.reset_index())


@pytest.mark.parametrize("name", ["isic2018-ecl.yaml", "isic2019-ecl.yaml"])
def test_the_ecl_benchmarks_use_the_ecl_split_and_carry_sourced_references(name):
    from ltbench.bench import load_benchmark

    bench = load_benchmark(ROOT / "benchmarks" / name)
    assert bench.data.split == "ecl" and bench.data.split_dir == "splits_ecl_miccai2023"
    refs = bench.references
    assert "ECL, MICCAI 2023, Table 1" in refs["source"] and refs["tolerance"] == 2.0
    assert refs["note"]  # says which numbers are missing and why
    assert "ecl" in refs["values"] and set(refs["values"]) <= set(bench.methods)


def test_isic2019_references_are_the_table_1_values_quoted_in_the_spec():
    from ltbench.bench import load_benchmark

    refs = load_benchmark(ROOT / "benchmarks" / "isic2019-ecl.yaml").references["values"]
    assert refs["ce"] == {"acc": 82.41, "sen": 67.02, "pre": 77.32, "f1": 70.90, "auc": 95.37}
    assert refs["ecl"] == {"acc": 86.11, "sen": 76.57, "pre": 83.22, "f1": 79.46, "auc": 96.78}


def test_references_and_groups_never_enter_a_run_key(tmp_path):
    from ltbench.bench import load_benchmark
    from ltbench.runs import run_key

    raw = yaml.safe_load((ROOT / "benchmarks" / "isic2019-ecl.yaml").read_text())
    plain = {k: v for k, v in raw.items() if k not in ("references", "groups")}
    with_groups = {**raw, "groups": {"head": 2000, "tail": 500}}
    keys = []
    for k, content in enumerate((raw, plain, with_groups)):
        path = tmp_path / f"b{k}.yaml"
        path.write_text(yaml.safe_dump(content))
        bench = load_benchmark(path)
        keys.append([run_key(n, r.params, 0, bench.train, bench.data, "splithash", registered=r.method)
                     for n, r in bench.methods.items()])
    assert keys[0] == keys[1] == keys[2]
    assert load_benchmark(tmp_path / "b2.yaml").groups == {"head": 2000, "tail": 500}


@pytest.mark.slow
def test_a_bench_writes_the_settings_and_ltbench_report_shows_the_comparison(tmp_path, one_torch_thread):
    """digits-lt, one epoch, one seed: the bench copies references and groups beside the runs."""
    from ltbench.bench import load_benchmark, run_benchmark
    from ltbench.cli import main

    raw = yaml.safe_load((ROOT / "benchmarks" / "digits-lt.yaml").read_text())
    raw.update(seeds=[0], methods={"ce": {}, "focal": {}}, train={**raw.get("train", {}), "epochs": 1},
               references={"source": "a made-up test table", "tolerance": 1.0,
                           "values": {"ce": {"acc": 0.0}, "focal": {"acc": 100.0}}},
               groups={"head": [str(c) for c in range(3)], "tail": ["9"]})
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    run_benchmark(load_benchmark(path), out, progress=False, echo=lambda *_: None)
    settings = json.loads((out / "report_settings.json").read_text())
    assert settings["references"]["source"] == "a made-up test table"
    readme = (out / "README.md").read_text()
    assert "## Published numbers" in readme and "⚠" in readme and "[references.csv](references.csv)" in readme
    assert "class lists from the benchmark file (head: 0, 1, 2; tail: 9; others medium)" in readme
    table = pd.read_csv(out / "references.csv")
    assert list(table["flagged"]) == [True, True]
    # rebuilt elsewhere from the result files alone: the same comparison
    assert main(["report", str(out), "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "references.md").read_text() == (out / "references.md").read_text()
    assert read_settings(out) == (load_benchmark(path).references, load_benchmark(path).groups)


def test_a_wrong_class_in_groups_fails_before_training(tmp_path):
    from ltbench.bench import load_benchmark, run_benchmark

    raw = yaml.safe_load((ROOT / "benchmarks" / "digits-lt.yaml").read_text())
    raw.update(seeds=[0], methods={"ce": {}}, groups={"tail": ["NV"]})
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(LtbenchError, match=r"groups.tail: NV is not a class") as info:
        run_benchmark(load_benchmark(path), tmp_path / "out", progress=False, echo=lambda *_: None)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out" / "runs").exists()
