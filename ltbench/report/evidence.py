"""The evidence part of a benchmark report, from the saved result files alone (issue 12).

For every method: 95 % bootstrap confidence intervals of the headline metrics, a paired test
against a baseline (Holm-adjusted over the methods), calibration (ECE, NLL, Brier), the worst
class's recall, and the collapse / convergence flags of ``ltbench.report.flags``. A majority-class
row shows what "always predict the head" scores. The numbers come from ``ltbench.report.statistics``;
this module only gathers the runs' arrays and lays out tables (figures: ``ltbench.report.figures``);
the selection-sensitivity section is ``ltbench.report.selection``.

:func:`best_tests` is the paired bootstrap behind the summary table's bold (best mean against the
runner-up, per column). The cost table adds peak memory (``memory`` of each result: process
``ru_maxrss``, CUDA max allocated; "n/a" for results written before it was recorded).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

from ltbench.metrics import HEADLINE, HEADLINE_LABELS
from ltbench.report import statistics as ev
from ltbench.report.results import load_arrays
from ltbench.report.figures import (metric_bars_figure, per_class_recall_figure, reliability_figure,
                                    training_curves_figure)
from ltbench.report.flags import flags_section, run_flags
from ltbench.report.groups import class_order
from ltbench.report.selection import selection_markdown

SIGNIFICANCE = 0.05
MAJORITY_ROW = "majority class"


@dataclass
class RunArrays:
    method: str
    seed: int
    result: dict
    test_labels: np.ndarray
    test_probs: np.ndarray


@dataclass
class Evidence:
    """Everything the evidence tables and figures show; ``missing`` lists runs without arrays."""

    methods: list[str]
    baseline: str | None
    intervals: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)
    paired: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    calibration: pd.DataFrame | None = None
    flags: dict[str, list[str]] = field(default_factory=dict)
    majority: dict[str, float] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    resamples: int = ev.BOOTSTRAP_RESAMPLES
    seed: int = ev.BOOTSTRAP_SEED
    # (method, seed) -> metric -> float [R] on the shared resamples; "class_recall" -> [R, C]
    resampled: dict[tuple[str, int], dict[str, np.ndarray]] = field(default_factory=dict)


def load_run_arrays(run_dir: Path, results: Sequence[dict]) -> tuple[list[RunArrays], list[str]]:
    """The test labels/probabilities saved beside each result; runs without them are listed."""
    found, missing = [], []
    for r in results:
        path = Path(run_dir) / str(r["method"]) / str(r.get("arrays") or f"seed{r['seed']}.npz")
        arrays = load_arrays(path, r, lambda k: k in ("test_labels", "test_probs"))  # damaged: one line
        if arrays is None:  # absent (results of an older version)
            missing.append(f"{r['method']} seed {r['seed']}")
            continue
        found.append(RunArrays(str(r["method"]), int(r["seed"]), r, arrays["test_labels"], arrays["test_probs"]))
    return found, missing


def compute_evidence(runs: list[RunArrays], methods: Sequence[str], baseline: str | None = "ce",
                     resamples: int = ev.BOOTSTRAP_RESAMPLES, seed: int = ev.BOOTSTRAP_SEED) -> Evidence:
    """Bootstrap CIs, paired tests vs ``baseline`` (if present), calibration and flags per method."""
    methods = [m for m in methods if any(r.method == m for r in runs)]
    baseline = baseline if baseline in methods else None
    out = Evidence(methods=methods, baseline=baseline, resamples=resamples, seed=seed)
    if not runs:
        return out
    labels = runs[0].test_labels
    if any(r.test_labels.shape != labels.shape or (r.test_labels != labels).any() for r in runs):
        raise ValueError("runs disagree on the test labels: not one split")
    counts = ev.stratified_bootstrap_counts(labels, resamples, seed)
    resampled = {(r.method, r.seed): {**ev.resampled_metrics(labels, r.test_probs, counts),
                                      "class_recall": ev.resampled_class_recall(labels, r.test_probs, counts)}
                 for r in runs}
    out.resampled = resampled
    by_method = {m: sorted((r for r in runs if r.method == m), key=lambda r: r.seed) for m in methods}

    for m in methods:
        out.intervals[m] = {k: ev.pooled_interval([resampled[(m, r.seed)][k] for r in by_method[m]])
                            for k in HEADLINE}
    if baseline is not None:
        raw: dict[str, dict[str, float]] = {k: {} for k in HEADLINE}
        for m in methods:
            if m == baseline:
                continue
            seeds = sorted({r.seed for r in by_method[m]} & {r.seed for r in by_method[baseline]})
            out.paired[m] = {}
            for k in HEADLINE:
                if not seeds:
                    out.paired[m][k] = {"delta": math.nan, "p": math.nan}
                    continue
                delta = float(np.mean([_run(by_method[m], s).result["test"][k]
                                       - _run(by_method[baseline], s).result["test"][k] for s in seeds]))
                p = ev.paired_bootstrap_p([resampled[(m, s)][k] for s in seeds],
                                          [resampled[(baseline, s)][k] for s in seeds])
                out.paired[m][k] = {"delta": delta, "p": p}
                raw[k][m] = p
        for k, ps in raw.items():  # Holm over the methods compared with the baseline, per metric
            for m, adjusted in zip(ps, ev.holm(list(ps.values()))):
                out.paired[m][k]["p_holm"] = adjusted

    rows = []
    for r in runs:
        test = r.result["test"]
        recall = test.get("per_class", {}).get("recall") or [math.nan]
        rows.append({"method": r.method, "seed": r.seed,
                     "ece": ev.expected_calibration_error(r.test_labels, r.test_probs),
                     "nll": ev.negative_log_likelihood(r.test_labels, r.test_probs),
                     "brier": ev.brier_score(r.test_labels, r.test_probs),
                     "worst_class_recall": float(np.min(recall)),
                     "best_epoch": r.result.get("best_epoch", math.nan)})
        flags = out.flags.setdefault(r.method, [])
        flags += [f"seed {r.seed}: {detail}" for _, detail in run_flags(r.result, r.test_probs)]
    out.calibration = pd.DataFrame(rows)
    train_counts = runs[0].result.get("dataset", {}).get("class_counts", {}).get("train")
    if train_counts:
        out.majority = ev.majority_baseline(train_counts, labels)
    return out


def _run(runs: list[RunArrays], seed: int) -> RunArrays:
    return next(r for r in runs if r.seed == seed)


@dataclass
class BestTest:
    """The paired test behind one column's bold: the best mean against the runner-up."""

    key: str
    best: str
    runner_up: str
    seeds: int
    p: float

    @property
    def significant(self) -> bool:
        return bool(self.p < SIGNIFICANCE)


