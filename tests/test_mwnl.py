"""MWNL against a naive float64 implementation of the spec's formula, and its weight schedule."""
from __future__ import annotations

import math

import pytest
import torch

from ltbench import LtbenchError, TrainInfo, create_method
from ltbench.methods.mwnl import mwnl_class_weights, mwnl_loss

COUNTS = (300, 60, 15, 5)
TH = -math.log(0.1)


def naive_weights(counts, power):
    w = [(1.0 / n) ** power for n in counts]
    return [wc * len(counts) / sum(w) for wc in w]


def naive_mwnl(z, y, w, gamma=2.0, beta=0.1, reduction="enlarge", clip="fix"):
    """Element loops over the spec's formula: BCE, clip at −ln β, × (1 − p_t)^γ, × w_{y_i}."""
    b, c = z.shape
    total, weight_sum = 0.0, 0.0
    for i in range(b):
        yi = int(y[i])
        for j in range(c):
            t = 1.0 if j == yi else 0.0
            p = 1.0 / (1.0 + torch.exp(-z[i, j]))
            bce = -(t * torch.log(p) + (1.0 - t) * torch.log(1.0 - p))
            if beta > 0 and bce.item() > -math.log(beta):
                th = -math.log(beta)
                if clip == "fix":
                    bce = torch.tensor(th, dtype=z.dtype)  # a constant: no BCE gradient
                elif clip == "zero":
                    bce = torch.tensor(0.0, dtype=z.dtype)
                else:  # "decrease"
                    bce = torch.exp(-bce) * th / beta
            p_t = p if t == 1.0 else 1.0 - p
            total = total + w[yi] * (1.0 - p_t) ** gamma * bce
            weight_sum = weight_sum + w[yi]
    if reduction == "enlarge":
        return total / (b * c) * 30.0
    return total / weight_sum


def _inputs(seed=0, b=6, c=4, absent=None, spread=4.0):
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(b, c, generator=g, dtype=torch.float64) * spread).requires_grad_()
    y = torch.randint(0, c, (b,), generator=g)
    if absent is not None:
        y[y == absent] = (absent + 1) % c
        assert absent not in y
    return z, y


def _clipped(z, y, th=TH):
    t = torch.nn.functional.one_hot(y, z.shape[1]).to(z.dtype)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(z.detach(), t, reduction="none")
    return bce > th


def _info(epochs=70, counts=COUNTS):
    return TrainInfo(class_counts=counts, class_names=tuple(map(str, range(len(counts)))),
                     epochs=epochs, steps_per_epoch=1, device=torch.device("cpu"))


@pytest.mark.parametrize("reduction", ["enlarge", "normal"])
@pytest.mark.parametrize("absent", [None, 2])
@pytest.mark.parametrize("gamma, beta", [(2.0, 0.1), (0.0, 0.1), (2.0, 0.0), (1.5, 0.3)])
def test_mwnl_matches_naive(reduction, absent, gamma, beta):
    z, y = _inputs(seed=1, absent=absent)
    if beta > 0:
        assert _clipped(z, y, -math.log(beta)).sum() >= 2  # the batch exercises the clip
    w = naive_weights(COUNTS, 0.7)
    loss = mwnl_loss(z, y, torch.tensor(w, dtype=torch.float64), gamma, beta, reduction)
    ref = naive_mwnl(z, y, w, gamma, beta, reduction)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(torch.autograd.grad(loss, z)[0], torch.autograd.grad(ref, z)[0])


@pytest.mark.parametrize("clip", ["zero", "decrease"])
def test_other_official_clip_types_match_naive(clip):
    z, y = _inputs(seed=2, absent=0)
    w = naive_weights(COUNTS, 1.2)
    loss = mwnl_loss(z, y, torch.tensor(w, dtype=torch.float64), 2.0, 0.1, "enlarge", clip)
    ref = naive_mwnl(z, y, w, 2.0, 0.1, "enlarge", clip)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(torch.autograd.grad(loss, z)[0], torch.autograd.grad(ref, z)[0])


def test_clipped_element_passes_only_the_focal_gradient():
    z, y = _inputs(seed=3)
    w = naive_weights(COUNTS, 1.2)
    clipped = _clipped(z, y)
    assert clipped.any()
    grad = torch.autograd.grad(mwnl_loss(z, y, torch.tensor(w, dtype=torch.float64)), z)[0]
    b, c = z.shape
    for i, j in clipped.nonzero().tolist():
        s = torch.sigmoid(z[i, j].detach())
        is_target = j == int(y[i])
        # d(1 − p_t)^2/dz: (1 − σ)^2 -> −2(1 − σ)σ(1 − σ) for t = 1; σ^2 -> 2σ·σ(1 − σ) for t = 0
        d_mod = -2 * (1 - s) * s * (1 - s) if is_target else 2 * s * s * (1 - s)
        expected = w[int(y[i])] * TH * d_mod * 30.0 / (b * c)
        torch.testing.assert_close(grad[i, j], expected)
        assert grad[i, j].abs() > 0


