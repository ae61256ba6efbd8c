"""Atomic file writes: a crash or kill never leaves a half-written result, report or split."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def default_file_mode() -> int:
    """``0o666`` less the process umask: the permissions ``open()`` gives a new file.

    ``tempfile.mkstemp`` creates files 0600 whatever the umask, which would hide results and
    caches from the user's group; every file ltbench writes through a temp file gets this mode
    instead. The umask is read from ``/proc/self/status`` where it exists (setting it to read it
    back would race with other threads).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: Path, data: str | bytes) -> Path:
    """Write beside ``path`` in a temp file, fsync, then ``os.replace`` (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
            os.fchmod(fh.fileno(), default_file_mode())  # mkstemp's 0600 would ignore the umask
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
