"""Selection sensitivity: what each checkpoint rule would have tested, per row of a report (issue 26).

For every run and every rule of ``ltbench.trainer.selection.SENSITIVITY_RULES`` (acc, sen, f1, last; plus the
run's own): the epoch the rule chooses, the validation Acc/Sen there (the stored per-epoch history)
and, when the run stored them, the test Acc/Sen there (``selection_*`` arrays of its NPZ: the test
passes the trainer ran at the epochs some rule held as its best; never read by training or
selection). Runs without them (older results) are validation-only, and the section says which.
A second table ranks the rows by test Sen (validation Sen when no test pass was stored) under each
rule, with Kendall's τ against the rule in use, so a reader sees whether a ranking hinges on the rule.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.stats import kendalltau, rankdata
from tabulate import tabulate

from ltbench.metrics import compute_metrics
from ltbench.report.results import load_arrays
from ltbench.trainer.selection import RULE_TEXT, SENSITIVITY_RULES, epochs_from_history

SHOWN = ("acc", "sen")  # the two numbers per rule: Acc and balanced accuracy


def _arrays(run_dir: Path, result: dict) -> dict[str, np.ndarray]:
    path = Path(run_dir) / str(result["method"]) / str(result.get("arrays") or f"seed{result['seed']}.npz")
    arrays = load_arrays(path, result, lambda k: k.startswith("selection_") or k == "test_labels")  # damaged: one line
    return arrays or {}


def run_selection(result: dict, run_dir: Path) -> dict[str, dict]:
    """Rule -> {"epoch", "val": {acc, sen}, "test": {acc, sen} or None} for one run (rules it can place)."""
    rule_in_use = str(result.get("config", {}).get("select_metric", "acc"))
    rules = tuple(dict.fromkeys((rule_in_use, *SENSITIVITY_RULES)))
    arrays = _arrays(run_dir, result)
    if "selection_rules" in arrays:
        epochs = {str(r): int(e) for r, e in zip(arrays["selection_rules"], arrays["selection_epochs"]) if e >= 0}
    else:
        epochs = epochs_from_history(result.get("history") or [], result.get("best_epoch"), rules)
    tested = [int(e) for e in arrays.get("selection_tested", [])]
    names = result["test"]["per_class"]["name"]
    by_epoch = {h.get("epoch"): h for h in result.get("history") or [] if isinstance(h, dict)}
    out: dict[str, dict] = {}
    for rule in rules:
        if rule not in epochs:
            continue
        epoch = epochs[rule]
        val = (by_epoch.get(epoch) or {}).get("val") or {}
        test = None
        if epoch in tested and "test_labels" in arrays:
            metrics = compute_metrics(arrays["test_labels"], arrays["selection_test_probs"][tested.index(epoch)], names)
            test = {k: metrics[k] for k in SHOWN}
        elif rule == rule_in_use and epoch == result.get("best_epoch"):
            test = {k: result["test"][k] for k in SHOWN}  # the run's own test pass is this rule's
        out[rule] = {"epoch": epoch, "val": {k: val.get(k, math.nan) for k in SHOWN}, "test": test}
    return out


def _mean(values: Sequence[float]) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def _cell(values: Sequence[float], complete: bool) -> str:
    if not values or any(v is None for v in values):
        return "—"
    mean = _mean(values)
    text = "n/a" if math.isnan(mean) else f"{mean:.2f}"
    if len(values) > 1 and not math.isnan(mean):
        text += f" ± {np.std(values, ddof=1):.2f}"
    return text if complete else text + "*"


def selection_tables(results: Sequence[dict], run_dir: Path, methods: Sequence[str]) -> tuple[str, str, list[str]]:
    """(per-rule table, ranking table, runs without stored test passes) for ``evidence.md``."""
    per_run = {(str(r["method"]), int(r["seed"])): (r, run_selection(r, run_dir)) for r in results}
    validation_only = sorted(f"{m} seed {s}" for (m, s), (_, sel) in per_run.items()
                             if any(v["test"] is None for v in sel.values()))
    rows, ranking_values = [], {}
    for m in methods:
        runs = sorted(((s, rs) for (mm, s), rs in per_run.items() if mm == m), key=lambda t: t[0])
        if not runs:
            continue
        in_use = str(runs[0][1][0].get("config", {}).get("select_metric", "acc"))
        rules = list(dict.fromkeys((in_use, *SENSITIVITY_RULES)))
        for rule in rules:
            placed = [sel[rule] for _, (_, sel) in runs if rule in sel]
            if not placed:
                continue
            epochs = ", ".join(str(p["epoch"]) for p in placed)
            val = [_cell([p["val"][k] for p in placed], True) for k in SHOWN]
            tests = [[(p["test"] or {}).get(k) for p in placed] for k in SHOWN]
            test = [_cell(t, len(placed) == len(runs)) for t in tests]
            rows.append([m, f"**{rule}** (used)" if rule == in_use else rule, epochs, *val, *test])
            sen = [p["test"]["sen"] if p["test"] else p["val"]["sen"] for p in placed]
            ranking_values.setdefault(m, {})[rule] = (_mean(sen), all(p["test"] for p in placed), in_use)
    table = tabulate(rows, headers=["Method", "Rule", "Epoch per seed", "Val Acc", "Val Sen", "Test Acc", "Test Sen"],
                     tablefmt="github", disable_numparse=True)
    return table, _ranking_table(ranking_values), validation_only


def _ranking_table(values: dict[str, dict[str, tuple[float, bool, str]]]) -> str:
    """Rows ranked by test Sen (validation Sen, marked †, where no test pass) under each rule."""
    rules = list(dict.fromkeys(r for per in values.values() for r in (*(v[2] for v in per.values()),
                                                                      *SENSITIVITY_RULES)))
    ranks: dict[str, dict[str, int]] = {}
    for rule in rules:  # competition ranking: tied values share the better rank
        placed = [(v[rule][0], m) for m, v in values.items() if rule in v and not math.isnan(v[rule][0])]
        order = rankdata([-value for value, _ in placed], method="min") if placed else []
        ranks[rule] = {m: int(k) for (_, m), k in zip(placed, order)}
    rows = []
    for m, per in values.items():
        cells = [m]
        for rule in rules:
            if rule not in per or m not in ranks[rule]:
                cells.append("—")
                continue
            value, tested, _ = per[rule]
            cells.append(f"{value:.2f}{'' if tested else '†'} ({ranks[rule][m]})")
        rows.append(cells)
    in_use = {v[2] for per in values.values() for v in per.values()}
    if len(in_use) == 1 and len(values) > 2:
        used = next(iter(in_use))
        tau_row = ["Kendall τ vs the rule in use"]
        for rule in rules:
            common = [m for m in values if m in ranks[rule] and m in ranks[used]]
            if len(common) < 3:
                tau_row.append("—")
                continue
            tau = kendalltau([ranks[used][m] for m in common], [ranks[rule][m] for m in common]).statistic
            tau_row.append("—" if math.isnan(tau) else f"{tau:.2f}")
        rows.append(tau_row)
    return tabulate(rows, headers=["Method", *(f"by {RULE_TEXT.get(r, r).replace('best validation ', '')}"
                                               if r != "last" else "last epoch" for r in rules)],
                    tablefmt="github", disable_numparse=True)


def selection_markdown(results: Sequence[dict], run_dir: Path, methods: Sequence[str]) -> list[str]:
    """The "Selection sensitivity" section of ``evidence.md``."""
    table, ranking, validation_only = selection_tables(results, run_dir, methods)
    lines = [
        "## Selection sensitivity",
        "",
        "Which epoch each checkpoint rule tests — best validation Acc (`acc`), best validation balanced "
        "accuracy (`sen`), best validation macro F1 (`f1`), or no selection, the last selectable epoch "
        "(`last`) — and what validation and test said there (mean ± std over seeds; the rule that chose the "
        "tested checkpoint in **bold**). Validation numbers come from each run's per-epoch history. Test "
        "numbers at another rule's epoch come from the test passes the trainer ran at every epoch some rule "
        "held as its best (`selection_*` arrays of the run's NPZ); they never influenced training or selection.",
        "",
        table,
        "",
    ]
    if validation_only:
        lines += [f"Validation only (no stored test pass at those epochs; results written before ltbench stored "
                  f"them): {', '.join(validation_only)}. A * marks a mean over fewer seeds than the row has.", ""]
    lines += [
        "Ranking of the rows by test Sen under each rule (rank in brackets; † = validation Sen, where no test "
        "pass was stored). Kendall's τ compares each rule's ranking with the ranking under the rule in use: "
        "1 = the same order, lower = the ranking hinges on the rule.",
        "",
        ranking,
        "",
    ]
    return lines
