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


LR_SCHEDULES = ("cosine", "step", "constant")


def stage_lr(base_lr: float, epoch: int, epochs: int, schedule: str = "cosine", milestones: tuple[int, ...] = (),
             gamma: float = 0.1, warmup_epochs: int = 0, warmup_start_factor: float = 0.01) -> float:
    """The learning rate of 0-indexed epoch ``epoch`` of a stage of ``epochs`` epochs.

    * warm-up (``warmup_epochs`` = W > 0): ``base · (f + (1 − f) · e / W)`` for e < W, as torch's
      ``LinearLR(start_factor=f, total_iters=W)`` stepped per epoch (FlexSampling's
      ``examples/train.py``: f = 0.01, W = 5); the schedule then runs over the remaining epochs;
    * ``cosine``: :func:`cosine_lr` over the epochs after the warm-up (no warm-up: exactly it);
    * ``step``: ``base · gamma^k``, k = the milestones ≤ e (``MultiStepLR``; milestones are epochs
      of the stage, counted from its start, warm-up included);
    * ``constant``: ``base``.
    """
    if warmup_epochs > 0 and epoch < warmup_epochs:
        return base_lr * (warmup_start_factor + (1.0 - warmup_start_factor) * epoch / warmup_epochs)
    if schedule == "cosine":
        return cosine_lr(base_lr, epoch - warmup_epochs, epochs - warmup_epochs)
    if schedule == "step":
        return base_lr * gamma ** sum(1 for m in milestones if m <= epoch)
    if schedule == "constant":
        return base_lr
    raise ValueError(f"unknown lr schedule {schedule!r} (choose from {', '.join(LR_SCHEDULES)})")


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


def drw_switch_epoch(epochs: int, fraction: float = 0.8, drw_epoch: int | None = None) -> int:
    """First 0-indexed epoch of LDAM-DRW's deferred re-weighting (Cao et al., NeurIPS 2019).

    ``drw_epoch`` given: returned unchanged (an absolute 0-indexed epoch; kaidic/LDAM-DRW uses 160
    of 200, ``idx = epoch // 160``). Otherwise ``floor(fraction · epochs)``, rounded **down**
    (``math.floor``, not ``scale_epoch``'s ``round``: E = 7 gives 5, not 6; E = 200 gives 160).
    The product is taken on the decimal value of ``fraction`` (``Fraction(str(fraction))``), so
    that a fraction such as 0.29 of 100 epochs gives 29, not ``floor(28.999…)``.
    """
    if drw_epoch is not None:
        if drw_epoch < 0:
            raise ValueError(f"drw_switch_epoch: drw_epoch must be >= 0, got {drw_epoch}")
        return int(drw_epoch)
    if fraction < 0:
        raise ValueError(f"drw_switch_epoch: fraction must be >= 0, got {fraction}")
    from fractions import Fraction

    return math.floor(Fraction(str(fraction)) * epochs)


def check_drw(owner: str, beta: float, drw_fraction: float, drw_epoch: int | None) -> None:
    """The DRW keywords of a method (LDAM-DRW, VS loss's ``train_rule: drw``), checked at construction:
    ``ValueError`` naming ``owner`` (create_method turns it into one line)."""
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"{owner}: beta must be in [0, 1), got {beta}")
    if drw_fraction < 0:
        raise ValueError(f"{owner}: drw_fraction must be >= 0, got {drw_fraction}")
    if drw_epoch is not None and (isinstance(drw_epoch, bool) or not isinstance(drw_epoch, int) or drw_epoch < 0):
        raise ValueError(f"{owner}: drw_epoch must be a 0-indexed epoch (int >= 0) or None, got {drw_epoch!r}")


def mwnl_stage_epochs(
    epochs: int, E_min: int = 20, E_max: int = 60, reference_epochs: int | None = 70
) -> tuple[int, int]:
    """MWNL's cumulative-weight epochs (Yao et al., IEEE TMI 2021) moved to a run of ``epochs``.

    ``(round(E_min · epochs / reference_epochs), round(E_max · epochs / reference_epochs))`` with
    ``scale_epoch``, i.e. Python's ``round`` (half to even). With the official 20 and 60 of 70
    epochs a tie cannot occur (``2E/7`` and ``6E/7`` are never ``k + 1/2``), so half-up rounding
    would give the same epochs. ``reference_epochs=None``: E_min and E_max are absolute (1-indexed).
    """
    return scale_epoch(E_min, epochs, reference_epochs), scale_epoch(E_max, epochs, reference_epochs)


def mwnl_power(epoch_1indexed: int, E_min: int, E_max: int, max_power: float = 1.2) -> float:
    """Power ``p`` of MWNL's class weights ``(1/n_c)^p`` (mbit-skin-cancer ``BaseLoss``, ``"cls"``).

    Epochs are 1-indexed as in the official loop. ``0`` for ``e <= E_min``;
    ``max_power · ((e − E_min)/(E_max − E_min))²`` for ``E_min < e < E_max``; ``max_power`` for
    ``e >= E_max`` (with ``E_min == E_max`` the middle branch is empty).
    """
    if epoch_1indexed < 1:
        raise ValueError(f"mwnl_power: epochs are 1-indexed, got {epoch_1indexed}")
    if epoch_1indexed <= E_min:
        return 0.0
    if epoch_1indexed < E_max:
        # the official order of operations: ratio², then × max_power
        return ((epoch_1indexed - E_min) / (E_max - E_min)) ** 2 * max_power
    return float(max_power)


def bbn_div_epoch(epochs: int) -> int:
    """BBN's divisor of the cumulative-learning α for a run of ``epochs`` (Megvii-Nanjing/BBN ``Combiner``).

    ``epochs``, except ``100 · (epochs // 100 + 1)`` when ``epochs`` is 90 or 180 (i.e. 100 and
    200; integer division, no other rounding), as ``initilize_all_parameters`` does.
    """
    if epochs < 1:
        raise ValueError(f"bbn_div_epoch: epochs must be >= 1, got {epochs}")
    return 100 * (epochs // 100 + 1) if epochs in (90, 180) else epochs


def bbn_alpha(epoch_1indexed: int, div_epoch: int) -> float:
    """BBN's cumulative-learning weight of the conventional branch (Zhou et al., CVPR 2020).

    ``α = 1 − ((e − 1) / div_epoch)²`` with e **1-indexed** as in the official loop (a 0-indexed
    epoch ``k`` is ``e = k + 1``); exact float, no rounding. α(1) = 1; with div_epoch = E it never
    reaches 0 (E = 100: α(100) = 0.0199).
    """
    if epoch_1indexed < 1:
        raise ValueError(f"bbn_alpha: epochs are 1-indexed, got {epoch_1indexed}")
    if div_epoch < 1:
        raise ValueError(f"bbn_alpha: div_epoch must be >= 1, got {div_epoch}")
    return 1.0 - ((epoch_1indexed - 1) / div_epoch) ** 2
