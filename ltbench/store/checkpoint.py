"""Per-epoch checkpoints of an unfinished run, so that a killed run resumes where it stopped.

A checkpoint is written after every completed epoch (epochs are the unit of resumption) and
holds everything the rest of the run depends on: the model, the stage's optimiser, the method's
``state_dict`` (buffers, parameters and extra state, e.g. ECL's proxy optimiser), the generator of
every sampler stream (shared by sampling and augmentation), the python / numpy / torch RNG
states, the history and the best-validation state so far. Resuming from it reaches exactly the
metrics and probabilities of an uninterrupted run on the CPU (tests/test_resume.py).

Storage: ``<base>.ckpt`` and the one before it, ``<base>.ckpt.prev`` (the last two). Each is
written to a temporary file, fsynced and renamed, so a kill leaves at worst a stray temporary
file. A write that fails (a full disk) raises an OSError naming the checkpoint, never torch's
RuntimeError, so it stops the bench without being recorded as the run's failure. Loading uses ``torch.load(weights_only=True)``: only tensors, plain containers and numbers
are stored (numpy and python RNG states are converted). A checkpoint that fails to load, or was
made by a different run (its ``run_key``), is reported and skipped: the previous one is tried,
then the run starts from scratch. Nothing here names a method.

Test hook: ``LTBENCH_TEST_KILL_AT=EVENT:N`` makes the process SIGKILL itself the N-th time
``EVENT`` happens (``step``, ``epoch``, ``checkpoint`` — between writing a checkpoint's temporary
file and renaming it — ``result`` — between a run's NPZ and its JSON — and ``write`` — between an
atomic write's temporary file and its rename, ``ltbench.store.files``), so tests can kill a bench
or a report at exact moments. Unset (always, outside tests) it costs one dict lookup.
"""
from __future__ import annotations

import os
import random
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ltbench.store.files import hook, make_temp  # noqa: F401 — hook: the kill points' home, re-exported

CHECKPOINT_VERSION = 1


# ------------------------------------------------------------------------------ RNG states

def rng_state() -> dict:
    """python, numpy and torch (CPU, and CUDA when present) global RNG states, as plain data."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(internal), gauss],
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def plain(value):
    """``value`` with numpy arrays as tensors and numpy scalars as numbers (weights_only-loadable)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    if isinstance(value, np.ndarray):
        return {"__ndarray__": torch.from_numpy(np.ascontiguousarray(value).copy())}
    if isinstance(value, np.generic):
        return value.item()
    return value


def unplain(value):
    """Inverse of :func:`plain` (arrays back to numpy, with their dtype)."""
    if isinstance(value, dict):
        if set(value) == {"__ndarray__"}:
            return value["__ndarray__"].numpy()
        return {k: unplain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(unplain(v) for v in value)
    return value


# ------------------------------------------------------------------------------ storage

class _Sink:
    """The file ``torch.save`` writes to, keeping the first OSError of a write.

    ``torch.save`` turns a failed write (a full disk, ``RLIMIT_FSIZE``) into a RuntimeError
    ("[enforce fail at inline_container.cc] unexpected pos ..."), which the bench would record as
    the run's own failure and replay after space is freed (issue 21). Keeping the OSError lets
    :meth:`CheckpointStore.save` raise it as what it is: the machine's problem, not the run's.
    Writes after the first error are dropped: the file is deleted anyway.
    """

    def __init__(self, fh) -> None:
        self.fh, self.error = fh, None

    def write(self, data) -> int:
        if self.error is None:
            try:
                self.fh.write(data)
            except OSError as exc:
                self.error = exc
        return memoryview(data).nbytes

    def flush(self) -> None:
        if self.error is None:
            try:
                self.fh.flush()
            except OSError as exc:
                self.error = exc


class CheckpointStore:
    """The checkpoints of one run: ``<base>.ckpt`` (latest) and ``<base>.ckpt.prev``.

    ``run_key`` ties a checkpoint to its run: one of another configuration is never resumed.
    ``warn`` receives one line per skipped (corrupt, foreign) checkpoint.
    """

    def __init__(self, base: Path, run_key: str, warn: Callable[[str], None] | None = None) -> None:
        base = Path(base)
        self.latest = base.with_name(base.name + ".ckpt")
        self.previous = base.with_name(base.name + ".ckpt.prev")
        self.run_key = run_key
        self.warn = warn or (lambda message: print(message, file=sys.stderr))
        self.resumed_from: Path | None = None

    def paths(self) -> list[Path]:
        return [self.latest, self.previous]

    def save(self, state: dict) -> None:
        """Write ``state`` atomically as the latest checkpoint; the former latest becomes the previous."""
        payload = {"version": CHECKPOINT_VERSION, "run_key": self.run_key, **state}
        self.latest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = make_temp(self.latest)  # names its writer; the umask's mode, as results (not mkstemp's 0600)
        try:
            with os.fdopen(fd, "wb") as fh:
                sink = _Sink(fh)
                try:
                    torch.save(payload, sink)
                except RuntimeError:
                    if sink.error is None:
                        raise
                if sink.error is not None:
                    raise sink.error
                fh.flush()
                os.fsync(fh.fileno())
            hook("checkpoint")
            if self.latest.exists():
                os.replace(self.latest, self.previous)
            os.replace(tmp, self.latest)
        except OSError as exc:  # a full disk, a file-size limit: the machine's problem, named by its file
            Path(tmp).unlink(missing_ok=True)
            if exc.filename is not None:
                raise
            raise OSError(exc.errno, exc.strerror or str(exc), str(self.latest)) from exc
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def load(self) -> dict | None:
        """The newest checkpoint of this run that loads, or None (each skipped one reported)."""
        for path in self.paths():
            if not path.is_file():
                continue
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:  # truncated, corrupt, or not a checkpoint at all
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                self.warn(f"ltbench: warning: checkpoint {path} is unreadable ({reason[:200]}); skipped")
                continue
            if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
                self.warn(f"ltbench: warning: checkpoint {path} is not an ltbench v{CHECKPOINT_VERSION} checkpoint; skipped")
                continue
            if state.get("run_key") != self.run_key:
                self.warn(f"ltbench: warning: checkpoint {path} belongs to another configuration "
                          f"(run key {state.get('run_key')}); skipped")
                continue
            self.resumed_from = path
            return state
        return None

    def remove(self, keep_latest: bool = False) -> None:
        """Remove the checkpoints (``keep_latest``: all but the latest: a finished run needs no fallback)."""
        for path in self.paths()[1 if keep_latest else 0:]:
            path.unlink(missing_ok=True)
        for stray in self.latest.parent.glob(f".{self.latest.name}.*.tmp"):
            stray.unlink(missing_ok=True)
