"""Scale-out (issue 10): several runs at once in local worker processes, or as a submitit job array.

End to end through the CLI's entry point in this process (``run_inline``): the workers and jobs are
real processes that import ltbench afresh, so the test-only methods registered here reach them as
classes (``Grid.methods``, pickled by reference to this module; ``PYTHONPATH`` lets submitit's job
processes import it). The submitit tests use submitit's local executor (``--slurm cluster=local``):
the same pickling, logs, checkpoint-and-requeue and results as on a SLURM cluster, on this machine.
"""
from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ltbench import LossMethod
from ltbench.store.claims import Claim
from ltbench.errors import LtbenchError
from ltbench.launchers.local import plan_slots
from ltbench.registry import register_method, unregister_method
from tests.test_cli import assert_one_line_error, run_inline

REPO = Path(__file__).resolve().parents[1]
BENCH = """\
name: launch
dataset: {name: synthetic}
split: {kind: grouped, seed: 0}
train: {backbone: small-cnn, image_size: 16, epochs: %d, batch_size: 32, lr: 0.05, device: cpu}
seeds: [0, 1]
methods: [ce, focal]
"""


class Raises(LossMethod):
    """Test-only: the run fails in its first step (recorded by run_one; its worker goes on)."""

    def loss(self, logits, labels):
        raise RuntimeError("boom in the loss")


class KillsItsProcess(LossMethod):
    """Test-only: the process training it dies at once (a segfault or the OOM killer, as far as anyone can tell)."""

    def loss(self, logits, labels):
        os._exit(3)


@pytest.fixture
def methods():
    register_method("test-raises")(Raises)
    register_method("test-dies")(KillsItsProcess)
    yield
    unregister_method("test-raises")
    unregister_method("test-dies")


