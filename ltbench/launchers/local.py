"""``--launcher local``: N runs of a bench at once, each in its own process on this machine.

The parent has prepared the data (pixel cache built once) before this starts. It then starts N
worker processes (``multiprocessing`` *spawn*: a fresh interpreter, no forked CUDA or thread
state), each pinned to one slot: a GPU (``CUDA_VISIBLE_DEVICES`` set before the interpreter
starts, so the run sees one device, ``cuda``) or, on the CPU, a share of the cores
(``torch.set_num_threads``, default ``max(1, cores // N)``, instead of N × all cores). A worker
reads the cache back once, then trains the runs the parent hands it one at a time through
``ltbench.runs.run_one`` — the same claims, checkpoints and failure records as the sequential
bench, so two launches (or a sequential bench) on one folder never train the same run, and an
interrupted launch resumes. A run that fails is recorded and the worker goes on; a worker that
dies (killed, out of memory) loses only its current run, reported with the worker's log, and is
replaced. A worker exits as soon as the bench that started it dies, even by SIGKILL
(:func:`exit_with_parent`), so no orphan trains on. Each worker's stdout and stderr (warnings,
tracebacks, one line per run) go to ``<out>/logs/worker<k>.log`` (appended across launches).

Threads change CPU results in the last bits (a different reduction order in the convolution
kernels), so a run trained with 1 thread equals a sequential run made with
``torch.set_num_threads(1)``, not one made with 2 threads; the thread count is not part of the run
key (``--threads`` fixes it).
"""
from __future__ import annotations

import multiprocessing
import os
import queue as queue_module
import sys
import time
import traceback
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ltbench.errors import LtbenchError
from ltbench.launchers.grid import Grid, Tally, Task, prepare, register_methods, run_grid, run_task


def plan_slots(jobs: int | None, gpus: list[int] | None, runs_per_gpu: int | None) -> list[int | None]:
    """One entry per worker: its GPU (an index of the parent's visible devices) or None (CPU).

    GPUs are dealt round-robin (``--gpus 0,1 --runs-per-gpu 2`` -> 0, 1, 0, 1), so fewer jobs than
    slots still spread over the devices. ``jobs`` defaults to every slot (1 without GPUs).
    """
    if not gpus:
        if runs_per_gpu is not None:
            raise LtbenchError(f"--runs-per-gpu {runs_per_gpu}: only with GPUs (--gpus, or a CUDA device)")
        return [None] * (jobs or 1)
    slots = [g for _ in range(runs_per_gpu or 1) for g in gpus]
    if jobs is None:
        return slots
    if jobs > len(slots):
        raise LtbenchError(f"--jobs {jobs}: more than the {len(slots)} GPU slot(s) of --gpus "
                           f"{','.join(map(str, gpus))} x --runs-per-gpu {runs_per_gpu or 1}")
    return slots[:jobs]


def visible_device(gpu: int) -> str:
    """The CUDA_VISIBLE_DEVICES value of the parent's GPU index ``gpu`` (respecting the parent's own mask)."""
    mask = os.environ.get("CUDA_VISIBLE_DEVICES")
    if mask is None or not mask.strip():
        return str(gpu)
    return [d.strip() for d in mask.split(",")][gpu]


@dataclass
class LocalLauncher:
    """``ltbench bench --jobs N [--gpus ...] [--runs-per-gpu K] [--threads T]``."""

    slots: list  # per worker: a GPU index or None (CPU)
    threads: int  # torch threads per worker

    def describe(self) -> str:
        where = ", ".join("cpu" if s is None else f"gpu {s}" for s in self.slots)
        return f"local launcher: {len(self.slots)} run(s) at once ({where}), {self.threads} torch thread(s) each"

    def __call__(self, bench, out_dir: Path, prepared, *, echo, warn, force: bool, retry_failed: bool,
                 keep_checkpoints: bool, progress: bool = True):
        def execute(grid: Grid, todo: list[Task], tally: Tally) -> None:
            echo(self.describe() + f"; logs: {Path(out_dir) / 'logs'}/worker<k>.log")
            _Pool(grid, self.slots, self.threads, tally).run(todo)

        return run_grid(bench, out_dir, prepared, execute, echo=echo, force=force, retry_failed=retry_failed,
                        keep_checkpoints=keep_checkpoints, progress=progress)


@contextmanager
def _environment(**values: str | None):
    """os.environ with ``values`` set (None: removed) for the block: what a spawned child inherits."""
    saved = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class _Worker:
    def __init__(self, wid: int, slot, process, inbox, log: Path) -> None:
        self.wid, self.slot, self.process, self.inbox, self.log = wid, slot, process, inbox, log
        self.ready = False
        self.cores: list[int] | None = None
        self.task: Task | None = None
        self.wait = False

    @property
    def where(self) -> str:
        device = "cpu" if self.slot is None else f"gpu {self.slot}"
        return f"worker {self.wid}, {device}"


