"""cb_loss against naive float64 loops of the two official forms (values and gradients)."""
from __future__ import annotations

import math

import pytest
import torch

from ltbench import LtbenchError, TrainInfo, create_method
from ltbench.methods.cb_loss import cb_loss, cb_loss_2023, cb_loss_v02, class_balanced_weights
from tests.helpers import float64_logits

COUNTS = (50, 20, 5, 2)


def naive_weights(counts, beta):
    raw = [(1.0 - beta) / (1.0 - beta**n) for n in counts]
    return [w / sum(raw) * len(counts) for w in raw]


def _sigmoid(x):
    return 1.0 / (1.0 + torch.exp(-x))


def _bce(p, t):
    return -(t * torch.log(p) + (1 - t) * torch.log(1 - p))


def naive_2023(z, y, w, loss_type, gamma):
    """Cui's sigmoid / softmax forms with explicit loops: Σ over B×C, then ÷ B (focal) or ÷ B·C."""
    b, c = z.shape
    total = 0.0
    probs = [[torch.exp(z[i, k]) / sum(torch.exp(z[i, j]) for j in range(c)) for k in range(c)] for i in range(b)]
    for i in range(b):
        for k in range(c):
            t = 1.0 if k == y[i] else 0.0
            if loss_type == "softmax":
                total = total + w[y[i]] * _bce(probs[i][k], t)
                continue
            p = _sigmoid(z[i, k])
            bce = _bce(p, t)
            if loss_type == "sigmoid":
                total = total + w[y[i]] * bce
            else:  # focal: (1 - p_t)^γ with p_t = σ(x) for the target, 1 − σ(x) otherwise
                p_t = p if t == 1.0 else 1 - p
                total = total + w[y[i]] * (1 - p_t) ** gamma * bce
    return total / (b if loss_type == "focal" else b * c)


def naive_v02(z, y, w, loss_type, gamma):
    """The v0.2 softmax forms: plain mean over B of w_y · ℓ_i."""
    b, c = z.shape
    terms = []
    for i in range(b):
        log_den = torch.log(sum(torch.exp(z[i, k]) for k in range(c)))
        ce = -(z[i, y[i]] - log_den)
        if loss_type == "focal":
            p = torch.exp(z[i, y[i]] - log_den)
            terms.append(w[y[i]] * (1 - p) ** gamma * ce)
        elif loss_type == "softmax":
            terms.append(w[y[i]] * ce)
        else:
            terms.append(w[y[i]] * sum(_bce(_sigmoid(z[i, k]), 1.0 if k == y[i] else 0.0) for k in range(c)))
    return sum(terms) / b


def _method(**params):
    method = create_method("cb_loss", **params)
    method.setup(TrainInfo(class_counts=COUNTS, class_names=tuple("abcd"), epochs=1, steps_per_epoch=1,
                           device=torch.device("cpu")))
    return method.double()


@pytest.mark.parametrize("beta", [0.9999, 0.99, 0.5])
def test_weights_match_the_naive_formula(beta):
    torch.testing.assert_close(class_balanced_weights(COUNTS, beta).double(),
                               torch.tensor(naive_weights(COUNTS, beta), dtype=torch.float64), rtol=1e-6, atol=0)
    assert class_balanced_weights(COUNTS, beta).dtype == torch.float32
    assert math.isclose(float(class_balanced_weights(COUNTS, beta).sum()), len(COUNTS), rel_tol=1e-6)


@pytest.mark.parametrize("form,naive", [("2023", naive_2023), ("v0.2", naive_v02)])
@pytest.mark.parametrize("loss_type", ["focal", "sigmoid", "softmax"])
@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.0])
@pytest.mark.parametrize("absent", [None, 2])
def test_every_form_and_type_matches_naive(form, naive, loss_type, gamma, absent):
    z, y = float64_logits(seed=7, absent=absent)
    method = _method(loss_type=loss_type, form=form, gamma=gamma)
    w = method.class_weights  # the float32 weights of setup, here as float64
    loss = method.loss(z, y)
    ref = naive(z, y, w, loss_type, gamma)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(torch.autograd.grad(loss, z)[0], torch.autograd.grad(ref, z)[0])


def test_module_functions_match_the_method_and_each_other():
    z, y = float64_logits(seed=1, absent=0)
    w = class_balanced_weights(COUNTS, 0.9999)
    for loss_type in ("focal", "sigmoid", "softmax"):
        torch.testing.assert_close(cb_loss(z, y, w, loss_type, 2.0, "2023"), cb_loss_2023(z, y, w, loss_type, 2.0))
        torch.testing.assert_close(cb_loss(z, y, w, loss_type, 2.0, "v0.2"), cb_loss_v02(z, y, w, loss_type, 2.0))


def test_the_two_cb_focals_differ_and_neither_is_weighted_cross_entropy():
    z, y = float64_logits(seed=3)
    w = class_balanced_weights(COUNTS, 0.9999).double()
    v2023, v02 = cb_loss_2023(z, y, w, "focal", 2.0), cb_loss_v02(z, y, w, "focal", 2.0)
    assert not math.isclose(v2023.item(), v02.item(), rel_tol=1e-3)
    weighted_mean = torch.nn.functional.cross_entropy(z, y, weight=w)
    assert not math.isclose(cb_loss_v02(z, y, w, "softmax").item(), weighted_mean.item(), rel_tol=1e-3)


def test_float32_autocast_and_the_literal_modulator():
    # Under bf16 autocast the loss still runs in float32 (binary_cross_entropy refuses autocast).
    z, y = float64_logits(seed=4)
    method = create_method("cb_loss", loss_type="softmax")
    method.setup(TrainInfo(class_counts=COUNTS, class_names=tuple("abcd"), epochs=1, steps_per_epoch=1,
                           device=torch.device("cpu")))
    plain = method.loss(z.detach().float(), y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = method.loss(z.detach().float(), y)
    assert auto.dtype == torch.float32 and torch.equal(plain, auto)


@pytest.mark.parametrize("params", [{"loss_type": "hinge"}, {"form": "2024"}, {"beta": 1.0}, {"gamma": -1},
                                    {"sampler": "weighted"}, {"mixup_alpha": -0.5}])
def test_bad_values_are_one_line_errors(params):
    with pytest.raises(LtbenchError):
        create_method("cb_loss", **params)
