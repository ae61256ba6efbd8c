"""A SIGKILLed ``bench --jobs N`` leaves no process behind (issue 21).

Its spawn workers used to train on as orphans (about 1 GB each) and keep multiprocessing's
resource_tracker alive. Real processes, a real SIGKILL, bounded waits; anything found alive at the
end is killed by its pid.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

LTBENCH = Path(sys.executable).parent / "ltbench"

BENCH = """\
name: orphans
dataset: {name: synthetic}
split: {kind: grouped, seed: 0}
train: {backbone: small-cnn, image_size: 16, epochs: 500, batch_size: 32, lr: 0.05, device: cpu}
seeds: [0, 1]
methods: [ce, focal]
"""


def _stat(pid: int) -> tuple[str, int, str] | None:
    """(state, start time, parent pid) of a live process, None when it is gone (a zombie counts as gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) "
    return (None if fields[0] in "ZX" else (fields[0], int(fields[19]), fields[1]))


def _descendants(root: int) -> dict[int, int]:
    """pid -> start time of every live descendant of ``root``."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None:
            children.setdefault(int(st[2]), []).append(int(entry.name))
    found, todo = {}, [root]
    while todo:
        for pid in children.get(todo.pop(), []):
            if (st := _stat(pid)) is not None:
                found[pid] = st[1]
                todo.append(pid)
    return found


def _alive(procs: dict[int, int]) -> dict[int, int]:
    """Those still running as the same process (start time checked: a pid may be reused)."""
    return {pid: t for pid, t in procs.items() if (st := _stat(pid)) is not None and st[1] == t}


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs /proc to find the processes")
def test_a_sigkilled_jobs_bench_leaves_no_worker_and_no_resource_tracker(tmp_path: Path) -> None:
    bench = tmp_path / "b.yaml"
    bench.write_text(BENCH)
    out = tmp_path / "out"
    env = {**os.environ, "LTBENCH_CACHE": str(tmp_path / ".cache")}
    with open(tmp_path / "stdout", "w") as so, open(tmp_path / "stderr", "w") as se:
        proc = subprocess.Popen([str(LTBENCH), "bench", "--benchmark", str(bench), "--out", str(out), "--quiet",
                                 "--jobs", "2", "--threads", "1"], cwd=tmp_path, env=env, stdout=so, stderr=se)
    procs: dict[int, int] = {}
    try:
        logs = [out / "logs" / f"worker{k}.log" for k in range(2)]
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None and not all(
                log.is_file() and ": started" in log.read_text() for log in logs):
            time.sleep(0.2)
        assert proc.poll() is None, (tmp_path / "stderr").read_text()
        assert all(": started" in log.read_text() for log in logs), "the workers never started training"
        procs = _descendants(proc.pid)
        kinds = [_cmdline(pid) for pid in procs]
        assert sum("spawn_main" in c for c in kinds) == 2 and sum("resource_tracker" in c for c in kinds) == 1, kinds

        proc.send_signal(signal.SIGKILL)  # the bench has no chance to stop anything
        proc.wait()
        deadline = time.monotonic() + 30
        while _alive(procs) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = _alive(procs)
        assert not left, [(pid, _cmdline(pid)) for pid in left]
        for log in logs:  # each worker said why it stopped
            assert f"the bench (pid {proc.pid}) is gone; exiting (its run's checkpoint is kept)" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in _alive(procs):  # only what this test started, by pid
            os.kill(pid, signal.SIGKILL)
