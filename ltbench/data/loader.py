"""Batches from a uint8 pixel array, augmented on the compute device.

A stream draws row indices with a sampler, gathers the uint8 pixels (a background thread reads
the next batch while the device works on this one), copies them to the device (pinned memory and
non-blocking copies on CUDA) and applies one augmentation preset per view to the whole batch.

On the CPU the augmentation runs on ``workers`` single-threaded threads (default: the caller's torch
intra-op thread count, so the same budget): every random parameter of a batch is drawn first, in
the order of the sequential code (:meth:`BatchAugment.split`), then its chunks run in parallel.
One-thread ops need no OpenMP barrier per op, which on a shared 2-core machine stalls whenever
another process holds a core (measured: 5-10× slower under load; see benchmarks/README.md). When
the consumer's intra-op threads plus ``workers`` fit in the cores (e.g. torch threads 1 + 1 worker
on 2 cores), the next batch is made in the background while the model computes (``prefetch``).
Either way the batches are bit-identical to the sequential ones (``workers=0``): the stream's
generator is used by one thread at a time, in the same order; an epoch abandoned with a batch in
flight gets the generator state from before that batch's draws back.

Samplers (one per stream): ``ltbench.data.samplers``.
"""
from __future__ import annotations

import ctypes
import functools
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from ltbench.data.augment import BatchAugment
from ltbench.data.samplers import epoch_indices, steps_per_epoch
from ltbench.errors import LtbenchError
# Below this output size the CPU augmentation runs in the consumer's thread (workers=0): the worker
# threads' hand-offs cost more than they save. Measured on 2 cores, batch 64, "standard" /
# "contrastive" ms per batch, consumer thread vs 2 workers: 16 px 4.0/9.1 vs 16.0/30.1; 64 px
# 10.4/12.9 vs 21.3/27.8; 112 px 18.9/24.0 vs 18.6/39.7; 224 px 83.0/84.4 vs 66.6/68.5. Both paths
# give the same batches (tests/test_augment_exact.py), except BCL's randaugment, whose per-image
# means depend on the thread count.
WORKERS_MIN_SIZE = 160


@dataclass
class Batch:
    """One training batch of one sampler stream, already on the compute device (``Method.training_step``).

    ``views[k]`` is the batch augmented with the method's k-th view preset (float, normalised,
    N×3×S×S); every view shows the same images in the same order.
    """

    views: list[Tensor]
    labels: Tensor
    indices: Tensor  # rows of the training split, for methods that keep per-sample state


def to_device(pixels: np.ndarray, device: torch.device) -> Tensor:
    """uint8 N×H×W×3 (numpy) -> uint8 N×3×H×W on ``device``."""
    batch = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2)
    if device.type == "cuda":
        return batch.pin_memory().to(device, non_blocking=True)
    return batch


def _small_views(augmentations: Sequence) -> bool:
    """Whether every view's output size is known and below :data:`WORKERS_MIN_SIZE`."""
    sizes = [getattr(augment, "size", None) for augment in augmentations]
    return bool(sizes) and all(isinstance(s, int) and s < WORKERS_MIN_SIZE for s in sizes)


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


