"""Schedules as pure functions of the epoch (0-indexed unless a name says otherwise).

Kept in one module so each can be tested alone and the trainer never special-cases a method.
"""
from __future__ import annotations

import math


def cosine_lr(base_lr: float, epoch: int, epochs: int) -> float:
    """Per-epoch cosine decay of the shared protocol: ``base/2 · (1 + cos(π e / E))``.

    With base 0.002 this is ECL's ``0.001 · (1 + cos(π e / E))``; epoch ``E - 1`` still trains at
    a small positive rate (the ECL repository's scheduler, stepped before the epoch, reaches 0).
    """
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * epoch / epochs))


def scale_epoch(epoch: int, epochs: int, reference_epochs: int | None) -> int:
    """An epoch given for a ``reference_epochs`` budget, moved to a run of ``epochs`` epochs.

    ``round(epoch · epochs / reference_epochs)``; ``reference_epochs=None`` means the epoch is
    absolute and is returned unchanged.
    """
    if reference_epochs is None:
        return epoch
    return round(epoch * epochs / reference_epochs)


def bwce_curriculum(epoch_1indexed: int, E1: int, E2: int, epochs: int) -> tuple[str, float]:
    """Stage and power of ECL's balanced-weighted cross-entropy (Zhang et al., MICCAI 2023).

    Epochs are 1-indexed as in the ECL code (``e + 1``). Returns

    * ``("plain", 0.0)`` for ``e <= E1`` — unweighted cross-entropy;
    * ``("frequency", (e - E1) / (E2 - E1))`` for ``E1 < e <= E2`` — inverse class frequency weights;
    * ``("f1", (e - E2) / (epochs - E2))`` for ``e > E2`` — inverse validation-F1 weights.
    """
    if epoch_1indexed < 1:
        raise ValueError(f"bwce_curriculum: epochs are 1-indexed, got {epoch_1indexed}")
    if epoch_1indexed <= E1:
        return "plain", 0.0
    if epoch_1indexed <= E2:
        return "frequency", (epoch_1indexed - E1) / (E2 - E1)
    return "f1", (epoch_1indexed - E2) / (epochs - E2)
