"""Shared parts of the decoupling methods (Kang et al., "Decoupling Representation and Classifier for
Long-Tailed Recognition", ICLR 2020; facebookresearch/classifier-balancing @ 22370c6) and DisAlign.

Registers nothing. What is here:

* :class:`DecoupledMethod`: stage 1 (the "joint" instance-balanced cross-entropy training of encoder
  and linear classifier, the official ``feat_uniform`` run) and the SGD classifier stage of the
  ``probe="sgd"`` variants, beyond the budget as SCL's (``methods/scl.py``);
* the post-hoc computations, as the official code computes them, each in float64: τ-normalised
  weights (``tau_norm.py``'s ``pnorm``), the class-mean accuracy ``tau_norm.py`` prints for each τ,
  the nearest-class-mean classifier (``models/KNNClassifier.py`` and ``run_networks.py``
  ``get_knncentroids``);
* :func:`lbfgs_fit`: a full-batch fit of a few parameters to a gradient tolerance (LWS's scales,
  DisAlign's calibration), whose record has the probe stage's keys (``ltbench.stages.Probe``), so a
  fit that did not converge is flagged in the report.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltbench.method import Batch, Method, RunAccess, StepResult, TrainInfo
from ltbench.models import Backbone
from ltbench.stages import Stage, stage_bounds, stage_index

#: ``tau_norm.py``: ``for p in np.linspace(0, 2, 21)`` (written as the decimals it means).
OFFICIAL_TAU_GRID = tuple(round(0.1 * k, 1) for k in range(21))
FEAT_TYPES = ("un", "l2n", "cl2n")  # KNNClassifier's feature transforms
DIST_TYPES = ("l2", "cos")
PROBES = ("lbfgs", "sgd")
LBFGS_RESTARTS = 3


class DecoupledNetwork(nn.Module):
    """Backbone → ``classifier`` (``nn.Linear``, the official ``DotProductClassifier``: with bias)."""

    def __init__(self, backbone: Backbone, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.classifier = nn.Linear(backbone.out_dim, num_classes)

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier(self.backbone(images))


def check_probe(cls: str, probe: str, probe_epochs: int, classifier_lr: float | None,
                classifier_weight_decay: float | None, tolerance: float, max_iter: int) -> None:
    """One ValueError line per bad value (``create_method`` turns it into an LtbenchError)."""
    if probe not in PROBES:
        raise ValueError(f"{cls}: probe must be one of {', '.join(PROBES)}, got {probe!r}")
    if not (isinstance(probe_epochs, int) and probe_epochs >= 1):
        raise ValueError(f"{cls}: probe_epochs must be a positive integer, got {probe_epochs!r}")
    for key, value in (("classifier_lr", classifier_lr), ("classifier_weight_decay", classifier_weight_decay)):
        if value is not None and not (isinstance(value, (int, float)) and value >= 0 and math.isfinite(value)):
            raise ValueError(f"{cls}: {key} must be a finite number >= 0 (or null), got {value!r}")
    if not (isinstance(tolerance, (int, float)) and tolerance > 0):
        raise ValueError(f"{cls}: probe_tolerance must be positive, got {tolerance!r}")
    if not (isinstance(max_iter, int) and 1 <= max_iter <= 100_000):
        raise ValueError(f"{cls}: probe_max_iter must be an integer in [1, 100000], got {max_iter!r}")


class DecoupledMethod(Method):
    """Stage 1: instance-sampled cross-entropy of the whole model (``stage1_parts``) over the budget E.

    Subclasses add their classifier step: a probe stage (cRT), a post-hoc :meth:`calibrate` (τ-norm,
    NCM, LWS and DisAlign by default) or, with ``probe="sgd"``, an SGD stage of ``probe_epochs`` beyond
    E (:meth:`sgd_stage`) whose loss is :meth:`stage2_loss`.
    """

    views = ("standard",)
    samplers = ("instance",)
    #: Model parts stage 1 trains (None: all; LWS and DisAlign keep their stage-2 parameters out).
    stage1_parts: tuple[str, ...] | None = None

    def __init__(self) -> None:
        super().__init__()
        self._bounds: list[tuple[int, int]] = []

    def build_model(self, backbone: Backbone, info: TrainInfo) -> nn.Module:
        return DecoupledNetwork(backbone, info.num_classes)

    def stage1(self, selectable: bool) -> Stage:
        return Stage(samplers=("instance",), views=("standard",), trains=self.stage1_parts, selectable=selectable,
                     name="representation")

    def sgd_stage(self, sampler: str, trains: tuple[str, ...]) -> Stage:
        """The official classifier stage: SGD, its own cosine to 0 over ``probe_epochs`` beyond E, no warm-up."""
        return Stage(epochs=self.probe_epochs, extra=True, samplers=((sampler, ("standard",)),), trains=trains,
                     lr=self.classifier_lr, weight_decay=self.classifier_weight_decay, lr_schedule="cosine",
                     warmup_epochs=0, name="classifier")

    def set_bounds(self, stages: list[Stage], info: TrainInfo) -> list[Stage]:
        self._bounds = stage_bounds(stages, info.epochs)
        return stages

    def in_stage2(self, epoch: int | None = None) -> bool:
        """Is ``epoch`` (default: the current one) in an SGD classifier stage (the last of two)?"""
        epoch = self.epoch if epoch is None else epoch
        return len(self._bounds) > 1 and stage_index(self._bounds, epoch) == len(self._bounds) - 1

    def stage2_start(self) -> int:
        return self._bounds[-1][0]

    def stage2_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        return F.cross_entropy(logits, labels)

    def training_step(self, model: nn.Module, batch: Batch) -> StepResult:
        logits = model(batch.views[0]).float()
        if self.in_stage2():
            return self.stage2_loss(logits, batch.labels)
        return F.cross_entropy(logits, batch.labels)

    def on_train_start(self, run: RunAccess) -> None:
        self._run = run  # the model, for cRT's SGD stage that re-initialises the classifier


# ----------------------------------------------------------------------------- τ-normalisation
def tau_normalised(weight: Tensor, tau: float) -> Tensor:
    """``pnorm(weights, p)``: each row ``w_c / ‖w_c‖₂^τ`` (τ = 0: the weights unchanged)."""
    return weight / weight.norm(p=2, dim=1, keepdim=True).pow(tau)


def class_mean_accuracy(predictions: Tensor, labels: Tensor, num_classes: int) -> float:
    """``np.mean(cls_accs)`` of ``tau_norm.py``: the mean over the classes present of their recall."""
    recalls = [float((predictions[labels == c] == c).double().mean()) for c in range(num_classes)
               if bool((labels == c).any())]
    return sum(recalls) / len(recalls)


def choose_tau(features: Tensor, labels: Tensor, weight: Tensor, grid: Sequence[float]) -> tuple[float, list[float]]:
    """The τ of ``grid`` whose bias-free τ-normalised classifier has the best class-mean accuracy on
    ``features`` (validation rows); ties keep the earlier τ of the grid. Returns (τ, score per τ)."""
    x, w = features.double(), weight.double()
    scores = [class_mean_accuracy((x @ tau_normalised(w, tau).T).argmax(dim=1), labels, w.shape[0]) for tau in grid]
    best = max(range(len(grid)), key=lambda k: (scores[k], -k))
    return float(grid[best]), scores


# ----------------------------------------------------------------------------- nearest class mean
def ncm_transform(features: Tensor, mean: Tensor, feat_type: str) -> Tensor:
    """KNNClassifier.forward's feature transform: ``cl2n`` centre on the training mean, then (``l2n``,
    ``cl2n``) divide by the L2 norm; ``un`` leaves the features."""
    x = features - mean if feat_type == "cl2n" else features
    return x / x.norm(p=2, dim=1, keepdim=True) if feat_type in ("l2n", "cl2n") else x


def ncm_centroids(features: Tensor, labels: Tensor, num_classes: int, feat_type: str) -> tuple[Tensor, Tensor, Tensor]:
    """``get_knncentroids``: the training mean and, per class, the mean of the *transformed* training
    features (not re-normalised, as the code). Returns (mean [d], centroids [C, d], present [C] bool);
    a class without training rows gets a zero centroid and ``present`` False."""
    x = features.double()
    mean = x.mean(dim=0)
    z = ncm_transform(x, mean, feat_type)
    centroids = torch.zeros(num_classes, x.shape[1], dtype=torch.float64)
    present = torch.zeros(num_classes, dtype=torch.bool)
    for c in range(num_classes):
        rows = labels == c
        if bool(rows.any()):
            centroids[c] = z[rows].mean(dim=0)
            present[c] = True
    return mean, centroids, present


def ncm_logits(features: Tensor, mean: Tensor, centroids: Tensor, present: Tensor, feat_type: str,
               dist_type: str) -> Tensor:
    """KNNClassifier's logits: ``cos``: ``x·c / d`` (its ``cos_similarity``: the transformed feature
    against the un-normalised centroid, divided by the feature dimension); ``l2``: ``−‖x − c‖²``.
    A class without training rows gets −inf (never predicted)."""
    x = ncm_transform(features, mean, feat_type)
    if dist_type == "cos":
        logits = x @ centroids.T / x.shape[1]
    else:
        logits = -((x * x).sum(dim=1, keepdim=True) + (centroids * centroids).sum(dim=1)[None, :] - 2 * x @ centroids.T)
    return logits.masked_fill(~present.to(logits.device)[None, :], float("-inf"))


# ----------------------------------------------------------------------------- full-batch fits
def balanced_sample_weights(labels: Tensor, num_classes: int) -> Tensor:
    """Per-sample weights summing to 1 that weigh every class alike: what a class-balanced batch's
    expected loss gives each training sample (``1 / (C' · n_c)``, C' the classes present)."""
    counts = torch.bincount(labels, minlength=num_classes).to(torch.float64)
    weights = (1.0 / counts.clamp(min=1))[labels]
    return weights / weights.sum()


def lbfgs_fit(params: list[Tensor], objective: Callable[[], Tensor], tolerance: float, max_iter: int) -> dict:
    """Minimise ``objective()`` over ``params`` (float64 leaves with ``requires_grad``) with L-BFGS and a
    strong-Wolfe line search until the largest gradient entry is ≤ ``tolerance`` or ``max_iter``
    iterations (a fresh curvature history up to 3 times when the line search stalls, as the probe
    stage). Returns the probe record: ``loss`` (the objective), ``objective``, ``iterations``,
    ``grad_norm``, ``tolerance``, ``converged``."""

    def grad_norm() -> float:
        grads = torch.autograd.grad(objective(), params)
        return max(float(g.abs().max()) for g in grads)

    iterations = 0
    for _ in range(1 + LBFGS_RESTARTS):
        budget = max_iter - iterations
        optimizer = torch.optim.LBFGS(params, lr=1.0, max_iter=budget, max_eval=2 * budget,
                                      tolerance_grad=tolerance, tolerance_change=0.0, history_size=20,
                                      line_search_fn="strong_wolfe")

        def closure() -> Tensor:
            optimizer.zero_grad()
            value = objective()
            value.backward()
            return value

        optimizer.step(closure)
        done = int(optimizer.state[params[0]].get("n_iter", 0))
        iterations += done
        if done == 0 or iterations >= max_iter or grad_norm() <= tolerance:
            break
    norm = grad_norm()
    value = float(objective().detach())
    return {"loss": value, "objective": value, "iterations": iterations, "grad_norm": norm,
            "tolerance": tolerance, "converged": bool(norm <= tolerance) and math.isfinite(value)}