def _resampled_column(evidence: Evidence, method: str, seed: int, key: str,
                      groups: dict[str, list[int]]) -> np.ndarray | None:
    values = evidence.resampled.get((method, seed))
    if values is None:
        return None
    if key in values:
        return values[key]
    if key.endswith("_recall") and groups.get(key[: -len("_recall")]):
        return values["class_recall"][:, groups[key[: -len("_recall")]]].mean(axis=1)
    return None


def best_tests(evidence: Evidence, summary: pd.DataFrame, keys: Sequence[str],
               results: Sequence[dict] = ()) -> dict[str, BestTest]:
    """Per column: the paired bootstrap of the best mean against the runner-up (pooled over common seeds).

    Only methods with saved probabilities take part; a column with fewer than two of them, or
    whose two leaders share no seed, gets no test (and no bold). Group columns use the groups of
    ``results`` (as the summary does).
    """
    groups: dict[str, list[int]] = {}
    if results:
        names = [str(n) for n in results[0]["test"]["per_class"]["name"]]
        index = {n: i for i, n in enumerate(names)}
        groups = {g: [index[n] for n in members if n in index]
                  for g, members in (results[0]["test"].get("groups") or {}).items()}
    seeds_of = {m: sorted(s for (mm, s) in evidence.resampled if mm == m) for m in evidence.methods}
    out: dict[str, BestTest] = {}
    for key in keys:
        column = f"{key}_mean"
        if column not in summary:
            continue
        ranked = [(float(v), m) for m, v in zip(summary["method"], summary[column])
                  if m in seeds_of and seeds_of[m] and not math.isnan(float(v))]
        ranked.sort(key=lambda t: -t[0])  # stable: ties keep the table order
        if len(ranked) < 2:
            continue
        best, runner = ranked[0][1], ranked[1][1]
        common = sorted(set(seeds_of[best]) & set(seeds_of[runner]))
        a = [_resampled_column(evidence, best, s, key, groups) for s in common]
        b = [_resampled_column(evidence, runner, s, key, groups) for s in common]
        if not common or any(x is None for x in a + b):
            continue
        out[key] = BestTest(key, best, runner, len(common), ev.paired_bootstrap_p(a, b))
    return out


