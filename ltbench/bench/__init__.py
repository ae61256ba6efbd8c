"""A benchmark: one YAML file (dataset, split, protocol, seeds, methods) → every run → the report.

Public face: :func:`load_benchmark` (read and convert the whole file before any data is touched),
:func:`select_rows` (``--methods``), :func:`run_benchmark` (train what has no result yet, then write
the report) and the :class:`Benchmark` / :class:`MethodRow` they pass around. One module per part:
``file`` (reading the file), ``run`` (running it, sequentially or through ``ltbench.launchers``),
``tuning`` (per-row tuning on validation).
"""
from ltbench.bench.file import Benchmark, MethodRow, load_benchmark, select_rows
from ltbench.bench.run import BenchIncomplete, run_benchmark

__all__ = ["BenchIncomplete", "Benchmark", "MethodRow", "load_benchmark", "run_benchmark", "select_rows"]
