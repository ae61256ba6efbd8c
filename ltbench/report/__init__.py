"""The benchmark report, from the saved run results alone: nothing is trained, no pixel is read.

Public face: :func:`load_results` (the result files of a run folder), :func:`summarize` (mean ± std
per method), :func:`write_report` (every table, figure and the README) and :func:`leak_text`.
One module per part:

- ``summary``: loading the results, the summary table (Markdown, CSV, LaTeX) and its context;
- ``figures``: confusion-matrix panels and the evidence figures;
- ``evidence`` (tables) on ``statistics`` (bootstrap intervals, paired tests, calibration) and
  ``flags`` (runs that collapsed or did not converge);
- ``groups`` (head / medium / tail), ``references`` (published numbers), ``selection`` (what each
  checkpoint rule would have tested), ``tuning`` (what per-row tuning chose), ``retrieval`` (the
  retrieval section);
- ``write``: :func:`write_report`, which puts them together.
"""
from ltbench.report.summary import leak_text, load_results, summarize
from ltbench.report.write import write_report

__all__ = ["leak_text", "load_results", "summarize", "write_report"]
