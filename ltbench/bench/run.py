"""Running a benchmark: train every row × seed that has no result yet, then write the report.

``run_benchmark`` trains sequentially in this process or hands the grid to a launcher
(``ltbench.launchers``); a row with a tuning grid trains it first on the first seed
(``ltbench.bench.tuning``). The report is rebuilt from the result files alone, so an interrupted
bench resumes where it stopped.
"""
from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

from ltbench import config as cfg
from ltbench import typed
from ltbench.bench.file import Benchmark, MethodRow, recipe_train, row_train_config
from ltbench.bench.tuning import TUNING_DIR, choose, combinations, tuning_metric, tuning_row, write_tuning
from ltbench.config import TrainConfig
from ltbench.errors import LtbenchError
from ltbench.launchers.grid import row_labels
from ltbench.registry import get_method_class
from ltbench.report import leak_text, write_report
from ltbench.report.groups import class_groups
from ltbench.report.references import write_settings
from ltbench.runs import (RunClaimed, RunFailed, StaleResult, check_cache_dir, check_methods_on_data, check_out_dir,
                          failure_text, prepare_data, read_result, result_paths, run_one, write_split)


def _warn(message: str) -> None:
    print(message, file=sys.stderr)


def _first_missing(folder: Path) -> Path | None:
    """The highest ancestor of ``folder`` (or itself) that does not exist yet; None if it exists."""
    missing = None
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            break
        missing = candidate
    return missing


def _remove_empty(folder: Path, up_to: Path | None) -> None:
    """Remove ``folder`` and its parents up to ``up_to`` while they are empty (never anything else)."""
    if up_to is None:
        return
    for candidate in (folder, *folder.parents):
        try:
            candidate.rmdir()  # only succeeds on an empty folder
        except OSError:
            return
        if candidate == up_to:
            return


class BenchIncomplete(LtbenchError):
    """Raised after the report is written when some runs failed or have stale results (exit non-zero)."""


def _train_rows(bench: Benchmark, out_dir: Path, prepared, *, progress: bool, echo, warn, force: bool,
                retry_failed: bool, keep_checkpoints: bool, launcher) -> tuple[dict, list, list, int]:
    """Train every row x seed of ``bench`` that has no result in ``out_dir`` (sequentially or through
    ``launcher``): (results by (row, seed), failures, stale results, number trained)."""
    total = len(bench.methods) * len(bench.seeds)
    results: dict[tuple[str, int], dict] = {}
    failures: list[dict] = []
    stale: list[dict] = []
    counter = {"done": 0, "trained": 0}

    def attempt(name: str, row: MethodRow, seed: int, wait: bool) -> bool:
        """One run; False if another bench holds its claim (retried at the end, waiting)."""
        try:
            result, was_trained = run_one(row.method, row.params, seed, bench.row_config(row), bench.data, prepared,
                                          out_dir, labels=row_labels(row), benchmark=bench.name, progress=progress, row=name, wait=wait,
                                          replace_stale=force, retry_failed=retry_failed,
                                          keep_checkpoints=keep_checkpoints, warn=warn, retrieval=bench.retrieval)
        except RunClaimed as exc:
            echo(f"[-/{total}] {name} seed {seed}: {exc}; doing the others first")
            return False
        counter["done"] += 1
        head = f"[{counter['done']}/{total}] {name} seed {seed}"
        results[(name, seed)] = result
        counter["trained"] += was_trained
        status = f"trained in {result['wall_time_s']:.1f} s" if was_trained else "already done, skipped"
        t = result["test"]
        echo(f"{head}: {status}; test Acc {t['acc']:.2f} Sen {t['sen']:.2f} F1 {t['f1']:.2f}")
        return True

    def guarded(name: str, row: MethodRow, seed: int, wait: bool) -> bool:
        try:
            return attempt(name, row, seed, wait)
        except RunFailed as exc:  # isolated: recorded next to the run, the bench goes on
            counter["done"] += 1
            failures.append(exc.record)
            echo(f"[{counter['done']}/{total}] {name} seed {seed}: {failure_text(exc.record)}")
        except StaleResult as exc:
            counter["done"] += 1
            stale.append({"method": name, "seed": seed, "path": str(exc.path), "stored_key": exc.stored,
                          "current_key": exc.current})
            echo(f"[{counter['done']}/{total}] {name} seed {seed}: STALE: {exc}")
        return True

    if launcher is not None:  # ltbench/launchers: the same runs through run_one, in other processes
        tally = launcher(bench, out_dir, prepared, echo=echo, warn=warn, force=force, retry_failed=retry_failed,
                         keep_checkpoints=keep_checkpoints, progress=progress)
        results, failures, stale = tally.results, tally.failures, tally.stale
        counter["trained"] = tally.trained
    deferred = [] if launcher is not None else [
        (name, row, seed) for name, row in bench.methods.items() for seed in bench.seeds
        if not guarded(name, row, seed, wait=False)]
    for name, row, seed in deferred:  # claimed by another bench: wait for it, then use its result
        echo(f"{name} seed {seed}: waiting for the bench that is training it")
        guarded(name, row, seed, wait=True)

    return results, failures, stale, counter["trained"]


