"""Which training rows a stream draws each epoch: the samplers, and how many steps an epoch has.

Below both the Method API (``LossMethod`` checks its ``sampler`` keyword against :data:`SAMPLERS`,
``TrainInfo.steps_per_epoch``) and the loader (``TrainStream`` draws its batches here).

Samplers (one per stream):
- ``instance``: a new random permutation each epoch; every image once per epoch.
- ``class_balanced``: a class uniformly at random, then an image of it uniformly (Kang et al., ICLR 2020).
- ``reversed``: class c with probability ∝ n_max / n_c, then an image uniformly (BBN, Zhou et al., CVPR 2020).
- ``class_aware``: FlexSampling v0.2's ``ClassAwareSampler`` (after OLTR): classes visited in a cycle
  reshuffled every round, one image per visit from the class's own reshuffled cycle
  (:func:`class_aware_order`). Unlike ``class_balanced`` (classes drawn independently), every round of
  C draws holds each class exactly once and a class's images repeat only after all were drawn.
The resampling samplers draw as many images per epoch as the instance sampler, so streams zip.
"""
from __future__ import annotations

import numpy as np
import torch

from ltbench.errors import LtbenchError

SAMPLERS = ("instance", "class_balanced", "reversed", "class_aware")


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
    elif kind == "class_aware":
        order = class_aware_order(labels, min(steps * batch_size, n), generator)
    else:
        raise LtbenchError(f"unknown sampler {kind!r}; choose one of {', '.join(SAMPLERS)}")
    return [order[i * batch_size:(i + 1) * batch_size] for i in range(steps)]


def class_aware_order(labels: np.ndarray, num_samples: int, generator: torch.Generator,
                      samples_per_class: int = 1) -> np.ndarray:
    """``num_samples`` positions into ``labels`` drawn as FlexSampling v0.2's ``ClassAwareSampler``.

    PyJulie/FlexSampling ``flexsampling/samplers/class_aware.py`` (fc610df; after OLTR, Liu et al.,
    CVPR 2019): the present classes, sorted, are shuffled in place at the start of every round; each
    visit of a class yields ``samples_per_class`` (v0.2: 1) images from that class's cycler, which
    shuffles the class's positions in place when it runs out (first visit included) and walks them in
    order. Python's ``random.shuffle`` becomes ``x = x[torch.randperm(len(x), generator)]`` on the
    stream's generator, drawn in the same order as the official code draws. Departure: the official
    cyclers live as long as the sampler object, so a class's cycle continues into the next epoch;
    here each epoch starts fresh cycles (class list sorted, cyclers empty) — each epoch has the same
    distribution, but a head class's images are not guaranteed to be covered across epochs. (Keeping
    the cycles would need sampler state in the checkpoint, beside the generator.)
    """
    labels = np.asarray(labels)
    classes = np.unique(labels)  # sorted, present classes only (the official defaultdict keys)
    members = {int(c): np.flatnonzero(labels == c) for c in classes}  # ascending positions
    cursor = {c: len(m) for c, m in members.items()}  # every cycler empty: the first visit shuffles
    out = np.empty(num_samples, dtype=np.int64)
    k = 0
    while k < num_samples:
        classes = classes[torch.randperm(len(classes), generator=generator).numpy()]
        for c in classes.tolist():
            for _ in range(samples_per_class):
                if k >= num_samples:
                    return out
                if cursor[c] == len(members[c]):
                    members[c] = members[c][torch.randperm(len(members[c]), generator=generator).numpy()]
                    cursor[c] = 0
                out[k] = members[c][cursor[c]]
                cursor[c] += 1
                k += 1
    return out