def best_tests_markdown(tests: dict[str, BestTest], labels: dict[str, str]) -> str:
    """Which column's best is bold in the summary table, and the test behind it."""
    if not tests:
        return "No value is bold: no column had two methods with saved probabilities to test."
    rows = [[labels.get(t.key, t.key), t.best, t.runner_up, str(t.seeds),
             "p<0.001" if t.p < 0.001 else f"p={t.p:.3f}", "bold" if t.significant else "not bold"]
            for t in tests.values()]
    return tabulate(rows, headers=["Column", "Best", "Runner-up", "Common seeds", "Paired test", "In the table"],
                    tablefmt="github", disable_numparse=True)


# ----------------------------------------------------------------------------- tables

def _mean_std(values: Sequence[float]) -> str:
    values = np.asarray(values, dtype=float)
    if values.size == 0 or np.isnan(values).all():
        return "n/a"
    if values.size == 1:
        return f"{values[0]:.2f}"
    return f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}"


def intervals_table(evidence: Evidence, summary: pd.DataFrame) -> str:
    """Mean over seeds with its pooled 95 % bootstrap interval, per method and headline metric."""
    rows = []
    for m in evidence.methods:
        row = summary.loc[summary["method"] == m].iloc[0]
        cells = [m]
        for k in HEADLINE:
            low, high = evidence.intervals[m][k]
            cells.append(f"{row[f'{k}_mean']:.2f} [{low:.2f}, {high:.2f}]")
        rows.append(cells)
    if evidence.majority:
        rows.append([MAJORITY_ROW, *(f"{evidence.majority[k]:.2f}" for k in HEADLINE)])
    return tabulate(rows, headers=["Method", *(HEADLINE_LABELS[k] for k in HEADLINE)],
                    tablefmt="github", disable_numparse=True)


def paired_table(evidence: Evidence) -> str:
    """Mean paired difference to the baseline over seeds, with the Holm-adjusted p-value."""
    rows = []
    for m, per_metric in evidence.paired.items():
        cells = [m]
        for k in HEADLINE:
            d = per_metric[k]
            if math.isnan(d["delta"]):
                cells.append("n/a")
                continue
            p = d.get("p_holm", d["p"])
            mark = "" if p < SIGNIFICANCE else " (n.s.)"
            shown = "p<0.001" if p < 0.001 else f"p={p:.3f}"
            cells.append(f"{d['delta']:+.2f} ({shown}){mark}")
        rows.append(cells)
    return tabulate(rows, headers=["Method", *(f"Δ{HEADLINE_LABELS[k]}" for k in HEADLINE)],
                    tablefmt="github", disable_numparse=True)


def calibration_table(evidence: Evidence) -> str:
    """ECE, NLL, Brier, worst-class recall and the best epochs, mean ± std over seeds."""
    cal = evidence.calibration
    rows = []
    for m in evidence.methods:
        part = cal[cal["method"] == m]
        epochs = ", ".join(str(int(e)) for e in part["best_epoch"] if not math.isnan(e))
        rows.append([m, _mean_std(part["ece"]), f"{_mean_std(part['nll'])}", _mean_std(part["brier"]),
                     _mean_std(part["worst_class_recall"]), epochs or "?",
                     "; ".join(evidence.flags.get(m, [])) or "—"])
    headers = ["Method", "ECE (%)", "NLL", "Brier", "Worst-class recall", "Best epochs", "Flags"]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def per_class_table(results: Sequence[dict], methods: Sequence[str]) -> str:
    """Per class (head → tail, with its group and train/val/test counts): recall per method, mean ± std."""
    names = [str(n) for n in results[0]["test"]["per_class"]["name"]]
    counts = results[0].get("dataset", {}).get("class_counts", {})
    groups = {c: g for g, members in (results[0]["test"].get("groups") or {}).items() for c in members}
    order = class_order(results)
    rows = []
    for i in order:
        cells = [names[i], groups.get(names[i], ""),
                 *(str((counts.get(part) or ["?"] * len(names))[i]) for part in ("train", "val", "test"))]
        for m in methods:
            cells.append(_mean_std([r["test"]["per_class"]["recall"][i] for r in results if r["method"] == m]))
        rows.append(cells)
    headers = ["Class", "Group", "Train", "Val", "Test", *methods]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def _peak_rss(runs: Sequence[dict]) -> str:
    """Largest process peak RSS over the seeds; "≤" when a run did not raise the process's peak."""
    memory = [r.get("memory") for r in runs]
    if not memory or any(not isinstance(m, dict) or m.get("cpu_peak_rss_mb") is None for m in memory):
        return "n/a"
    bound = any(not m.get("rss_peak_raised_by_run", True) for m in memory)
    return ("≤ " if bound else "") + f"{max(float(m['cpu_peak_rss_mb']) for m in memory):.0f}"


