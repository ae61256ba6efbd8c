"""Paper recipes (row opt-in) and per-row tuning on validation (issue 20, items 2 and 3)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ltbench.bench import load_benchmark, run_benchmark
from ltbench.errors import LtbenchError
from ltbench.recipes import Recipe
from ltbench.registry import get_method_class
from ltbench.runs import read_result
from ltbench.bench.tuning import choose, combinations, parse_tune, parse_tune_flags, tuning_row

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TRAIN = {"backbone": "small-cnn", "image_size": 8, "epochs": 1, "batch_size": 64, "lr": 0.05,
         "eval_batch_size": 512, "device": "cpu"}


@pytest.fixture
def ce_recipe(monkeypatch):
    """A recipe on ``ce`` for these tests (the shipped recipes are checked in tests/test_recipes.py)."""
    recipe = Recipe(source="test", train={"lr": 0.2, "weight_decay": 5e-4, "epochs": 9, "image_size": 224},
                    params={"label_smoothing": 0.1})
    monkeypatch.setattr(get_method_class("ce"), "recipes", {"paper": recipe})
    return recipe


def _bench_file(tmp_path: Path, **top) -> Path:
    doc = {"name": "t", "dataset": {"name": "digits-lt", "options": {"imbalance": 10}}, "split": {"kind": "official"},
           "train": dict(TRAIN), "seeds": [0], **top}
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


# --- recipes --------------------------------------------------------------------------------------
def test_a_recipe_row_sits_between_the_file_and_the_flags(tmp_path, ce_recipe):
    path = _bench_file(tmp_path, methods={"ce": {}, "ce_paper": {"method": "ce", "recipe": "paper"},
                                          "ce_paper_ls0": {"method": "ce", "recipe": "paper", "label_smoothing": 0.0}})
    bench = load_benchmark(path, train_flags={"epochs": "2"})
    plain, paper, own = (bench.methods[n] for n in ("ce", "ce_paper", "ce_paper_ls0"))
    assert plain.config is None and bench.row_config(plain).lr == 0.05
    config = bench.row_config(paper)
    assert (config.lr, config.weight_decay) == (0.2, 5e-4)  # the recipe over the file's train:
    assert config.epochs == 2  # the command line over the recipe
    assert config.image_size == 8  # a bench setting, never a recipe's
    assert paper.params == {"label_smoothing": 0.1} and own.params == {"label_smoothing": 0.0}
    assert paper.recipe == "paper"


def test_an_unknown_recipe_is_one_line(tmp_path, ce_recipe):
    path = _bench_file(tmp_path, methods={"ce_x": {"method": "ce", "recipe": "nope"}})
    with pytest.raises(LtbenchError, match=r"methods\.ce_x\.recipe = 'nope'.*its recipes: paper"):
        load_benchmark(path)
    path = _bench_file(tmp_path, methods={"ce_x": {"method": "ce", "recipe": 3}})
    with pytest.raises(LtbenchError, match=r"methods\.ce_x\.recipe = 3: expected a recipe name"):
        load_benchmark(path)


# --- the grid -------------------------------------------------------------------------------------
def test_tune_grid_is_converted_and_checked():
    assert parse_tune({"lr": [0.01, "0.1"]}, "f: tune") == {"lr": [0.01, 0.1]}
    assert parse_tune_flags({"lr": "0.01,0.1", "weight_decay": "0,1e-4"}) == {"lr": [0.01, 0.1],
                                                                              "weight_decay": [0.0, 1e-4]}
    assert combinations({"lr": [1, 2], "weight_decay": [0, 3]}) == [
        {"lr": 1, "weight_decay": 0}, {"lr": 1, "weight_decay": 3}, {"lr": 2, "weight_decay": 0},
        {"lr": 2, "weight_decay": 3}]
    assert tuning_row("ce", {"lr": 0.01, "weight_decay": 1e-4}) == "ce.tune.lr-0.01.weight_decay-0.0001"
    for bad, message in [({"lr": []}, "non-empty list"), ({"lr": 0.1}, "non-empty list"),
                         ({"nope": [1]}, "not a training setting"), ({"image_size": [8, 16]}, "not tunable"),
                         ({"lr": [0.1, 0.1]}, "twice"), ({"lr": ["x"]}, "lr"), ([1], "mapping")]:
        with pytest.raises(LtbenchError, match=message):
            parse_tune(bad, "f: tune")


def test_choice_is_the_best_validation_score_and_ties_keep_the_first():
    tried = [({"lr": 1}, {"val": {"sen": 50.0}, "test": {"sen": 99.0}}), ({"lr": 2}, {"val": {"sen": 70.0}}),
             ({"lr": 3}, None), ({"lr": 4}, {"val": {"sen": 70.0}})]
    record = choose("ce", tried, "sen")
    assert record["chosen"] == {"lr": 2}
    assert [s["val"] for s in record["scores"]] == [50.0, 70.0, None, 70.0]
    assert choose("ce", [({"lr": 1}, None)], "sen")["chosen"] is None


# --- end to end -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_tuned_bench_chooses_on_validation_then_runs_every_seed(tmp_path, ce_recipe):
    path = _bench_file(tmp_path, seeds=[0, 1], tune={"lr": [0.01, 0.2]},
                       methods={"ce": {}, "ce_paper": {"method": "ce", "recipe": "paper"},
                                "ce_own": {"method": "ce", "tune": {"weight_decay": [0.0, 1e-3]}}})
    out = tmp_path / "out"
    lines: list[str] = []
    run_benchmark(load_benchmark(path, train_flags={"epochs": "2"}), out, progress=False, echo=lines.append)
    tuning = json.loads((out / "tuning.json").read_text())
    assert tuning["grid"] == {"lr": [0.01, 0.2]} and tuning["seed"] == 0
    for row in ("ce", "ce_paper"):
        record = tuning["rows"][row]
        scores = {}
        for lr in (0.01, 0.2):
            result = read_result(out / "tuning" / "runs" / tuning_row(row, {"lr": lr}) / "seed0.json")
            assert result["config"]["lr"] == lr and result["seed"] == 0
            scores[lr] = result["val"][record["metric"]]
        best = max(scores, key=lambda lr: (scores[lr], -lr))  # ties: the first listed
        assert record["chosen"] == {"lr": best}
        for seed in (0, 1):  # every seed with the chosen value; the recipe's other settings kept
            result = read_result(out / "runs" / row / f"seed{seed}.json")
            assert result["config"]["lr"] == best and result["tuned"] == {"lr": best}
            assert result["config"]["weight_decay"] == (5e-4 if row == "ce_paper" else 1e-4)
            assert result.get("recipe") == ("paper" if row == "ce_paper" else None)
    assert record["metric"] == "acc"  # digits-lt selects by validation Acc
    own = tuning["rows"]["ce_own"]  # a row's own grid replaces the bench's
    assert own["grid"] == {"weight_decay": [0.0, 1e-3]} and set(own["chosen"]) == {"weight_decay"}
    assert read_result(out / "runs" / "ce_own" / "seed1.json")["config"]["weight_decay"] == own["chosen"]["weight_decay"]
    summary = (out / "summary.md").read_text()
    assert "Tuned on validation" in summary and "`ce_paper`: lr = " in summary and "from lr ∈ {0.01, 0.2}" in summary
    assert "Tuning runs (validation only)" in (out / "evidence.md").read_text()
    # A rerun trains nothing: tuning runs live in the run store like any run.
    again: list[str] = []
    run_benchmark(load_benchmark(path, train_flags={"epochs": "2"}), out, progress=False, echo=again.append)
    assert any("0 run(s) trained" in line for line in again)


def test_the_shipped_tuned_benchmark_reads_as_documented():
    bench = load_benchmark(Path(__file__).resolve().parents[1] / "benchmarks" / "digits-lt-tuned.yaml")
    assert bench.tune == {"lr": [0.02, 0.05, 0.1]}
    paper = bench.methods["ldam_drw_paper"]
    recipe = get_method_class("ldam_drw").recipes["paper"]
    assert paper.recipe == "paper" and bench.row_config(paper).epochs == recipe.train["epochs"]
    assert bench.row_config(bench.methods["ce"]).epochs == 20  # the shared protocol
    assert bench.methods["mwnl_paper"].tune == {"lr": [1e-4, 4e-4, 1e-3]}
    assert bench.row_config(bench.methods["mwnl_paper"]).optimizer == "adam"


def test_bad_tune_flag_is_one_line_from_the_command_line(tmp_path, capsys):
    from ltbench.cli import main

    path = _bench_file(tmp_path, methods={"ce": {}})
    assert main(["bench", "--benchmark", str(path), "--out", str(tmp_path / "out"), "--tune", "lr=0.1,x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("ltbench: error: --tune.lr: 'x'") and "Traceback" not in "\n".join(err)
