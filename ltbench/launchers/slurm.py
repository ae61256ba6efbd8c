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
(per task, default 1440), ``gpus_per_job``, ``cpus_per_job``, ``mem_gb``, ``array_parallelism``
(tasks running at once), ``setup`` (shell lines run before each task, e.g. ``module load cuda``), and
``cluster``: ``slurm`` (default) or ``local`` — submitit's local executor, which runs every task as
a process on this machine with the same pickling, logs, checkpoint-and-requeue and results (for tests
and for trying a benchmark file before a cluster; it ignores the SLURM-only settings and starts all
tasks at once). Job logs: ``<out>/slurm/<job id>_<task>_log.out`` and ``.err``.
"""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from ltbench.errors import LtbenchError
from ltbench.launchers.grid import Grid, Tally, Task, cpu_count, prepare, register_methods, run_grid, run_task

INSTALL_HINT = "pip install 'ltbench[slurm]'"
DEFAULT_TIME_MIN = 24 * 60


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

        torch.set_num_threads(self.threads or cpu_count())  # the job's allocation, not the node's cores
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
        executor = self.executor(folder, grid.name, len(todo))
        jobs = executor.map_array(RunJob(grid, self.threads(len(todo))), todo)
        first = jobs[0].job_id.split("_")[0]
        echo(f"submitted {len(jobs)} task(s) to {self.cluster} (job {first}); logs: {folder}/<job id>_<task>_log.out|err")
        tally.launching(len(jobs))
        waiting = dict(zip(todo, jobs))
        poll = self.poll_s or (1.0 if self.cluster == "local" else 20.0)
        try:
            while waiting:
                for task, job in list(waiting.items()):
                    if task not in tally.running and _state(job) == "RUNNING":
                        tally.started(task, f"job {job.job_id}")
                    if not job.done():
                        continue
                    del waiting[task]
                    self._collect(task, job, tally)
                if waiting:
                    time.sleep(poll)
        except KeyboardInterrupt:
            echo(f"ltbench: stopped waiting; the {len(waiting)} unfinished task(s) keep running (job {first}): "
                 f"rerun the same command to wait again, or `ltbench report {grid.out_dir}` when they finish")
            raise

    @staticmethod
    def _collect(task: Task, job, tally: Tally) -> None:
        log = str(job.paths.stderr)
        try:
            outcome = job.result()
        except Exception as exc:  # the job itself failed: killed, crashed, or an error outside the run
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            reason = lines[0] if lines else type(exc).__name__
            tally.lost(task, f"job {job.job_id} failed: {reason[:300]}", log, f"job {job.job_id}")
            return
        tally.outcome(task, outcome, f"job {job.job_id}", log=log)


def _state(job) -> str:
    try:
        return str(job.state).upper()
    except Exception:  # the scheduler could not be asked this time: ask again at the next poll
        return "UNKNOWN"