class _Pool:
    """Starts the workers, deals them runs one at a time, replaces dead ones, feeds the tally."""

    POLL_S = 0.5

    def __init__(self, grid: Grid, slots: list, threads: int, tally: Tally) -> None:
        self.grid, self.slots, self.threads, self.tally = grid, slots, threads, tally
        self.ctx = multiprocessing.get_context("spawn")
        self.outbox = self.ctx.Queue()
        self.logs = Path(grid.out_dir) / "logs"
        self.workers: dict[int, _Worker] = {}
        self.next_id = 0
        self.restarts_left = 2 * len(slots) + 8  # a worker that dies at once, again and again, ends the bench

    def _start(self, slot) -> _Worker:
        wid = self.next_id
        self.next_id += 1
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"worker{wid}.log"
        inbox = self.ctx.Queue()
        grid, env = self.grid, {}
        if slot is not None:  # the run sees one device, as cuda:0
            grid = grid.with_device("cuda", _with_device)
            env["CUDA_VISIBLE_DEVICES"] = visible_device(slot)
        cores = self._cores(slot)
        process = self.ctx.Process(target=worker_main, name=f"ltbench-worker{wid}", daemon=True,
                                   args=(wid, grid, self.threads, cores, str(log), inbox, self.outbox))
        with _environment(**env):  # inherited by the fresh interpreter: set before CUDA can start
            process.start()
        worker = _Worker(wid, slot, process, inbox, log)
        worker.cores = cores
        self.workers[wid] = worker
        return worker

    def _cores(self, slot) -> list[int] | None:
        """CPU workers get disjoint blocks of cores when they fit (no two runs on one core); else None."""
        if slot is not None:
            return None
        try:
            cores = sorted(os.sched_getaffinity(0))
        except AttributeError:
            return None
        if self.threads * len(self.slots) > len(cores):
            return None
        used = {c for w in self.workers.values() if w.process.is_alive() for c in (w.cores or ())}
        free = [c for c in cores if c not in used]
        return free[:self.threads] if len(free) >= self.threads else None

    def run(self, todo: list[Task]) -> None:
        pending = deque((task, False) for task in todo)
        self.tally.launching(len(todo))
        for slot in self.slots[:len(todo)]:
            self._start(slot)
        try:
            while pending or any(w.task is not None for w in self.workers.values()):
                self._dispatch(pending)
                try:
                    message = self.outbox.get(timeout=self.POLL_S)
                except queue_module.Empty:
                    self._reap(pending)
                    continue
                self._handle(message, pending)
        finally:
            self._stop()

    def _dispatch(self, pending: deque) -> None:
        for worker in self.workers.values():
            if worker.ready and worker.task is None and pending:
                worker.task, worker.wait = pending.popleft()
                worker.inbox.put((worker.task, worker.wait))

    def _handle(self, message: tuple, pending: deque) -> None:
        kind, wid, payload = message
        worker = self.workers.get(wid)
        if worker is None:
            return
        if kind == "ready":
            worker.ready = True
        elif kind == "start":
            self.tally.started(worker.task, worker.where + ("; waiting for its claim" if worker.wait else ""))
        elif kind == "end":
            task, worker.task = worker.task, None
            if payload["status"] == "claimed":  # another bench trains it: do the others, then wait for it
                self.tally.echo(f"[-/{self.tally.total}] {task}: {payload['message']}; doing the others first")
                self.tally.running.discard(task)
                pending.append((task, True))
            else:
                self.tally.outcome(task, payload, worker.where, log=str(worker.log))
        elif kind == "dead":  # could not start (bad environment): every worker would fail alike
            self.workers.pop(wid)
            worker.process.join(5)
            if not self.workers:
                raise LtbenchError(f"worker {wid} could not start: {payload}; log: {worker.log}")

    def _reap(self, pending: deque) -> None:
        """Workers that died: drain their last messages, report their run, start a replacement."""
        for wid, worker in list(self.workers.items()):
            if worker.process.is_alive():
                continue
            while True:  # messages it sent before dying
                try:
                    self._handle(self.outbox.get_nowait(), pending)
                except queue_module.Empty:
                    break
            if wid not in self.workers or worker.process.is_alive():
                continue
            self.workers.pop(wid)
            code = worker.process.exitcode
            if worker.task is not None:
                how = (f"was killed by {_signal_name(-code)}" if code is not None and code < 0
                       else f"died (exit code {code})")  # a signal is known from the exit code (multiprocessing's -N)
                self.tally.lost(worker.task, f"worker {wid} {how} while training it; rerun the bench to resume it "
                                "from its last checkpoint", str(worker.log), worker.where)
                worker.task = None
            elif not worker.ready and not pending:
                continue
            if pending and self.restarts_left > 0:
                self.restarts_left -= 1
                self._start(worker.slot)
            if not self.workers and pending:
                raise LtbenchError(f"worker {wid} exited (code {code}) and no worker is left; log: {worker.log}")

    def _stop(self) -> None:
        for worker in self.workers.values():
            if worker.process.is_alive():
                worker.inbox.put(None)
        deadline = time.monotonic() + 10
        for worker in self.workers.values():
            worker.process.join(max(0.1, deadline - time.monotonic()))
            if worker.process.is_alive():  # interrupted mid-run: its claim goes with it, its checkpoint stays
                worker.process.terminate()
                worker.process.join(5)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
        for worker in self.workers.values():  # release the queues' semaphores (no resource_tracker warning)
            worker.inbox.close()
            worker.inbox.join_thread()
        self.outbox.close()
        self.outbox.join_thread()


