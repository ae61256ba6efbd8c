"""LDAM-DRW against a naive float64 implementation of the spec's formula, and its DRW schedule."""
from __future__ import annotations

import math

import pytest
import torch

from ltbench import LtbenchError, TrainInfo, create_method
from ltbench.methods.ldam_drw import class_balanced_weights, ldam_loss, ldam_margins
from ltbench.models import NormedLinear, build_backbone

COUNTS = (400, 120, 30, 7)


def naive_margins(counts, max_margin=0.5):
    q = [n ** -0.25 for n in counts]
    return [max_margin * qc / max(q) for qc in q]


def naive_cb_weights(counts, beta=0.9999):
    w = [(1 - beta) / (1 - beta**n) for n in counts]
    return [wc * len(counts) / sum(w) for wc in w]


def naive_ldam(z, y, margins, s, w=None):
    """Σ_i w_{y_i} ℓ_i / Σ_i w_{y_i}, ℓ_i = −log softmax(s · (z_i − m_{y_i} e_{y_i}))_{y_i}, by loops."""
    num, den = 0.0, 0.0
    for i in range(z.shape[0]):
        yi = int(y[i])
        row = [s * (z[i, k] - (margins[yi] if k == yi else 0.0)) for k in range(z.shape[1])]
        log_den = torch.log(sum(torch.exp(r) for r in row))
        weight = 1.0 if w is None else w[yi]
        num = num + weight * (log_den - row[yi])
        den = den + weight
    return num / den


def _inputs(seed=0, b=8, c=4, absent=None):
    g = torch.Generator().manual_seed(seed)
    z = (torch.rand(b, c, generator=g, dtype=torch.float64) * 2 - 1).requires_grad_()  # cosines
    y = torch.randint(0, c, (b,), generator=g)
    if absent is not None:
        y[y == absent] = (absent + 1) % c
        assert absent not in y
    return z, y


def _info(epochs=10, counts=COUNTS):
    return TrainInfo(class_counts=counts, class_names=tuple(map(str, range(len(counts)))),
                     epochs=epochs, steps_per_epoch=1, device=torch.device("cpu"))


def test_margins_and_weights_match_naive():
    torch.testing.assert_close(ldam_margins(COUNTS, 0.5), torch.tensor(naive_margins(COUNTS), dtype=torch.float64))
    m = ldam_margins(COUNTS)
    assert m.max().item() == pytest.approx(0.5) and int(m.argmax()) == len(COUNTS) - 1  # rarest class
    cb = class_balanced_weights(COUNTS, 0.9999)
    torch.testing.assert_close(cb, torch.tensor(naive_cb_weights(COUNTS), dtype=torch.float64))
    assert cb.sum().item() == pytest.approx(len(COUNTS))
    torch.testing.assert_close(class_balanced_weights(COUNTS, 0.0), torch.ones(4, dtype=torch.float64))


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("absent", [None, 2])
@pytest.mark.parametrize("max_margin, s", [(0.5, 30.0), (0.3, 10.0)])
def test_ldam_loss_matches_naive(weighted, absent, max_margin, s):
    z, y = _inputs(seed=1, absent=absent)
    margins = naive_margins(COUNTS, max_margin)
    w = naive_cb_weights(COUNTS) if weighted else None
    loss = ldam_loss(z, y, torch.tensor(margins, dtype=torch.float64), s,
                     None if w is None else torch.tensor(w, dtype=torch.float64))
    ref = naive_ldam(z, y, margins, s, w)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(torch.autograd.grad(loss, z)[0], torch.autograd.grad(ref, z)[0])


def test_weighted_mean_divides_by_the_target_weights():
    z, y = _inputs(seed=2)
    margins = torch.tensor(naive_margins(COUNTS), dtype=torch.float64)
    w = torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=torch.float64)
    terms = torch.stack([ldam_loss(z[i:i + 1], y[i:i + 1], margins, 30.0) for i in range(len(y))])
    expected = (w[y] * terms).sum() / w[y].sum()
    torch.testing.assert_close(ldam_loss(z, y, margins, 30.0, w), expected)
    assert not math.isclose(expected.item(), (w[y] * terms).mean().item())


def test_method_loss_uses_its_buffers():
    method = create_method("ldam_drw")
    method.setup(_info(epochs=10))
    z, y = _inputs(seed=3, absent=0)
    method.on_epoch_start(0)
    ref = naive_ldam(z, y, naive_margins(COUNTS), 30.0)
    torch.testing.assert_close(method.loss(z, y), ref, rtol=1e-6, atol=1e-6)  # float32 margins
    method.on_epoch_start(8)
    ref = naive_ldam(z, y, naive_margins(COUNTS), 30.0, naive_cb_weights(COUNTS))
    torch.testing.assert_close(method.loss(z, y), ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("epochs, switch", [(7, 5), (200, 160), (10, 8)])
def test_drw_weights_before_and_at_the_switch(epochs, switch):
    method = create_method("ldam_drw")
    method.setup(_info(epochs=epochs))
    cb = torch.tensor(naive_cb_weights(COUNTS), dtype=torch.float32)
    method.on_epoch_start(switch - 1)
    torch.testing.assert_close(method.weight, torch.ones(4))
    method.on_epoch_start(switch)
    torch.testing.assert_close(method.weight, cb)
    method.on_epoch_start(epochs - 1)
    torch.testing.assert_close(method.weight, cb)
    method.on_epoch_start(0)  # back to ones (e.g. a second fit)
    torch.testing.assert_close(method.weight, torch.ones(4))


def test_absolute_drw_epoch():
    method = create_method("ldam_drw", drw_epoch=3)
    method.setup(_info(epochs=7))
    method.on_epoch_start(2)
    torch.testing.assert_close(method.weight, torch.ones(4))
    method.on_epoch_start(3)
    assert not torch.equal(method.weight, torch.ones(4))


def test_cosine_classifier_and_scaled_prediction():
    method = create_method("ldam_drw")
    info = _info()
    method.setup(info)
    model = method.build_model(build_backbone("small-cnn"), info).eval()
    assert isinstance(model.head, NormedLinear)
    images = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cosine = model(images)
        assert cosine.abs().max() <= 1 + 1e-6
        torch.testing.assert_close(method.predict(model, images), 30.0 * cosine)


@pytest.mark.parametrize("params", [dict(beta=1.0), dict(scale=0), dict(max_margin=-1), dict(drw_epoch=-2),
                                    dict(drw_epoch=2.5)])
def test_bad_parameters_are_one_line_errors(params):
    with pytest.raises(LtbenchError, match="ldam_drw"):
        create_method("ldam_drw", **params)