def _cuda_peak(runs: Sequence[dict]) -> str:
    memory = [r.get("memory") for r in runs]
    if not memory or any(not isinstance(m, dict) or "cuda_max_allocated_mb" not in m for m in memory):
        return "n/a"
    values = [m["cuda_max_allocated_mb"] for m in memory if m["cuda_max_allocated_mb"] is not None]
    return f"{max(values):.0f}" if values else "— (no CUDA)"


def _param_counts(runs: Sequence[dict]) -> str:
    """Trainable / total parameters of the trained model (``params`` of each result, issue 23: the
    fine-tuning mode decides the first); the seeds' values if they differ, "n/a" for older results."""
    counts = sorted({(r["params"]["trainable"], r["params"]["total"]) for r in runs
                     if isinstance(r.get("params"), dict)})
    if not counts:
        return "n/a"
    return "; ".join(f"{t / 1e6:.3g}M / {n / 1e6:.3g}M ({100 * t / n:.2g}%)" if n else "0 / 0" for t, n in counts)


def cost_table(results: Sequence[dict], methods: Sequence[str]) -> str:
    """Wall time per run, training time per epoch, training images/s and device, mean ± std over seeds;
    peak memory (CPU RSS, CUDA max allocated), the largest over seeds ("n/a" for results without it)."""
    rows = []
    for m in methods:
        runs = [r for r in results if r["method"] == m]
        epoch_times = [float(np.mean([h.get("train_time_s", math.nan) for h in r.get("history") or [{}]]))
                       for r in runs]
        train_images = [sum((r.get("dataset", {}).get("class_counts", {}).get("train") or [0])) for r in runs]
        rate = [n / t if t and t > 0 else math.nan for n, t in zip(train_images, epoch_times)]
        devices = ", ".join(sorted({str(r.get("device", "?")) for r in runs}))
        rows.append([m, _mean_std([r.get("wall_time_s", math.nan) for r in runs]), _mean_std(epoch_times),
                     _mean_std(rate), _peak_rss(runs), _cuda_peak(runs), devices, _param_counts(runs)])
    headers = ["Method", "Wall time per run (s)", "Train time per epoch (s)", "Train-split images/s",
               "Peak RSS (MB)", "CUDA max allocated (MB)", "Device", "Trainable / total parameters"]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def evidence_markdown(evidence: Evidence, summary: pd.DataFrame, results: Sequence[dict] = (),
                      grouping: str = "terciles of the training counts",
                      bold: str = "", run_dir: Path | None = None) -> str:
    """The whole ``evidence.md``; ``run_dir``: where the runs' NPZ are (the selection section's test passes)."""
    lines = ["# Evidence", ""]
    if evidence.missing:
        lines += [f"Runs without saved probabilities (left out here): {', '.join(evidence.missing)}.", ""]
    if not evidence.methods:
        lines += ["No run has saved probabilities: no intervals, paired tests, calibration or bold.", ""]
    else:
        lines += _tested_sections(evidence, summary, bold)
    if results:
        methods = list(summary["method"])
        lines += flags_section(results, methods)
        if run_dir is not None:
            lines += selection_markdown(results, run_dir, methods)
        lines += _run_file_sections(results, methods, grouping)
    return "\n".join(lines)


