"""One bench per run at a time: a per-run claim that a dead process never holds.

A claim is an exclusive ``flock`` on ``runs/<row>/seed<k>.lock``. The kernel drops the lock when its
holder exits, however it exits (SIGKILL, power cut of a node: the lock goes with the process), so a
claim left by a dead bench is stale by construction and the next bench simply takes it over; no
timeout is needed and a reused pid cannot fool it. The file holds the holder's pid and host, for
the message another bench prints while it waits. The file is removed on release; a bench that
locked a file just removed (its inode no longer at the path) retries with the new one.

On network filesystems Linux maps ``flock`` to POSIX record locks (NFS v3 with lockd, NFS v4),
which are released with the process as well.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path


class Claim:
    """An exclusive claim on one run; ``acquire(wait=False)`` is True when this process holds it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def holder(self) -> str:
        """Who holds it, as text (for messages); "another process" when unknown."""
        try:
            info = json.loads(self.path.read_text())
            return f"pid {info['pid']} on {info['host']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"

    def acquire(self, wait: bool = False) -> bool:
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                os.close(fd)
                return False
            except BaseException:
                os.close(fd)
                raise
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the holder released and removed it while we waited: lock the new file
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                     "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}).encode())
            self._fd = fd
            return True

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still locked: nobody can lock a file we then delete
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
