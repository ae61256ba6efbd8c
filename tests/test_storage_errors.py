"""A full disk is the machine's problem, never a run's recorded failure (issue 21).

``torch.save`` reports a failed write as a RuntimeError; the bench used to record each run as failed
and, once space was freed, replay the failures without training. Real storage here: a small tmpfs
(root only; skipped otherwise) and a file-size limit (``RLIMIT_FSIZE``, in a subprocess).
"""
from __future__ import annotations

import errno
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from ltbench.store.checkpoint import CheckpointStore
from tests.tmpfs import tmpfs

LTBENCH = Path(sys.executable).parent / "ltbench"


def test_a_checkpoint_on_a_full_disk_is_an_oserror_naming_it() -> None:
    with tmpfs("size=1m") as disk:
        store = CheckpointStore(disk / "run", "key")
        store.save({"epoch": 0, "w": torch.ones(1000)})
        try:
            store.save({"epoch": 1, "w": torch.ones(500_000)})  # 2 MB on a 1 MB disk
        except OSError as exc:
            assert exc.errno == errno.ENOSPC and exc.filename == str(store.latest)
        else:
            raise AssertionError("a 2 MB checkpoint was written to a 1 MB disk")
        assert not list(disk.glob(".*.tmp"))  # the partial file is gone
        state = store.load()  # the last good checkpoint is untouched
        assert state["epoch"] == 0 and torch.equal(state["w"], torch.ones(1000))


def test_a_checkpoint_over_a_file_size_limit_is_an_oserror(tmp_path: Path) -> None:
    """RLIMIT_FSIZE (SIGXFSZ ignored, so the write fails with EFBIG): works without root."""
    script = textwrap.dedent(f"""
        import resource, signal, torch
        from ltbench.store.checkpoint import CheckpointStore
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        store = CheckpointStore({str(tmp_path / 'run')!r}, "key")
        try:
            store.save({{"w": torch.ones(500_000)}})
        except OSError as exc:
            print("OSError", exc.errno, exc.filename)
        """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["OSError", str(errno.EFBIG), str(tmp_path / "run.ckpt")], done.stderr
    assert not list(tmp_path.iterdir())


BENCH = """\
name: full
dataset: {name: synthetic}
split: {kind: grouped, seed: 0}
train: {backbone: small-cnn, image_size: 16, epochs: 1, batch_size: 32, lr: 0.05, device: cpu}
seeds: [0]
methods: [ce]
"""


@pytest.mark.slow
def test_a_full_disk_during_a_bench_is_not_recorded_and_the_rerun_trains(tmp_path: Path) -> None:
    """The small-cnn checkpoint (~3 MB) does not fit a 1 MB tmpfs: one line naming it, exit 2, no failure
    record; after the disk grows, the rerun trains the run instead of replaying a failure."""
    bench = tmp_path / "b.yaml"
    bench.write_text(BENCH)
    with tmpfs("size=1m") as disk:
        cmd = [str(LTBENCH), "bench", "--benchmark", str(bench), "--out", str(disk / "out"), "--quiet"]
        first = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
        err = first.stderr.strip().splitlines()
        assert first.returncode == 2 and len(err) == 1, first.stderr
        assert err[0].startswith(f"ltbench: error: cannot write {disk}/out/runs/ce/seed0.ckpt: No space left on device")
        assert "RuntimeError" not in first.stdout + first.stderr
        assert not list((disk / "out" / "runs" / "ce").glob("*.failed.*"))
        subprocess.run(["mount", "-o", "remount,size=32m", str(disk)], check=True)
        again = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert again.returncode == 0 and "1 run(s) trained" in again.stdout, again.stdout + again.stderr
        assert (disk / "out" / "runs" / "ce" / "seed0.json").is_file()
