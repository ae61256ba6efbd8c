"""Issue 26 and issue 20 item 4 in the report: one class order, shared curve axes, the dataset's own
head/medium/tail groups, collapse and convergence flags, and the selection-sensitivity section."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

import ltbench.report.figures as figures_module
from ltbench.metrics import compute_metrics
from ltbench.report import load_results, write_report
from ltbench.report.figures import training_curves_fig
from ltbench.report.flags import run_flags
from ltbench.report.groups import class_groups, class_order, resolve
from ltbench.runs import run_one
from tests.helpers import SYNTHETIC, cpu_config, synthetic_data
from tests.test_report import md_rows

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Stored (CSV) order differs from head -> tail: nv is the head, then mel, bcc.
CLASSES = ["mel", "nv", "bcc"]
TRAIN = [25, 60, 8]
LABELS = np.repeat([0, 1, 2], [25, 40, 15])


def _result(method: str, seed: int, preds: np.ndarray, history=None, best_epoch=1, **extra) -> dict:
    probs = np.eye(3)[preds] * 0.8 + 0.2 / 3
    return {"method": method, "seed": seed, "arrays": f"seed{seed}.npz", "best_epoch": best_epoch,
            "dataset": {"name": "toy", "class_counts": {"train": TRAIN, "val": [5, 8, 2], "test": [25, 40, 15]}},
            "split": {"kind": "stratified", "hash": "h"}, "config": {"select_metric": "sen"},
            "history": history or [{"epoch": e, "val": {"acc": v, "sen": v - 10}} for e, v in enumerate([50, 60, 55])],
            "test": compute_metrics(LABELS, probs, CLASSES, TRAIN), **extra}, probs


def _write(root, pairs):
    results = []
    for r, probs in pairs:
        folder = root / "runs" / r["method"]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"seed{r['seed']}.json").write_text(json.dumps(r))
        np.savez(folder / f"seed{r['seed']}.npz", test_labels=LABELS, test_probs=probs)
        results.append(r)
    return results


# ------------------------------------------------------------------------------ one class order

def test_every_figure_and_table_uses_one_class_order_head_to_tail(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    pairs = [_result(m, s, np.where(rng.random(LABELS.size) < 0.7, LABELS, (LABELS + 1) % 3))
             for m in ("ce", "ecl") for s in (0, 1)]
    results = _write(tmp_path, pairs)
    seen = []  # (figure, x tick labels, y tick labels, first image's data)

    def spy(builder):
        def wrapped(*args, **kwargs):
            fig = builder(*args, **kwargs)
            fig.canvas.draw()
            ax = fig.axes[0]
            data = ax.images[0].get_array() if ax.images else None
            seen.append((builder.__name__, [t.get_text() for t in ax.get_xticklabels()],
                         [t.get_text() for t in ax.get_yticklabels()], data, ax.get_xlabel()))
            return fig
        return wrapped

    monkeypatch.setattr(figures_module, "panel_figure", spy(figures_module.panel_figure))
    monkeypatch.setattr(figures_module, "per_class_recall_fig", spy(figures_module.per_class_recall_fig))
    write_report(results, tmp_path, baseline=None)
    head_to_tail = ["nv", "mel", "bcc"]
    assert class_order(results) == [1, 0, 2]
    panels = [s for s in seen if s[0] == "panel_figure"]
    assert len(panels) == 4  # ce, ecl: normalised and counts
    for _, x, y, data, xlabel in panels:
        assert x == head_to_tail and y == head_to_tail and "head → tail" in xlabel
    ce = np.mean([r["test"]["confusion_matrix_normalized"] for r in results if r["method"] == "ce"], axis=0)
    np.testing.assert_allclose(np.asarray(panels[0][3]), ce[np.ix_([1, 0, 2], [1, 0, 2])])  # ce's, reordered
    (_, x, _, _, xlabel), = [s for s in seen if s[0] == "per_class_recall_fig"]
    assert [t.split(" (")[0] for t in x] == head_to_tail and x[0] == "nv (60)" and "head → tail" in xlabel
    counts = pd.read_csv(tmp_path / "confusion_counts.csv")
    assert list(dict.fromkeys(counts["true"])) == head_to_tail
    assert list(counts["predicted"][:3]) == head_to_tail
    evidence = (tmp_path / "evidence.md").read_text()
    per_class = evidence[evidence.index("## Per class"):evidence.index("## Cost")]
    assert per_class.index("| nv ") < per_class.index("| mel ") < per_class.index("| bcc ")


# ------------------------------------------------------------------------------ training curves

def test_training_curves_show_acc_and_sen_on_one_y_range_per_metric():
    flat = [{"epoch": e, "val": {"acc": 60.07, "sen": 14.29}} for e in range(5)]
    moving = [{"epoch": e, "val": {"acc": 30.0 + 10 * e, "sen": 20.0 + 5 * e}} for e in range(5)]
    staged = [{**h, "stage": "representation" if h["epoch"] < 3 else "probe"} for h in moving]
    results = [{"method": "flat", "seed": 0, "best_epoch": 0, "history": flat},
               {"method": "moving", "seed": 0, "best_epoch": 4, "history": moving},
               {"method": "staged", "seed": 0, "best_epoch": 3, "history": staged}]
    fig = training_curves_fig(results, ["flat", "moving", "staged"])
    axes = {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}
    assert set(axes) == {f"{m}: val {k}" for m in ("flat", "moving", "staged") for k in ("Acc", "Sen")}
    for metric in ("Acc", "Sen"):
        limits = {axes[f"{m}: val {metric}"].get_ylim() for m in ("flat", "moving", "staged")}
        assert len(limits) == 1, metric  # shared per metric
    assert axes["flat: val Acc"].get_ylim() == (30.0, 70.0)  # not 58-62 around a flat 60.07
    assert axes["flat: val Sen"].get_ylim() == (10.0, 40.0)
    # the tested epoch is marked, and the stage boundary is drawn
    dot = [line for line in axes["moving: val Acc"].lines if line.get_marker() == "o"]
    assert len(dot) == 1 and list(dot[0].get_xdata()) == [4] and list(dot[0].get_ydata()) == [70.0]
    assert any(list(line.get_xdata()) == [2.5, 2.5] for line in axes["staged: val Sen"].lines)


# ------------------------------------------------------------------------------ groups

def _named(dataset: str, classes: int, train: list[int]) -> dict:
    names = [f"c{i}" for i in range(classes)]
    labels = np.arange(classes).repeat(3)
    return {"method": "ce", "seed": 0, "dataset": {"name": dataset, "class_counts": {"train": train}},
            "config": {}, "test": compute_metrics(labels, np.eye(classes)[labels], names, train)}


def test_groups_follow_the_dataset_literature_and_terciles_only_as_fallback():
    isic18 = _named("isic2018", 7, [4000, 670, 660, 310, 200, 85, 70])
    spec, text = resolve(None, [isic18])
    assert class_groups(spec, isic18["dataset"]["class_counts"]["train"], []) == \
        {"head": [0], "medium": [1, 2, 3, 4], "tail": [5, 6]}  # NV alone is head (MONICA's DermaMNIST)
    assert "MONICA" in text and "dataset's own grouping" in text
    isic19 = _named("isic2019", 8, [7700, 2700, 2000, 1600, 520, 377, 150, 143])
    spec, _ = resolve(None, [isic19])
    assert class_groups(spec, isic19["dataset"]["class_counts"]["train"], []) == \
        {"head": [0, 1], "medium": [2, 3, 4], "tail": [5, 6, 7]}
    digits = _named("digits-lt", 10, [124, 96, 75, 58, 45, 35, 27, 21, 16, 12])
    spec, text = resolve(None, [digits])
    assert class_groups(spec, digits["dataset"]["class_counts"]["train"], []) == \
        {"head": [0], "medium": [1, 2, 3, 4, 5, 6, 7], "tail": [8, 9]} and "> 100" in text
    other = _named("isic2019", 14, list(range(140, 0, -10)))  # FlexSampling's 14 classes: not MONICA's set
    assert resolve(None, [other]) == (None, resolve(None, [_named("toy", 3, [5, 4, 3])])[1])
    assert "terciles" in resolve(None, [other])[1]
    assert resolve({"head": 500, "tail": 100}, [isic18])[0] == {"head": 500, "tail": 100}  # the file wins


def test_an_nv_only_model_shows_head_100_not_33_on_isic2018(tmp_path):
    names = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
    train = [670, 4000, 310, 200, 660, 70, 85]
    labels = np.repeat(np.arange(7), [20, 60, 10, 6, 20, 5, 5])
    probs = np.eye(7)[np.full(labels.size, 1)]
    results = [{"method": "ce", "seed": 0, "best_epoch": 1, "dataset": {"name": "isic2018", "class_counts":
                {"train": train}}, "split": {"kind": "grouped", "hash": "h"}, "config": {"select_metric": "sen"},
                "history": [], "test": compute_metrics(labels, probs, names, train)}]
    assert results[0]["test"]["group_recall"]["head"] == pytest.approx(100 / 3)  # stored terciles: NV, MEL, BKL
    files = write_report(results, tmp_path, baseline=None)
    summary = pd.read_csv(files["summary.csv"])
    assert summary.loc[0, "head_recall_mean"] == 100.0 and summary.loc[0, "tail_recall_mean"] == 0.0
    header = files["summary.md"].read_text().splitlines()[0]
    assert "head/medium/tail: MONICA's grouping of the 7 HAM10000 classes" in header


# ------------------------------------------------------------------------------ flags

def test_flags_fire_on_collapse_and_non_convergence_and_tolerate_missing_keys():
    only_nv, _ = _result("ce", 0, np.full(LABELS.size, 1))
    short = [f[0] for f in run_flags(only_nv)]
    assert short == ["1 of 3 classes predicted", "zero recall on 2 classes"]
    assert "single class" in run_flags(only_nv)[0][1]
    # recall 0 on a class with 4 test images is not flagged; with 5 it is
    few = {"test": {"per_class": {"name": ["a", "b"], "recall": [90.0, 0.0], "support": [20, 4]}}}
    assert run_flags(few) == []
    few["test"]["per_class"]["support"] = [20, 5]
    assert [f[0] for f in run_flags(few)] == ["zero recall on 1 class"]
    # the best epoch is the last of its stage and the metric was still rising
    history = [{"epoch": 0, "stage": "rep", "val": {"sen": 10}}, {"epoch": 1, "stage": "cls", "val": {"sen": 20}},
               {"epoch": 2, "stage": "cls", "val": {"sen": 25}}]
    rising = {"best_epoch": 2, "config": {"select_metric": "sen"}, "history": history}
    assert [f[0] for f in run_flags(rising)] == ["still rising"] and "'cls'" in run_flags(rising)[0][1]
    assert run_flags({**rising, "best_epoch": 1}) == []  # not the end of its stage
    falling = {**rising, "config": {"select_metric": "last"},
               "history": [*history[:2], {"epoch": 2, "stage": "cls", "val": {"sen": 15}}]}
    assert run_flags(falling) == []  # under `last`: validation Sen fell into the end
    # a probe record is one evaluation: never "rising"; not converged is its own flag
    probe = {"best_epoch": 3, "config": {"select_metric": "sen"},
             "history": [*history, {"epoch": 3, "stage": "probe", "lr": None, "val": {"sen": 40},
                                    "probe": {"loss": 0.9, "iterations": 1000, "converged": False,
                                              "grad_norm": 3e-3, "tolerance": 1e-5}}]}
    assert [f[0] for f in run_flags(probe)] == ["classifier not converged"]
    assert "1000 iterations" in run_flags(probe)[0][1] and "0.003 > tolerance 1e-05" in run_flags(probe)[0][1]
    probe["history"][-1]["probe"]["converged"] = True
    assert run_flags(probe) == []
    # records lacking keys, a result without test or history: no flag, no error
    assert run_flags({"best_epoch": 1, "history": [{"epoch": 0}, {"foo": 1}, "junk", {"epoch": 1, "val": None}]}) == []
    assert run_flags({}) == []
    assert [f[0] for f in run_flags({"best_epoch": 0})] == ["best epoch 0"]


def test_the_summary_marks_flagged_rows_and_evidence_lists_them(tmp_path):
    pairs = [_result("ce", s, np.full(LABELS.size, 1)) for s in (0, 1)]
    pairs += [_result("good", s, LABELS) for s in (0, 1)]
    results = _write(tmp_path, pairs)
    files = write_report(results, tmp_path, baseline=None)
    text = files["summary.md"].read_text()
    assert "| ce ⚠ " in text and "| good " in text and "| good ⚠" not in text
    line = next(line for line in text.splitlines() if line.startswith("⚠"))
    assert "ce (seed 0: 1 of 3 classes predicted, zero recall on 2 classes; seed 1:" in line and "good" not in line
    assert set(md_rows(text)) == {"ce", "good"}
    evidence = files["evidence.md"].read_text()
    section = evidence[evidence.index("## Collapse and convergence flags"):]
    assert "- **ce** seed 0: predicts a single class on the test set (nv)" in section
    assert "zero recall on mel (25 images), bcc (15 images)" in section


# ------------------------------------------------------------------------------ selection sensitivity

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """ce and ldam_drw, 4 epochs, selected by sen, through the run store (real runs, synthetic data)."""
    out = tmp_path_factory.mktemp("selection")
    prepared = synthetic_data()
    for method in ("ce", "ldam_drw"):
        for seed in (0, 1):
            run_one(method, {}, seed, cpu_config(epochs=4, select_metric="sen"), SYNTHETIC, prepared, out,
                    progress=False)
    return out


def _section(text: str) -> list[list[str]]:
    part = text[text.index("## Selection sensitivity"):]
    part = part[:part.index("Ranking of the rows")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in part.splitlines()
            if line.startswith("| ") and "Method" not in line]


def test_the_selection_table_shows_every_rule_with_validation_and_test(trained, tmp_path):
    results = load_results(trained / "runs")
    files = write_report(results, tmp_path, run_dir=trained / "runs", baseline=None)
    evidence = files["evidence.md"].read_text()
    rows = _section(evidence)
    assert [(r[0], r[1]) for r in rows] == [(m, rule) for m in ("ce", "ldam_drw")
                                           for rule in ("**sen** (used)", "acc", "f1", "last")]
    for m in ("ce", "ldam_drw"):
        runs = sorted((r for r in results if r["method"] == m), key=lambda r: r["seed"])
        used = next(r for r in rows if r[0] == m and r[1].startswith("**"))
        assert used[2] == ", ".join(str(r["best_epoch"]) for r in runs)
        # the rule in use: its test numbers are the table's
        want = np.mean([r["test"]["sen"] for r in runs])
        assert used[6].startswith(f"{want:.2f}")
        last = next(r for r in rows if r[0] == m and r[1] == "last")
        assert last[2] == "3, 3" and "—" not in last[5:]  # test numbers at the last epoch too
        acc = next(r for r in rows if r[0] == m and r[1] == "acc")
        want_epochs = [int(np.argmax([h["val"]["acc"] for h in r["history"]])) for r in runs]
        assert acc[2] == ", ".join(map(str, want_epochs))
        val_acc = np.mean([r["history"][e]["val"]["acc"] for r, e in zip(runs, want_epochs)])
        assert acc[3].startswith(f"{val_acc:.2f}")
    assert "Validation only" not in evidence and "Kendall τ vs the rule in use" not in evidence  # 2 rows: no τ
    header = files["summary.md"].read_text().splitlines()[0]
    assert "checkpoint: best validation Sen (balanced accuracy) (select_metric sen), every row" in header


def test_results_without_stored_test_passes_are_validation_only(trained, tmp_path):
    import shutil

    runs = tmp_path / "runs"
    shutil.copytree(trained / "runs", runs)
    for path in runs.glob("ldam_drw/seed*.npz"):  # an older result: only labels and probabilities
        with np.load(path) as npz:
            keep = {k: npz[k] for k in npz.files if not k.startswith("selection_")}
        np.savez(path, **keep)
    results = load_results(runs)
    evidence = write_report(results, tmp_path / "report", run_dir=runs, baseline=None)["evidence.md"].read_text()
    assert "Validation only" in evidence and "ldam_drw seed 0, ldam_drw seed 1" in evidence
    rows = _section(evidence)
    used = next(r for r in rows if r[0] == "ldam_drw" and r[1].startswith("**"))
    assert used[6] != "—"  # the run's own test pass stands for the rule in use
    acc = next(r for r in rows if r[0] == "ldam_drw" and r[1] == "acc")
    assert acc[5] == "—" and acc[6] == "—" and acc[3] != "—"  # the epoch and validation from the history
    assert not math.isnan(float(acc[3].split()[0]))


def test_the_retrieval_heat_map_and_group_columns_follow_the_report():
    from ltbench.report.retrieval import per_class_fig, retrieval_summary

    def space(per_class):
        return {"metric": "cosine", "map_all": {"macro": float(np.mean(per_class)), "micro": 0.0,
                                                "per_class": per_class, "groups": {"head": 1.0, "medium": 2.0,
                                                                                   "tail": 3.0}},
                "knn_weighted": {"k": 3, "smallest_class": 20, "balanced_acc": 50.0, "f1": 40.0, "acc": 60.0}}

    results = [{"method": "ce", "seed": s, "dataset": {"name": "toy", "class_counts": {"train": TRAIN}},
                "test": {"per_class": {"name": CLASSES}},
                "retrieval": {"spaces": {"feature": space([10.0 + s, 80.0, 30.0])}}} for s in (0, 1)]
    groups = {"head": [1], "medium": [0], "tail": [2]}  # nv head, mel medium, bcc tail
    summary = retrieval_summary(results, groups=groups).iloc[0]
    assert summary["head_map_mean"] == 80.0 and summary["medium_map_mean"] == 10.5 and summary["tail_map_mean"] == 30.0
    assert retrieval_summary(results).iloc[0]["head_map_mean"] == 1.0  # without: the pass's stored terciles
    fig = per_class_fig(results, retrieval_summary(results, groups=groups))
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["nv (60)", "mel (25)", "bcc (8)"]
    np.testing.assert_allclose(ax.images[0].get_array()[0], [80.0, 10.5, 30.0])  # values follow the labels
