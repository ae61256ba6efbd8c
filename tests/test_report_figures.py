"""Issue 12 report parts on saved probabilities: bold only when significant, confusion counts, a
14-method confusion grid, peak memory in the cost table, and folders of older result files."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ltbench.metrics import compute_metrics
from ltbench.report import load_results, write_report
from tests.test_report import md_rows

CLASSES = ["nv", "mel", "bcc"]
TRAIN = [60, 25, 8]
LABELS = np.repeat([0, 1, 2], [40, 25, 15])


def _result(method: str, seed: int, probs: np.ndarray, memory: dict | None = None) -> dict:
    r = {"method": method, "seed": seed, "arrays": f"seed{seed}.npz", "best_epoch": 2,
         "dataset": {"name": "toy", "class_counts": {"train": TRAIN, "val": [6, 4, 2], "test": [40, 25, 15]}},
         "split": {"kind": "stratified", "hash": "h"},
         "config": {"select_metric": "acc", "backbone": "small-cnn"}, "wall_time_s": 2.0, "device": "cpu",
         "history": [{"epoch": e, "val": {"acc": 50.0 + e}, "train_time_s": 0.5} for e in range(3)],
         "test": compute_metrics(LABELS, probs, CLASSES, TRAIN)}
    if memory is not None:
        r["memory"] = memory
    return r


def _probs(correct: np.ndarray) -> np.ndarray:
    """Confident predictions: the true class where ``correct``, else the next class."""
    preds = np.where(correct, LABELS, (LABELS + 1) % 3)
    return np.eye(3)[preds] * 0.8 + 0.2 / 3


def _write(root: Path, results_and_probs) -> list[dict]:
    out = []
    for r, probs in results_and_probs:
        folder = root / "runs" / r["method"]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"seed{r['seed']}.json").write_text(json.dumps(r))
        np.savez(folder / f"seed{r['seed']}.npz", test_labels=LABELS, test_probs=probs)
        out.append(r)
    return out


@pytest.fixture()
def bench(tmp_path):
    """good: right 95 % of the time; twin_a / twin_b: 70 % vs 71 % (one image apart per seed)."""
    rng = np.random.default_rng(0)
    pairs = []
    for seed in range(3):
        good = rng.random(LABELS.size) < 0.95
        twin = rng.random(LABELS.size) < 0.7
        twin_b = twin.copy()
        twin_b[np.flatnonzero(~twin)[0]] = True  # one more image right
        mem = {"cpu_peak_rss_mb": 500.0 + seed, "cpu_peak_rss_mb_before": 450.0,
               "rss_peak_raised_by_run": seed != 1, "cuda_max_allocated_mb": None}
        pairs += [(_result("good", seed, _probs(good), mem), _probs(good)),
                  (_result("twin_a", seed, _probs(twin), mem), _probs(twin)),
                  (_result("twin_b", seed, _probs(twin_b), mem), _probs(twin_b))]
    return tmp_path, _write(tmp_path, pairs)


def test_a_best_is_bold_only_when_the_paired_test_separates_it_from_the_runner_up(bench):
    root, results = bench
    files = write_report(results, root, order=["good", "twin_a", "twin_b"], baseline=None)
    rows = md_rows(files["summary.md"].read_text())
    assert rows["good"][0].startswith("**")          # Acc: far ahead of the runner-up
    # without `good`, the best (twin_b) is one image per seed ahead of twin_a: not bold
    twins = [r for r in results if r["method"] != "good"]
    files = write_report(twins, root / "twins", run_dir=root / "runs", baseline=None)
    rows = md_rows(files["summary.md"].read_text())
    assert not rows["twin_b"][0].startswith("**") and not rows["twin_a"][0].startswith("**")
    evidence = (root / "twins" / "evidence.md").read_text()
    line = next(l for l in evidence.splitlines() if l.startswith("| Acc "))
    assert "twin_b" in line and "twin_a" in line and "not bold" in line
    assert "## Bold in the summary table" in evidence and "paired bootstrap" in evidence


def test_confusion_counts_are_summed_over_seeds_beside_the_normalised(bench):
    root, results = bench
    files = write_report(results, root, baseline=None)
    counts = pd.read_csv(files["confusion_counts.csv"])
    good = counts[counts["method"] == "good"]
    want = np.sum([r["test"]["confusion_matrix"] for r in results if r["method"] == "good"], axis=0)
    got = good.pivot(index="true", columns="predicted", values="count").loc[CLASSES, CLASSES].to_numpy()
    np.testing.assert_array_equal(got, want)
    assert set(good["seeds"]) == {3}
    assert good.groupby("true")["normalized_mean"].sum().to_numpy() == pytest.approx([1.0, 1.0, 1.0])
    for name in ("confusion_counts.png", "confusion_good.png"):
        with Image.open(files[name]) as img:
            assert img.format == "PNG" and img.size[0] > 300
    with Image.open(files["confusion_good.png"]) as img:  # normalised and counts side by side
        assert img.size[0] > 1.8 * img.size[1]
    readme = files["README.md"].read_text()
    assert "[confusion_counts.png](confusion_counts.png)" in readme and "summed over the seeds" in readme


def test_a_grid_of_fourteen_methods_wraps_into_rows_and_stays_readable():
    from ltbench.report.figures import _confusion_figure

    rng = np.random.default_rng(1)
    names = [f"class{c}" for c in range(8)]
    panels = []
    for m in range(14):
        mat = rng.dirichlet(np.ones(8), size=8)
        panels.append((f"method_{m:02d} (n=3)", mat))
    counts = [rng.integers(0, 500, size=(8, 8)) for _ in panels]
    with Image.open(io.BytesIO(_confusion_figure(panels, names, counts=counts))) as img:
        img.verify()
        width, height = img.size
    assert width <= 26 * 120                      # never wider than 26 inches at 120 dpi
    panel = width / 5                             # 14 panels: 3 rows of 5 columns
    assert panel >= 500 and height == pytest.approx(3 * panel, abs=3)  # square panels >= 500 px


def test_cost_table_shows_peak_memory_and_says_n_a_for_older_results(bench):
    root, results = bench
    old = [{k: v for k, v in r.items() if k != "memory"} if r["method"] == "twin_a" else r for r in results]
    text = write_report(old, root, baseline=None)["evidence.md"].read_text()
    cost = text[text.index("## Cost"):]
    rows = md_rows(cost)
    assert rows["good"][3] == "≤ 502"      # max over seeds; seed 1 did not raise the process peak
    assert rows["good"][4] == "— (no CUDA)"
    assert rows["twin_a"][3] == "n/a" and rows["twin_a"][4] == "n/a"
    assert "ru_maxrss" in cost and "process-lifetime maximum" in cost


def test_memory_is_measured_around_a_run():
    import torch

    from ltbench.runs import memory_end, memory_start

    start = memory_start(torch.device("cpu"))
    block = np.ones(2**22)  # 32 MB, touched
    end = memory_end(start, torch.device("cpu"))
    assert block.sum() > 0
    assert end["cpu_peak_rss_mb"] >= end["cpu_peak_rss_mb_before"] > 10
    assert end["cuda_max_allocated_mb"] is None
    assert end["rss_peak_raised_by_run"] == (end["cpu_peak_rss_mb"] > end["cpu_peak_rss_mb_before"])


def test_ltbench_report_on_results_of_a_previous_version(bench, tmp_path):
    """Result files without memory, raw confusion counts, groups or history, one run without arrays."""
    from ltbench.cli import main

    root, results = bench
    for path in (root / "runs").rglob("*.json"):
        r = json.loads(path.read_text())
        for key in ("memory", "history", "best_epoch", "device"):
            r.pop(key, None)
        for key in ("confusion_matrix", "groups", "group_recall", "group_acc"):
            r["test"].pop(key, None)
        path.write_text(json.dumps(r))
    (root / "runs" / "good" / "seed2.npz").unlink()
    out = tmp_path / "rebuilt"
    assert main(["report", str(root), "--out", str(out), "--baseline", "twin_a"]) == 0
    readme = (out / "README.md").read_text()
    assert "No counts stored (results of an older version): good, twin_a, twin_b." in readme
    assert not (out / "confusion_counts.png").exists()
    evidence = (out / "evidence.md").read_text()
    assert "Runs without saved probabilities (left out here): good seed 2." in evidence
    assert md_rows(evidence[evidence.index("## Cost"):])["good"][3] == "n/a"
    for link in [part.split(")")[0] for part in readme.split("](")[1:]]:
        assert (out / link).exists(), link
    assert len(load_results(root / "runs")) == 9


def test_the_report_readme_links_every_table_and_figure_it_writes(bench):
    root, results = bench
    refs = {"source": "test", "tolerance": 1.0, "values": {"good": {"acc": 90.0}}, "note": ""}
    files = write_report(results, root, baseline="twin_a", references=refs)
    readme = files["README.md"].read_text()
    links = {part.split(")")[0] for part in readme.split("](")[1:]}
    assert set(files) - {"README.md"} <= links, sorted(set(files) - {"README.md"} - links)
    for name in ("references.md", "references.csv", "confusion_counts.png", "confusion_counts.csv"):
        assert name in links
