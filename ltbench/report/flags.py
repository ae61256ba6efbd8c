"""Flags of runs that collapsed or did not converge, from the result file alone (issue 20 item 4).

Fewer than C classes predicted on the test set, zero recall on a class with at least
:data:`MIN_SUPPORT` test images, the best validation epoch at the end of a stage while the metric
was still rising, a probe classifier that did not converge, best epoch 0. The summary marks such
rows with :data:`WARN`; ``evidence.md`` lists every flag (:func:`flags_section`).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MIN_SUPPORT = 5  # zero recall is flagged on a class with at least this many test images
WARN = " ⚠"  # after a flagged row's name in the summary


# ----------------------------------------------------------------------------- flags

def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _still_rising(result: dict) -> str | None:
    """The tested epoch is the last of its stage (of ≥ 2 epochs) and the metric rose into it.

    The metric is the run's ``select_metric`` (``sen`` under ``last``, which always tests the end).
    A probe record (one closed-form fit, ``probe`` key) is a single evaluation: it cannot be rising.
    """
    history = [h for h in result.get("history") or [] if isinstance(h, dict)]
    best = result.get("best_epoch")
    at = next((k for k, h in enumerate(history) if h.get("epoch") == best), None)
    if at is None or isinstance(history[at].get("probe"), dict):
        return None
    stage = history[at].get("stage")
    if at + 1 < len(history) and history[at + 1].get("stage") == stage:
        return None  # not the end of its stage
    if at == 0 or history[at - 1].get("stage") != stage or isinstance(history[at - 1].get("probe"), dict):
        return None  # a stage of one evaluation
    rule = str(result.get("config", {}).get("select_metric", "acc"))
    metric = "sen" if rule == "last" else rule
    now = _number((history[at].get("val") or {}).get(metric))
    before = _number((history[at - 1].get("val") or {}).get(metric))
    if now is None or before is None or not now > before:
        return None
    where = f"stage {stage!r}" if stage is not None else "the run"
    return (f"best epoch {best} is the last of {where} and validation {metric} was still rising "
            f"({before:.2f} → {now:.2f}): the budget ended before it stopped improving")


def _probe_flags(result: dict) -> list[str]:
    out = []
    for h in result.get("history") or []:
        probe = h.get("probe") if isinstance(h, dict) else None
        if isinstance(probe, dict) and probe.get("converged") is False:
            def num(key: str, fmt: str = ".3g") -> str:
                value = _number(probe.get(key))
                return "?" if value is None else format(value, fmt)
            out.append(f"classifier not converged (probe at epoch {h.get('epoch', '?')}: {num('iterations', '.0f')} "
                       f"iterations, gradient {num('grad_norm')} > tolerance {num('tolerance')}, loss {num('loss')})")
    return out


def run_flags(result: dict, test_probs: np.ndarray | None = None) -> list[tuple[str, str]]:
    """(short, detail) per reason to distrust a run, from its result file (``test_probs`` if no counts).

    Robust to results that lack keys: a check whose inputs are absent is skipped.
    """
    flags: list[tuple[str, str]] = []
    test = result.get("test") or {}
    per = test.get("per_class") or {}
    names = [str(n) for n in per.get("name") or []]
    predicted = None
    if test.get("confusion_matrix") is not None and names:
        predicted = np.asarray(test["confusion_matrix"]).sum(axis=0) > 0
    elif test_probs is not None and names:
        predicted = np.isin(np.arange(len(names)), np.asarray(test_probs).argmax(axis=1))
    if predicted is not None and predicted.sum() < len(names):
        shown = [n for n, p in zip(names, predicted) if p]
        never = [n for n, p in zip(names, predicted) if not p]
        detail = ("predicts a single class on the test set (" + shown[0] + ")" if len(shown) == 1 else
                  f"predicts {len(shown)} of {len(names)} classes on the test set (never {', '.join(never)})")
        flags.append((f"{len(shown)} of {len(names)} classes predicted", detail))
    recall, support = per.get("recall"), per.get("support")
    if recall is not None and support is not None and len(recall) == len(names) == len(support):
        zero = [f"{n} ({s} images)" for n, r, s in zip(names, recall, support)
                if _number(r) == 0 and (_number(s) or 0) >= MIN_SUPPORT]
        if zero:
            flags.append((f"zero recall on {len(zero)} class{'es' * (len(zero) > 1)}",
                          f"zero recall on {', '.join(zero)} (classes with ≥ {MIN_SUPPORT} test images)"))
    rising = _still_rising(result)
    if rising:
        flags.append(("still rising", rising))
    flags += [("classifier not converged", text) for text in _probe_flags(result)]
    if result.get("best_epoch") == 0:
        flags.append(("best epoch 0", "best validation epoch 0: training never improved on its first epoch"))
    return flags


def flagged_runs(results: Sequence[dict]) -> dict[tuple[str, int], list[tuple[str, str]]]:
    """(method, seed) -> flags, for every flagged run."""
    out = {}
    for r in results:
        found = run_flags(r)
        if found:
            out[(str(r["method"]), int(r["seed"]))] = found
    return out


def flag_marks(flagged: dict) -> dict[str, str]:
    """Method -> the summary's mark after its name."""
    return {m: WARN for m, _ in flagged}


def flags_line(flagged: dict, methods: Sequence[str]) -> str:
    """The line under the summary table: which runs are flagged and why, in short."""
    parts = []
    for m in [*methods, *sorted({mm for mm, _ in flagged} - set(methods))]:
        seeds = sorted(s for mm, s in flagged if mm == m)
        if seeds:
            parts.append(f"{m} (" + "; ".join(f"seed {s}: " + ", ".join(short for short, _ in flagged[(m, s)])
                                              for s in seeds) + ")")
    return ("⚠ Collapsed or not converged: " + " · ".join(parts) +
            ". Details: evidence.md, \"Collapse and convergence flags\".")


def flags_section(results: Sequence[dict], methods: Sequence[str]) -> list[str]:
    """Every flagged run with the details (all results, with or without saved probabilities)."""
    flagged = flagged_runs(results)
    lines = ["## Collapse and convergence flags", "",
             f"A run is flagged (⚠ in the summary) when it predicts fewer than C classes on the test set, has "
             f"zero recall on a class with at least {MIN_SUPPORT} test images, tested the last epoch of a stage "
             "while the validation metric was still rising (the budget ended too early; a single-evaluation probe "
             "stage cannot be rising), fitted a probe classifier that did not reach its tolerance, or never "
             "improved on its first epoch.", ""]
    if not flagged:
        return lines + ["No run is flagged.", ""]
    order = {m: k for k, m in enumerate(methods)}
    for (m, seed) in sorted(flagged, key=lambda t: (order.get(t[0], len(order)), t[0], t[1])):
        lines += [f"- **{m}** seed {seed}: " + "; ".join(detail for _, detail in flagged[(m, seed)])]
    return lines + [""]
