"""The grid of a bench as launchers see it: which runs are left, one run in a worker, the tally.

A launcher (``local``: processes on this machine; ``slurm``: a submitit job array) receives a
:class:`Grid` — everything a worker needs to rebuild a run exactly as the sequential bench would:
the benchmark's data spec, training config and rows, the output folder, the bench flags, the
parent's split hash and the class of every row's method (so a method registered at run time, in a
test or a notebook, reaches the workers too). The parent prepares the data once (the pixel cache is
built before any worker starts); a worker's :func:`prepare` only reads that cache back.

:func:`plan` sorts the grid into runs already finished, stale, recorded as failed, and runs to
train — with the rules of ``ltbench.runs.run_one`` (which re-checks each run under its claim, so a
race with another bench changes nothing but the message). :func:`run_task` is one run in a
worker: ``run_one`` with its claim, checkpoints and failure records, its result returned as plain
data. :class:`Tally` collects outcomes into what ``ltbench.bench`` builds the report from and
prints the same lines as the sequential bench, plus a combined progress display.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ltbench.errors import LtbenchError


@dataclass(frozen=True)
class Task:
    """One run of the grid: a benchmark row and a seed."""

    row: str
    seed: int

    def __str__(self) -> str:
        return f"{self.row} seed {self.seed}"


@dataclass(frozen=True)
class Row:
    """A benchmark row as workers need it (``ltbench.bench.MethodRow`` without importing the report)."""

    name: str
    method: str
    params: dict
    config: object = None  # the row's own TrainConfig (recipe, tuned values); None: the grid's ``train``
    labels: dict = field(default_factory=dict)  # recipe / tuned values, written into the result (not the key)


@dataclass
class Grid:
    """What a worker needs to train any run of the bench (picklable: spawn and cloudpickle)."""

    name: str
    data: object  # ltbench.runs.DataSpec
    train: object  # ltbench.trainer.TrainConfig
    rows: dict  # row name -> Row
    seeds: list
    out_dir: Path
    split_hash: str
    image_size: int
    force: bool = False
    retry_failed: bool = False
    keep_checkpoints: bool = False
    methods: dict = field(default_factory=dict)  # registered method name -> its class
    retrieval: object = None  # ltbench.retrieval.run_pass.RetrievalSettings of the bench (not in the run key)

    def config(self, row: str):
        """The TrainConfig a row trains with."""
        own = self.rows[row].config
        return self.train if own is None else own

    def with_device(self, device: str, to_config) -> "Grid":
        """The grid with every config (the grid's and the rows' own) moved to ``device``."""
        from dataclasses import replace

        rows = {name: replace(row, config=None if row.config is None else to_config(row.config, device))
                for name, row in self.rows.items()}
        return replace(self, train=to_config(self.train, device), rows=rows)

    def tasks(self) -> list[Task]:
        """Row-major, in benchmark order: the order of the sequential bench."""
        return [Task(row, seed) for row in self.rows for seed in self.seeds]


def row_labels(row) -> dict:
    """What a result records of its row beyond the run key: its recipe, own settings and tuned values."""
    labels = {}
    if getattr(row, "recipe", None):
        labels["recipe"] = row.recipe
    if getattr(row, "train", None):
        labels["row_train"] = dict(row.train)
    if getattr(row, "tuned", None):
        labels["tuned"] = dict(row.tuned)
    return labels


def make_grid(bench, out_dir: Path, prepared, *, force: bool, retry_failed: bool, keep_checkpoints: bool) -> Grid:
    from ltbench.registry import get_method_class

    rows = {name: Row(name, row.method, dict(row.params), row.config, row_labels(row))
            for name, row in bench.methods.items()}
    return Grid(name=bench.name, data=bench.data, train=bench.train, rows=rows, seeds=list(bench.seeds),
                out_dir=Path(out_dir), split_hash=prepared.split_hash, image_size=bench.train.image_size,
                force=force, retry_failed=retry_failed, keep_checkpoints=keep_checkpoints,
                methods={row.method: get_method_class(row.method) for row in bench.methods.values()},
                retrieval=getattr(bench, "retrieval", None))


def cpu_count() -> int:
    """Cores this process may use (its affinity mask: a SLURM allocation or a taskset, not the node's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def split_threads(concurrent: int) -> int:
    """torch threads per run when ``concurrent`` runs share this machine's cores."""
    return max(1, cpu_count() // max(1, concurrent))


# ------------------------------------------------------------------------------ the plan


def expected_key(grid: Grid, task: Task) -> str:
    """The run key ``run_one`` will compute for this run (same construction, same inputs)."""
    from ltbench.registry import create_method
    from ltbench.runs import _jsonable, run_key
    from ltbench.trainer import TrainConfig

    row = grid.rows[task.row]
    method = create_method(row.method, **row.params)
    config = TrainConfig(**{**grid.config(task.row).to_dict(), "seed": task.seed})
    return run_key(task.row, _jsonable(method.get_params()), task.seed, config, grid.data, grid.split_hash,
                   registered=row.method)


@dataclass
class Plan:
    done: dict = field(default_factory=dict)  # Task -> stored result (same run key)
    stale: dict = field(default_factory=dict)  # Task -> StaleResult
    failed: dict = field(default_factory=dict)  # Task -> failure record (recorded earlier, same key)
    todo: list = field(default_factory=list)  # Tasks to train (or resume)


def plan(grid: Grid) -> Plan:
    """Sort the grid as ``ltbench.runs._run_claimed`` decides each run (bench semantics: ``force`` =
    replace stale), so that finished runs start no worker and submit no job. Only an optimisation:
    every run sent to a worker is decided again by ``run_one`` under its claim."""
    from ltbench.runs import StaleResult, failure_paths, read_failure, read_result, result_paths

    out = Plan()
    for task in grid.tasks():
        key = expected_key(grid, task)
        json_path, _ = result_paths(grid.out_dir, task.row, task.seed)
        try:
            stored = read_result(json_path)
        except LtbenchError:
            if not grid.force:
                raise
            stored = None  # damaged: retrained and replaced (--force)
        wants_retrieval = grid.force and getattr(grid.retrieval, "enabled", False) and stored is not None \
            and stored.get("retrieval") is None  # run_one retrains such a result with --force
        if stored is not None and stored.get("run_key") == key and not wants_retrieval:
            out.done[task] = stored
            continue
        if stored is not None and stored.get("run_key") == key:
            out.todo.append(task)
            continue
        if stored is not None and not grid.force:
            out.stale[task] = StaleResult(json_path, stored.get("run_key"), key)
            continue
        failure = read_failure(grid.out_dir, task.row, task.seed)
        if failure is not None and failure.get("run_key") == key and not grid.retry_failed:
            _, log_path = failure_paths(grid.out_dir, task.row, task.seed)
            out.failed[task] = {**failure, "log_path": str(log_path), "previous": True}
            continue
        out.todo.append(task)
    return out


# ------------------------------------------------------------------------------ in a worker


def register_methods(methods: dict) -> None:
    """Make each row's method class (as the parent had it) the registered one in this process."""
    from ltbench import registry

    for name, cls in methods.items():
        try:
            if registry.get_method_class(name) is cls:
                continue
        except LtbenchError:
            pass
        registry.unregister_method(name)
        registry.register_method(name)(cls)


def prepare(grid: Grid):
    """The bench's prepared data in this process (reads the parent's pixel cache), checked against the parent's split."""
    from ltbench.runs import prepare_data

    prepared = prepare_data(grid.data, grid.image_size)
    if prepared.split_hash != grid.split_hash:
        raise LtbenchError(f"the worker's split hash {prepared.split_hash} differs from the bench's "
                           f"{grid.split_hash}: the data changed while the bench was running")
    return prepared


def run_task(grid: Grid, prepared, task: Task, wait: bool = False,
             warn: Callable[[str], None] | None = None) -> dict:
    """One run through ``run_one``; the outcome as plain data (``status`` and its payload).

    ``status``: ``trained`` / ``skipped`` (with ``result``), ``failed`` (``record``: the failure
    record, ``log_path`` its traceback), ``stale`` (``path``, ``stored_key``, ``current_key``),
    ``claimed`` (another process holds the run; only with ``wait=False``).
    """
    from ltbench.runs import RunClaimed, RunFailed, StaleResult, run_one

    row = grid.rows[task.row]
    start = time.perf_counter()
    try:
        result, trained = run_one(row.method, row.params, task.seed, grid.config(task.row), grid.data, prepared,
                                  grid.out_dir, labels=row.labels,
                                  benchmark=grid.name, progress=False, row=task.row, wait=wait,
                                  replace_stale=grid.force, retry_failed=grid.retry_failed,
                                  keep_checkpoints=grid.keep_checkpoints, warn=warn, retrieval=grid.retrieval)
    except RunClaimed as exc:
        return {"status": "claimed", "message": str(exc)}
    except RunFailed as exc:
        return {"status": "failed", "record": exc.record, "seconds": time.perf_counter() - start}
    except StaleResult as exc:
        return {"status": "stale", "path": str(exc.path), "stored_key": exc.stored, "current_key": exc.current}
    return {"status": "trained" if trained else "skipped", "result": result, "seconds": time.perf_counter() - start}


# ------------------------------------------------------------------------------ the tally


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def run_grid(bench, out_dir: Path, prepared, execute, *, echo, force: bool, retry_failed: bool,
             keep_checkpoints: bool, progress: bool = True) -> "Tally":
    """The part every launcher shares: the grid, its plan (finished / stale / failed runs sorted
    out before anything starts) and the tally; ``execute(grid, todo, tally)`` trains what is left."""
    grid = make_grid(bench, out_dir, prepared, force=force, retry_failed=retry_failed,
                     keep_checkpoints=keep_checkpoints)
    grid_plan = plan(grid)
    tally = Tally(len(grid.tasks()), echo, bar=progress)
    try:
        tally.planned(grid_plan, grid.tasks())
        if grid_plan.todo:
            execute(grid, grid_plan.todo, tally)
    finally:
        tally.close()
    return tally


class Tally:
    """Outcomes of the grid, as ``run_benchmark`` reports them, and the combined progress display.

    Lines have the sequential bench's form (``[k/N] ce seed 0: trained in ...``), followed by the
    grid's state (``done / running / failed, ETA``). On a terminal (and unless ``bar=False``) a tqdm
    bar on stderr shows the same state between lines; elsewhere there is one line per event.
    The ETA is the elapsed time of this launch per finished run × the runs left (the observed
    rate, so it already counts the runs training at once).
    """

    def __init__(self, total: int, echo: Callable[[str], None], *, bar: bool = True) -> None:
        self.total, self.echo = total, echo
        self.results: dict = {}
        self.failures: list[dict] = []
        self.stale: list[dict] = []
        self.trained = 0
        self.done = 0
        self.running: set = set()
        self.todo = 0  # runs handed to the launcher
        self.finished_here = 0  # of those, finished (any status)
        self.started_at: float | None = None
        self._bar = None
        if bar and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, unit="run", desc="bench", dynamic_ncols=True, leave=False)

    # state ---------------------------------------------------------------------------------
    def state(self) -> str:
        text = f"done {self.done}/{self.total}, running {len(self.running)}, failed {len(self.failures)}"
        left = self.todo - self.finished_here
        if self.started_at is not None and self.finished_here and left > 0:
            per_run = (time.perf_counter() - self.started_at) / self.finished_here
            text += f", ETA {_clock(per_run * left)}"
        return text

    def _say(self, line: str, with_state: bool = True) -> None:
        if with_state and self._bar is None:
            line = f"{line} ({self.state()})"
        if self._bar is not None:
            from tqdm.auto import tqdm

            with tqdm.external_write_mode(file=sys.stdout):
                self.echo(line)
            self._bar.n = self.done
            self._bar.set_postfix_str(self.state().split(", ", 1)[1])  # the bar shows done/total itself
        else:
            self.echo(line)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    # events --------------------------------------------------------------------------------
    def launching(self, count: int) -> None:
        self.todo, self.started_at = count, time.perf_counter()

    def started(self, task: Task, where: str) -> None:
        self.running.add(task)
        self._say(f"{task}: started ({where})")

    def requeued(self, task: Task, where: str) -> None:
        """A running task sent back to the queue (pre-emption, a time limit, ``scontrol requeue``):
        no longer counted as running; it resumes from its last checkpoint when it starts again."""
        self.running.discard(task)
        self._say(f"{task}: requeued ({where}); it resumes from its last checkpoint")

    def result(self, task: Task, result: dict, trained: bool, where: str = "") -> None:
        self.running.discard(task)
        self.done += 1
        self.results[(task.row, task.seed)] = result
        self.trained += trained
        status = f"trained in {result['wall_time_s']:.1f} s" if trained else "already done, skipped"
        t = result["test"]
        suffix = f" [{where}]" if where else ""
        self._say(f"[{self.done}/{self.total}] {task}: {status}; test Acc {t['acc']:.2f} Sen {t['sen']:.2f} "
                  f"F1 {t['f1']:.2f}{suffix}")

    def failed(self, task: Task, record: dict, where: str = "", log: str | None = None) -> None:
        self.running.discard(task)
        self.done += 1
        self.failures.append(record)
        from ltbench.runs import failure_text  # (a replay names its record; a dead process says how it ended)

        extra = f"; log: {log}" if log and log != record.get("log_path") else ""
        suffix = f" [{where}]" if where else ""
        self._say(f"[{self.done}/{self.total}] {task}: {failure_text(record)}{extra}{suffix}")

    def stale_result(self, task: Task, path: str, stored: str, current: str, message: str) -> None:
        self.running.discard(task)
        self.done += 1
        self.stale.append({"method": task.row, "seed": task.seed, "path": str(path), "stored_key": stored,
                           "current_key": current})
        self._say(f"[{self.done}/{self.total}] {task}: STALE: {message}")

    def outcome(self, task: Task, outcome: dict, where: str = "", log: str | None = None) -> None:
        """Apply one :func:`run_task` outcome (not ``claimed``: the launcher retries those)."""
        from ltbench.runs import StaleResult

        self.finished_here += 1
        status = outcome["status"]
        if status in ("trained", "skipped"):
            self.result(task, outcome["result"], status == "trained", where)
        elif status == "failed":
            self.failed(task, outcome["record"], where, log)
        elif status == "stale":
            message = str(StaleResult(Path(outcome["path"]), outcome["stored_key"], outcome["current_key"]))
            self.stale_result(task, outcome["path"], outcome["stored_key"], outcome["current_key"], message)
        else:
            raise ValueError(f"unexpected outcome status {status!r}")

    def lost(self, task: Task, reason: str, log: str, where: str = "") -> None:
        """A run whose process died or whose job failed outside ``run_one`` (no failure record written:
        a rerun trains it again, from its last checkpoint)."""
        self.finished_here += 1
        self.failed(task, {"method": task.row, "seed": task.seed, "epoch": None, "reason": reason, "log_path": log,
                           "log": Path(log).name, "lost": True}, where)

    def planned(self, grid_plan: Plan, tasks: list[Task]) -> None:
        """Report the runs the plan settled without training, in grid order."""
        for task in tasks:
            if task in grid_plan.done:
                self.result(task, grid_plan.done[task], False)
            elif task in grid_plan.stale:
                exc = grid_plan.stale[task]
                self.stale_result(task, exc.path, exc.stored, exc.current, str(exc))
            elif task in grid_plan.failed:
                self.failed(task, grid_plan.failed[task])