@pytest.fixture
def cli(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # job processes import this module (its test methods)
    return lambda *args: run_inline(*args, capsys=capsys, monkeypatch=monkeypatch, cwd=tmp_path)


def bench_file(tmp_path: Path, epochs: int = 2) -> Path:
    path = tmp_path / "launch.yaml"
    path.write_text(BENCH % epochs)
    return path


def comparable(out: Path, rows=("ce", "focal")) -> dict:
    """Each result without timings and memory, and each saved array, of the given rows."""
    found = {}
    for row in rows:
        for path in sorted((out / "runs" / row).glob("*.json")):
            result = json.loads(path.read_text())
            for key in ("wall_time_s", "memory"):
                result.pop(key, None)
            result["history"] = [{k: v for k, v in h.items() if k != "train_time_s"} for h in result["history"]]
            found[str(path.relative_to(out))] = result
        for path in sorted((out / "runs" / row).glob("*.npz")):
            with np.load(path) as arrays:
                found[str(path.relative_to(out))] = {k: arrays[k].tobytes() for k in arrays}
    return found


# ------------------------------------------------------------------------------- fast checks


def test_slots_deal_gpus_round_robin():
    assert plan_slots(None, None, None) == [None]
    assert plan_slots(3, None, None) == [None, None, None]
    assert plan_slots(None, [0, 1], 2) == [0, 1, 0, 1]
    assert plan_slots(3, [0, 1], 2) == [0, 1, 0]  # fewer jobs than slots: still on both devices
    assert plan_slots(None, [1], None) == [1]
    with pytest.raises(LtbenchError, match=r"--jobs 5: more than the 4 GPU slot\(s\)"):
        plan_slots(5, [0, 1], 2)
    with pytest.raises(LtbenchError, match="--runs-per-gpu 2: only with GPUs"):
        plan_slots(2, None, 2)


def test_a_gpu_slot_names_the_device_as_the_parent_sees_it(monkeypatch):
    from ltbench.launchers.local import visible_device

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert visible_device(1) == "1"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")  # the parent's own mask: --gpus 1 is physical device 3
    assert visible_device(1) == "3"


BAD_OPTIONS = [
    (("--jobs", "0"), "--jobs 0: expected an integer of at least 1"),
    (("--jobs", "two"), "--jobs two: expected an integer of at least 1"),
    (("--jobs", "2", "--threads", "0"), "--threads 0: expected an integer of at least 1"),
    (("--threads", "x"), "--threads x: expected an integer of at least 1"),  # --jobs 1 takes --threads too
    (("--launcher", "cloud"), "--launcher cloud: choose one of local, slurm"),
    (("--slurm", "partition=gpu"), "--slurm: only with --launcher slurm"),
    (("--launcher", "slurm", "--jobs", "2"), "--jobs: an option of --launcher local"),
    (("--launcher", "slurm", "--slurm", "time_min=0"), "--slurm time_min=0: must be at least 3"),
    # SIGUSR2 comes 90 s before the limit: 1-2 minutes would checkpoint at once (issue 21)
    (("--launcher", "slurm", "--slurm", "time_min=2"),
     "--slurm time_min=2: must be at least 3 (submitit's checkpoint signal comes 90 s before the time limit)"),
    (("--launcher", "slurm", "--slurm", "poll_s=0"), "--slurm poll_s=0: must be greater than 0"),
    (("--launcher", "slurm", "--slurm", "mem_gb=lots"), "--slurm mem_gb=lots: expected a number or null"),
    (("--launcher", "slurm", "--slurm", "nodes=2"), "--slurm nodes=2: not a slurm setting"),
    (("--launcher", "slurm", "--slurm", "cluster=aws"), "--slurm cluster=aws: choose one of slurm, local"),
    (("--launcher", "slurm", "--slurm", "partition"), "--slurm 'partition': expected KEY=VALUE"),
    (("--jobs", "2", "--gpus", "0,0"), "--gpus 0,0: device 0 is listed twice"),
    (("--jobs", "2", "--gpus", "a"), "--gpus a: expected device indices like 0,1"),
    (("--jobs", "2", "--gpus", "0"), "--gpus 0: the bench runs on the CPU (device cpu)"),
]


@pytest.mark.parametrize("options,fragment", BAD_OPTIONS, ids=[b[1][:30] for b in BAD_OPTIONS])
def test_bad_scale_out_options_are_one_line_before_any_data(tmp_path, cli, options, fragment):
    out = tmp_path / "out"
    proc = cli("bench", "--benchmark", str(bench_file(tmp_path)), "--out", str(out), *options)
    assert_one_line_error(proc, fragment)
    assert not out.exists()


def test_a_bad_slurm_section_of_the_benchmark_file_is_one_line(tmp_path, cli):
    path = tmp_path / "b.yaml"
    path.write_text(BENCH % 2 + "slurm: {partition: gpu, array_parallelism: 0}\n")
    assert_one_line_error(cli("bench", "--benchmark", str(path), "--out", str(tmp_path / "out")),
                          f"{path}: slurm.array_parallelism = 0: must be at least 1")
    path.write_text(BENCH % 2 + "slurm: {partition: gpu, gpu: 1}\n")
    assert_one_line_error(cli("bench", "--benchmark", str(path), "--out", str(tmp_path / "out")),
                          "slurm.gpu = 1: not a slurm setting (known: account, array_parallelism, cluster")


def test_without_submitit_the_slurm_launcher_says_how_to_install_it(tmp_path, cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if not installed: importing it raises ImportError
    proc = cli("bench", "--benchmark", str(bench_file(tmp_path)), "--out", str(tmp_path / "out"),
               "--launcher", "slurm", "--slurm", "cluster=local")
    assert_one_line_error(proc, "--launcher slurm needs the submitit package: pip install 'ltbench[slurm]'")


def test_slurm_without_sbatch_is_one_line(tmp_path, cli, monkeypatch):
    pytest.importorskip("submitit")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no sbatch anywhere
    proc = cli("bench", "--benchmark", str(bench_file(tmp_path)), "--out", str(tmp_path / "out"), "--launcher", "slurm")
    assert_one_line_error(proc, "--launcher slurm: no sbatch command on this machine", "--slurm cluster=local")


def test_a_slurm_task_takes_its_threads_from_the_launcher_then_its_allocation(monkeypatch):
    """Issue 21: on a node that does not bind tasks to their CPUs, affinity is the whole node;
    SLURM_CPUS_PER_TASK is the task's allocation."""
    from ltbench.launchers.grid import cpu_count
    from ltbench.launchers.slurm import task_threads

    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
    assert task_threads(2) == 2  # cpus_per_job (or the local executor's share) first
    assert task_threads(None) == 3
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "")
    assert task_threads(None) == cpu_count()
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    assert task_threads(None) == cpu_count()


def test_a_failed_job_keeps_submitits_whole_reason_on_one_line():
    """Issue 21: the reason was submitit's first line only ("Job 5_1 (task: 0) with path ..."), without
    "has not produced any output (state: CANCELLED by 0)"; the error stream stays in the log."""
    utils = pytest.importorskip("submitit.core.utils")
    from ltbench.launchers.slurm import failure_reason

    uncompleted = utils.UncompletedJobError("\n".join([
        "Job 5_1 (task: 0) with path /o/slurm/5_1_0_result.pkl", "has not produced any output (state: CANCELLED by 0)",
        "Error stream produced:", "-" * 40, "slurmstepd: error: *** JOB 6 CANCELLED AT 2026-12-08T01:47:58 ***"]))
    assert failure_reason(uncompleted) == ("Job 5_1 (task: 0) with path /o/slurm/5_1_0_result.pkl has not produced "
                                           "any output (state: CANCELLED by 0)")
    no_stream = utils.UncompletedJobError("Job 7 (task: 0) with path /o/7_0_result.pkl\nhas not produced any output "
                                          "(state: FINISHED)\nNo output/error stream produced ! Check: /o/7_0_log.out")
    assert failure_reason(no_stream) == "Job 7 (task: 0) with path /o/7_0_result.pkl has not produced any output " \
                                        "(state: FINISHED)"
    failed = utils.FailedJobError(  # an exception raised in the task outside run_one, as submitit words it
        "Job (task=0) failed during processing with trace:\n----------------------\nTraceback (most recent call "
        "last):\n  File \"x.py\", line 1, in f\nltbench.errors.LtbenchError: the data changed\n"
        "----------------------\nYou can check full logs with 'job.stderr(0)' and 'job.stdout(0)'or at paths:\n"
        "  - /o/5_0_0_log.err\n  - /o/5_0_0_log.out")
    assert failure_reason(failed) == ("Job (task=0) failed during processing: ltbench.errors.LtbenchError: "
                                      "the data changed")
    assert failure_reason(RuntimeError("")) == "RuntimeError"


def stale_outcome() -> dict:
    """A task's outcome as run_task returns it (module level: pickled by reference into the job)."""
    return {"status": "stale", "path": "/o/runs/ce/seed0.json", "stored_key": "aaa", "current_key": "bbb"}


def test_a_task_that_ran_between_two_polls_still_gets_its_started_line(tmp_path, monkeypatch):
    """Issue 21: a short task, finished before any poll saw it running, had no `started` line. A real
    job of submitit's local executor, collected after it ended."""
    submitit = pytest.importorskip("submitit")
    from ltbench.launchers.grid import Tally, Task
    from ltbench.launchers.slurm import SlurmLauncher

    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the job imports this module
    executor = submitit.AutoExecutor(folder=str(tmp_path), cluster="local")
    executor.update_parameters(timeout_min=3)
    job = executor.submit(stale_outcome)
    job.wait()
    lines = []
    tally = Tally(1, lines.append, bar=False)
    tally.launching(1)
    SlurmLauncher._collect(Task("ce", 0), job, tally)
    assert lines[0].startswith(f"ce seed 0: started (job {job.job_id})")
    assert lines[1].startswith("[1/1] ce seed 0: STALE: /o/runs/ce/seed0.json holds a result of another configuration")
    assert not tally.running


# ------------------------------------------------------------------------------- local workers


@pytest.mark.slow
def test_two_local_jobs_equal_the_sequential_bench_and_failures_stay_isolated(tmp_path, cli, methods):
    bench = bench_file(tmp_path)
    # The sequential bench, with the thread count each of the two workers gets (--threads 1).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sequential = cli("bench", "--benchmark", str(bench), "--out", str(tmp_path / "seq"), "--quiet", "--seeds", "0")
    finally:
        torch.set_num_threads(threads)
    assert sequential.returncode == 0, sequential.stderr

    out = tmp_path / "par"
    proc = cli("bench", "--benchmark", str(bench), "--out", str(out), "--quiet", "--jobs", "2", "--threads", "1",
               "--seeds", "0", "--methods", "ce,test-dies,test-raises,focal")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "local launcher: 2 run(s) at once (cpu, cpu), 1 torch thread(s) each" in proc.stdout
    # Same run keys, metrics, histories and probabilities as the sequential bench, bit for bit.
    assert comparable(out) == comparable(tmp_path / "seq")
    lines = proc.stdout.splitlines()
    for row in ("ce", "focal"):
        assert sum(f"{row} seed 0: trained in" in line for line in lines) == 1
    # A run that raises is recorded as the sequential bench records it; its worker went on.
    (raised,) = [line for line in lines if "test-raises seed 0: FAILED in epoch 0: RuntimeError: boom in the loss" in line]
    record_log = out / "runs" / "test-raises" / "seed0.failed.log"
    assert f"traceback: {record_log}" in raised and "boom in the loss" in record_log.read_text()
    # A run whose process dies is reported with its worker's log; a new worker took over.
    (died,) = [line for line in lines if "test-dies seed 0: FAILED" in line]
    log = re.search(r"log: (\S+worker\d+\.log)", died).group(1)
    assert "died (exit code 3) while training it" in died and "test-dies seed 0: started" in Path(log).read_text()
    assert "2 run(s) trained, 0 skipped; 2 failed" in proc.stdout
    summary = (out / "summary.md").read_text()
    assert "boom in the loss" in summary and "died (exit code 3)" in summary
    assert sorted(p.parent.name for p in out.glob("runs/*/*.lock")) == ["test-dies"]  # left by the dead process,
    assert Claim(out / "runs" / "test-dies" / "seed0.lock").acquire(wait=False)  # whose claim the kernel released

    # A rerun trains nothing, starts no worker, and reports the recorded failure again.
    again = cli("bench", "--benchmark", str(bench), "--out", str(out), "--quiet", "--jobs", "2", "--seeds", "0",
                "--methods", "ce,test-raises")
    assert again.returncode == 2
    assert "local launcher" not in again.stdout and "0 run(s) trained, 1 skipped; 1 failed" in again.stdout
    assert f"(replaying the failure recorded in {out / 'runs' / 'test-raises' / 'seed0.failed.json'} at " in again.stdout
    assert "; --retry-failed retrains it)" in again.stdout


# ------------------------------------------------------------------------------- submitit


@pytest.mark.slow
def test_a_submitit_array_requeues_a_preempted_task_reports_failed_jobs_and_a_resubmission_trains_nothing(
        tmp_path, cli, methods):
    """One array of three tasks on submitit's local executor: a run pre-empted after its first epoch
    (SIGUSR2, what SLURM and the local executor send before stopping a job) is requeued and resumes from
    its checkpoint; a run that raises is recorded; a task whose process dies is a failed job, reported
    with its log. Then a resubmission submits nothing."""
    pytest.importorskip("submitit")
    import threading

    bench = bench_file(tmp_path, epochs=12)
    out = tmp_path / "out"
    slurm = ("--launcher", "slurm", "--slurm", "cluster=local", "--slurm", "time_min=10")
    sent = {}

    def preempt_after_first_checkpoint():
        deadline = time.monotonic() + 300
        ckpt = out / "runs" / "ce" / "seed0.ckpt"
        while time.monotonic() < deadline and not ckpt.exists():
            time.sleep(0.02)
        for log in (out / "slurm").glob("*_log.out"):
            found = re.search(r"ltbench: ce seed 0 of bench launch: pid (\d+)", log.read_text())
            if found:
                sent["pid"], sent["log"] = int(found.group(1)), log
                os.kill(sent["pid"], signal.SIGUSR2)
                return

    watcher = threading.Thread(target=preempt_after_first_checkpoint, daemon=True)
    watcher.start()
    proc = cli("bench", "--benchmark", str(bench), "--out", str(out), "--quiet", *slurm, "--seeds", "0",
               "--methods", "ce,test-raises,test-dies")
    watcher.join(5)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "submitted 3 task(s) to local" in proc.stdout
    lines = proc.stdout.splitlines()
    # The pre-empted run: requeued by submitit (checkpoint()), resumed in a new process, trained once.
    assert "pid" in sent, "the job's process was not found to pre-empt"
    stdout = sent["log"].read_text() + sent["log"].with_suffix(".err").read_text()
    assert "Calling checkpoint method" in stdout and "Requeued job" in stdout  # submitit's log
    starts = re.findall(r"ltbench: ce seed 0 of bench launch: pid (\d+)", stdout)
    assert len(starts) == 2 and int(starts[0]) == sent["pid"] != int(starts[1])  # the same run, a new process
    assert f"ltbench: ce seed 0: resuming from {out / 'runs' / 'ce' / 'seed0.ckpt'}" in stdout  # not from scratch
    assert "warning: checkpoint" not in stdout  # and it was usable (run_one warns about one it skips)
    assert sum("ce seed 0: trained in" in line for line in lines) == 1
    assert len(json.loads((out / "runs" / "ce" / "seed0.json").read_text())["history"]) == 12
    # The run that raised: its failure record and traceback, and the job's log.
    raised = next(line for line in lines if "test-raises seed 0: FAILED" in line)
    assert f"traceback: {out / 'runs' / 'test-raises' / 'seed0.failed.log'}" in raised
    assert (out / "runs" / "test-raises" / "seed0.failed.json").is_file()
    # The job whose process died: reported with the job's log file, which exists.
    died = next(line for line in lines if "test-dies seed 0: FAILED" in line)
    assert "failed" in died and str(out / "slurm") in died
    assert Path(re.search(r"log: (\S+\.err)", died).group(1)).is_file()
    # The report, built when the array finished.
    assert "1 run(s) trained, 0 skipped; 2 failed" in proc.stdout and (out / "summary.md").is_file()

    # Resubmitting: finished runs are skipped before anything is submitted.
    jobs_before = sorted(p.name for p in (out / "slurm").iterdir())
    again = cli("bench", "--benchmark", str(bench), "--out", str(out), "--quiet", *slurm, "--seeds", "0",
                "--methods", "ce")
    assert again.returncode == 0, again.stderr
    assert "submitted" not in again.stdout and "0 run(s) trained, 1 skipped" in again.stdout
    assert sorted(p.name for p in (out / "slurm").iterdir()) == jobs_before
