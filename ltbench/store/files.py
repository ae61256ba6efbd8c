"""Atomic file writes: a crash or kill never leaves a half-written result, report or split.

Each write goes through a temporary file beside its target, named ``.<name>.<pid>@<host>.<random>.tmp``
so that a kill's leftover names its writer: :func:`remove_stale_temps` removes those whose writer is
gone (issue 21) and never one another live process is still writing. Temporary files get the
permissions of a normal new file (the umask), like the file they become.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

_KILL_AT = os.environ.get("LTBENCH_TEST_KILL_AT", "")
_events: dict[str, int] = {}


def hook(event: str) -> None:
    """Test-only kill point (``LTBENCH_TEST_KILL_AT=EVENT:N``: SIGKILL at the N-th ``EVENT``; see
    ``ltbench.store.checkpoint``); a no-op unless the variable is set."""
    if not _KILL_AT:
        return
    _events[event] = _events.get(event, 0) + 1
    name, _, count = _KILL_AT.partition(":")
    if name == event and _events[event] == int(count or 1):
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


# A temp file left by code before its writer was in the name: removed once this old (no write takes a day).
LEGACY_TEMP_AGE_S = 24 * 3600
_TEMP = re.compile(r"\.(?P<name>.+?)\.(?P<pid>\d+)@(?P<host>.*)\.[a-z0-9_]{8}\.tmp")
_LEGACY_TEMP = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp")


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


def make_temp(path: Path) -> tuple[int, str]:
    """An open temporary file beside ``path`` (fd, name) that names its writer, with the umask's mode."""
    fd, tmp = tempfile.mkstemp(dir=Path(path).parent, prefix=f".{Path(path).name}.{os.getpid()}@{socket.gethostname()}.",
                               suffix=".tmp")
    try:
        os.fchmod(fd, default_file_mode())  # mkstemp's 0600 would ignore the umask
    except BaseException:
        os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise
    return fd, tmp


def _writer_gone(temp: Path) -> bool:
    """True when the process that wrote ``temp`` is known to be gone (this host, its pid not running)."""
    found = _TEMP.fullmatch(temp.name)
    if found is None:  # written before temp files named their writer: gone once old enough
        try:
            return bool(_LEGACY_TEMP.fullmatch(temp.name)) and time.time() - temp.stat().st_mtime > LEGACY_TEMP_AGE_S
        except OSError:
            return False
    if found["host"] != socket.gethostname():
        return False  # another node's writer (a shared folder): it cannot be checked from here
    pid = int(found["pid"])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # alive, another user's
    return False


def remove_stale_temps(folder: Path, pattern: str = "*") -> list[Path]:
    """Remove the temp files ``.<pattern>.tmp`` in ``folder`` whose writer is gone (a kill's leftovers)."""
    removed = []
    try:
        candidates = sorted(Path(folder).glob(f".{pattern}.tmp"))
    except OSError:
        return removed
    for temp in candidates:
        if temp.is_file() and not temp.is_symlink() and _writer_gone(temp):
            try:
                temp.unlink()
            except FileNotFoundError:
                continue
            removed.append(temp)
    return removed


def atomic_write(path: Path, data: str | bytes) -> Path:
    """Write beside ``path`` in a temp file, fsync, then ``os.replace`` (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = make_temp(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        hook("write")  # test-only kill point: the temp file written, not yet renamed
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
