"""Launchers: many runs of a bench at once — processes on this machine, or a SLURM job array.

``ltbench bench`` without ``--jobs`` (or ``--jobs 1``) trains the grid in its own process, one run
after the other (``ltbench.bench.run_benchmark``). :func:`make_launcher` turns the command line's
scale-out options into a launcher that ``run_benchmark`` hands the grid to once the data are
prepared; it returns the outcomes and ``run_benchmark`` writes the same report:

- ``local`` (``--jobs N [--gpus 0,1] [--runs-per-gpu K] [--threads T]``): ``ltbench.launchers.local``;
- ``slurm`` (``--launcher slurm [--slurm KEY=VALUE ...]``, ``slurm:`` in the benchmark file):
  ``ltbench.launchers.slurm``, through submitit (``pip install 'ltbench[slurm]'``).

Both go through ``ltbench.runs.run_one`` for every run, so claims, checkpoints, failure records,
run keys and result files are those of the sequential bench. How a grid maps to processes and
jobs, and what to expect of the paper protocol: docs/scaling.md.
"""
from __future__ import annotations

import math
import re

from ltbench.errors import LtbenchError

LAUNCHERS = ("local", "slurm")


def _count(option: str, value) -> int | None:
    if value is None:
        return None
    text = str(value).strip()
    if not re.fullmatch(r"\d+", text) or int(text) < 1:
        raise LtbenchError(f"{option} {value}: expected an integer of at least 1")
    return int(text)


def set_threads(value) -> int | None:
    """``--threads T`` for runs in this process (``ltbench train``, ``bench --jobs 1``): torch's thread count.

    On the CPU, results reproduce bit for bit only at equal thread counts; each result records its
    own (``threads``), and the report notes a row whose runs differ (issue 21).
    """
    threads = _count("--threads", value)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    return threads


def parse_gpus(value: str | None) -> list[int] | None:
    """``--gpus 0,1``: distinct device indices (of the devices this process sees)."""
    if value is None:
        return None
    items = [s for s in re.split(r"[,\s]+", str(value).strip()) if s]
    if not items or not all(re.fullmatch(r"\d+", s) for s in items):
        raise LtbenchError(f"--gpus {value}: expected device indices like 0,1")
    gpus = [int(s) for s in items]
    dup = [g for i, g in enumerate(gpus) if g in gpus[:i]]
    if dup:
        raise LtbenchError(f"--gpus {value}: device {dup[0]} is listed twice (use --runs-per-gpu for several runs per device)")
    return gpus


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def make_launcher(bench, launcher: str | None = None, *, jobs=None, gpus=None, runs_per_gpu=None, threads=None,
                  slurm=()):
    """The launcher the options ask for, checked (one line per problem) before any data is touched.

    None: the sequential in-process bench (``--jobs 1``, the default), whose torch threads
    ``--threads`` then sets (:func:`set_threads`).
    """
    from ltbench import config as cfg
    from ltbench import typed

    launcher = (launcher or "local").strip().lower()
    if launcher not in LAUNCHERS:
        raise LtbenchError(f"--launcher {launcher}: choose one of {', '.join(LAUNCHERS)}")
    jobs, runs_per_gpu, threads = (_count("--jobs", jobs), _count("--runs-per-gpu", runs_per_gpu),
                                   _count("--threads", threads))
    gpu_list = parse_gpus(gpus)
    pairs = typed.key_value_pairs(slurm, "--slurm")
    if launcher == "slurm":
        for option, value in (("--jobs", jobs), ("--gpus", gpus), ("--runs-per-gpu", runs_per_gpu),
                              ("--threads", threads)):
            if value is not None:
                raise LtbenchError(f"{option}: an option of --launcher local; on SLURM use --slurm "
                                   "array_parallelism=N, gpus_per_job=G, cpus_per_job=C")
        from ltbench.launchers.slurm import SlurmLauncher

        given = typed.read(cfg.slurm_settings(), pairs, lambda k, v: f"--slurm {k}={v}", text=True,
                           unknown="not a slurm setting")
        chosen = SlurmLauncher({**(getattr(bench, "slurm", None) or {}), **given})
        chosen.check()
        return chosen
    if pairs:
        raise LtbenchError("--slurm: only with --launcher slurm")
    if jobs in (None, 1) and gpu_list is None and runs_per_gpu is None:
        set_threads(threads)  # the sequential bench's own process
        return None  # the sequential bench, exactly as before
    from ltbench.launchers.grid import split_threads
    from ltbench.launchers.local import LocalLauncher, plan_slots

    device = bench.train.device
    available = _cuda_count()
    if gpu_list is not None:
        if device == "cpu":
            raise LtbenchError(f"--gpus {gpus}: the bench runs on the CPU (device cpu); drop --gpus or --device cpu")
        if not available:
            raise LtbenchError(f"--gpus {gpus}: CUDA is not available on this machine")
        if max(gpu_list) >= available:
            raise LtbenchError(f"--gpus {gpus}: this machine has {available} CUDA device(s) (0-{available - 1})")
    elif device != "cpu" and available:  # auto / cuda: the devices the bench would use
        gpu_list = [int(device.split(":")[1])] if device.startswith("cuda:") else list(range(available))
    if gpu_list and runs_per_gpu is None and jobs is not None:
        runs_per_gpu = math.ceil(jobs / len(gpu_list))
    slots = plan_slots(jobs, gpu_list, runs_per_gpu)
    return LocalLauncher(slots=slots, threads=threads or split_threads(len(slots)))