def test_normal_reduction_divides_by_c_times_the_row_weights():
    z, y = _inputs(seed=4)
    w = torch.tensor(naive_weights(COUNTS, 1.2), dtype=torch.float64)
    normal = mwnl_loss(z, y, w, reduction="normal")
    enlarge = mwnl_loss(z, y, w, reduction="enlarge")
    b, c = z.shape
    # both share Σ_ij L_ij: enlarge = 30 Σ/(B C), normal = Σ/(C Σ_i w_{y_i})
    torch.testing.assert_close(normal * c * w[y].sum(), enlarge * b * c / 30.0)


def test_stable_focal_factor_for_extreme_logits():
    z = torch.tensor([[-120.0, 5.0], [3.0, 200.0]], requires_grad=True)
    y = torch.tensor([0, 0])
    loss = mwnl_loss(z, y, torch.ones(2))
    grad = torch.autograd.grad(loss, z)[0]
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    # (0,0) target at z = −120: clipped, focal factor (1 − σ(−120))² = 1 (the official form gives 0);
    # (0,1) z = 5, BCE 5.0 > th: clipped, factor σ(5)²; (1,0) z = 3: BCE softplus(−3), factor σ(−3)²;
    # (1,1) z = 200: clipped, factor 1.
    s = torch.sigmoid
    t = torch.tensor
    expected = (TH + s(t(5.0)) ** 2 * TH + s(t(-3.0)) ** 2 * torch.nn.functional.softplus(t(-3.0)) + TH) * 30 / 4
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_class_weights_match_naive():
    for power in (0.0, 0.5, 1.2):
        torch.testing.assert_close(mwnl_class_weights(COUNTS, power),
                                   torch.tensor(naive_weights(COUNTS, power), dtype=torch.float64))
    assert mwnl_class_weights(COUNTS, 1.2).sum().item() == pytest.approx(4.0)


@pytest.mark.parametrize("epoch_1indexed, power", [(1, 0.0), (20, 0.0), (21, 1.2 / 1600), (59, 1.2 * 39**2 / 1600),
                                                  (60, 1.2), (70, 1.2)])
def test_method_weights_at_boundary_epochs_official_config(epoch_1indexed, power):
    method = create_method("mwnl")
    method.setup(_info(epochs=70))
    assert method.stage_epochs == (20, 60)
    method.on_epoch_start(epoch_1indexed - 1)  # the API's epochs are 0-indexed
    expected = torch.tensor(naive_weights(COUNTS, power), dtype=torch.float32)
    torch.testing.assert_close(method.class_weights, expected)


def test_method_weights_scaled_budget_and_absolute_epochs():
    method = create_method("mwnl")
    method.setup(_info(epochs=7))
    assert method.stage_epochs == (2, 6)
    method.on_epoch_start(1)  # e = 2 = E_min
    torch.testing.assert_close(method.class_weights, torch.ones(4))
    method.on_epoch_start(2)  # e = 3
    torch.testing.assert_close(method.class_weights,
                               torch.tensor(naive_weights(COUNTS, 1.2 / 16), dtype=torch.float32))
    method.on_epoch_start(5)  # e = 6 = E_max
    torch.testing.assert_close(method.class_weights, torch.tensor(naive_weights(COUNTS, 1.2), dtype=torch.float32))
    absolute = create_method("mwnl", E_min=1, E_max=3, reference_epochs=None)
    absolute.setup(_info(epochs=7))
    assert absolute.stage_epochs == (1, 3)


def test_method_loss_uses_the_current_weights():
    method = create_method("mwnl")
    method.setup(_info(epochs=70))
    method.on_epoch_start(64)
    z, y = _inputs(seed=5, absent=3)
    ref = naive_mwnl(z, y, naive_weights(COUNTS, 1.2))
    torch.testing.assert_close(method.loss(z, y), ref, rtol=1e-6, atol=1e-6)  # float32 weights


@pytest.mark.parametrize("params", [dict(beta=0.5), dict(beta=-0.1), dict(clip="soft"), dict(reduction="sum"),
                                    dict(E_min=30, E_max=20), dict(gamma=-1.0), dict(reference_epochs=0)])
def test_bad_parameters_are_one_line_errors(params):
    with pytest.raises(LtbenchError, match="mwnl"):
        create_method("mwnl", **params)
