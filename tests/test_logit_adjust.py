"""Logit adjustment (loss and post-hoc forms) against naive float64 implementations."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ltbench import LtbenchError, TrainInfo, create_method
from ltbench.methods.logit_adjust import (
    class_prior, log_prior_adjustment, logit_adjusted_loss, posthoc_adjusted_logits,
)
from ltbench.models import build_backbone

COUNTS = (500, 90, 20, 4)


def naive_prior(counts):
    return [n / sum(counts) for n in counts]


def naive_la_loss(z, y, prior, tau):
    """mean_i −log softmax(z_i + log(π^τ + 1e-12))_{y_i}, by loops."""
    total = 0.0
    for i in range(z.shape[0]):
        row = [z[i, k] + math.log(prior[k] ** tau + 1e-12) for k in range(z.shape[1])]
        log_den = torch.log(sum(torch.exp(r) for r in row))
        total = total + (log_den - row[int(y[i])])
    return total / z.shape[0]


def _inputs(seed=0, b=8, c=4, absent=None):
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(b, c, generator=g, dtype=torch.float64) * 2).requires_grad_()
    y = torch.randint(0, c, (b,), generator=g)
    if absent is not None:
        y[y == absent] = (absent + 1) % c
        assert absent not in y
    return z, y


def _info(counts=COUNTS):
    return TrainInfo(class_counts=counts, class_names=tuple(map(str, range(len(counts)))),
                     epochs=2, steps_per_epoch=1, device=torch.device("cpu"))


def test_prior_and_adjustment_match_naive():
    prior = class_prior(COUNTS)
    torch.testing.assert_close(prior, torch.tensor(naive_prior(COUNTS), dtype=torch.float64))
    for tau in (1.0, 0.5):
        expected = [math.log(p**tau + 1e-12) for p in naive_prior(COUNTS)]
        torch.testing.assert_close(log_prior_adjustment(prior, tau), torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize("tau", [1.0, 0.5, 2.0])
@pytest.mark.parametrize("absent", [None, 3])
def test_la_loss_matches_naive(tau, absent):
    z, y = _inputs(seed=1, absent=absent)
    prior = naive_prior(COUNTS)
    loss = logit_adjusted_loss(z, y, torch.tensor(prior, dtype=torch.float64), tau)
    ref = naive_la_loss(z, y, prior, tau)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(torch.autograd.grad(loss, z)[0], torch.autograd.grad(ref, z)[0])


@pytest.mark.parametrize("absent", [None, 0])
def test_loss_mode_is_ce_on_prior_shifted_logits(absent):
    method = create_method("logit_adjust", mode="loss")
    method.setup(_info())
    z, y = _inputs(seed=2, absent=absent)
    loss = method.loss(z, y)
    ref = naive_la_loss(z, y, naive_prior(COUNTS), 1.0)
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)  # float32 buffer
    shifted = F.cross_entropy(z + method.adjustment.double(), y)
    torch.testing.assert_close(loss, shifted)
    assert not math.isclose(loss.item(), F.cross_entropy(z, y).item(), rel_tol=1e-3)
    torch.testing.assert_close(torch.autograd.grad(loss, z)[0], torch.autograd.grad(ref, z)[0],
                               rtol=1e-6, atol=1e-6)


def test_posthoc_mode_trains_with_plain_ce():
    method = create_method("logit_adjust")
    assert method.mode == "posthoc"  # the official default
    method.setup(_info())
    z, y = _inputs(seed=3, absent=1)
    torch.testing.assert_close(method.loss(z, y), F.cross_entropy(z, y))


def _model_and_images(method):
    """The method's own network (small-cnn + Linear) and a batch of images."""
    info = _info()
    method.setup(info)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = method.build_model(build_backbone("small-cnn"), info).eval()
    images = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    return model, images


def test_posthoc_predictions_are_argmax_of_z_minus_tau_log_prior():
    # A linear model on flattened pixels gives varied logits (an untrained CNN's barely vary), so
    # the adjustment visibly moves predictions towards the rare classes.
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 4)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(4, 48, generator=g) * 0.5)
        model[1].bias.zero_()
    images = torch.randn(256, 3, 4, 4, generator=g)
    for tau in (1.0, 0.5):
        method = create_method("logit_adjust", mode="posthoc", tau=tau)
        method.setup(_info())
        with torch.no_grad():
            z = model(images)
            predicted = method.predict(model, images)
        log_prior = torch.tensor([math.log(p) for p in naive_prior(COUNTS)])
        expected = (z - tau * log_prior).argmax(1)
        assert torch.equal(predicted.argmax(1), expected)
        torch.testing.assert_close(predicted, posthoc_adjusted_logits(z, class_prior(COUNTS), tau))
        changed = expected != z.argmax(1)
        assert changed.sum() > 10  # the adjustment changed predictions...
        assert (expected[changed] > z.argmax(1)[changed]).all()  # ...always towards rarer classes


def test_loss_mode_predicts_plain_logits():
    method = create_method("logit_adjust", mode="loss")
    model, images = _model_and_images(method)
    with torch.no_grad():
        torch.testing.assert_close(method.predict(model, images), model(images))


def test_invalid_mode_is_a_value_error_with_one_line():
    from ltbench.methods.logit_adjust import LogitAdjustment

    with pytest.raises(ValueError, match=r"mode must be 'loss' or 'posthoc', got 'post'"):
        LogitAdjustment(mode="post")
    with pytest.raises(LtbenchError) as info:
        create_method("logit_adjust", mode="post")
    assert "\n" not in str(info.value) and "mode" in str(info.value)
