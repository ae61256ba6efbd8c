"""``--launcher slurm`` on a real one-node SLURM cluster (tests/slurm_cluster.py; issue 21).

Each bench runs as a separate ``ltbench`` process against the cluster (``SLURM_CONF``), as a user
would: submitted, interrupted, rerun. The tasks are real SLURM jobs of submitit; the scheduler's
own commands (``scontrol requeue``, ``scancel``, ``scontrol suspend``) act on them. Skipped with the
reason where the machine cannot start a cluster (not root, no packages and not CI); under CI=true
it must run (.ci/run installs the packages).
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import slurm_cluster
from tests.test_launch import comparable

pytestmark = pytest.mark.slurm
slurm_clusters = pytest.fixture(scope="session")(slurm_cluster._clusters)

LTBENCH = [sys.executable, "-c", "import sys; from ltbench.cli import main; sys.exit(main())"]
BENCH = """\
name: slurm-test
dataset: {name: digits-lt, options: {imbalance: 10}}
split: {kind: official}
train: {backbone: small-cnn, image_size: 16, epochs: %d, batch_size: 64, lr: 0.05, eval_batch_size: 512, device: cpu}
seeds: [0]
methods: [ce, focal]
"""
EPOCHS = 30  # long enough (~15 s idle; 8 epochs finished before a requeue on an idle machine) that a task is still training when the scheduler acts on it
SLURM = ["--launcher", "slurm", "--slurm", "cpus_per_job=1", "--slurm", "time_min=5", "--slurm", "poll_s=0.5"]


class Bench:
    """One ``ltbench bench`` process; its stdout+stderr in a file, readable while it runs."""

    def __init__(self, tmp: Path, cluster, out: Path, name: str, *args: str) -> None:
        self.log = tmp / f"{name}.log"
        handle = open(self.log, "w")
        env = {**os.environ, **cluster.env(), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([*LTBENCH, "bench", "--benchmark", str(tmp / "b.yaml"), "--out", str(out),
                                      "--quiet", *args], stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=tmp)
        handle.close()

    @property
    def text(self) -> str:
        return self.log.read_text()

    def wait(self, timeout: float = 240) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail(f"ltbench bench still waiting after {timeout:.0f} s:\n{self.text}")


def until(what: str, ready, timeout: float = 90, bench: Bench | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = ready()
        if value:
            return value
        if bench is not None and bench.proc.poll() is not None:
            pytest.fail(f"ltbench exited (code {bench.proc.returncode}) while waiting for {what}:\n{bench.text}")
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}" + (f":\n{bench.text}" if bench else ""))


def job_of(out: Path, task: str):
    """The job id recorded for ``row/seed<k>`` in <out>/slurm/jobs.json (None before submission)."""
    try:
        return json.loads((out / "slurm" / "jobs.json").read_text())["tasks"][task]["job_id"]
    except (OSError, ValueError, KeyError):
        return None


def state(cluster, job: str) -> str:
    out = cluster.run("squeue", "-h", "-r", "-t", "all", "-j", job.split("_")[0], "-o", "%i|%T", check=False).stdout
    states = dict(line.split("|", 1) for line in out.splitlines() if "|" in line)
    return states.get(job, "GONE").strip()


def arrays(cluster) -> set[str]:
    out = cluster.run("squeue", "-h", "-r", "-t", "all", "-o", "%i", check=False).stdout
    return {line.split("_")[0] for line in out.split()}


def test_a_bench_equals_a_local_run_and_survives_requeue_scancel_and_an_interrupted_submitter(tmp_path, slurm_clusters):
    cluster = slurm_clusters(accounting=True)
    (tmp_path / "b.yaml").write_text(BENCH % EPOCHS)
    out = tmp_path / "slurm-out"
    ckpt = lambda row: out / "runs" / row / "seed0.ckpt"  # noqa: E731
    # The reference: the same grid in this machine's sequential bench at the tasks' thread count.
    local = Bench(tmp_path, cluster, tmp_path / "local", "local", "--threads", "1")

    # 1. One array of two tasks. ce is requeued by the scheduler after its first epoch; focal is scancel'ed.
    first = Bench(tmp_path, cluster, out, "first", *SLURM)
    ce = until("ce's job id", lambda: job_of(out, "ce/seed0"), bench=first)
    focal = job_of(out, "focal/seed0")
    until("ce's first checkpoint", ckpt("ce").exists, bench=first)
    cluster.run("scontrol", "requeue", ce)
    until("focal's first checkpoint", ckpt("focal").exists, bench=first)
    cluster.run("scancel", focal)
    assert first.wait() == 2, first.text
    text = first.text
    array = ce.split("_")[0]
    assert f"submitted 2 task(s) to slurm (job {array}); logs: {out / 'slurm'}/{array}_<index>_0_log.out" in text
    assert (out / "slurm" / f"{ce}_0_log.out").is_file()  # the log named as printed
    # ce: started, requeued (no longer counted as running), started again, resumed from its checkpoint, trained once
    assert f"ce seed 0: requeued (job {ce}, " in text, text
    lines = text.splitlines()
    at = next(k for k, line in enumerate(lines) if "ce seed 0: requeued" in line)
    running = lambda line: int(re.search(r"running (\d+),", line).group(1))  # noqa: E731
    assert running(lines[at]) == running(lines[at - 1]) - 1  # no longer counted as running
    assert text.count("ce seed 0: started") == 2 and text.count("ce seed 0: trained in") == 1
    ce_log = (out / "slurm" / f"{ce}_0_log.out").read_text()
    assert ce_log.count("ltbench: ce seed 0 of bench slurm-test") == 2
    assert f"ltbench: ce seed 0: resuming from {ckpt('ce')}" in ce_log
    # focal: lost with the job's whole reason, on one line, and its log
    (lost,) = [line for line in text.splitlines() if "focal seed 0: " in line and " failed: " in line]
    assert f"job {focal} failed: has not produced any output (state: CANCELLED by 0); log: " \
        f"{out / 'slurm'}/{focal}_0_log.err" in lost, lost
    assert "1 run(s) trained, 0 skipped; 1 failed" in text

    # 2. A rerun submits focal alone (a new array); its submitter is interrupted while the task is suspended.
    second = Bench(tmp_path, cluster, out, "second", *SLURM)
    focal2 = until("focal's new job", lambda: job_of(out, "focal/seed0") != focal and job_of(out, "focal/seed0"),
                   bench=second)
    until("focal's new job to run", lambda: state(cluster, focal2) == "RUNNING", bench=second)
    cluster.run("scontrol", "suspend", focal2.split("_")[0])
    second.proc.send_signal(signal.SIGINT)
    assert second.wait() != 0
    assert "stopped waiting; the 1 unfinished task(s) keep running" in second.text, second.text

    # 3. Rerun while it still runs: reattached, nothing submitted; it resumes and finishes; the report is written.
    before = arrays(cluster)
    third = Bench(tmp_path, cluster, out, "third", *SLURM)
    until("the rerun to reattach", lambda: "reattached to 1 task(s)" in third.text, bench=third)
    cluster.run("scontrol", "resume", focal2.split("_")[0])
    assert third.wait() == 0, third.text
    assert "submitted" not in third.text and arrays(cluster) == before
    assert f"reattached to 1 task(s) of job {focal2.split('_')[0]}" in third.text
    assert "focal seed 0: started" in third.text and "1 run(s) trained, 1 skipped" in third.text
    assert f"resuming from {ckpt('focal')}" in (out / "slurm" / f"{focal2}_0_log.out").read_text()
    assert (out / "summary.md").is_file()

    # Every result equals the local run's, bit for bit (same thread count: 1).
    assert local.wait() == 0, local.text
    assert comparable(out) == comparable(tmp_path / "local")
    assert {json.loads(p.read_text())["threads"] for p in out.glob("runs/*/seed0.json")} == {1}


def test_without_accounting_a_cancelled_task_is_reported_lost_not_waited_for(tmp_path, slurm_clusters):
    cluster = slurm_clusters(accounting=False)
    assert cluster.run("sacct", check=False).returncode != 0  # as on a site without accounting
    (tmp_path / "b.yaml").write_text(BENCH % EPOCHS)
    out = tmp_path / "out"
    bench = Bench(tmp_path, cluster, out, "bench", *SLURM, "--methods", "focal")
    job = until("the job id", lambda: job_of(out, "focal/seed0"), bench=bench)
    until("the task to run", lambda: state(cluster, job) == "RUNNING", bench=bench)
    cluster.run("scancel", job)
    assert bench.wait(timeout=90) == 2, bench.text
    text = bench.text
    assert "sacct failed (" in text and "following the array with squeue alone" in text
    assert f"submitted 1 task(s) to slurm (job {job}); logs: {out / 'slurm'}/{job}_0_log.out|.err" in text
    (lost,) = [line for line in text.splitlines() if "focal seed 0: " in line and " failed: " in line]
    assert f"job {job} failed: has not produced any output (state: CANCELLED); log: {out / 'slurm'}/{job}_0_log.err" \
        in lost, lost


def test_the_queue_of_a_cluster_without_accounting_calls_a_forgotten_job_gone(slurm_clusters, monkeypatch):
    from ltbench.launchers.slurm import Queue

    cluster = slurm_clusters(accounting=False)
    monkeypatch.setenv("SLURM_CONF", cluster.env()["SLURM_CONF"])
    queue = Queue()
    assert queue.states(["987654_0"]) == {"987654_0": "GONE"}
    assert queue.sacct_error and "accounting" in queue.sacct_error.lower()
