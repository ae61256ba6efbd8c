"""Hostile benchmark files (issue 21): one clear line, exit 2, nothing written, no hang.

Duplicate keys, a YAML alias bomb in a free-text field, an absurd epoch budget, a negative focal
gamma, and a benchmark name that climbs out of ``reports/``.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from ltbench.typed import load_yaml
from tests.test_cli import assert_one_line_error, cli  # noqa: F401 — the cli fixture

GOOD = """\
name: hostile
dataset: {name: synthetic}
train: {backbone: small-cnn, image_size: 16, epochs: 1, batch_size: 32, device: cpu}
seeds: [0]
methods: [ce]
"""


def _bomb(levels: int = 9) -> str:
    """A "billion laughs": 9 levels of 9 aliases each (9^9 ≈ 387 million strings), about 1.4 KB."""
    lines = ['  l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for k in range(1, levels):
        lines.append(f"  l{k}: &l{k} [" + ", ".join([f"*l{k - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("text,fragment", [
    (GOOD + "methods: [focal]\n", "duplicate key 'methods' on line 6 (first on line 5)"),
    (GOOD.replace("epochs: 1,", "epochs: 1, epochs: 50,"), "duplicate key 'epochs' on line 3 (first on line 3)"),
    (GOOD + "description:\n" + _bomb(), "aliases expand to more than 100,000 values"),
    (GOOD + "description: &d [*d]\n", "an alias that contains itself"),
])
def test_duplicate_keys_and_alias_bombs_are_refused(tmp_path: Path, cli, text: str, fragment: str) -> None:  # noqa: F811
    bench = tmp_path / "b.yaml"
    bench.write_text(text)
    assert len(text) < 2000
    start = time.monotonic()
    proc = cli("bench", "--benchmark", str(bench), "--out", str(tmp_path / "out"))
    assert time.monotonic() - start < 30  # the bomb used to hang here
    assert_one_line_error(proc, f"{bench}: not valid YAML ({fragment}")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("change,fragment", [
    (("epochs: 1,", "epochs: 100000000000000000000000000000,"),
     "train.epochs = 100000000000000000000000000000: must be at most 100,000"),
    (("methods: [ce]", "methods: {focal: {gamma: -1}}"), "methods.focal: focal: gamma must be a finite number of at least 0, got -1"),
])
def test_out_of_range_values_are_refused(tmp_path: Path, cli, change, fragment) -> None:  # noqa: F811
    bench = tmp_path / "b.yaml"
    bench.write_text(GOOD.replace(*change))
    assert_one_line_error(cli("bench", "--benchmark", str(bench), "--out", str(tmp_path / "out")), fragment)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["../../victim", "..", "reports/../x", "/tmp/victim", ".hidden"])
def test_a_benchmark_name_cannot_leave_reports(tmp_path: Path, cli, monkeypatch, name: str) -> None:  # noqa: F811
    """No --out: the report goes to reports/NAME, so NAME is refused like a row name."""
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    (tmp_path / "a" / "victim").mkdir()
    (tmp_path / "a" / "victim" / "README.md").write_text("mine\n")
    bench = work / "b.yaml"
    bench.write_text(GOOD.replace("name: hostile", f"name: {name!r}"))
    proc = cli("bench", "--benchmark", str(bench))
    monkeypatch.chdir(work)
    assert_one_line_error(proc, f"{bench}: name = {name!r}: a benchmark name is letters, digits and _ . + -")
    assert (tmp_path / "a" / "victim" / "README.md").read_text() == "mine\n"
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["README.md", "b.yaml"]


def test_strict_yaml_keeps_what_yaml_allows() -> None:
    """Merge keys still override (YAML's rule, not a duplicate); shared aliases within the bound load."""
    assert load_yaml("base: &b {lr: 0.1, epochs: 5}\nrow:\n  <<: *b\n  lr: 0.2\n") == \
        {"base": {"lr": 0.1, "epochs": 5}, "row": {"lr": 0.2, "epochs": 5}}
    assert load_yaml("a: &a [1, 2]\nb: [*a, *a]\n") == {"a": [1, 2], "b": [[1, 2], [1, 2]]}
    assert load_yaml(_bomb(4)) == yaml.safe_load(_bomb(4))  # 9^4 = 6,561 values: allowed
    with pytest.raises(yaml.YAMLError, match="duplicate key 1 on line 1"):
        load_yaml("{1: a, 1: b}")


@pytest.mark.parametrize("gamma", [-0.5, float("nan"), float("inf")])
def test_focal_refuses_a_gamma_that_is_not_a_finite_number_of_at_least_0(gamma: float) -> None:
    from ltbench.registry import get_method_class

    focal = get_method_class("focal")
    with pytest.raises(ValueError, match=f"focal: gamma must be a finite number of at least 0, got {gamma!r}"):
        focal(gamma=gamma)
    assert focal(gamma=0).gamma == 0  # γ = 0 is plain cross-entropy
