"""grw against naive float64 loops of DisAlign's generalized re-weighting (values and gradients)."""
from __future__ import annotations

import math

import pytest
import torch

from ltbench import LtbenchError, TrainInfo, create_method
from ltbench.methods.grw import grw_loss, grw_weights
from tests.helpers import float64_logits

COUNTS = (50, 20, 5, 2)
FLEX_100 = (5000, 2590, 1342, 695, 360, 187, 97, 51)  # FlexSampling's train_100 counts


def naive_weights(counts, rho, reference):
    ref = max(counts) if reference == "max" else sum(counts)
    raw = [1.0 / (n / ref) ** rho for n in counts]
    return [w / sum(raw) * len(counts) for w in raw]


def naive_grw(z, y, w, eps=0.0):
    """Σ_i [(1−ε)·w_{y_i}·CE_i + (ε/C)·Σ_c w_c·(−log p_ic)] / Σ_i w_{y_i} with explicit loops."""
    b, c = z.shape
    num, den = 0.0, 0.0
    for i in range(b):
        log_den = torch.log(sum(torch.exp(z[i, k]) for k in range(c)))
        nll = [-(z[i, k] - log_den) for k in range(c)]
        num = num + (1 - eps) * w[y[i]] * nll[y[i]] + eps / c * sum(w[k] * nll[k] for k in range(c))
        den = den + w[y[i]]
    return num / den


@pytest.mark.parametrize("counts", [COUNTS, FLEX_100])
@pytest.mark.parametrize("rho", [1.0, 1.2])
@pytest.mark.parametrize("reference", ["max", "sum"])
def test_weights_match_the_naive_formula(counts, rho, reference):
    got = grw_weights(counts, rho, reference)
    assert got.dtype == torch.float32 and math.isclose(float(got.sum()), len(counts), rel_tol=1e-6)
    torch.testing.assert_close(got.double(), torch.tensor(naive_weights(counts, rho, reference),
                                                          dtype=torch.float64), rtol=1e-6, atol=0)


def test_the_2023_and_v02_references_give_the_same_weights():
    torch.testing.assert_close(grw_weights(FLEX_100, 1.2, "max"), grw_weights(FLEX_100, 1.2, "sum"))


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("absent", [None, 1])
@pytest.mark.parametrize("rho", [1.0, 1.2])
def test_method_loss_matches_naive(eps, absent, rho):
    z, y = float64_logits(seed=2, absent=absent)
    method = create_method("grw", exp_scale=rho, label_smoothing=eps)
    method.setup(TrainInfo(class_counts=COUNTS, class_names=tuple("abcd"), epochs=1, steps_per_epoch=1,
                           device=torch.device("cpu")))
    method = method.double()
    loss = method.loss(z, y)
    ref = naive_grw(z, y, method.class_weights, eps)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(torch.autograd.grad(loss, z)[0], torch.autograd.grad(ref, z)[0])


def test_divides_by_the_batch_weight_sum_not_by_b():
    z, y = float64_logits(seed=5)
    w = grw_weights(COUNTS).double()
    loss = grw_loss(z, y, w)
    per_sample = torch.nn.functional.cross_entropy(z, y, reduction="none")
    torch.testing.assert_close(loss, (w[y] * per_sample).sum() / w[y].sum())
    assert not math.isclose(loss.item(), (w[y] * per_sample).mean().item(), rel_tol=1e-3)


def test_default_is_the_repository_baseline_rho():
    assert create_method("grw").get_params()["exp_scale"] == 1.2


@pytest.mark.parametrize("params", [{"reference": "mean"}, {"exp_scale": -1}, {"label_smoothing": 1.0},
                                    {"sampler": "weighted"}])
def test_bad_values_are_one_line_errors(params):
    with pytest.raises(LtbenchError):
        create_method("grw", **params)