def _tested_sections(evidence: Evidence, summary: pd.DataFrame, bold: str) -> list[str]:
    """The sections computed from the saved probabilities."""
    lines = [
        "## 95 % confidence intervals",
        "",
        f"Mean over seeds [percentile bootstrap interval]: {evidence.resamples} resamples of the test "
        f"images (seed {evidence.seed}), drawn within each class so every class keeps its support; "
        "each resample's metric is averaged over the seeds. The majority-class row always predicts "
        "the training split's most frequent class.",
        "",
        intervals_table(evidence, summary),
        "",
    ]
    if evidence.paired:
        lines += [
            f"## Paired comparison with `{evidence.baseline}`",
            "",
            "Δ = mean over the common seeds of metric(method) − metric(baseline). p: two-sided paired "
            "bootstrap on the same resampled test images (seeds paired), Holm-adjusted over the "
            f"methods of this table per metric; (n.s.) = not significant at {SIGNIFICANCE}. The test "
            "assumes the test images are an independent sample of each class and treats the trained "
            "models as fixed: the ± std over seeds in the summary shows the training randomness.",
            "",
            paired_table(evidence),
            "",
        ]
    if bold:
        lines += [
            "## Bold in the summary table",
            "",
            "A column's best mean is bold only when a two-sided paired bootstrap of the best method "
            "against the runner-up (the same resampled test images for both, the seeds they share "
            f"pooled as above) gives p < {SIGNIFICANCE}; one test per column, not corrected for the "
            "number of columns.",
            "",
            bold,
            "",
        ]
    lines += [
        "## Calibration and collapse",
        "",
        f"ECE: max-probability confidence, {ev.ECE_BINS} equal-width bins (Guo et al., ICML 2017). "
        "NLL: mean −log p(true class), clipped at 1e-12. Brier: mean Σ_c (p_c − 1[c = y])², not "
        "divided by C. Flags: see \"Collapse and convergence flags\" below.",
        "",
        calibration_table(evidence),
        "",
    ]
    return lines


def _run_file_sections(results: Sequence[dict], methods: Sequence[str], grouping: str) -> list[str]:
    """The sections computed from the result files alone (older folders without arrays too)."""
    return [
        "## Per class",
        "",
        "Test recall (%) per class, mean ± std over seeds; classes ordered by training count "
        f"(head → tail), with their head/medium/tail group ({grouping}) and "
        "their counts in each part of the split.",
        "",
        per_class_table(results, methods),
        "",
        "## Cost",
        "",
        "Wall time of each run (training, validation every epoch, test), its mean training time "
        "per epoch, and the training split's size divided by that time (a method drawing several "
        "streams or views per step processes more images than this); device as recorded. "
        "Peak RSS: `resource.getrusage` `ru_maxrss` of the process at the end of the run, the largest "
        "over seeds; it is a process-lifetime maximum, so in a bench that trains runs one after another "
        "in one process a run that did not raise it is shown as \"≤\" (its own peak is at most that). "
        "CUDA: `torch.cuda.max_memory_allocated` after resetting the peak before the run. "
        "n/a: results written before ltbench recorded memory. Trainable / total parameters: the model "
        "as built under the run's fine-tuning mode (`finetune`, docs/finetuning.md; inserted adapters count "
        "in the total; a stage may train fewer), n/a before ltbench recorded them.",
        "",
        cost_table(results, methods),
        "",
    ]


def gather_evidence(results: Sequence[dict], run_dir: Path, methods: Sequence[str],
                    baseline: str | None = "ce") -> tuple[Evidence, list[RunArrays]]:
    """Load the runs' arrays under ``run_dir`` and compute the evidence (runs without arrays listed)."""
    runs, missing = load_run_arrays(run_dir, results)
    evidence = compute_evidence(runs, methods, baseline)
    evidence.missing = missing
    return evidence, runs


def evidence_outputs(results: Sequence[dict], run_dir: Path, summary: pd.DataFrame, methods: Sequence[str],
                     baseline: str | None = "ce", *, gathered: tuple[Evidence, list[RunArrays]] | None = None,
                     grouping: str = "terciles of the training counts", bold: str = "") -> dict[str, str | bytes]:
    """File name -> content of the evidence tables and figures (``evidence.md``, four PNGs).

    ``gathered``: the result of :func:`gather_evidence` when the caller already has it.
    """
    evidence, runs = gathered if gathered is not None else gather_evidence(results, run_dir, methods, baseline)
    out: dict[str, str | bytes] = {"evidence.md": evidence_markdown(evidence, summary, results, grouping, bold,
                                                                    run_dir=run_dir)}
    if evidence.calibration is not None:
        out["calibration.csv"] = evidence.calibration.to_csv(index=False, lineterminator="\n")
    out["metrics.png"] = metric_bars_figure(summary)
    out["per_class_recall.png"] = per_class_recall_figure(results, list(summary["method"]))
    out["training_curves.png"] = training_curves_figure(results, list(summary["method"]))
    if evidence.methods:
        out["reliability.png"] = reliability_figure(runs, evidence.methods)
    return out
