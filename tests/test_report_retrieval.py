"""The report's retrieval section (ltbench/report/retrieval.py), from real runs' results and embedding files."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from ltbench.report import load_results, write_report
from ltbench.report.retrieval import RETRIEVAL_FILES, retrieval_outputs, retrieval_summary
from ltbench.retrieval.run_pass import RetrievalSettings, embedding_path
from ltbench.runs import result_paths, run_one
from tests.helpers import SYNTHETIC, cpu_config, synthetic_data

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """ce (seeds 0, 1) and rotation_hashing (seed 0) with retrieval; focal (seed 0) without."""
    out = tmp_path_factory.mktemp("report_retrieval")
    prepared, config, on = synthetic_data(), cpu_config(epochs=1), RetrievalSettings(enabled=True)
    for method, seed, retrieval in (("ce", 0, on), ("ce", 1, on), ("rotation_hashing", 0, on), ("focal", 0, None)):
        run_one(method, {}, seed, config, SYNTHETIC, prepared, out, progress=False, retrieval=retrieval)
    return out


def test_summary_is_mean_and_sample_std_over_seeds(run_dir):
    results = load_results(run_dir / "runs")
    summary = retrieval_summary(results, ["ce", "rotation_hashing", "focal"])
    assert list(zip(summary["method"], summary["space"])) == [
        ("ce", "feature"), ("rotation_hashing", "feature"), ("rotation_hashing", "hash"),
        ("rotation_hashing", "hash_binary")]
    ce = [r["retrieval"]["spaces"]["feature"] for r in results if r["method"] == "ce"]
    row = summary.iloc[0]
    values = [s["map_all"]["macro"] for s in ce]
    assert row["n_seeds"] == 2 and row["map_all_mean"] == pytest.approx(np.mean(values))
    assert row["map_all_std"] == pytest.approx(np.std(values, ddof=1))
    knn = [s["knn_weighted"]["balanced_acc"] for s in ce]
    assert row["knn_bacc_mean"] == pytest.approx(np.mean(knn))
    hashed = summary[summary["space"] == "hash"].iloc[0]
    p10 = [r["retrieval"]["spaces"]["hash"]["p10_r4"]["p10_r4_macro"] for r in results if r["method"] == "rotation_hashing"]
    assert hashed["p10_r4_macro_mean"] == pytest.approx(p10[0]) and np.isnan(row["p10_r4_macro_mean"])


def test_outputs_tables_and_figures(run_dir):
    results = load_results(run_dir / "runs")
    outputs = retrieval_outputs(results, run_dir / "runs", ["ce", "rotation_hashing", "focal"])
    figures = ["retrieval_per_class.png", "retrieval_pr.png", "retrieval_examples_ce.png",
               "retrieval_examples_rotation_hashing.png"]
    assert set(outputs) == {"retrieval.md", "retrieval.csv", *figures}
    for name in figures:
        assert outputs[name].startswith(PNG) and len(outputs[name]) > 5000, name
    text = outputs["retrieval.md"]
    # the weighted vote's k follows the smallest class of the database (ltbench.retrieval.metrics.knn_k_for)
    counts = results[0]["dataset"]["class_counts"]["train"]
    k = min(200, max(1, int(0.15 * min(counts))))
    assert {s["knn_weighted"]["k"] for r in results for s in (r.get("retrieval") or {}).get("spaces", {}).values()} == {k}
    for heading in ("mAP@all", "mAP@10", "P@10", "MRR@10", f"kNN-{k} bal. acc", "16-NN bal. acc", "p10_r4_macro"):
        assert f" {heading} " in text
    assert f"n_min = {min(counts)}, k = {k}" in text
    assert "focal seed 0" in text and "--force" in text  # the run without retrieval results is named
    table = pd.read_csv(__import__("io").StringIO(outputs["retrieval.csv"]))
    assert len(table) == 4 and "focal" not in set(table["method"])
    # Same bytes on a rerun: no timestamp, no pyplot state.
    assert retrieval_outputs(results, run_dir / "runs", ["ce", "rotation_hashing", "focal"]) == outputs


def test_missing_embedding_file_is_named_not_drawn(run_dir, tmp_path):
    copy = tmp_path / "runs"
    shutil.copytree(run_dir / "runs", copy)
    embedding_path(result_paths(tmp_path, "ce", 1)[0]).unlink()
    embedding_path(result_paths(tmp_path, "rotation_hashing", 0)[0]).write_bytes(b"PK\x03\x04 damaged")
    outputs = retrieval_outputs(load_results(copy), copy, ["ce", "rotation_hashing"])
    named = outputs["retrieval.md"].split("missing or unreadable")[1].splitlines()[0]
    assert "ce seed 1" in named and "rotation_hashing seed 0" in named and "ce seed 0" not in named
    assert "retrieval_examples_rotation_hashing.png" not in outputs  # nothing drawn from a damaged file
    assert outputs["retrieval_pr.png"].startswith(PNG)  # drawn from the remaining runs


def test_no_retrieval_results_no_section(run_dir):
    results = [r for r in load_results(run_dir / "runs") if r["method"] == "focal"]
    assert retrieval_outputs(results, run_dir / "runs") == {}


@pytest.mark.slow  # the whole report (evidence included): ~2 s idle, more on a busy machine
def test_write_report_writes_and_links_the_section(run_dir, tmp_path):
    files = write_report(load_results(run_dir / "runs"), tmp_path / "report", run_dir=run_dir / "runs",
                         order=["ce", "rotation_hashing", "focal"])
    readme = (tmp_path / "report" / "README.md").read_text()
    for name in (*RETRIEVAL_FILES, "retrieval_examples_ce.png"):
        assert files[name].stat().st_size > 0, name
        assert f"[{name}]({name})" in readme, name
    stored = json.loads(result_paths(run_dir, "ce", 0)[0].read_text())["retrieval"]["spaces"]["feature"]
    assert f"{stored['map_all']['macro']:.2f}" in (tmp_path / "report" / "retrieval.md").read_text()
