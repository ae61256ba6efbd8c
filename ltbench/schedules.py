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
