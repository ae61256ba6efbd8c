"""SADE (methods/sade.py): DiverseExpertLoss, the inverted prior and the test-time aggregation loss against
naive float64 loops written from Vanint/SADE-AgnosticLT model/loss.py and test_training_*.py; the network."""
from __future__ import annotations

import inspect
import math

import pytest
import torch

from ltbench.method import TrainInfo
from ltbench.methods.sade import SADE, aggregation_loss, diverse_expert_loss, inverse_prior, training_prior
from ltbench.models import build_backbone
from ltbench.registry import create_method
from ltbench.trainer import Trainer
from tests.helpers import cpu_config, synthetic_data

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def naive_ce(row, y):
    m = max(float(v.detach()) for v in row)
    return -(row[y] - (m + torch.log(sum(torch.exp(v - m) for v in row))))


def naive_inverse(prior):
    """Rank classes by prior (ties by index), give rank r the prior of rank C−1−r."""
    order = sorted(range(len(prior)), key=lambda c: (prior[c], c))
    rank = {c: r for r, c in enumerate(order)}
    return [prior[order[len(prior) - 1 - rank[c]]] for c in range(len(prior))]


def naive_sade_loss(z, y, prior, tau):
    inv = naive_inverse(prior)
    b, _, c = z.shape
    total = 0.0
    for k in range(3):
        part = 0.0
        for i in range(b):
            row = []
            for j in range(c):
                v = z[i, k, j]
                if k >= 1:
                    v = v + math.log(prior[j] + 1e-9)
                if k == 2:
                    v = v - tau * math.log(inv[j] + 1e-9)
                row.append(v)
            part = part + naive_ce(row, int(y[i]))
        total = total + part / b
    return total


def test_inverse_prior_mirrors_ranks():
    prior = torch.tensor([0.5, 0.05, 0.3, 0.15], dtype=torch.float64)
    assert inverse_prior(prior).tolist() == naive_inverse(prior.tolist()) == [0.05, 0.5, 0.15, 0.3]
    tied = torch.tensor([0.1, 0.1, 0.8], dtype=torch.float64)
    assert inverse_prior(tied).tolist() == naive_inverse(tied.tolist())


def test_prior_is_float32_of_the_float64_ratio():
    got = training_prior([3, 1, 1])
    assert got.dtype == torch.float32 and got.tolist() == torch.tensor([0.6, 0.2, 0.2]).tolist()


@pytest.mark.parametrize("tau", [2.0, 0.0, 1.5])
@pytest.mark.parametrize("absent", [None, 1])
def test_diverse_expert_loss_value_and_gradient_match_naive_float64(tau, absent):
    g = torch.Generator().manual_seed(5)
    z = (torch.randn(6, 3, 4, generator=g, dtype=torch.float64) * 3).requires_grad_()
    y = torch.tensor([0, 2, 3, 0, 1, 2])
    if absent is not None:
        y[y == absent] = 0
    counts = [60, 25, 9, 2]
    prior = torch.tensor(counts, dtype=torch.float64) / sum(counts)
    got = diverse_expert_loss(z, y, prior, tau)
    ref = naive_sade_loss(z, y, prior.tolist(), tau)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    (g_got,) = torch.autograd.grad(got, z)
    (g_ref,) = torch.autograd.grad(ref, z)
    torch.testing.assert_close(g_got, g_ref, rtol=1e-12, atol=1e-12)


def test_aggregation_loss_matches_naive_float64():
    g = torch.Generator().manual_seed(2)
    w = torch.tensor([0.2, 0.5, -0.1], dtype=torch.float64, requires_grad=True)
    z0 = torch.randn(5, 3, 4, generator=g, dtype=torch.float64)
    z1 = torch.randn(5, 3, 4, generator=g, dtype=torch.float64)
    got = aggregation_loss(w, z0, z1)
    ew = [torch.exp(v) for v in w]
    a = [e / sum(ew) for e in ew]
    total = 0.0
    for i in range(5):
        probs = []
        for z in (z0, z1):
            o = [sum(a[k] * z[i, k, c] for k in range(3)) for c in range(4)]
            e = [torch.exp(v) for v in o]
            probs.append([v / sum(e) for v in e])
        dot = sum(p * q for p, q in zip(*probs))
        total = total + dot / (torch.sqrt(sum(p * p for p in probs[0])) * torch.sqrt(sum(q * q for q in probs[1])))
    ref = -total / 5
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.autograd.grad(got, w)[0], torch.autograd.grad(ref, w)[0], rtol=1e-10, atol=1e-12)


def _built(name_kwargs=None):
    method = SADE(**(name_kwargs or {}))
    info = TrainInfo(class_counts=(40, 12, 4), class_names=("a", "b", "c"), epochs=1, steps_per_epoch=1,
                     device=CPU, lr=0.05, seed=3)
    method.setup(info)
    torch.manual_seed(0)
    return method, method.build_model(build_backbone("small-cnn"), info).eval()


def test_experts_share_the_trunk_own_the_last_stage_and_test_logits_are_the_mean():
    method, model = _built()
    trunk = {id(p) for p in model.trunk.parameters()}
    experts = [{id(p) for p in e.parameters()} for e in model.experts]
    assert experts[0] and not (experts[0] & experts[1]) and not (experts[1] & experts[2]) and not (trunk & experts[0])
    assert not torch.equal(model.linears[0].weight, model.linears[1].weight)  # classifiers drawn separately
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        z = model.expert_logits(x)
        assert z.shape == (4, 3, 3) and z.abs().max() <= 30.0 + 1e-4  # s · cosine
        torch.testing.assert_close(method.predict(model, x), z.mean(dim=1))


def test_test_time_aggregation_reads_images_only_and_is_a_learned_convex_mix():
    assert list(inspect.signature(SADE.predict).parameters) == ["self", "model", "images"]  # no labels
    method, model = _built({"test_time_epochs": 3})
    x = torch.randn(20, 3, 16, 16)
    with torch.inference_mode():  # as the evaluator calls predict
        logits = method.predict(model, x)
        again = method.predict(model, x)
    weights = method.test_time_weights(model, x)
    assert torch.equal(logits, again)  # seeded from the run's seed: deterministic
    assert weights.sum().item() == pytest.approx(1.0) and not torch.allclose(weights, torch.full((3,), 1 / 3))
    with torch.no_grad():
        torch.testing.assert_close(logits, (weights[None, :, None] * model.expert_logits(x)).sum(1))


def test_fits_and_its_loss_falls():
    data = synthetic_data()
    run = Trainer(cpu_config(epochs=3), progress=False).fit(create_method("sade"), data.bundle)
    losses = [h["train_loss"] for h in run.history]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]


def test_official_interface_is_the_same_loss():
    from ltbench.methods.sade import DiverseExpertLoss

    g = torch.Generator().manual_seed(9)
    z = torch.randn(5, 3, 4, generator=g)
    y = torch.tensor([0, 1, 0, 3, 0])  # class 2 absent
    counts = [40, 20, 10, 5]
    criterion = DiverseExpertLoss(counts, tau=2)
    got = criterion(z.mean(1), y, {"logits": z.transpose(0, 1)})
    assert torch.equal(got, diverse_expert_loss(z, y, training_prior(counts), 2.0))
    assert torch.equal(criterion(z.mean(1), y), torch.nn.functional.cross_entropy(z.mean(1), y))
