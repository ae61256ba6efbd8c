"""A linear classifier fitted to convergence on frozen features: the probe stage (``ltbench.stages.Probe``).

Two-stage methods (SCL, TSC, SimCLR) train a representation, then a linear classifier on the frozen
encoder. Trained by SGD for a few epochs, that classifier stops far from its optimum (issue 20: 32
steps left SCL at 51 % on digits-lt, where a converged logistic regression on the same encoder
reaches 95 %), so the table would rank the budget, not the representation. The probe computes the
features once and solves the convex problem (convex for cross-entropy; for the focal loss a
stationary point) full batch with L-BFGS, as linear evaluations in the literature fit a logistic
regression (SimCLR, Chen et al. 2020, appendix B.6: L-BFGS on frozen features as an alternative to
the SGD linear evaluation; scikit-learn's ``LogisticRegression(solver="lbfgs")`` on standardised
features). The objective is in :class:`ltbench.stages.Probe`'s docstring.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ltbench.errors import LtbenchError
from ltbench.stages import BALANCED_SAMPLERS, Probe

RESTARTS = 3


@dataclass
class ProbeFit:
    """The fitted layer in the original feature space (float64) and how the fit ended."""

    weight: Tensor  # [C, d]
    bias: Tensor  # [C]
    loss: float  # the weighted data loss at the solution (without the l2 term)
    objective: float  # data loss + l2/2 ‖W‖² (standardised space)
    iterations: int
    grad_norm: float  # largest absolute gradient entry of the objective at the solution
    tolerance: float
    converged: bool

    def record(self) -> dict:
        """The history's ``probe`` entry (plain JSON values)."""
        return {"loss": self.loss, "objective": self.objective, "iterations": self.iterations,
                "grad_norm": self.grad_norm, "tolerance": self.tolerance, "converged": self.converged}


def linear_inputs(method, layer: torch.nn.Module) -> Callable[[torch.nn.Module, Tensor], Tensor]:
    """``fn(model, x)``: the inputs ``layer`` receives while ``method.predict(model, x)`` runs.

    Capturing them with a forward pre-hook reads the features exactly where the classifier reads
    them, whatever the network in between (no method-specific feature hook needed).
    """
    def features(model: torch.nn.Module, images: Tensor) -> Tensor:
        seen: list[Tensor] = []
        handle = layer.register_forward_pre_hook(lambda _module, args: seen.append(args[0]))
        try:
            method.predict(model, images)
        finally:
            handle.remove()
        if len(seen) != 1:
            raise LtbenchError(f"method {method.name!r}: the probed layer ran {len(seen)} times in one predict "
                               "call (it must run exactly once)")
        return seen[0]

    return features


def sample_weights(labels: Tensor, num_classes: int, sampler: str) -> Tensor:
    """Per-sample weights summing to 1: the weight a sample has in the sampler's expected batch."""
    counts = torch.bincount(labels, minlength=num_classes).to(torch.float64)
    if sampler == "instance":
        per_class = torch.ones_like(counts)
    elif sampler in BALANCED_SAMPLERS:
        per_class = 1.0 / counts.clamp(min=1)
    elif sampler == "reversed":
        per_class = (counts.max() / counts.clamp(min=1)) / counts.clamp(min=1)
    else:
        raise LtbenchError(f"probe: unknown sampler {sampler!r}")
    weights = per_class[labels]
    return weights / weights.sum()


def fit_linear_probe(features: Tensor, labels: Tensor, num_classes: int,
                     loss_fn: Callable[[Tensor, Tensor], Tensor], probe: Probe,
                     device: torch.device | str = "cpu") -> ProbeFit:
    """Minimise the probe objective over (W, b) from zero, in float64 on ``device``.

    ``loss_fn(logits, labels)`` returns per-sample losses ([N]); autocast is off throughout (the
    CUDA path trains under bf16 autocast, which would round the fit's matrix products).
    """
    device = torch.device(device)
    with torch.autocast(device.type, enabled=False):
        x = features.to(device=device, dtype=torch.float64)
        y = labels.to(device)
        if x.ndim != 2 or x.shape[0] != y.shape[0]:
            raise LtbenchError(f"probe: features of shape {tuple(x.shape)} for {y.shape[0]} labels")
        if not bool(torch.isfinite(x).all()):
            raise LtbenchError("probe: the frozen features contain NaN or infinity")
        mean = x.mean(dim=0)
        std = x.std(dim=0, unbiased=False)
        std = torch.where(std > 1e-12, std, torch.ones_like(std))  # constant features: left at 0 after centring
        z = (x - mean) / std
        w = sample_weights(y, num_classes, probe.sampler)
        weight = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, device=device, requires_grad=True)
        bias = torch.zeros(num_classes, dtype=torch.float64, device=device, requires_grad=True)

        def terms() -> tuple[Tensor, Tensor]:
            per_sample = loss_fn(z @ weight.T + bias, y)
            if per_sample.shape != y.shape:
                raise LtbenchError(f"probe_loss must return one loss per sample ({y.shape[0]}), "
                                   f"got shape {tuple(per_sample.shape)}")
            data = (w * per_sample).sum()
            return data, data + 0.5 * probe.l2 * (weight * weight).sum()

        def gradient_norm() -> float:
            grads = torch.autograd.grad(terms()[1], [weight, bias])
            return max(float(g.abs().max()) for g in grads)

        # L-BFGS stops early when its line search can make no progress with a stale curvature
        # history; a fresh history (up to RESTARTS times) then usually goes on to the tolerance.
        iterations = 0
        for _ in range(1 + RESTARTS):
            budget = probe.max_iter - iterations
            optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=budget, max_eval=2 * budget,
                                          tolerance_grad=probe.tolerance, tolerance_change=0.0, history_size=20,
                                          line_search_fn="strong_wolfe")

            def closure() -> Tensor:
                optimizer.zero_grad()
                objective = terms()[1]
                objective.backward()
                return objective

            optimizer.step(closure)
            done = int(optimizer.state[weight].get("n_iter", 0))
            iterations += done
            if done == 0 or iterations >= probe.max_iter or gradient_norm() <= probe.tolerance:
                break
        grad_norm = gradient_norm()
        data, objective = terms()
        with torch.no_grad():
            folded = weight / std  # W z = (W/σ) x − (W/σ) μ
            return ProbeFit(weight=folded.detach().cpu(), bias=(bias - folded @ mean).detach().cpu(),
                            loss=float(data), objective=float(objective), iterations=iterations,
                            grad_norm=grad_norm, tolerance=probe.tolerance,
                            converged=bool(grad_norm <= probe.tolerance) and bool(torch.isfinite(objective)))