@functools.lru_cache(maxsize=None)
def _openmp_set_num_threads():
    """libgomp's / libiomp's ``omp_set_num_threads`` as loaded by torch (Linux), else None."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "omp" in line.rsplit("/", 1)[-1]}
        for path in sorted(paths):
            if path.rsplit("/", 1)[-1].startswith(("libgomp", "libiomp")):
                return ctypes.CDLL(path).omp_set_num_threads
    except (OSError, AttributeError):
        pass
    return None


def _single_threaded() -> None:
    """Make the calling (worker) thread's torch ops single-threaded, and nothing else.

    ``torch.set_num_threads`` would also change process-wide values (PyTorch's default for threads
    not yet initialised, MKL's thread count), i.e. the consumer's model; the OpenMP setting is per
    thread. PyTorch initialises a thread's OpenMP setting on its first query, so query first.
    """
    torch.get_num_threads()
    set_threads = _openmp_set_num_threads()
    if set_threads is not None:
        set_threads(1)
    if torch.get_num_threads() != 1:  # no OpenMP library found (or not OpenMP): the global call
        torch.set_num_threads(1)


def augmentation_pool(workers: int) -> ThreadPoolExecutor:
    """The process-wide pool of ``workers`` single-threaded augmentation threads.

    Shared by all streams, so two streams prefetching at once still use ``workers`` threads.
    """
    with _POOLS_LOCK:
        pool = _POOLS.get(workers)
        if pool is None:
            pool = _POOLS[workers] = ThreadPoolExecutor(max_workers=workers, initializer=_single_threaded,
                                                        thread_name_prefix="ltbench-augment")
        return pool


class TrainStream:
    """Training batches of one sampler: iterate once per epoch.

    ``workers`` (CPU only): single-threaded augmentation threads; None = ``torch.get_num_threads()``
    of the creating thread; 0 = augment in the consumer's thread (the sequential reference).
    ``prefetch`` (CPU, ``workers`` ≥ 1): make the next batch while the consumer works on this one;
    None = only when the consumer's intra-op threads + ``workers`` ≤ the available cores (never
    more busy threads than cores). On CUDA neither applies: the batch is augmented on the device.
    """

    def __init__(self, pixels: np.ndarray, rows: np.ndarray, labels: np.ndarray, sampler: str,
                 batch_size: int, augmentations: Sequence, device: torch.device, generator: torch.Generator,
                 channels_last: bool = False, sizes: np.ndarray | None = None, workers: int | None = None,
                 prefetch: bool | None = None, positions: np.ndarray | None = None) -> None:
        # sizes: original (height, width) per row of ``pixels`` (int [N, 2]); each augmentation
        # gets its batch's rows as ``sizes=`` (random resized crops are drawn on that geometry).
        self.pixels, self.rows, self.labels = pixels, np.asarray(rows), np.asarray(labels)
        # positions: each stream row's position in the training split (a stream over a training
        # subset); Batch.indices are always training-split positions. None: rows = the whole split.
        self.positions = None if positions is None else np.asarray(positions, dtype=np.int64)
        if self.positions is not None and len(self.positions) != len(self.rows):
            raise ValueError("TrainStream: positions and rows differ in length")
        self.sizes = None if sizes is None else np.asarray(sizes, dtype=np.int64)
        self.sampler, self.batch_size = sampler, batch_size
        self.augmentations, self.device, self.generator = list(augmentations), device, generator
        self.channels_last = channels_last
        device = torch.device(device)
        if workers is not None and (not isinstance(workers, int) or workers < 0):
            raise LtbenchError(f"augmentation workers must be an integer >= 0, got {workers!r}")
        if device.type != "cpu":
            workers, prefetch = 0, False
        elif workers is None:
            workers = 0 if _small_views(self.augmentations) else torch.get_num_threads()
        if prefetch is None:
            prefetch = workers >= 1 and workers + torch.get_num_threads() <= available_cores()
        self.workers, self.prefetch = workers, bool(prefetch) and workers >= 1
        # One background thread: reads the next batch's pixels, or (prefetch) makes the whole batch.
        self._reader = ThreadPoolExecutor(max_workers=1, initializer=_single_threaded)
        self._epoch = 0
        self._inflight: tuple[int, Future, torch.Tensor] | None = None  # (epoch, batch, generator state)

    def __len__(self) -> int:
        return steps_per_epoch(len(self.rows), self.batch_size)

    def _read(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, Tensor | None]:
        positions = np.sort(positions)  # ascending rows read a memory-mapped cache sequentially
        rows = self.rows[positions]
        sizes = None if self.sizes is None else torch.from_numpy(self.sizes[rows])
        return self.pixels[rows], self.labels[positions], positions, sizes

    def __iter__(self) -> Iterator[Batch]:
        self._settle()  # an earlier epoch left open with a batch in flight: undo its draws first
        batches = epoch_indices(self.sampler, self.labels, self.batch_size, self.generator)
        yield from (self._prefetched(batches) if self.prefetch else self._on_demand(batches))

    def _on_demand(self, batches: list[np.ndarray]) -> Iterator[Batch]:
        """Augment each batch when it is asked for (pixels read one batch ahead)."""
        pending = self._reader.submit(self._read, batches[0]) if batches else None
        for k in range(len(batches)):
            pixels, labels, positions, sizes = pending.result()
            if k + 1 < len(batches):
                pending = self._reader.submit(self._read, batches[k + 1])
            yield self._make(pixels, labels, positions, sizes)

    def _prefetched(self, batches: list[np.ndarray]) -> Iterator[Batch]:
        """Make batch k+1 in the background while the consumer has batch k (never past the epoch)."""
        self._epoch += 1
        epoch = self._epoch
        pending = self._reader.submit(self._read_and_make, batches[0]) if batches else None
        try:
            for k in range(len(batches)):
                batch = pending.result()
                self._inflight = None
                if k + 1 < len(batches):
                    # The generator is idle here (batch k is made): its state before batch k+1's draws.
                    state = self.generator.get_state()
                    pending = self._reader.submit(self._read_and_make, batches[k + 1])
                    self._inflight = (epoch, pending, state)
                yield batch
        finally:
            if self._inflight is not None and self._inflight[0] == epoch:
                self._settle()

    def close(self) -> None:
        """Done with this stream (a rebuilt stream replaces it): settle its generator, stop its reader."""
        self._settle()
        self._reader.shutdown(wait=True)

    def _settle(self) -> None:
        """Wait for a batch made ahead but never handed out and restore the generator to before it."""
        if self._inflight is not None:
            _, pending, state = self._inflight
            self._inflight = None
            wait([pending])
            self.generator.set_state(state)

    def _read_and_make(self, positions: np.ndarray) -> Batch:
        return self._make(*self._read(positions))

    def _make(self, pixels: np.ndarray, labels: np.ndarray, positions: np.ndarray, sizes: Tensor | None) -> Batch:
        images = to_device(pixels, self.device)
        views = self._augment(images, sizes)
        if self.channels_last:
            views = [view.contiguous(memory_format=torch.channels_last) for view in views]
        indices = positions if self.positions is None else self.positions[positions]
        return Batch(views=views, labels=torch.from_numpy(labels).to(self.device, non_blocking=True),
                     indices=torch.from_numpy(indices))

    def _augment(self, images: Tensor, sizes: Tensor | None) -> list[Tensor]:
        """Every view of one batch; the generator's draws in the order of the sequential loop."""
        if self.workers == 0:
            return [augment(images, self.generator, sizes=sizes) for augment in self.augmentations]
        pool = augmentation_pool(self.workers)
        parts: list[tuple[Tensor | None, list[Future]]] = []
        for augment in self.augmentations:
            if isinstance(augment, BatchAugment):
                out, chunks = augment.split(images, self.generator, sizes=sizes)  # draws all, now
                parts.append((out, [pool.submit(chunk) for chunk in chunks]))
            else:
                # Draws and compute are not separable: run it whole, and let nothing else draw meanwhile.
                parts.append((pool.submit(augment, images, self.generator, sizes=sizes).result(), []))
        views = []
        for out, jobs in parts:
            results = [job.result() for job in jobs]
            views.append(results[0] if out is None else out)
        return views


def eval_batches(pixels: np.ndarray, rows: np.ndarray, batch_size: int, device: torch.device) -> Iterator[Tensor]:
    """uint8 batches of ``rows`` in order, on ``device``."""
    rows = np.asarray(rows)
    for start in range(0, len(rows), batch_size):
        yield to_device(pixels[rows[start:start + batch_size]], device)
