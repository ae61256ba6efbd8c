"""Report tables, figures and README from fake results with known numbers."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ltbench.errors import LtbenchError
from ltbench.report import load_results, summarize, write_report
from ltbench.report.summary import latex_escape, method_order

CLASSES = ["mel", "nv", "bcc"]
# method -> per-seed (acc, sen, pre, f1, auc, head, medium, tail)
NUMBERS = {
    "ce": [(80, 70, 60, 50, 90, 90, 60, 30),
           (82, 70, 62, 52, 91, 92, 62, 32),
           (84, 70, 64, 54, 92, 94, 64, 34)],
    "ldam_drw": [(85, 60, 61, 55, 93, 80, 70, 60),
                 (86, 65, 61, 56, 93, 80, 70, 61),
                 (87, 70, 61, 57, 93, 80, 70, 62)],
}


def fake_result(method: str, seed: int, values: tuple, diag: float) -> dict:
    acc, sen, pre, f1, auc, head, medium, tail = values
    off = (1 - diag) / 2
    norm = [[diag if i == j else off for j in range(3)] for i in range(3)]
    return {
        "method": method, "seed": seed, "method_params": {},
        "benchmark": "digits-lt",
        "dataset": {"name": "digits-lt", "class_names": CLASSES,
                    "class_counts": {"train": [50, 10, 5], "val": [5, 2, 1], "test": [5, 2, 1]}},
        "split": {"kind": "grouped", "hash": "abc123", "file": "split.csv"},
        "config": {"backbone": "small-cnn", "image_size": 32, "epochs": 30, "batch_size": 64},
        "wall_time_s": 1.0, "best_epoch": 3,
        "test": {
            "acc": float(acc), "sen": float(sen), "pre": float(pre), "f1": float(f1),
            "auc": float(auc),
            "per_class": {"name": CLASSES, "precision": [0.0] * 3, "recall": [0.0] * 3,
                          "f1": [0.0] * 3, "support": [5, 2, 1]},
            "confusion_matrix": [[1, 0, 0], [0, 1, 0], [0, 0, 1]],
            "confusion_matrix_normalized": norm,
            "groups": {"head": ["mel"], "medium": ["nv"], "tail": ["bcc"]},
            "group_recall": {"head": float(head), "medium": float(medium), "tail": float(tail)},
        },
    }


@pytest.fixture()
def results() -> list[dict]:
    return [fake_result(m, seed, vals, diag=0.5 + 0.1 * seed)
            for m, rows in NUMBERS.items() for seed, vals in enumerate(rows)]


def write_runs(run_dir: Path, results: list[dict]) -> None:
    for r in results:
        folder = run_dir / r["method"]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"seed{r['seed']}.json").write_text(json.dumps(r))


# ----------------------------------------------------------------------------- summarize

def test_summary_mean_and_sample_std(results):
    df = summarize(results).set_index("method")
    assert list(df.index) == ["ce", "ldam_drw"]
    assert df.loc["ce", "n_seeds"] == 3
    assert df.loc["ce", "acc_mean"] == pytest.approx(82.0)
    assert df.loc["ce", "acc_std"] == pytest.approx(2.0)        # ddof=1: sqrt((4+0+4)/2)
    assert df.loc["ldam_drw", "sen_mean"] == pytest.approx(65.0)
    assert df.loc["ldam_drw", "sen_std"] == pytest.approx(5.0)
    assert df.loc["ce", "sen_std"] == pytest.approx(0.0)
    assert df.loc["ldam_drw", "tail_recall_mean"] == pytest.approx(61.0)
    assert df.loc["ce", "head_recall_mean"] == pytest.approx(92.0)


def test_single_seed_std_is_nan(results):
    df = summarize([results[0]])
    assert df.loc[0, "n_seeds"] == 1
    assert math.isnan(df.loc[0, "acc_std"])


def test_order_argument(results):
    extra = fake_result("bbn", 0, NUMBERS["ce"][0], 0.5)
    assert method_order(results + [extra]) == ["bbn", "ce", "ldam_drw"]
    assert method_order(results + [extra], ["ldam_drw", "missing"]) == ["ldam_drw", "bbn", "ce"]
    df = summarize(results + [extra], order=["ldam_drw"])
    assert list(df["method"]) == ["ldam_drw", "bbn", "ce"]


def test_mixed_splits_refused(results):
    results[0]["split"]["hash"] = "zzz999"
    with pytest.raises(LtbenchError, match="split hashes"):
        summarize(results)


# ----------------------------------------------------------------------------- outputs

def md_rows(text: str) -> dict[str, list[str]]:
    """Markdown table rows keyed by method, cells stripped."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("|") and not line.startswith("|--") and "Method" not in line:
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0].removesuffix(" ⚠")] = cells[1:]  # ⚠: a flagged row (ltbench.report.flags.run_flags)
    return rows


