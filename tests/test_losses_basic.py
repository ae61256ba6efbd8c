"""CE and focal against naive float64 implementations of their formulas (values and gradients)."""
from __future__ import annotations

import math

import pytest
import torch

from ltbench import create_method
from tests.helpers import float64_logits


def naive_ce(z, y, w=None):
    """Per-sample -w_y · log softmax(z)_y with explicit loops."""
    out = []
    for i in range(z.shape[0]):
        log_den = torch.log(sum(torch.exp(z[i, k]) for k in range(z.shape[1])))
        weight = 1.0 if w is None else w[y[i]]
        out.append(-(z[i, y[i]] - log_den) * weight)
    return out


def naive_focal(z, y, gamma, w=None):
    terms = []
    for ce in naive_ce(z, y, w):
        p = torch.exp(-ce)
        terms.append((1 - p) ** gamma * ce)
    return sum(terms) / len(terms)  # plain mean over B, never over the weights


@pytest.mark.parametrize("absent", [None, 2])
def test_ce_matches_naive(absent):
    z, y = float64_logits(absent=absent)
    loss = create_method("ce").double().loss(z, y)
    ref = sum(naive_ce(z, y)) / len(y)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(torch.autograd.grad(loss, z)[0], torch.autograd.grad(ref, z)[0])


@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.0])
@pytest.mark.parametrize("weights", [None, [0.5, 1.0, 2.0, 4.0]])
@pytest.mark.parametrize("absent", [None, 1])
def test_focal_matches_naive(gamma, weights, absent):
    z, y = float64_logits(seed=3, absent=absent)
    method = create_method("focal", gamma=gamma, class_weights=weights).double()
    loss = method.loss(z, y)
    w = torch.tensor(weights, dtype=torch.float64) if weights else None
    ref = naive_focal(z, y, gamma, w)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(torch.autograd.grad(loss, z)[0], torch.autograd.grad(ref, z)[0])


def test_focal_with_gamma_zero_is_ce_and_is_not_weight_normalised():
    z, y = float64_logits(seed=5)
    w = [0.5, 1.0, 2.0, 4.0]
    focal = create_method("focal", gamma=0.0, class_weights=w).double().loss(z, y)
    weighted_sum = torch.nn.functional.cross_entropy(z, y, weight=torch.tensor(w, dtype=torch.float64),
                                                     reduction="sum")
    torch.testing.assert_close(focal, weighted_sum / len(y))  # divided by B, not by Σ w_y
    assert not math.isclose(focal.item(), torch.nn.functional.cross_entropy(
        z, y, weight=torch.tensor(w, dtype=torch.float64)).item())
