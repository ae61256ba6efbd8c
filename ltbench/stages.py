"""Stages: consecutive parts of one run's epoch budget, as plain data.

A method describes its run with ``Method.stages(info) -> list[Stage]``; the default is one stage
built from the class attributes ``views`` and ``samplers``, so a method that declares nothing
trains exactly as before. For each stage the trainer

* loads and augments only the stage's streams and, per stream, only the views it declares;
* trains only the model parts named in ``trains`` (dotted submodule paths of the model returned
  by ``build_model``, e.g. ``("classifier",)``): a fresh SGD over their parameters only, every
  other parameter gets ``requires_grad=False`` (no gradient, no weight decay, no momentum) and
  every other module is in eval mode (BatchNorm running statistics do not move);
* sets the learning rate of stage epoch ``j`` (0-indexed within the stage) to
  ``cosine_lr(stage.lr or config.lr, j, stage length)`` — each stage restarts its own cosine;
* considers the stage's epochs for the best-validation checkpoint only if ``selectable``.

**Streams and per-stream views.** Each entry of ``samplers`` is either a sampler name
(``"instance"``, ``"class_balanced"``, ``"reversed"``), whose stream gets the views in ``views``,
or a pair ``(sampler, views)`` naming that stream's own views, e.g.
``(("instance", ("contrastive", "contrastive")), ("class_balanced", ("standard",)))``. The k-th
``Batch`` passed to ``training_step`` comes from the k-th entry and ``Batch.views[j]`` is its j-th
view. The same grammar holds for the class attribute ``Method.samplers``.

**Lengths** (E = the run's epochs). A stage sets ``epochs`` (an absolute count) or ``fraction``
(of E, rounded half up: ``floor(fraction · E + 0.5)``), or neither: then it takes the epochs the
others leave (at most one such stage). The lengths must sum to E exactly (one ``LtbenchError``
line otherwise); a stage of length 0 is skipped. Stage k covers 0-indexed epochs
``[start_k, start_k + length_k)`` with ``start_k`` the sum of the earlier lengths
(:func:`stage_bounds`). A method that needs a minimum length computes ``epochs`` itself from
``info.epochs``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence, Union

from ltbench.errors import LtbenchError

#: A stream entry: a sampler name, or (sampler name, the stream's view presets).
StreamSpec = Union[str, tuple[str, tuple[str, ...]]]


@dataclass(frozen=True)
class Stage:
    """One part of the run. ``None`` fields fall back to the method's attributes / the config."""

    epochs: int | None = None  # absolute length
    fraction: float | None = None  # length as a fraction of the run's epochs (rounded half up)
    samplers: tuple[StreamSpec, ...] | None = None  # None: the method's `samplers`
    views: tuple[str, ...] | None = None  # views of streams that name none; None: the method's `views`
    trains: tuple[str, ...] | None = None  # dotted submodule paths of the model; None: the whole model
    lr: float | None = None  # base lr of the stage's own cosine; None: the config's lr
    weight_decay: float | None = None  # None: the config's weight decay
    optimizer: str | None = None  # "sgd" | "adam"; None: the config's optimizer
    selectable: bool = True  # may one of its epochs be the best-validation checkpoint?
    name: str = ""  # for logs and the history (``stage`` field of multi-stage runs)

    def __post_init__(self) -> None:
        if self.epochs is not None and self.fraction is not None:
            raise LtbenchError(f"stage {self.name or '?'}: give epochs or fraction, not both")
        if self.epochs is not None and (not isinstance(self.epochs, int) or self.epochs < 0):
            raise LtbenchError(f"stage {self.name or '?'}: epochs must be a non-negative integer, got {self.epochs!r}")
        if self.fraction is not None and not 0.0 <= self.fraction <= 1.0:
            raise LtbenchError(f"stage {self.name or '?'}: fraction must be in [0, 1], got {self.fraction!r}")
        if self.optimizer not in (None, "sgd", "adam"):
            raise LtbenchError(f"stage {self.name or '?'}: optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if self.trains is not None and (isinstance(self.trains, str) or not self.trains):
            raise LtbenchError(f"stage {self.name or '?'}: trains must be a non-empty tuple of module paths "
                               f"(or None for the whole model), got {self.trains!r}")


def stream_specs(samplers: Sequence[StreamSpec], views: Sequence[str]) -> list[tuple[str, tuple[str, ...]]]:
    """Normalise stream entries to ``[(sampler, views), ...]`` (plain names get ``views``)."""
    out = []
    for entry in samplers:
        if isinstance(entry, str):
            out.append((entry, tuple(views)))
            continue
        try:
            sampler, own = entry
        except (TypeError, ValueError):
            raise LtbenchError(f"sampler entry {entry!r}: give a sampler name or (sampler, (view, ...))") from None
        if not isinstance(sampler, str) or isinstance(own, str) or not all(isinstance(v, str) for v in own):
            raise LtbenchError(f"sampler entry {entry!r}: give a sampler name or (sampler, (view, ...))")
        out.append((sampler, tuple(own)))
    if not out:
        raise LtbenchError("a stage needs at least one sampler stream")
    for sampler, own in out:
        if not own:
            raise LtbenchError(f"sampler stream {sampler!r} has no views")
    return out


def stage_lengths(stages: Sequence[Stage], epochs: int) -> list[int]:
    """The epochs of each stage (rules in the module docstring)."""
    if not stages:
        raise LtbenchError("a method must declare at least one stage")
    lengths: list[int | None] = []
    for stage in stages:
        if stage.epochs is not None:
            lengths.append(stage.epochs)
        elif stage.fraction is not None:
            lengths.append(math.floor(stage.fraction * epochs + 0.5))
        else:
            lengths.append(None)
    open_ = [k for k, n in enumerate(lengths) if n is None]
    if len(open_) > 1:
        raise LtbenchError("stages: at most one stage may leave both epochs and fraction unset")
    fixed = sum(n for n in lengths if n is not None)
    if open_:
        lengths[open_[0]] = epochs - fixed
    if any(n < 0 for n in lengths) or sum(lengths) != epochs:
        raise LtbenchError(f"stages: lengths {lengths} do not add up to the run's {epochs} epochs")
    return lengths  # type: ignore[return-value]


def stage_bounds(stages: Sequence[Stage], epochs: int) -> list[tuple[int, int]]:
    """``[(start, end), ...]``: stage k runs the 0-indexed epochs ``start <= e < end``."""
    bounds, start = [], 0
    for length in stage_lengths(stages, epochs):
        bounds.append((start, start + length))
        start += length
    return bounds


def stage_index(bounds: Sequence[tuple[int, int]], epoch: int) -> int:
    """The stage that 0-indexed ``epoch`` belongs to."""
    for k, (start, end) in enumerate(bounds):
        if start <= epoch < end:
            return k
    raise LtbenchError(f"epoch {epoch} is outside the stages {list(bounds)}")
