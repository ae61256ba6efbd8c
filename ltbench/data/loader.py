"""Batches from a uint8 pixel array, augmented on the compute device.

A stream draws row indices with a sampler, gathers the uint8 pixels (a background thread reads
the next batch while the device works on this one), copies them to the device (pinned memory and
non-blocking copies on CUDA) and applies one augmentation preset per view to the whole batch.

Samplers (one per stream):
- ``instance``: a new random permutation each epoch; every image once per epoch.
- ``class_balanced``: a class uniformly at random, then an image of it uniformly (Kang et al., ICLR 2020).
- ``reversed``: class c with probability ∝ n_max / n_c, then an image uniformly (BBN, Zhou et al., CVPR 2020).
The resampling samplers draw as many images per epoch as the instance sampler, so streams zip.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from ltbench.errors import LtbenchError
from ltbench.method import Batch

SAMPLERS = ("instance", "class_balanced", "reversed")


def steps_per_epoch(num_images: int, batch_size: int) -> int:
    """Batches per epoch; a last partial batch of a single image is dropped (BatchNorm needs 2)."""
    full, rest = divmod(num_images, batch_size)
    return full + (1 if rest >= 2 else 0)


def epoch_indices(kind: str, labels: np.ndarray, batch_size: int, generator: torch.Generator) -> list[np.ndarray]:
    """The batches of one epoch as arrays of positions into ``labels``."""
    n = len(labels)
    steps = steps_per_epoch(n, batch_size)
    if kind == "instance":
        order = torch.randperm(n, generator=generator).numpy()
    elif kind in ("class_balanced", "reversed"):
        counts = np.bincount(labels)
        present = np.flatnonzero(counts)
        weights = np.ones(len(present)) if kind == "class_balanced" else counts.max() / counts[present]
        draws = min(steps * batch_size, n)
        cls = present[torch.multinomial(torch.as_tensor(weights / weights.sum()), draws, replacement=True,
                                        generator=generator).numpy()]
        # Pick an instance of each drawn class uniformly: rows sorted by class, offset + random rank.
        by_class = np.argsort(labels, kind="stable")
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        rank = np.floor(torch.rand(draws, generator=generator, dtype=torch.float64).numpy() * counts[cls])
        order = by_class[starts[cls] + rank.astype(np.int64)]
    else:
        raise LtbenchError(f"unknown sampler {kind!r}; choose one of {', '.join(SAMPLERS)}")
    return [order[i * batch_size:(i + 1) * batch_size] for i in range(steps)]


def to_device(pixels: np.ndarray, device: torch.device) -> Tensor:
    """uint8 N×H×W×3 (numpy) -> uint8 N×3×H×W on ``device``."""
    batch = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2)
    if device.type == "cuda":
        return batch.pin_memory().to(device, non_blocking=True)
    return batch


class TrainStream:
    """Training batches of one sampler: iterate once per epoch."""

    def __init__(self, pixels: np.ndarray, rows: np.ndarray, labels: np.ndarray, sampler: str,
                 batch_size: int, augmentations: Sequence, device: torch.device, generator: torch.Generator,
                 channels_last: bool = False, sizes: np.ndarray | None = None) -> None:
        # sizes: original (height, width) per row of ``pixels`` (int [N, 2]); each augmentation
        # gets its batch's rows as ``sizes=`` (random resized crops are drawn on that geometry).
        self.pixels, self.rows, self.labels = pixels, np.asarray(rows), np.asarray(labels)
        self.sizes = None if sizes is None else np.asarray(sizes, dtype=np.int64)
        self.sampler, self.batch_size = sampler, batch_size
        self.augmentations, self.device, self.generator = list(augmentations), device, generator
        self.channels_last = channels_last
        self._reader = ThreadPoolExecutor(max_workers=1)

    def __len__(self) -> int:
        return steps_per_epoch(len(self.rows), self.batch_size)

    def _read(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, Tensor | None]:
        positions = np.sort(positions)  # ascending rows read a memory-mapped cache sequentially
        rows = self.rows[positions]
        sizes = None if self.sizes is None else torch.from_numpy(self.sizes[rows])
        return self.pixels[rows], self.labels[positions], positions, sizes

    def __iter__(self) -> Iterator[Batch]:
        batches = epoch_indices(self.sampler, self.labels, self.batch_size, self.generator)
        pending = self._reader.submit(self._read, batches[0]) if batches else None
        for k in range(len(batches)):
            pixels, labels, positions, sizes = pending.result()
            if k + 1 < len(batches):
                pending = self._reader.submit(self._read, batches[k + 1])
            images = to_device(pixels, self.device)
            views = []
            for augment in self.augmentations:
                view = augment(images, self.generator, sizes=sizes)
                views.append(view.contiguous(memory_format=torch.channels_last) if self.channels_last else view)
            yield Batch(views=views, labels=torch.from_numpy(labels).to(self.device, non_blocking=True),
                        indices=torch.from_numpy(positions))


def eval_batches(pixels: np.ndarray, rows: np.ndarray, batch_size: int, device: torch.device) -> Iterator[Tensor]:
    """uint8 batches of ``rows`` in order, on ``device``."""
    rows = np.asarray(rows)
    for start in range(0, len(rows), batch_size):
        yield to_device(pixels[rows[start:start + batch_size]], device)
