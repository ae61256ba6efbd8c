"""``--launcher slurm``: the runs of a bench as one SLURM job array, through submitit.

``pip install 'ltbench[slurm]'`` (submitit, Meta's job launcher: https://github.com/facebookincubator/submitit).
The submitting process prepares the data (the pixel cache is built once, in ``cache_dir``, which
the nodes must see: a shared filesystem), sorts the grid (finished runs, stale results and recorded
failures are not submitted), then submits one array with a task per remaining run
(``executor.map_array``). Each task is one ``ltbench.runs.run_one`` — its claim, per-epoch
checkpoints and failure record as in the sequential bench — writing into the same run store,
``<out>/runs``. The submitter waits with a progress display, then writes the report as the
sequential bench does; interrupted while waiting, it leaves the array running (``ltbench report
<out>`` builds the report once it finishes, or rerun the same command to wait again: finished runs
are skipped, runs still training are waited for through their claims).

Pre-emption and time limits: :class:`RunJob` is *checkpointable* in submitit's sense — on the
signal SLURM sends before it stops a job, submitit calls ``RunJob.checkpoint``, which requeues the
same run; the requeued task resumes from the run's last finished epoch (``seed<k>.ckpt``). A
resubmission of the bench does the same for runs whose job was lost.

Settings (``slurm:`` in the benchmark file, ``--slurm KEY=VALUE`` on the command line, the latter
winning; ``ltbench.config.slurm_settings``): ``partition``, ``account``, ``qos``, ``time_min``
(per task, at least 3, default 1440), ``gpus_per_job``, ``cpus_per_job``, ``mem_gb``, ``array_parallelism``
(tasks running at once), ``setup`` (shell lines run before each task, e.g. ``module load cuda``),
``poll_s`` (seconds between two looks at the queue, default 20), and
``cluster``: ``slurm`` (default) or ``local`` — submitit's local executor, which runs every task as
a process on this machine with the same pickling, logs, checkpoint-and-requeue and results (for tests
and for trying a benchmark file before a cluster; it ignores the SLURM-only settings and starts all
tasks at once). Job logs: ``<out>/slurm/<job id>_<task>_0_log.out`` and ``.err`` (submitit's names; on
the local executor ``<pid>_0_log.out``).

Waiting (issue 21, found on a real cluster): the submitter asks ``squeue`` for the array's states
at each poll (``poll_s``, default 20 s) and ``sacct`` only for jobs that have ended, so a
site without accounting (``sacct`` fails) still sees a task that ends without a result: it is
reported as lost with the job's final state, never waited for forever. The job id of every task
is kept in ``<out>/slurm/jobs.json``; a rerun while the array still runs reattaches to its tasks
instead of submitting duplicates (which would hold allocations blocked on the runs' claims).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from ltbench.errors import LtbenchError
from ltbench.launchers.grid import (Grid, Tally, Task, cpu_count, expected_key, prepare, register_methods, run_grid,
                                    run_task)

INSTALL_HINT = "pip install 'ltbench[slurm]'"
DEFAULT_TIME_MIN = 24 * 60
# SLURM job states of a job that may still produce a result (squeue(1) JOB STATE CODES); any other
# state is final. PENDING after RUNNING is a requeue (pre-emption, scontrol requeue, checkpoint()).
ALIVE = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING", "SUSPENDED",
         "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD", "SPECIAL_EXIT"}
WAITING = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SPECIAL_EXIT", "RESV_DEL_HOLD"}
# A finished job's result file may reach the submitter late on a shared filesystem (submitit waits
# 15 s too): a job in a final state without one is lost only after this long.
RESULT_GRACE_S = 15.0
JOBS_FILE = "jobs.json"


def import_submitit():
    """submitit, or the one line that says how to get it."""
    try:
        import submitit
    except ImportError:
        raise LtbenchError(f"--launcher slurm needs the submitit package: {INSTALL_HINT}") from None
    return submitit


class RunJob:
    """One run of the grid as a submitit task; checkpointable (requeued on pre-emption or time-out)."""

    def __init__(self, grid: Grid, threads: int | None) -> None:
        self.grid, self.threads = grid, threads

    def __call__(self, task: Task) -> dict:
        import torch

        from ltbench.runs import result_paths

        torch.set_num_threads(task_threads(self.threads))
        print(f"ltbench: {task} of bench {self.grid.name}: pid {os.getpid()}, {torch.get_num_threads()} torch "
              "thread(s)", flush=True)
        register_methods(self.grid.methods)
        prepared = prepare(self.grid)
        checkpoint = result_paths(self.grid.out_dir, task.row, task.seed)[0].with_suffix(".ckpt")
        if checkpoint.is_file():  # a requeued or resubmitted run (run_one says so if the checkpoint is not usable)
            print(f"ltbench: {task}: resuming from {checkpoint}", flush=True)
        # wait=True: if another process trains this run right now, wait for it and take its result
        outcome = run_task(self.grid, prepared, task, wait=True, warn=lambda line: print(line, flush=True))
        print(f"ltbench: {task}: {outcome['status']}", flush=True)
        return outcome

    def checkpoint(self, task: Task):
        """Called by submitit on the pre-emption / time-out signal: requeue this run. Its per-epoch
        checkpoint is already on disk (the requeued task resumes after the last finished epoch)."""
        submitit = import_submitit()
        return submitit.helpers.DelayedSubmission(self, task)


@dataclass
class SlurmLauncher:
    """``ltbench bench --launcher slurm [--slurm KEY=VALUE ...]``."""

    settings: dict = field(default_factory=dict)  # converted ltbench.config.slurm_settings values
    poll_s: float | None = None

    @property
    def cluster(self) -> str:
        return self.settings.get("cluster") or "slurm"

    def check(self) -> None:
        """Before any data is prepared: submitit present, and sbatch for a real cluster."""
        import_submitit()
        if self.cluster == "slurm" and shutil.which("sbatch") is None:
            raise LtbenchError("--launcher slurm: no sbatch command on this machine (submit from a SLURM login "
                               "node, or try the benchmark here with --slurm cluster=local)")

    def executor(self, folder: Path, name: str, tasks: int):
        submitit = import_submitit()
        s = self.settings
        executor = submitit.AutoExecutor(folder=str(folder), cluster=self.cluster)
        params = {"name": f"ltbench-{name}", "timeout_min": s.get("time_min") or DEFAULT_TIME_MIN,
                  "gpus_per_node": s.get("gpus_per_job"), "cpus_per_task": s.get("cpus_per_job"),
                  "mem_gb": s.get("mem_gb"), "tasks_per_node": 1, "nodes": 1}
        if self.cluster == "slurm":
            params.update(slurm_partition=s.get("partition"), slurm_account=s.get("account"),
                          slurm_qos=s.get("qos"), slurm_setup=s.get("setup"),
                          slurm_array_parallelism=s.get("array_parallelism") or tasks)
        executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
        return executor

    def threads(self, tasks: int) -> int | None:
        if self.settings.get("cpus_per_job"):
            return self.settings["cpus_per_job"]
        if self.cluster == "local":  # every task starts at once on this machine: split its cores
            return max(1, cpu_count() // max(1, min(tasks, self.settings.get("array_parallelism") or tasks)))
        return None  # the task's CPU affinity (its allocation)

    def __call__(self, bench, out_dir: Path, prepared, *, echo, warn, force: bool, retry_failed: bool,
                 keep_checkpoints: bool, progress: bool = True):
        self.check()
        return run_grid(bench, out_dir, prepared, lambda grid, todo, tally: self._submit_and_wait(grid, todo, tally, echo),
                        echo=echo, force=force, retry_failed=retry_failed, keep_checkpoints=keep_checkpoints,
                        progress=progress)

    def _submit_and_wait(self, grid: Grid, todo: list[Task], tally: Tally, echo) -> None:
        folder = Path(grid.out_dir) / "slurm"
        queue = Queue() if self.cluster == "slurm" else None
        waiting = self._reattach(grid, folder, todo, queue, echo) if queue is not None else {}
        fresh = [task for task in todo if task not in waiting]
        first = None
        if fresh:
            executor = self.executor(folder, grid.name, len(fresh))
            jobs = executor.map_array(RunJob(grid, self.threads(len(fresh))), fresh)
            first = jobs[0].job_id.split("_")[0]
            if queue is not None:
                remember(folder, grid, dict(zip(fresh, jobs)))
            if len(jobs) == 1:  # submitit submits a single task as a plain job (no array index)
                logs = f"{jobs[0].paths.stdout}|.err"
            elif queue is not None:
                logs = f"{folder}/{first}_<index>_0_log.out|.err"
            else:
                logs = f"{folder}/<pid>_0_log.out|.err"
            echo(f"submitted {len(jobs)} task(s) to {self.cluster} (job {first}); logs: {logs}")
            waiting.update(zip(fresh, jobs))
        tally.launching(len(todo))
        poll = self.settings.get("poll_s") or self.poll_s or (1.0 if self.cluster == "local" else 20.0)
        arrays = sorted({job.job_id.split("_")[0] for job in waiting.values()})
        try:
            if queue is None:
                self._wait_local(waiting, tally, poll)
            else:
                self._wait_slurm(waiting, tally, poll, queue, echo)
        except KeyboardInterrupt:
            again = " (it reattaches to them)" if queue is not None else ""
            echo(f"ltbench: stopped waiting; the {len(waiting)} unfinished task(s) keep running (job "
                 f"{', '.join(arrays)}): rerun the same command to wait again{again}, or "
                 f"`ltbench report {grid.out_dir}` when they finish")
            raise

    def _reattach(self, grid: Grid, folder: Path, todo: list[Task], queue: "Queue", echo) -> dict:
        """The tasks of ``todo`` whose earlier job (``jobs.json``, same run key) is still queued or running."""
        submitit = import_submitit()
        known = recalled(folder, grid, todo)
        if not known:
            return {}
        states = queue.states(sorted({e["job_id"] for e in known.values()}))
        found = {task: submitit.SlurmJob(folder=str(folder), job_id=entry["job_id"]) for task, entry in known.items()
                 if states.get(entry["job_id"], "GONE") in ALIVE}
        if found:
            arrays = sorted({job.job_id.split("_")[0] for job in found.values()})
            echo(f"reattached to {len(found)} task(s) of job {', '.join(arrays)}, still queued or running "
                 f"({folder / JOBS_FILE}); not submitting them again")
        return found

    def _wait_local(self, waiting: dict, tally: Tally, poll: float) -> None:
        """submitit's local executor: its jobs are this machine's processes (their state is exact)."""
        while waiting:
            for task, job in list(waiting.items()):
                if task not in tally.running and _state(job) == "RUNNING":
                    tally.started(task, f"job {job.job_id}")
                if job.done():
                    del waiting[task]
                    self._collect(task, job, tally)
            if waiting:
                time.sleep(poll)

    def _wait_slurm(self, waiting: dict, tally: Tally, poll: float, queue: "Queue", echo) -> None:
        """A cluster: one squeue per poll for all tasks (sacct for jobs that left the queue); a result
        file means done; a final state without one, for ``RESULT_GRACE_S``, means lost."""
        ended: dict[Task, float] = {}  # when a task was first seen in a final state without a result
        warned = False
        while waiting:
            states = queue.states(sorted({job.job_id for job in waiting.values()}))
            if queue.sacct_error and not warned:
                warned = True
                echo(f"ltbench: sacct failed ({queue.sacct_error}); following the array with squeue alone: "
                     "a task that leaves the queue without a result is reported as lost")
            for task, job in list(waiting.items()):
                state = states.get(job.job_id)
                if _has_result(job):
                    del waiting[task]
                    self._collect(task, job, tally)
                elif state is None:  # the scheduler did not answer this time
                    continue
                elif state in ALIVE:
                    ended.pop(task, None)
                    if state == "RUNNING" and task not in tally.running:
                        tally.started(task, f"job {job.job_id}")
                    elif state in WAITING and task in tally.running:
                        tally.requeued(task, f"job {job.job_id}, {state.lower()}")
                elif time.monotonic() - ended.setdefault(task, time.monotonic()) >= RESULT_GRACE_S:
                    del waiting[task]
                    what = "final state unknown: it left the queue and sacct has no record" if state == "GONE" \
                        else f"state: {queue.detail.get(job.job_id, state)}"
                    self._lost(task, job, tally, f"has not produced any output ({what})")
            if waiting:
                time.sleep(min(poll, RESULT_GRACE_S / 3) if ended else poll)

    @staticmethod
    def _collect(task: Task, job, tally: Tally) -> None:
        try:
            outcome = job.result()
        except Exception as exc:  # the job itself failed: killed, crashed, or an error outside the run
            SlurmLauncher._lost(task, job, tally, failure_reason(exc))
            return
        if task not in tally.running:  # it ran between two polls: its started line all the same
            tally.started(task, f"job {job.job_id}")
        tally.outcome(task, outcome, f"job {job.job_id}", log=str(job.paths.stderr))

    @staticmethod
    def _lost(task: Task, job, tally: Tally, reason: str) -> None:
        tally.lost(task, f"job {job.job_id} failed: {reason}", str(job.paths.stderr), f"job {job.job_id}")


def task_threads(threads: int | None) -> int:
    """A task's torch threads: the launcher's count (``cpus_per_job``; the local executor's share),
    else the task's allocation as SLURM states it (``SLURM_CPUS_PER_TASK``), else its CPU affinity.
    Affinity alone can be the whole node where the site does not bind tasks to their CPUs."""
    if threads:
        return threads
    given = os.environ.get("SLURM_CPUS_PER_TASK", "").strip()
    if given.isdigit() and int(given) > 0:
        return int(given)
    return cpu_count()


def failure_reason(exc: BaseException) -> str:
    """submitit's error as one line, whole: ``... has not produced any output (state: CANCELLED by 0)``;
    the job's error stream it appends is left to the log the report names, and of a traceback the
    last line (the exception) is kept."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip() and set(line.strip()) != {"-"}]
    if not lines:
        return type(exc).__name__
    for marker in ("Error stream produced:", "No error stream produced", "No output/error stream produced"):
        cut = next((k for k, line in enumerate(lines) if line.startswith(marker)), None)
        if cut is not None:
            lines = lines[:cut]
    if lines[0].endswith("with trace:"):  # FailedJobError: "Job (task=0) failed during processing with trace:"
        body = [line for line in lines[1:] if not line.startswith(("You can check full logs", "or at paths:", "- /"))]
        return f"{lines[0][:-len(' with trace:')]}: {body[-1] if body else '(no trace)'}"
    return " ".join(lines)


class Queue:
    """The states of a cluster's jobs: ``squeue`` (jobs the controller still holds, final states
    included for ``MinJobAge``), then ``sacct`` for the others. Without accounting ``sacct`` fails
    (``sacct_error``) and a job the controller no longer holds is ``GONE``."""

    def __init__(self) -> None:
        self.sacct_error: str | None = None
        self.detail: dict[str, str] = {}  # job id -> sacct's fuller final state ("CANCELLED by 0")

    def states(self, job_ids: list[str]) -> dict[str, str]:
        """job id (``123_4``) -> state; {} when squeue does not answer (ask again at the next poll)."""
        arrays = sorted({j.split("_")[0] for j in job_ids})
        out = _command(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T", "-j", ",".join(arrays)])
        if out is None:
            return {}
        if isinstance(out, subprocess.CalledProcessError):
            if "Invalid job id" not in (out.stderr or ""):
                return {}
            out = ""  # none of them is known to the controller any more
        states = {}
        for line in out.splitlines():
            job, _, state = line.strip().partition("|")
            states[job] = state.split()[0].upper() if state.strip() else "UNKNOWN"
        final = [j for j in job_ids if states.get(j, "GONE") not in ALIVE]
        if final and self.sacct_error is None:
            accounted = self._sacct(final)
            for job in final:
                if job in accounted:
                    self.detail[job] = accounted[job]
                    states.setdefault(job, accounted[job].split()[0].upper())
        return {j: states.get(j, "GONE") for j in job_ids}

    def _sacct(self, job_ids: list[str]) -> dict[str, str]:
        out = _command(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(job_ids)])
        if out is None or isinstance(out, subprocess.CalledProcessError):
            self.sacct_error = "no sacct command, or it did not answer" if out is None else \
                " ".join((out.stderr or out.stdout or f"exit code {out.returncode}").split())[:200]
            return {}
        found = {}
        for line in (out or "").splitlines():
            job, _, state = line.strip().partition("|")
            if job and state:
                found[job] = state.strip()
        return found


def _command(argv: list[str]):
    """stdout of a scheduler command; the CalledProcessError when it fails; None when it cannot be run."""
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60).stdout
    except subprocess.CalledProcessError as exc:
        return exc
    except (OSError, subprocess.TimeoutExpired):
        return None