def _tune(bench: Benchmark, out_dir: Path, train_rows, echo) -> tuple[Benchmark, tuple[list, list]]:
    """Train each row's tuning grid on the first seed (runs under ``<out>/tuning``), choose by validation,
    write ``tuning.json``; the bench whose rows carry the chosen settings, and the tuning runs' problems."""
    seed = bench.seeds[0]
    grids = {name: row.tune if row.tune is not None else bench.tune for name, row in bench.methods.items()}
    grids = {name: combinations(grid) for name, grid in grids.items() if grid}  # rows without a grid: as they are
    rows = {tuning_row(name, values): replace(row, name=tuning_row(name, values), config=_row_config(bench, row, values),
                                               tuned=values, tune=None)
            for name, row in bench.methods.items() for values in grids.get(name, [])}
    echo(f"{bench.name}: tuning on validation: {len(rows)} run(s) of {len(grids)} row(s) on seed {seed}, "
         f"under {Path(out_dir) / TUNING_DIR}")
    results, failures, stale, _ = train_rows(replace(bench, methods=rows, seeds=[seed], tune={}),
                                             Path(out_dir) / TUNING_DIR)
    records, chosen_rows = {}, dict(bench.methods)
    for name, grid in grids.items():
        row = bench.methods[name]
        tried = [(values, results.get((tuning_row(name, values), seed))) for values in grid]
        record = choose(name, tried, tuning_metric(bench.row_config(row).select_metric))
        record["grid"] = {k: list(dict.fromkeys(v[k] for v in grid)) for k in grid[0]}
        records[name] = record
        chosen = record["chosen"]
        chosen_rows[name] = row if chosen is None else replace(row, config=_row_config(bench, row, chosen), tuned=chosen)
        echo(f"{bench.name}: {name}: " + (f"chose {chosen} by validation {record['metric']}" if chosen
                                           else "no tuning run finished: the untuned settings"))
    write_tuning(out_dir, bench.tune, records, seed)
    return replace(bench, methods=chosen_rows), (failures, stale)


def _row_config(bench: Benchmark, row: MethodRow, tuned: dict) -> TrainConfig:
    """The row's settings (its recipe, if any) with ``tuned`` values over everything else."""
    return row_train_config(bench.data.dataset, bench.layers, recipe_train(row),
                            f"recipe {row.recipe}" if row.recipe else f"methods.{row.name}.train", tuned)


