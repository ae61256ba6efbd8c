"""The evidence section of a report: from saved labels/probabilities to tables and figures."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ltbench.metrics import compute_metrics
from ltbench.report import summarize
from ltbench.report.evidence import compute_evidence, evidence_outputs, load_run_arrays

CLASSES = ["nv", "mel", "bcc"]
TRAIN = [60, 25, 8]


def _run(method: str, seed: int, labels: np.ndarray, probs: np.ndarray) -> dict:
    test = compute_metrics(labels, probs, CLASSES, TRAIN)
    return {"method": method, "seed": seed, "arrays": f"seed{seed}.npz", "best_epoch": 2,
            "dataset": {"name": "toy", "class_counts": {"train": TRAIN}},
            "split": {"kind": "stratified", "hash": "h"},
            "config": {"select_metric": "acc"},
            "history": [{"epoch": e, "val": {"acc": acc}} for e, acc in enumerate([50.0, 51.0, 52.0, 51.5])],
            "test": test}


def _write(run_dir: Path, result: dict, labels: np.ndarray, probs: np.ndarray) -> None:
    folder = run_dir / result["method"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"seed{result['seed']}.json").write_text(json.dumps(result))
    np.savez(folder / f"seed{result['seed']}.npz", test_labels=labels, test_probs=probs)


@pytest.fixture()
def bench(tmp_path):
    """ce: noisy; good: nearly always right; same: ce's predictions exactly; collapsed: only 'nv'."""
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], [40, 25, 15])
    results = []
    for seed in range(3):
        noisy = rng.dirichlet(np.ones(3), size=labels.size)
        noisy[np.arange(labels.size), labels] += 0.3
        noisy /= noisy.sum(1, keepdims=True)
        good = np.full((labels.size, 3), 0.05)
        good[np.arange(labels.size), labels] = 0.9
        collapsed = np.tile([0.8, 0.15, 0.05], (labels.size, 1))
        for method, probs in (("ce", noisy), ("good", good), ("same", noisy), ("collapsed", collapsed)):
            r = _run(method, seed, labels, probs)
            _write(tmp_path / "runs", r, labels, probs)
            results.append(r)
    return tmp_path / "runs", results


def test_paired_test_separates_a_better_model_from_an_identical_one(bench):
    run_dir, results = bench
    runs, missing = load_run_arrays(run_dir, results)
    assert not missing
    methods = ["ce", "good", "same", "collapsed"]
    evidence = compute_evidence(runs, methods, baseline="ce", resamples=500)
    assert evidence.paired["same"]["acc"]["p"] == 1.0 and evidence.paired["same"]["acc"]["delta"] == 0.0
    assert evidence.paired["good"]["acc"]["p_holm"] < 0.01 and evidence.paired["good"]["acc"]["delta"] > 0
    # Holm never lowers a p-value
    for m in ("good", "same", "collapsed"):
        assert evidence.paired[m]["f1"]["p_holm"] >= evidence.paired[m]["f1"]["p"]
    low, high = evidence.intervals["good"]["acc"]
    assert low <= 100.0 <= high + 1e-9
    assert any("single class" in f for f in evidence.flags["collapsed"])
    assert evidence.flags["good"] == []
    assert evidence.majority["acc"] == pytest.approx(50.0)


def test_every_table_and_figure_is_written_and_non_empty(bench):
    run_dir, results = bench
    summary = summarize(results, ["ce", "good", "same", "collapsed"])
    out = evidence_outputs(results, run_dir, summary, list(summary["method"]), baseline="ce")
    assert set(out) == {"evidence.md", "calibration.csv", "metrics.png", "per_class_recall.png",
                        "training_curves.png", "reliability.png"}
    text = out["evidence.md"]
    assert "majority class" in text and "(n.s.)" in text and "Holm" in text
    # per class, head -> tail, with group and counts; the cost of each method
    per_class = text[text.index("## Per class"):text.index("## Cost")]
    assert per_class.index("| nv ") < per_class.index("| mel ") < per_class.index("| bcc ")
    nv_row = next(line for line in per_class.splitlines() if line.startswith("| nv "))
    assert [c.strip() for c in nv_row.strip("|").split("|")][:3] == ["nv", "head", "60"]
    assert "Wall time per run" in text
    for name, content in out.items():
        assert content, name
        if name.endswith(".png"):
            assert Image.open(io.BytesIO(content)).size[0] > 100


def test_runs_without_saved_probabilities_are_named_not_fatal(bench):
    run_dir, results = bench
    (run_dir / "good" / "seed1.npz").unlink()
    summary = summarize(results)
    out = evidence_outputs(results, run_dir, summary, list(summary["method"]))
    assert "good seed 1" in out["evidence.md"]


def test_ltbench_report_into_another_folder_reads_the_arrays_where_the_runs_are(bench, tmp_path):
    from ltbench.cli import main

    run_dir, _ = bench
    out = tmp_path / "elsewhere"
    assert main(["report", str(run_dir.parent), "--out", str(out)]) == 0
    text = (out / "evidence.md").read_text()
    assert "## 95 % confidence intervals" in text and "without saved probabilities" not in text
    assert main(["report", str(run_dir.parent), "--out", str(tmp_path / "plain"), "--baseline", "none"]) == 0
    assert "Paired comparison" not in (tmp_path / "plain" / "evidence.md").read_text()
