"""LADE (methods/lade.py): PriorCE and the LADE regulariser against naive float64 loops; the test prior."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ltbench import LtbenchError, TrainInfo, create_method
from ltbench.methods.lade import LADE, lade_loss, lade_total_loss, prior_ce_loss, training_prior
from tests.helpers import float64_logits
from tests.test_recipes import bbn_lr, recipe_lrs

COUNTS = (500, 90, 20, 4)


def naive_prior(counts):
    return [n / sum(counts) for n in counts]


def naive_prior_ce(z, y, prior):
    total = 0.0
    for i in range(z.shape[0]):
        row = [z[i, k] + math.log(prior[k] + 1e-9) for k in range(z.shape[1])]
        total = total + torch.log(sum(torch.exp(r) for r in row)) - row[int(y[i])]
    return total / z.shape[0]


def naive_lade(z, y, prior, remine_lambda):
    """−Σ_c π_c (first_c − second_c − λ second_c²), by loops over classes and samples."""
    b, c = z.shape
    total = 0.0
    for k in range(c):
        members = [i for i in range(b) if int(y[i]) == k]
        first = sum((z[i, k] for i in members), torch.zeros((), dtype=z.dtype)) / (len(members) + 1e-8)
        shifted = [z[i, k] - math.log(prior[k] + 1e-9) + math.log(1.0 / c + 1e-9) for i in range(b)]
        second = torch.log(sum(torch.exp(s) for s in shifted)) - math.log(b)
        total = total - prior[k] * (first - second - remine_lambda * second**2)
    return total


def _info(counts=COUNTS):
    return TrainInfo(class_counts=counts, class_names=tuple(map(str, range(len(counts)))), epochs=2,
                     steps_per_epoch=1, device=torch.device("cpu"))


def _prior64():
    return torch.tensor(naive_prior(COUNTS), dtype=torch.float64)


@pytest.mark.parametrize("absent", [None, 3, 0])
def test_prior_ce_matches_naive(absent):
    z, y = float64_logits(seed=1, b=8, absent=absent)
    loss = prior_ce_loss(z, y, _prior64())
    ref = naive_prior_ce(z, y, naive_prior(COUNTS))
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(torch.autograd.grad(loss, z)[0], torch.autograd.grad(ref, z)[0])


@pytest.mark.parametrize("remine_lambda", [0.1, 0.01, 0.5, 0.0])
@pytest.mark.parametrize("absent", [None, 3, 0])
def test_lade_regulariser_matches_naive(remine_lambda, absent):
    z, y = float64_logits(seed=2, b=7, absent=absent)
    loss = lade_loss(z, y, _prior64(), remine_lambda)
    ref = naive_lade(z, y, naive_prior(COUNTS), remine_lambda)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(torch.autograd.grad(loss, z)[0], torch.autograd.grad(ref, z)[0])


def test_an_absent_class_still_contributes_its_second_term():
    z, y = float64_logits(seed=3, b=6, absent=3)
    prior = naive_prior(COUNTS)
    present = 0.0  # the naive sum over the classes the batch has
    for k in range(3):
        members = [i for i in range(6) if int(y[i]) == k]
        first = sum(z[i, k] for i in members) / (len(members) + 1e-8)
        second = torch.logsumexp(z[:, k] - math.log(prior[k] + 1e-9) + math.log(0.25 + 1e-9), 0) - math.log(6)
        present = present - prior[k] * (first - second - 0.1 * second**2)
    # class 3: first term 0 (0 / 1e-8), second term over the whole batch
    second = torch.logsumexp(z[:, 3] - math.log(prior[3] + 1e-9) + math.log(0.25 + 1e-9), 0) - math.log(6)
    absent_term = prior[3] * (second + 0.1 * second**2)
    assert abs(float(absent_term.detach())) > 1e-4
    torch.testing.assert_close(lade_loss(z, y, _prior64(), 0.1), present + absent_term)


@pytest.mark.parametrize("alpha, remine_lambda", [(0.1, 0.1), (0.05, 0.5), (0.0, 0.1)])
def test_total_loss_is_prior_ce_plus_alpha_lade(alpha, remine_lambda):
    z, y = float64_logits(seed=4, b=9, absent=1)
    loss = lade_total_loss(z, y, _prior64(), alpha, remine_lambda)
    ref = naive_prior_ce(z, y, naive_prior(COUNTS)) + alpha * naive_lade(z, y, naive_prior(COUNTS), remine_lambda)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(torch.autograd.grad(loss, z)[0], torch.autograd.grad(ref, z)[0])


@pytest.mark.parametrize("absent", [None, 2])
def test_method_loss_uses_float32_prior_and_code_defaults(absent):
    method = create_method("lade")
    assert (method.alpha, method.remine_lambda, method.test_prior) == (0.1, 0.1, "uniform")
    method.setup(_info())
    assert method.prior.dtype == torch.float32
    torch.testing.assert_close(method.prior, torch.tensor(COUNTS).float() / sum(COUNTS))
    z, y = float64_logits(seed=5, b=8, absent=absent)
    z32 = z.detach().float().requires_grad_()
    loss = method.loss(z32, y)
    ref = naive_prior_ce(z, y, naive_prior(COUNTS)) + 0.1 * naive_lade(z, y, naive_prior(COUNTS), 0.1)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.autograd.grad(loss, z32)[0].double(), torch.autograd.grad(ref, z)[0],
                               rtol=1e-4, atol=1e-6)


def _model():
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 4)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(4, 48, generator=g) * 0.5)
        model[1].bias.zero_()
    return model, torch.randn(256, 3, 4, 4, generator=g)


def test_test_prior_options():
    model, images = _model()
    with torch.no_grad():
        z = model(images)
        uniform = create_method("lade")
        uniform.setup(_info())
        out = uniform.predict(model, images)
        torch.testing.assert_close(out, z + math.log(0.25))  # the code: logits + log(uniform test prior)
        assert torch.equal(out.argmax(1), z.argmax(1))
        torch.testing.assert_close(out.softmax(1), z.softmax(1))
        train = create_method("lade", test_prior="train")
        train.setup(_info())
        shifted = train.predict(model, images)
        torch.testing.assert_close(shifted, z + torch.log(training_prior(COUNTS)))
        changed = shifted.argmax(1) != z.argmax(1)
        assert changed.sum() > 10 and (shifted.argmax(1)[changed] < z.argmax(1)[changed]).all()  # towards the head
        given = create_method("lade", test_prior=[1, 1, 2, 4])
        given.setup(_info())
        torch.testing.assert_close(given.predict(model, images), z + torch.log(torch.tensor([1, 1, 2, 4.0]) / 8))


@pytest.mark.parametrize("params", [{"test_prior": "balanced"}, {"test_prior": [1, 0, 1, 1]}, {"test_prior": []},
                                    {"alpha": -0.1}, {"remine_lambda": float("nan")}, {"test_prior": [1, "a"]}])
def test_bad_parameters_are_one_line_errors(params):
    with pytest.raises(LtbenchError) as info:
        create_method("lade", **params)
    assert "\n" not in str(info.value) and "lade" in str(info.value)


def test_a_test_prior_of_the_wrong_length_is_refused():
    method = create_method("lade", test_prior=[1, 2, 3])
    with pytest.raises(ValueError, match="3 values for 4 classes"):
        method.setup(_info())


def test_recipe_is_the_readme_cifar100_command_with_its_warmup_multistep_schedule():
    recipe = LADE.recipes["paper"]
    assert dict(recipe.params) == {"alpha": 0.1, "remine_lambda": 0.01}
    # utils.WarmupMultiStepLR (1/3 over 5 epochs, ×0.01 at 120/160) stepped per 1-indexed epoch: BBN's, at lr 0.2
    assert recipe_lrs("lade") == pytest.approx([bbn_lr(e, lr=0.2) for e in range(200)], rel=1e-12, abs=0)


def test_loss_under_bf16_autocast_is_float32():
    method = create_method("lade")
    method.setup(_info())
    z, y = float64_logits(seed=6, b=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = method.loss(z.detach().float(), y)
    assert loss.dtype == torch.float32 and torch.equal(loss, method.loss(z.detach().float(), y))
    assert not math.isclose(loss.item(), F.cross_entropy(z.detach().float(), y).item(), rel_tol=1e-3)