def test_summary_md(results, tmp_path):
    paths = write_report(results, tmp_path)
    text = paths["summary.md"].read_text()
    first = text.splitlines()[0]
    for fact in ("digits-lt", "grouped", "abc123", "small-cnn", "32", "30", "0, 1, 2"):
        assert fact in first
    # every setting that changes results is named in the header
    for fact in ("pretrained: none", "batch: 64", "lr: ?", "checkpoint: best validation Acc (select_metric acc), every row"):
        assert fact in first, first
    header = next(line for line in text.splitlines() if "Method" in line)
    assert [c.strip() for c in header.strip("|").split("|")] == \
        ["Method", "Acc", "Sen", "Pre", "F1", "AUC", "Head", "Medium", "Tail"]
    rows = md_rows(text)
    ce, ldam = rows["ce"], rows["ldam_drw"]
    assert ce[0] == "82.00 ± 2.00"
    assert ldam[0] == "86.00 ± 1.00"
    assert ce[1] == "70.00 ± 0.00" and ldam[1] == "65.00 ± 5.00"
    assert ce[4] == "91.00 ± 1.00" and ldam[4] == "93.00 ± 0.00"
    # these results have no saved probabilities: no paired test, so no value is bold (issue 12)
    assert not any(cell.startswith("**") for row in rows.values() for cell in row)
    assert "Bold: a column's best mean, only when a paired bootstrap" in text


def test_markdown_table_bolds_the_rows_it_is_given_and_by_default_the_best(results):
    from ltbench.report.summary import markdown_table

    summary = summarize(results)
    default = md_rows(markdown_table(summary))
    assert default["ldam_drw"][0] == "**86.00** ± 1.00" and default["ce"][1] == "**70.00** ± 0.00"
    assert sum(cell.startswith("**") for row in default.values() for cell in row) == 8
    chosen = md_rows(markdown_table(summary, {"acc": {"ldam_drw"}}))
    assert chosen["ldam_drw"][0] == "**86.00** ± 1.00"
    assert sum(cell.startswith("**") for row in chosen.values() for cell in row) == 1


def test_summary_csv_numbers(results, tmp_path):
    df = pd.read_csv(write_report(results, tmp_path)["summary.csv"])
    assert list(df.columns[:4]) == ["method", "n_seeds", "acc_mean", "acc_std"]
    row = df.set_index("method").loc["ldam_drw"]
    assert row["acc_mean"] == pytest.approx(86.0)
    assert row["sen_std"] == pytest.approx(5.0)
    assert row["n_seeds"] == 3


def test_summary_tex(results, tmp_path):
    tex = write_report(results, tmp_path)["summary.tex"].read_text()
    for rule in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}", r"\end{tabular}"):
        assert rule in tex
    assert r"ldam\_drw" in tex and "ldam_drw" not in tex.replace(r"ldam\_drw", "")
    assert r"86.00 $\pm$ 1.00" in tex and r"\textbf" not in tex  # no arrays: nothing tested, nothing bold
    assert r"82.00 $\pm$ 2.00" in tex
    assert latex_escape("a_b&c%") == r"a\_b\&c\%"


def test_figures_are_png(results, tmp_path):
    paths = write_report(results, tmp_path)
    for name in ("confusion_matrices.png", "confusion_ce.png", "confusion_ldam_drw.png"):
        assert paths[name].exists()
        with Image.open(paths[name]) as img:
            img.verify()
            assert img.format == "PNG"


def test_readme_links_exist(results, tmp_path):
    paths = write_report(results, tmp_path)
    readme = paths["README.md"].read_text()
    links = [part.split(")")[0] for part in readme.split("](")[1:]]
    assert {"summary.md", "summary.csv", "summary.tex", "confusion_matrices.png",
            "confusion_ce.png", "confusion_ldam_drw.png"} <= set(links)
    for link in links:
        assert (tmp_path / link).exists(), link
    assert "![Confusion matrices](confusion_matrices.png)" in readme
    for fact in ("digits-lt", "grouped", "abc123", "small-cnn", "30", "0, 1, 2", "6 runs"):
        assert fact in readme