def run_benchmark(bench: Benchmark, out_dir: Path, progress: bool = True, echo=print,
                  warn: Callable[[str], None] = _warn, *, force: bool = False, retry_failed: bool = False,
                  keep_checkpoints: bool = False, launcher=None) -> dict[str, Path]:
    """Train what is missing, then write the report. Returns the report's files.

    ``launcher`` (``ltbench.launchers.make_launcher``): several runs at once, in worker processes or a
    SLURM job array, once the data are prepared here; None trains them one by one in this process.

    Interrupted runs resume from their last epoch's checkpoint. A failed run is recorded and the
    bench goes on; a run another bench is training is done last, after waiting for its claim; a
    stored result of another configuration is kept out of the table and listed (``force``
    retrains it and replaces a damaged result file; up-to-date results are still skipped). When any run failed or is stale, :class:`BenchIncomplete` is raised after the
    report is written.
    """
    start = time.perf_counter()
    check_cache_dir(bench.data, "cache_dir")
    typed.check_folder(out_dir, "--out")
    if not force:  # a damaged result file is one line before any pixel, never silently replaced
        for name in bench.methods:
            for seed in bench.seeds:
                read_result(result_paths(out_dir, name, seed)[0])
    echo(f"{bench.name}: " + cfg.describe_train(bench.train, bench.sources))
    for name, row in bench.methods.items():
        if row.recipe:
            recipe = get_method_class(row.method).recipes[row.recipe]
            echo(f"{bench.name}: {name}: recipe {row.recipe}: {recipe.describe()}")
        if row.train:
            echo(f"{bench.name}: {name}: own settings: " + ", ".join(f"{k}={v}" for k, v in row.train.items()))
    rows = {name: (row.method, row.params) for name, row in bench.methods.items()}
    created = _first_missing(Path(out_dir))
    out_dir = check_out_dir(out_dir)
    try:
        prepared = prepare_data(bench.data, bench.train.image_size,
                                before_pixels=lambda s, sp: check_methods_on_data(rows, bench.train, s, sp))
    except BaseException:  # bad data: leave no empty output folder behind
        _remove_empty(out_dir, created)
        raise
    if prepared.split.details.get("warning"):
        warn(f"ltbench: warning: {prepared.split.details['warning']}")
    write_split(prepared, out_dir)
    if bench.groups is not None:  # class names are known now: a wrong one fails before any training
        class_groups(bench.groups, prepared.bundle.counts(prepared.split.train), prepared.bundle.class_names,
                     where=f"{bench.name}: groups")
    write_settings(out_dir, bench.references, bench.groups)  # for `ltbench report DIR` later
    counts = prepared.bundle.counts(prepared.split.train)
    echo(f"{bench.name}: {len(prepared.image_set)} images, split {prepared.split.kind} "
         f"({len(prepared.split.train)}/{len(prepared.split.val)}/{len(prepared.split.test)}), "
         f"train counts {counts}; lesion leak: {leak_text(prepared.leak)}")

    def train_rows(bench: Benchmark, out_dir: Path) -> tuple[dict, list, list, int]:
        """Every row x seed of ``bench`` in ``out_dir``: (results by (row, seed), failures, stale, trained)."""
        return _train_rows(bench, out_dir, prepared, progress=progress, echo=echo, warn=warn, force=force,
                           retry_failed=retry_failed, keep_checkpoints=keep_checkpoints, launcher=launcher)

    tuning = bench.tune or any(row.tune for row in bench.methods.values())
    if tuning:  # each row's grid on the first seed, then every seed with the chosen values
        bench, tuning_problems = _tune(bench, out_dir, train_rows, echo)
    results, failures, stale, trained = train_rows(bench, out_dir)
    if tuning:
        failures, stale = tuning_problems[0] + failures, tuning_problems[1] + stale
    total = len(bench.methods) * len(bench.seeds)
    finished = [results[(n, s)] for n in bench.methods for s in bench.seeds if (n, s) in results]
    no_embeddings = [f"{r['method']} seed {r['seed']}" for r in finished if bench.retrieval.enabled
                     and r.get("retrieval") is None]  # finished before retrieval was asked for: no weights kept
    if no_embeddings:
        echo(f"no embeddings (retrieval left out of the report): {len(no_embeddings)} run(s): "
             f"{', '.join(no_embeddings)}; --force retrains them")
    problems = []
    if failures:
        problems.append(f"{len(failures)} failed")
    if stale:
        problems.append(f"{len(stale)} stale (another configuration's result kept; --force retrains)")
    if finished:
        files = write_report(finished, out_dir, order=list(bench.methods), failures=failures, stale=stale,
                             references=bench.references, groups=bench.groups)
        where = f"report: {files['summary.md']}"
    else:
        files, where = {}, "no finished run, no report"
    skipped = len(finished) - trained
    echo(f"{trained} run(s) trained, {skipped} skipped{''.join('; ' + p for p in problems)}; {where}")
    echo(f"wall time: {time.perf_counter() - start:.1f} s")
    if problems:
        raise BenchIncomplete(f"{total} runs: {len(finished)} finished, {', '.join(problems)}"
                              + (f"; see {files['summary.md']}" if files else ""))
    return files
