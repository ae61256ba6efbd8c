"""Writing a benchmark report: every table, figure and the README from the run results.

:func:`write_report` gathers the parts — summary tables (``ltbench.report.summary``), confusion and
evidence figures (``ltbench.report.figures``), the evidence (``ltbench.report.evidence``), head /
medium / tail groups (``ltbench.report.groups``), published numbers (``ltbench.report.references``),
tuning (``ltbench.report.tuning``) and retrieval (``ltbench.report.retrieval``) — and writes each
file atomically. No output contains a timestamp, so re-running on the same results gives the same
bytes.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ltbench.recipes import recipe_lines
from ltbench.report.evidence import best_tests, best_tests_markdown, evidence_outputs, gather_evidence
from ltbench.report.figures import _compose, _grid_shape, _panel_layout, _render_panel
from ltbench.report.flags import flag_marks, flagged_runs, flags_line
from ltbench.report.groups import apply_groups, class_order, resolve
from ltbench.report.references import compare, read_settings, references_markdown
from ltbench.report.retrieval import RETRIEVAL_FILES, retrieval_outputs
from ltbench.report.summary import (_columns, _context, _header_line, confusion_counts_csv, latex_table,
                                    markdown_table, mean_confusion, stale_lines, summarize, summed_confusion,
                                    with_failures)
from ltbench.report.tasks import retrieval_rows, task_lines, task_marks
from ltbench.report.threads import thread_lines
from ltbench.report.tuning import read_tuning, tuning_evidence, tuning_summary
from ltbench.store.files import atomic_write, remove_stale_temps


def _safe_filename(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


# ----------------------------------------------------------------------------- writing

def write_report(results: list[dict], out_dir: Path, order: Sequence[str] | None = None,
                 run_dir: Path | None = None, baseline: str | None = "ce", failures: Sequence[dict] = (),
                 stale: Sequence[dict] = (), references: dict | None = None,
                 groups: dict | None = None) -> dict[str, Path]:
    """Write summary.{md,csv,tex}, confusion figures (normalised and counts), the evidence
    (``evidence.md``, calibration, metric bars, per-class recall, reliability diagrams, training
    curves; computed from the runs' saved probabilities under ``run_dir``, default ``out_dir/runs``),
    the published-number comparison (``references.{md,csv}``) and README.md.

    ``baseline`` is the method the paired tests compare against (skipped when absent).
    ``failures`` (failure records of ``ltbench.runs``) appear in their method's row of the tables;
    ``stale`` (results of another configuration) are listed below the table, never averaged.
    ``references`` / ``groups``: the benchmark file's (``ltbench.report.references``,
    ``ltbench.report.groups``); when both are None they are read from ``report_settings.json``
    beside the runs (written by the bench), if any. Returns file name -> path.
    """
    out_dir = Path(out_dir)
    run_dir = Path(run_dir) if run_dir else out_dir / "runs"
    if references is None and groups is None:
        references, groups = read_settings(run_dir.parent, out_dir)
    spec, grouping = resolve(groups, results)  # groups: > stored group_sizes > the dataset's literature > terciles
    results = apply_groups(results, spec)
    summary = summarize(results, order)
    ctx = _context(results)
    ctx["groups"] = grouping
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out_dir)  # a report killed while writing left .summary.md.<pid>@<host>.*.tmp (issue 21)
    written: dict[str, Path] = {}

    def put(name: str, data: str | bytes) -> None:
        written[name] = atomic_write(out_dir / name, data)

    methods = list(summary["method"])
    gathered = gather_evidence(results, run_dir, methods, baseline)
    keys = [k for k, _ in _columns(summary)]
    tests = best_tests(gathered[0], summary, keys, results)
    bold_rows = {k: {t.best} for k, t in tests.items() if t.significant}

    shown = with_failures(summary, failures, order)  # the tables; figures and evidence use finished runs
    flagged = flagged_runs(results)  # collapse and non-convergence (issue 20 item 4)
    notes = "\n".join([*stale_lines(stale), *([flags_line(flagged, methods)] if flagged else [])])
    retrieval = retrieval_rows(results)  # rows of a retrieval method: marked, never read as classifiers
    table = markdown_table(shown, bold_rows, marks=task_marks(retrieval, flag_marks(flagged))) + (
        "\n\n" + notes.rstrip("\n") if notes else "")
    tuning = read_tuning(run_dir.parent)  # the bench's tuning.json (ltbench/bench/tuning.py), if it tuned
    protocol_notes = (task_lines(retrieval) + recipe_lines(results) + (tuning_summary(tuning) if tuning else [])
                      + thread_lines(results))
    if protocol_notes:  # which rows ran a paper recipe, which settings tuning chose (issue 20)
        table += "\n\n" + "\n".join(protocol_notes).rstrip("\n")
    put("summary.md", f"{_header_line(ctx)}\n\n{table}\n\n{BOLD_RULE}\n")
    put("summary.csv", shown.to_csv(index=False, lineterminator="\n"))
    put("summary.tex", latex_table(shown, bold_rows))

    stored_names = [str(n) for n in results[0]["test"]["per_class"]["name"]]
    classes = class_order(results)  # one class order, head -> tail, in every table and figure
    class_names = [stored_names[i] for i in classes]
    reorder = np.ix_(classes, classes)
    panels = [(f"{m} (n={int(n)})", mean_confusion(results, m)[reorder])
              for m, n in zip(summary["method"], summary["n_seeds"])]
    layout = _panel_layout(len(panels), class_names)  # every panel drawn once, pasted where it is shown
    normalised = [_render_panel(title, mat, None, class_names, layout) for title, mat in panels]
    ncols = _grid_shape(len(panels))[1]
    put("confusion_matrices.png", _compose(normalised, ncols))
    summed = [(total[reorder] if total is not None else None, n)
              for total, n in (summed_confusion(results, m) for m in methods)]
    counted = {m: _render_panel(f"{m} (counts, {n} seed{'s' * (n != 1)})", mat, total, class_names, layout)
               for m, (_, mat), (total, n) in zip(methods, panels, summed) if total is not None}
    with_counts = bool(counted)
    if counted:
        put("confusion_counts.png", _compose(list(counted.values()), _grid_shape(len(counted))[1]))
        put("confusion_counts.csv", confusion_counts_csv(results, methods, stored_names, classes))
    no_counts = [m for m in methods if m not in counted]
    per_method = []
    for method, image in zip(methods, normalised):
        name = f"confusion_{_safe_filename(method)}.png"
        # the normalised matrix and, beside it, the counts summed over seeds
        put(name, _compose([image, counted[method]] if method in counted else [image], 2))
        per_method.append((method, name))

    evidence = evidence_outputs(results, run_dir, summary, methods, baseline, gathered=gathered,
                                grouping=ctx["groups"], bold=best_tests_markdown(tests, dict(_columns(summary))))
    index = {n: i for i, n in enumerate(stored_names)}  # the report's groups, also for the retrieval columns
    retrieval_groups = {g: [index[n] for n in members if n in index]
                        for g, members in (results[0]["test"].get("groups") or {}).items()} or None
    evidence.update(retrieval_outputs(results, run_dir, methods, groups=retrieval_groups,
                                      grouping=grouping))  # retrieval tables/figures, if the runs have them
    if tuning and "evidence.md" in evidence:
        evidence["evidence.md"] = evidence["evidence.md"].rstrip("\n") + "\n\n" + "\n".join(tuning_evidence(tuning))
    for name, content in evidence.items():
        put(name, content)
    reference_text = ""
    if references is not None:
        compared = compare(references, summary)
        reference_text = references_markdown(references, compared)
        put("references.md", f"# Published numbers\n\n{_header_line(ctx)}\n\n{reference_text}")
        put("references.csv", compared.to_csv(index=False, lineterminator="\n"))
    put("README.md", _readme(ctx, table, per_method, sorted(evidence), with_counts=with_counts,
                             no_counts=no_counts, references=reference_text))
    return written


BOLD_RULE = ("Bold: a column's best mean, only when a paired bootstrap over the test images (seeds pooled) "
             "separates it from the runner-up at p < 0.05 (details: evidence.md).")

_EVIDENCE_FILES = {
    "evidence.md": "95 % bootstrap intervals, paired tests against the baseline (Holm), calibration, collapse and "
                   "convergence flags, selection sensitivity (acc / sen / f1 / last), "
                   "the tests behind the bold, per-class and cost tables",
    "calibration.csv": "ECE, NLL, Brier, worst-class recall and best epoch per run",
    "metrics.png": "headline metrics per method, error bars = std over seeds",
    "per_class_recall.png": "test recall per method and class, classes head → tail",
    "reliability.png": "reliability diagrams, seeds pooled",
    "training_curves.png": "validation Acc and Sen per epoch (shared axes per metric), one line per seed, "
                           "the tested epoch marked",
    **RETRIEVAL_FILES,
}


def _readme(ctx: dict[str, str], table: str, per_method: list[tuple[str, str]],
            evidence: Sequence[str] = (), with_counts: bool = False, no_counts: Sequence[str] = (),
            references: str = "") -> str:
    lines = [
        f"# ltbench report: {ctx['dataset']}",
        "",
        f"- Dataset: {ctx['dataset']}",
        f"- Split: {ctx['split_kind']} (hash `{ctx['split_hash']}`; the bench writes it to `split.csv`)",
        f"- Lesion leak: {ctx.get('leak', '?')}",
        f"- Backbone: {ctx['backbone']} (pretrained: {ctx['pretrained']}), image size {ctx['image_size']}, "
        f"epochs {ctx['epochs']}, batch {ctx['batch_size']}, lr {ctx['lr']}, "
        f"checkpoint: {ctx.get('selection', ctx['select_metric'])}",
        f"- Seeds: {ctx['seeds']} ({ctx['runs']} runs)",
        f"- Head / medium / tail: {ctx.get('groups', '?')}",
        "",
        "Test-set metrics in percent, mean ± sample std over seeds. " + BOLD_RULE,
        "",
        table,
        "",
    ]
    if references:
        lines += ["## Published numbers", "", references, "Also as [references.md](references.md) and "
                  "[references.csv](references.csv).", ""]
    lines += [
        "## Files",
        "",
        "- [summary.md](summary.md): the table above",
        "- [summary.csv](summary.csv): the same numbers, unrounded",
        "- [summary.tex](summary.tex): LaTeX booktabs table",
        "- [confusion_matrices.png](confusion_matrices.png): all methods, row-normalised",
    ]
    if with_counts:
        lines += ["- [confusion_counts.png](confusion_counts.png): all methods, counts summed over seeds",
                  "- [confusion_counts.csv](confusion_counts.csv): counts summed over seeds and the "
                  "normalised means, per method, true and predicted class"]
    lines += [f"- [{name}]({name}): {method}, normalised" + (" and counts" if with_counts and method not in no_counts
                                                                else "")
              for method, name in per_method]
    if references:
        lines += ["- [references.md](references.md): paper / ltbench / difference",
                  "- [references.csv](references.csv): the same, unrounded"]
    lines += [f"- [{name}]({name}): {_EVIDENCE_FILES.get(name, name)}" for name in evidence]
    lines += [
        "",
        "## Confusion matrices",
        "",
        "Row-normalised (true class on y, predicted class on x; classes head → tail by training count on both "
        "axes, as in every table and figure of this report), averaged over seeds.",
        "",
        "![Confusion matrices](confusion_matrices.png)",
        "",
    ]
    if with_counts:
        lines += ["Counts: each cell is the number of test images, summed over the seeds (a test image is "
                  "counted once per seed); colour = the row-normalised mean above.", "",
                  "![Confusion counts](confusion_counts.png)", ""]
    if no_counts:
        lines += [f"No counts stored (results of an older version): {', '.join(no_counts)}.", ""]
    if "evidence.md" in evidence:
        lines += ["## Evidence", "",
                  "Confidence intervals, paired tests against the baseline, calibration, collapse and convergence "
                  "flags, and what each checkpoint rule would have tested: "
                  "[evidence.md](evidence.md).", ""]
        lines += [f"![{name}]({name})\n" for name in
                  ("metrics.png", "per_class_recall.png", "reliability.png", "training_curves.png")
                  if name in evidence]
    return "\n".join(lines)
