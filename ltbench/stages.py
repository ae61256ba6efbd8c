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

**Stages beyond the budget.** A stage with ``extra=True`` gives ``epochs`` on top of E (a classifier
stage with its own budget after a representation stage that took the whole of E, issue 20); the
other stages still sum to E. Bounds run over ``E + Σ extra``.

**Probe stages.** A stage with ``probe=Probe(...)`` trains no epochs: after the stages before it, the
trainer computes the eval view's inputs of the one ``nn.Linear`` the stage ``trains`` once over the
training rows and fits that layer to convergence, full batch (:class:`Probe`). It must be the last
stage; it is selectable as one evaluation (its history record carries ``probe``: loss, iterations,
gradient norm, tolerance, ``converged``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence, Union

from ltbench.errors import LtbenchError
from ltbench.schedules import LR_SCHEDULES

#: A stream entry: a sampler name, or (sampler name, the stream's view presets).
StreamSpec = Union[str, tuple[str, tuple[str, ...]]]

#: Samplers whose expected loss weighs every class alike; a probe replaces them by class weights.
BALANCED_SAMPLERS = ("class_balanced", "class_aware")


@dataclass(frozen=True)
class Probe:
    """A linear classifier fitted to convergence on frozen features (a probe stage's settings).

    Objective, in float64 on standardised features z = (x − μ)/σ (μ, σ over the training rows;
    folded back into the layer afterwards, so ``predict`` is unchanged)::

        Σ_i w_i · ℓ(W z_i + b, y_i)  +  l2/2 · ‖W‖²,   Σ_i w_i = 1

    with ℓ the method's per-sample loss (``Method.probe_loss``) and w from ``sampler`` as the
    sampler's expected batch would weigh a sample: ``instance`` 1/N; ``class_balanced`` and
    ``class_aware`` 1/(C·n_c) (every class alike, TSC's class-aware linear stage); ``reversed``
    ∝ (n_max/n_c)/n_c. L-BFGS with a strong-Wolfe line search runs from zero weights until the
    largest absolute gradient entry is ≤ ``tolerance`` (``converged``) or ``max_iter`` iterations.
    ``l2 = 1e-3`` is scikit-learn's ``LogisticRegression(C=1)`` on 1,000 standardised samples and
    keeps the problem bounded on separable features (without it the weights grow without end).
    """

    l2: float = 1e-3
    tolerance: float = 1e-5
    max_iter: int = 1000
    sampler: str = "instance"

    def __post_init__(self) -> None:
        if not (isinstance(self.l2, (int, float)) and self.l2 >= 0 and math.isfinite(self.l2)):
            raise LtbenchError(f"probe: l2 must be a finite number >= 0, got {self.l2!r}")
        if not (isinstance(self.tolerance, (int, float)) and self.tolerance > 0):
            raise LtbenchError(f"probe: tolerance must be positive, got {self.tolerance!r}")
        if not (isinstance(self.max_iter, int) and 1 <= self.max_iter <= 100_000):
            raise LtbenchError(f"probe: max_iter must be an integer in [1, 100000], got {self.max_iter!r}")
        if self.sampler not in ("instance", "reversed") + BALANCED_SAMPLERS:
            raise LtbenchError(f"probe: unknown sampler {self.sampler!r}")


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
    extra: bool = False  # its ``epochs`` come on top of the run's budget E
    lr_schedule: str | None = None  # None: the config's (cosine | step | constant)
    lr_milestones: tuple[int, ...] | None = None  # step schedule, epochs of the stage; None: the config's
    lr_gamma: float | None = None  # step schedule's factor; None: the config's
    warmup_epochs: int | None = None  # None: the config's warm-up (0: none in this stage)
    probe: Probe | None = None  # a closed-form linear fit instead of epochs (see the module docstring)

    def __post_init__(self) -> None:
        if self.epochs is not None and self.fraction is not None:
            raise LtbenchError(f"stage {self.name or '?'}: give epochs or fraction, not both")
        if self.epochs is not None and (not isinstance(self.epochs, int) or self.epochs < 0):
            raise LtbenchError(f"stage {self.name or '?'}: epochs must be a non-negative integer, got {self.epochs!r}")
        if self.fraction is not None and not 0.0 <= self.fraction <= 1.0:
            raise LtbenchError(f"stage {self.name or '?'}: fraction must be in [0, 1], got {self.fraction!r}")
        if self.optimizer not in (None, "sgd", "adam"):
            raise LtbenchError(f"stage {self.name or '?'}: optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if self.lr_schedule not in (None,) + LR_SCHEDULES:
            raise LtbenchError(f"stage {self.name or '?'}: lr_schedule must be one of {', '.join(LR_SCHEDULES)}, "
                               f"got {self.lr_schedule!r}")
        if self.extra and (self.epochs is None or self.probe is not None):
            raise LtbenchError(f"stage {self.name or '?'}: a stage beyond the budget (extra) needs epochs")
        if self.probe is not None and (self.epochs or self.fraction or self.trains is None or len(self.trains) != 1):
            raise LtbenchError(f"stage {self.name or '?'}: a probe stage trains exactly one Linear module "
                               "(trains=(path,)) and has no epochs or fraction")
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
    if any(stage.probe is not None for stage in stages[:-1]):
        raise LtbenchError("stages: a probe stage must be the last stage")
    lengths: list[int | None] = []
    for stage in stages:
        if stage.probe is not None:
            lengths.append(0)
        elif stage.epochs is not None:
            lengths.append(stage.epochs)
        elif stage.fraction is not None:
            lengths.append(math.floor(stage.fraction * epochs + 0.5))
        else:
            lengths.append(None)
    open_ = [k for k, n in enumerate(lengths) if n is None]
    if len(open_) > 1:
        raise LtbenchError("stages: at most one stage may leave both epochs and fraction unset")
    in_budget = [k for k, stage in enumerate(stages) if not stage.extra]
    fixed = sum(lengths[k] for k in in_budget if lengths[k] is not None)
    if open_:
        lengths[open_[0]] = epochs - fixed
    if any(n < 0 for n in lengths) or sum(lengths[k] for k in in_budget) != epochs:
        shown = [n for k, n in enumerate(lengths) if not stages[k].extra]
        raise LtbenchError(f"stages: lengths {shown} do not add up to the run's {epochs} epochs")
    return lengths  # type: ignore[return-value]


def total_epochs(stages: Sequence[Stage], epochs: int) -> int:
    """Epochs the run trains: the budget E plus those of stages beyond it (``extra``)."""
    return sum(stage_lengths(stages, epochs))


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
