"""VS loss (methods/vs_loss.py) against a naive float64 implementation; its weight rules at their boundaries."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ltbench import LtbenchError, TrainInfo, create_method
from ltbench.methods.ce import LDAM_DRW_CIFAR_TRAIN
from ltbench.methods.vs_loss import VSLoss, vs_loss, vs_parameters
from tests.helpers import float64_logits
from tests.test_recipes import ldam_drw_lr, recipe_lrs

COUNTS = (500, 90, 20, 4)


def naive_cb_weights(counts, beta=0.9999):
    w = [(1 - beta) / (1 - beta**n) for n in counts]
    return [x / sum(w) * len(counts) for x in w]


def naive_vs(z, y, counts, gamma, tau, weights=None):
    """Σ_i w_yi [log Σ_k exp(a_k z_ik + τ log π_k) − (a_y z_iy + τ log π_y)] / Σ_i w_yi, a_k = (n_k/n_max)^γ."""
    n_max = max(counts)
    scale = [(n / n_max) ** gamma for n in counts]
    shift = [tau * math.log(n / sum(counts)) for n in counts]
    total, norm = 0.0, 0.0
    for i in range(z.shape[0]):
        row = [scale[k] * z[i, k] + shift[k] for k in range(z.shape[1])]
        w = 1.0 if weights is None else weights[int(y[i])]
        total = total + w * (torch.log(sum(torch.exp(r) for r in row)) - row[int(y[i])])
        norm += w
    return total / norm


def _info(counts=COUNTS, epochs=20):
    return TrainInfo(class_counts=counts, class_names=tuple(map(str, range(len(counts)))), epochs=epochs,
                     steps_per_epoch=1, device=torch.device("cpu"))


def test_parameters_match_naive():
    for gamma, tau in ((0.3, 1.0), (0.2, 1.2), (0.0, 0.5)):
        delta, iota = vs_parameters(COUNTS, gamma, tau)
        assert delta.dtype == iota.dtype == torch.float32
        expected_delta = [(max(COUNTS) / n) ** gamma for n in COUNTS]  # 1/Δ = (n_c / n_max)^γ
        torch.testing.assert_close(delta.double(), torch.tensor(expected_delta, dtype=torch.float64))
        torch.testing.assert_close(iota.double(), torch.tensor([tau * math.log(n / sum(COUNTS)) for n in COUNTS],
                                                               dtype=torch.float64))
        assert delta.min() == 1.0 and delta[0] == 1.0  # the head is not scaled


@pytest.mark.parametrize("gamma, tau", [(0.3, 1.0), (0.2, 1.2), (0.0, 1.0), (0.3, 0.0)])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("absent", [None, 3])
def test_loss_matches_naive_values_and_gradients(gamma, tau, weighted, absent):
    z, y = float64_logits(seed=1, b=9, absent=absent)
    counts64 = torch.tensor(COUNTS, dtype=torch.float64)
    delta = (counts64.max() / counts64) ** gamma  # float64 parameters: an exact comparison of the formula
    iota = tau * torch.log(counts64 / counts64.sum())
    weights = naive_cb_weights(COUNTS) if weighted else None
    loss = vs_loss(z, y, delta, iota, None if weights is None else torch.tensor(weights, dtype=torch.float64))
    ref = naive_vs(z, y, COUNTS, gamma, tau, weights)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(torch.autograd.grad(loss, z)[0], torch.autograd.grad(ref, z)[0])


def test_the_code_divides_by_delta():
    # VSLoss.forward: x / Delta_list + iota_list, on the float32 parameters
    z, y = float64_logits(seed=2, b=8)
    z32 = z.detach().float()
    delta, iota = vs_parameters(COUNTS, 0.3, 1.0)
    assert torch.equal(vs_loss(z32, y, delta, iota), F.cross_entropy(z32 / delta + iota, y))


@pytest.mark.parametrize("absent", [None, 0])
def test_method_loss_matches_naive(absent):
    method = create_method("vs_loss")
    assert (method.gamma, method.tau, method.train_rule) == (0.3, 1.0, "none")  # train.py's defaults
    method.setup(_info())
    method.on_epoch_start(0)
    z, y = float64_logits(seed=3, b=8, absent=absent)
    z32 = z.detach().float().requires_grad_()
    loss = method.loss(z32, y)
    ref = naive_vs(z, y, COUNTS, 0.3, 1.0)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-6, atol=1e-6)  # float32 parameters
    torch.testing.assert_close(torch.autograd.grad(loss, z32)[0].double(), torch.autograd.grad(ref, z)[0],
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("epochs, switch", [(20, 16), (200, 160), (7, 5)])
def test_drw_weights_before_and_at_the_switch(epochs, switch):
    method = create_method("vs_loss", train_rule="drw")
    method.setup(_info(epochs=epochs))
    z, y = float64_logits(seed=4, b=8)
    z32 = z.detach().float()
    cb = torch.tensor(naive_cb_weights(COUNTS), dtype=torch.float64)
    method.on_epoch_start(switch - 1)
    assert torch.equal(method.weight, torch.ones(4))
    before = method.loss(z32, y)
    assert torch.equal(before, method.loss(z32, y)) and torch.equal(before, _unweighted(method, z32, y))
    method.on_epoch_start(switch)
    torch.testing.assert_close(method.weight.double(), cb, rtol=1e-6, atol=0)
    torch.testing.assert_close(method.loss(z32, y).double(), naive_vs(z, y, COUNTS, 0.3, 1.0, cb.tolist()),
                               rtol=1e-6, atol=1e-6)


def _unweighted(method, z32, y):
    return vs_loss(z32, y, method.delta, method.iota)


def test_reweight_from_the_first_epoch_and_none_never():
    z, y = float64_logits(seed=5, b=8)
    z32 = z.detach().float()
    reweight = create_method("vs_loss", train_rule="reweight")
    reweight.setup(_info())
    plain = create_method("vs_loss")
    plain.setup(_info())
    for epoch in (0, 19):
        reweight.on_epoch_start(epoch)
        plain.on_epoch_start(epoch)
        torch.testing.assert_close(reweight.loss(z32, y).double(),
                                   naive_vs(z, y, COUNTS, 0.3, 1.0, naive_cb_weights(COUNTS)), rtol=1e-6, atol=1e-6)
        assert torch.equal(plain.loss(z32, y), _unweighted(plain, z32, y))


def test_absolute_drw_epoch():
    method = create_method("vs_loss", train_rule="drw", drw_epoch=3)
    method.setup(_info(epochs=20))
    method.on_epoch_start(2)
    assert torch.equal(method.weight, torch.ones(4))
    method.on_epoch_start(3)
    assert not torch.equal(method.weight, torch.ones(4))


def test_predicts_plain_logits():
    method = create_method("vs_loss")
    method.setup(_info())
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4)).eval()
    images = torch.randn(5, 3, 2, 2)
    with torch.no_grad():
        assert torch.equal(method.predict(model, images), model(images))


@pytest.mark.parametrize("params", [{"gamma": -0.1}, {"train_rule": "Resample"}, {"beta": 1.0},
                                    {"drw_epoch": -1}, {"tau": "one"}])
def test_bad_parameters_are_one_line_errors(params):
    with pytest.raises(LtbenchError) as info:
        create_method("vs_loss", **params)
    assert "\n" not in str(info.value) and "vs_loss" in str(info.value)


def test_recipe_is_the_readme_cifar10_command_with_the_ldam_drw_schedule():
    recipe = VSLoss.recipes["paper"]
    assert dict(recipe.params) == {"gamma": 0.2, "tau": 1.2}
    assert recipe.train is LDAM_DRW_CIFAR_TRAIN
    # class_imbalance/train.py adjust_learning_rate is LDAM-DRW's: the same per-epoch rates
    assert recipe_lrs("vs_loss") == pytest.approx([ldam_drw_lr(e) for e in range(200)], rel=1e-12, abs=0)
