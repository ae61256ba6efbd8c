"""A real small tmpfs for full-disk tests (issue 21); the test is skipped, with the reason, where it cannot mount."""
from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from pathlib import Path

import pytest


@contextlib.contextmanager
def tmpfs(options: str):
    """Mount a tmpfs with ``options`` (e.g. ``size=256k``, ``nr_inodes=6``) on a new folder; yields it."""
    if os.name != "posix" or os.geteuid() != 0:
        pytest.skip("a real tmpfs needs root (mount -t tmpfs)")
    where = Path(tempfile.mkdtemp(prefix="ltbench-tmpfs-"))
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True)
    if done.returncode != 0:
        where.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
        where.rmdir()
