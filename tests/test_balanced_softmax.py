"""Balanced Softmax (methods/balanced_softmax.py) against a naive float64 implementation."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ltbench import TrainInfo, create_method
from ltbench.methods.balanced_softmax import BalancedSoftmax, balanced_softmax_loss
from tests.helpers import float64_logits

COUNTS = (500, 90, 20, 4)


def naive_balanced_softmax(z, y, counts, reduction="mean"):
    """mean_i [log Σ_k exp(z_ik + log n_k) − (z_iy + log n_y)], by loops."""
    losses = []
    for i in range(z.shape[0]):
        row = [z[i, k] + math.log(counts[k]) for k in range(z.shape[1])]
        losses.append(torch.log(sum(torch.exp(r) for r in row)) - row[int(y[i])])
    total = sum(losses)
    return {"mean": total / len(losses), "sum": total, "none": torch.stack(losses)}[reduction]


def _info(counts=COUNTS):
    return TrainInfo(class_counts=counts, class_names=tuple(map(str, range(len(counts)))), epochs=2,
                     steps_per_epoch=1, device=torch.device("cpu"))


@pytest.mark.parametrize("absent", [None, 3, 0])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_loss_matches_naive_values_and_gradients(absent, reduction):
    z, y = float64_logits(seed=1, b=8, absent=absent)
    loss = balanced_softmax_loss(z, y, torch.tensor(COUNTS), reduction)
    ref = naive_balanced_softmax(z, y, COUNTS, reduction)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(torch.autograd.grad(loss.sum(), z)[0], torch.autograd.grad(ref.sum(), z)[0])


def test_it_is_not_plain_cross_entropy_and_shifts_by_counts_not_priors():
    z, y = float64_logits(seed=2, b=8, absent=1)
    loss = balanced_softmax_loss(z, y, torch.tensor(COUNTS))
    assert not math.isclose(loss.item(), F.cross_entropy(z, y).item(), rel_tol=1e-3)
    # log n and log π differ by log N in every entry: the same loss up to rounding
    prior = torch.tensor(COUNTS, dtype=torch.float64) / sum(COUNTS)
    torch.testing.assert_close(loss, F.cross_entropy(z + prior.log(), y))


def test_the_counts_are_cast_to_the_logits_dtype_before_the_log():
    # float32 logits: the official ``spc.type_as(logits).log()`` — the log of float32 counts in float32
    z, y = float64_logits(seed=3, b=8)
    z32 = z.detach().float()
    expected = F.cross_entropy(z32 + torch.tensor(COUNTS).float().log(), y)
    assert torch.equal(balanced_softmax_loss(z32, y, torch.tensor(COUNTS)), expected)


@pytest.mark.parametrize("absent", [None, 2])
def test_method_loss_and_prediction(absent):
    method = create_method("balanced_softmax")
    method.setup(_info())
    assert method.sample_per_class.dtype == torch.float32
    z, y = float64_logits(seed=4, b=8, absent=absent)
    z32 = z.detach().float().requires_grad_()
    loss = method.loss(z32, y)
    ref = naive_balanced_softmax(z, y, COUNTS)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(torch.autograd.grad(loss, z32)[0].double(), torch.autograd.grad(ref, z)[0],
                               rtol=1e-5, atol=1e-6)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4)).eval()
    images = torch.randn(5, 3, 2, 2)
    with torch.no_grad():
        assert torch.equal(method.predict(model, images), model(images))  # the code evaluates plain logits


def test_loss_runs_in_float32_under_bf16_autocast():
    method = create_method("balanced_softmax")
    method.setup(_info())
    z, y = float64_logits(seed=5, b=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = method.loss(z.detach().float(), y)
    assert loss.dtype == torch.float32
    assert torch.equal(loss, method.loss(z.detach().float(), y))


def test_recipe_is_the_imagenet_lt_config():
    train = BalancedSoftmax.recipes["paper"].train
    assert (train["lr"], train["batch_size"], train["weight_decay"], train["epochs"], train["lr_schedule"]) == \
        (0.2, 512, 5e-4, 90, "cosine")