# ------------------------------------------------------------------------------ jobs.json


def _task_name(task: Task) -> str:
    return f"{task.row}/seed{task.seed}"


def remember(folder: Path, grid: Grid, jobs: dict) -> None:
    """Record each task's job id and run key in ``<out>/slurm/jobs.json`` (replaced atomically)."""
    path = folder / JOBS_FILE
    entries = _read_jobs(path)
    for task, job in jobs.items():
        entries[_task_name(task)] = {"job_id": job.job_id, "run_key": expected_key(grid, task),
                                     "submitted": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"version": 1, "tasks": entries}, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def recalled(folder: Path, grid: Grid, tasks: list[Task]) -> dict:
    """The recorded job of each task that has one for the same run key."""
    entries = _read_jobs(folder / JOBS_FILE)
    found = {}
    for task in tasks:
        entry = entries.get(_task_name(task))
        if isinstance(entry, dict) and isinstance(entry.get("job_id"), str) \
                and entry.get("run_key") == expected_key(grid, task):
            found[task] = entry
    return found


def _read_jobs(path: Path) -> dict:
    """The recorded tasks; an unreadable file counts as none (the runs' claims still prevent double training)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    tasks = data.get("tasks") if isinstance(data, dict) else None
    return tasks if isinstance(tasks, dict) else {}


def _has_result(job) -> bool:
    """The task's result file exists, its folder's attributes refreshed first (an NFS client caches
    them; submitit does the same)."""
    folder = job.paths.folder
    try:
        folder.chmod(folder.stat().st_mode)
    except OSError:
        pass
    return job.paths.result_pickle.exists()


def _state(job) -> str:
    try:
        return str(job.state).upper()
    except Exception:  # the scheduler could not be asked this time: ask again at the next poll
        return "UNKNOWN"
