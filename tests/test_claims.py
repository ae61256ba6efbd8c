"""One bench per run at a time (issue 9): per-run claims that a dead process does not hold."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from ltbench.store.claims import Claim
from tests.test_resume import TINY, bench_cmd

HOLD = """\
import sys, time
from ltbench.store.claims import Claim
claim = Claim(sys.argv[1])
assert claim.acquire()
print("held", flush=True)
time.sleep(60)
"""


def test_a_claim_excludes_others_until_released(tmp_path):
    path = tmp_path / "runs" / "ce" / "seed0.lock"
    first, second = Claim(path), Claim(path)
    assert first.acquire()
    assert not second.acquire()  # same process, other open file: flock still excludes
    info = json.loads(path.read_text())
    assert info["pid"] == os.getpid() and second.holder() == f"pid {os.getpid()} on {info['host']}"
    first.release()
    assert not path.exists()
    assert second.acquire() and path.exists()
    second.release()


def test_a_killed_holder_leaves_a_stale_claim_that_is_taken_over(tmp_path):
    path = tmp_path / "seed0.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        claim = Claim(path)
        assert not claim.acquire()
        assert claim.holder() == f"pid {holder.pid} on {json.loads(path.read_text())['host']}"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert path.exists()  # the dead holder's file is still there: stale
    assert claim.acquire()  # ... and taken over at once, no timeout
    assert json.loads(path.read_text())["pid"] == os.getpid()
    claim.release()


@pytest.mark.slow
def test_two_concurrent_benches_on_one_folder_train_each_run_once(tmp_path):
    bench = tmp_path / "tiny.yaml"
    bench.write_text(TINY)
    env = {**os.environ, "LTBENCH_CACHE": str(tmp_path / ".cache")}
    env.pop("LTBENCH_TEST_KILL_AT", None)
    out = tmp_path / "out"
    procs = [subprocess.Popen(bench_cmd(bench, out), env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    for proc, (stdout, stderr) in zip(procs, outputs):
        assert proc.returncode == 0, stderr
    for row, seed in [("ce", 0), ("ce", 1), ("focal", 0), ("focal", 1)]:
        trained = sum(f"{row} seed {seed}: trained" in line for o, _ in outputs for line in o.splitlines())
        assert trained == 1, (row, seed, outputs)
    assert sorted(p.name for p in out.glob("runs/*/*")) == sorted(["seed0.json", "seed0.npz", "seed1.json",
                                                                   "seed1.npz"] * 2)
    assert "| ce " in (out / "summary.md").read_text() and "| focal " in (out / "summary.md").read_text()