def _signal_name(number: int) -> str:
    """``SIGKILL (signal 9)``; an unknown number as ``signal N``."""
    import signal

    try:
        return f"{signal.Signals(number).name} (signal {number})"
    except ValueError:
        return f"signal {number}"


def _with_device(config, device: str):
    from ltbench.trainer import TrainConfig

    return TrainConfig(**{**config.to_dict(), "device": device})


def exit_with_parent(say=None, poll_s: float = 1.0) -> None:
    """End this process as soon as the process that spawned it dies (issue 21).

    A SIGKILLed bench cannot stop its workers; without this they would train on as orphans (about
    1 GB each) and keep multiprocessing's resource_tracker alive too (it exits when the last process
    holding its pipe does). A daemon thread waits on the parent's sentinel, a pipe that closes
    when the parent dies, and also checks ``os.getppid()`` every ``poll_s`` (a forked grandchild
    could hold the pipe open), then calls ``os._exit``: the current run's claim dies with the
    process and its last checkpoint stays, as after any kill.
    """
    import threading
    from multiprocessing.connection import wait

    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        while not wait([parent.sentinel], timeout=poll_s) and os.getppid() == parent.pid:
            pass
        if say is not None:
            try:
                say(parent.pid)
            except Exception:  # noqa: BLE001 — nothing may stop the exit
                pass
        os._exit(70)  # EX_SOFTWARE: not a run's outcome (the parent that would read it is gone)

    threading.Thread(target=watch, name="ltbench-exit-with-parent", daemon=True).start()


def worker_main(wid: int, grid: Grid, threads: int, cores: list[int] | None, log: str, inbox, outbox) -> None:
    """A worker process: log to its file, pin its cores and threads, read the data, then train what it is given.

    ``cores``: this worker's own block of CPU cores (its affinity, so that its augmentation threads
    and prefetching size themselves to it as well); None = all of the parent's.
    """
    handle = open(log, "a", buffering=1, encoding="utf-8")
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(handle.fileno(), 1)  # C-level output (warnings of native libraries) too
    os.dup2(handle.fileno(), 2)
    sys.stdout = sys.stderr = handle
    stamp = lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())  # noqa: E731
    exit_with_parent(lambda pid: print(f"== {stamp()} worker {wid}: the bench (pid {pid}) is gone; exiting "
                                       "(its run's checkpoint is kept)", flush=True))
    try:
        if cores:
            os.sched_setaffinity(0, cores)
        import threading

        import torch
        from tqdm.auto import tqdm

        # tqdm's default lock holds a multiprocessing semaphore, which this worker's os._exit would
        # leave registered (a resource_tracker warning in the parent); a thread lock is all it needs.
        tqdm.set_lock(threading.RLock())
        torch.set_num_threads(threads)
        print(f"== {stamp()} worker {wid} pid {os.getpid()}: bench {grid.name}, device {grid.train.device}, "
              f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')}, "
              f"{torch.get_num_threads()} torch thread(s), cores {sorted(os.sched_getaffinity(0))}")
        register_methods(grid.methods)
        prepared = prepare(grid)
    except BaseException as exc:
        traceback.print_exc()
        outbox.put(("dead", wid, (str(exc).splitlines() or [type(exc).__name__])[0]))
        raise SystemExit(1)
    outbox.put(("ready", wid, None))
    while True:
        item = inbox.get()
        if item is None:
            break
        task, wait = item
        outbox.put(("start", wid, None))
        print(f"== {stamp()} {task}: started")
        try:
            outcome = run_task(grid, prepared, task, wait=wait, warn=print)
        except LtbenchError as exc:  # not the run's failure (a full disk): reported, the worker goes on
            traceback.print_exc()
            outcome = {"status": "failed", "record": {"method": task.row, "seed": task.seed, "epoch": None,
                                                       "reason": str(exc), "log_path": log, "log": Path(log).name}}
        print(f"== {stamp()} {task}: {outcome['status']}"
              + (f" ({outcome['record']['reason']})" if outcome["status"] == "failed" else ""))
        outbox.put(("end", wid, outcome))
    outbox.close()
    outbox.join_thread()  # every message delivered; then skip the interpreter's (torch's) slow teardown
    handle.flush()
    os._exit(0)