def test_no_temp_files_left_and_rerun_identical(results, tmp_path):
    first = write_report(results, tmp_path)["summary.md"].read_bytes()
    second = write_report(results, tmp_path)["summary.md"].read_bytes()
    assert first == second
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_report_order(results, tmp_path):
    text = write_report(results, tmp_path, order=["ldam_drw"])["summary.md"].read_text()
    assert list(md_rows(text)) == ["ldam_drw", "ce"]


# ----------------------------------------------------------------------------- loading

def test_load_results_recursive_and_skips_non_results(results, tmp_path):
    write_runs(tmp_path, results)
    (tmp_path / "config.json").write_text(json.dumps({"epochs": 3}))
    (tmp_path / "list.json").write_text("[1, 2]")
    loaded = load_results(tmp_path)
    assert len(loaded) == 6
    assert {(r["method"], r["seed"]) for r in loaded} == {(r["method"], r["seed"]) for r in results}


def test_load_results_corrupt_json_names_file(results, tmp_path):
    write_runs(tmp_path, results)
    bad = tmp_path / "ce" / "broken.json"
    bad.write_text('{"method": "ce", "test": {')
    with pytest.raises(LtbenchError) as info:
        load_results(tmp_path)
    message = str(info.value)
    assert str(bad) in message and "\n" not in message


def test_load_results_none_found(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(LtbenchError, match="no result files in"):
        load_results(tmp_path)


def test_load_results_duplicate_run(results, tmp_path):
    write_runs(tmp_path, results)
    (tmp_path / "copy.json").write_text(json.dumps(results[0]))
    with pytest.raises(LtbenchError, match="duplicate run"):
        load_results(tmp_path)


def test_mean_confusion_in_figure_input(results):
    from ltbench.report.summary import mean_confusion
    mat = mean_confusion(results, "ce")              # diag 0.5, 0.6, 0.7 -> 0.6
    assert np.diag(mat) == pytest.approx([0.6] * 3)
    assert mat.sum(axis=1) == pytest.approx([1.0] * 3)


# ----------------------------------------------------------------------------- lesion leak

def test_leak_text_never_says_none_when_ids_are_missing():
    from ltbench.report import leak_text

    full = {"test_lesions_also_in_train": 0, "test_lesions": 40, "test_images_without_lesion_id": 0, "test_images": 50}
    assert leak_text(full) == "none: no test lesion has images in train"
    partial = {**full, "test_images_without_lesion_id": 7}
    assert leak_text(partial) == ("0 of 40 test lesions also have images in train; "
                                  "7 test images without a lesion id (leak unknown for them)")
    assert leak_text({**partial, "test_lesions_also_in_train": 3}).startswith("3 of 40 test lesions")
    assert leak_text({**full, "test_lesions": 0, "test_images_without_lesion_id": 50}) == \
        "unknown: 50 test images without a lesion id"
    # results written before the count existed, and runs on data without lesion ids
    assert leak_text({"test_lesions_also_in_train": 2, "test_lesions": 9}) == "2 of 9 test lesions also have images in train"
    assert leak_text(None) == "unknown (no lesion ids)"


def test_readme_reports_images_without_a_lesion_id(results, tmp_path):
    for r in results:
        r["split"]["kind"] = "stratified (image-level: no lesion ids)"
        r["split"]["lesion_leak"] = {"test_lesions_also_in_train": 0, "test_lesions": 0,
                                     "test_images_without_lesion_id": 8, "test_images": 8}
    paths = write_report(results, tmp_path)
    readme = paths["README.md"].read_text()
    assert "- Lesion leak: unknown: 8 test images without a lesion id" in readme
    assert "Lesion leak: none" not in readme
    assert "stratified (image-level: no lesion ids)" in readme
    assert "split: stratified (image-level: no lesion ids)" in paths["summary.md"].read_text().splitlines()[0]


def test_variant_rows_are_separate_rows(results, tmp_path):
    variant = [fake_result("focal_g1", seed, NUMBERS["ce"][seed], 0.5) for seed in range(3)]
    for r in variant:
        r["registered_method"] = "ce"
    text = write_report(results + variant, tmp_path, order=["focal_g1", "ce"])["summary.md"].read_text()
    rows = md_rows(text)
    assert list(rows) == ["focal_g1", "ce", "ldam_drw"]
    assert rows["focal_g1"][0] == rows["ce"][0] == "82.00 ± 2.00"
