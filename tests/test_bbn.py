"""BBN (Zhou et al., CVPR 2020): mixed logits and loss, α schedule, reversed sampler, network, fits.

The references below are naive float64 loops written from the formulas in
../shared/spec/methods.md (BBN section), independent of the vectorised implementation.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from ltbench.data.samplers import epoch_indices
from ltbench.errors import LtbenchError
from ltbench.method import Batch, TrainInfo
from ltbench.methods.bbn import BBN, BBNNetwork, bbn_accuracy, bbn_loss, bbn_mix_features
from ltbench.models import build_backbone
from ltbench.registry import create_method
from ltbench.schedules import bbn_alpha, bbn_div_epoch
from ltbench.trainer import Trainer
from tests.helpers import cpu_config, synthetic_data

CPU = torch.device("cpu")


# Tiny tensors: thread start-up dominates (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _info(epochs: int = 100, counts=(40, 20, 8, 4)) -> TrainInfo:
    return TrainInfo(class_counts=tuple(counts), class_names=tuple(f"c{i}" for i in range(len(counts))),
                     epochs=epochs, steps_per_epoch=1, device=CPU)


# --- naive float64 references ------------------------------------------------------------------
def naive_logits(f_c, f_r, W, b, alpha):
    """z_ik = b_k + Σ_j W_kj · 2α f_c,ij + Σ_j W_k,d+j · 2(1−α) f_r,ij, one term at a time."""
    n, d = f_c.shape
    rows = []
    for i in range(n):
        row = []
        for k in range(W.shape[0]):
            z = b[k]
            for j in range(d):
                z = z + W[k, j] * (2 * alpha * f_c[i, j]) + W[k, d + j] * (2 * (1 - alpha) * f_r[i, j])
            row.append(z)
        rows.append(torch.stack(row))
    return torch.stack(rows)


def naive_ce(z, labels):
    """Mean over rows of −z_y + log Σ_k exp z_k."""
    terms = [-z[i, labels[i]] + torch.log(sum(torch.exp(z[i, k]) for k in range(z.shape[1])))
             for i in range(z.shape[0])]
    return sum(terms) / len(terms)


def naive_loss(z, y_c, y_r, alpha):
    return alpha * naive_ce(z, y_c) + (1 - alpha) * naive_ce(z, y_r)


def _inputs(seed: int, n: int = 6, d: int = 5, c: int = 4, absent: int | None = None):
    g = torch.Generator().manual_seed(seed)
    f_c, f_r = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    W, b = torch.randn(c, 2 * d, generator=g), torch.randn(c, generator=g)
    classes = [k for k in range(c) if k != absent]
    pick = lambda: torch.tensor(classes)[torch.randint(len(classes), (n,), generator=g)]
    return f_c, f_r, W, b, pick(), pick()


@pytest.mark.parametrize("seed,alpha,absent", [(0, 0.7, None), (1, 0.0199, 3), (2, 1.0, None), (3, 0.0, 0),
                                               (4, 0.5, 2)])
def test_mixed_logits_and_loss_match_the_naive_float64_formula(seed, alpha, absent):
    f_c, f_r, W, b, y_c, y_r = _inputs(seed, absent=absent)
    if absent is not None:
        assert absent not in y_c.tolist() + y_r.tolist()
    # ltbench, float32: the classifier of the network is an nn.Linear
    leaves = [t.clone().requires_grad_() for t in (f_c, f_r, W, b)]
    z = F.linear(bbn_mix_features(leaves[0], leaves[1], alpha), leaves[2], leaves[3])
    loss = bbn_loss(z, y_c, y_r, alpha)
    loss.backward()
    # naive, float64
    ref_leaves = [t.double().requires_grad_() for t in (f_c, f_r, W, b)]
    z_ref = naive_logits(*ref_leaves, alpha)
    loss_ref = naive_loss(z_ref, y_c, y_r, alpha)
    loss_ref.backward()

    torch.testing.assert_close(z.double(), z_ref.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss.double(), loss_ref.detach(), rtol=1e-6, atol=1e-6)
    for mine, ref in zip(leaves, ref_leaves):
        torch.testing.assert_close(mine.grad.double(), ref.grad, rtol=1e-5, atol=1e-6)


def test_loss_gradient_in_the_logits_is_the_alpha_mix_of_softmax_minus_onehot():
    f_c, f_r, W, b, y_c, y_r = _inputs(5, absent=1)
    z = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    alpha = 0.3
    bbn_loss(z, y_c, y_r, alpha).backward()
    p = torch.softmax(z.detach(), dim=1)
    expected = (alpha * (p - F.one_hot(y_c, 4)) + (1 - alpha) * (p - F.one_hot(y_r, 4))) / 6
    torch.testing.assert_close(z.grad, expected)
    assert z.grad[:, 1].min() > 0  # the absent class is only pushed down


def test_accuracy_is_the_alpha_mix_in_percent():
    z = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    y_c, y_r = torch.tensor([0, 1, 0, 0]), torch.tensor([2, 2, 2, 1])
    # acc_c = 3/4, acc_r = 1/4
    acc = bbn_accuracy(z, y_c, y_r, 0.8)
    assert acc.shape == () and not acc.requires_grad
    assert acc.item() == pytest.approx(100 * (0.8 * 0.75 + 0.2 * 0.25))


# --- α schedule --------------------------------------------------------------------------------
def test_div_epoch_rule():
    assert bbn_div_epoch(90) == 100 and bbn_div_epoch(180) == 200
    assert [bbn_div_epoch(e) for e in (1, 7, 50, 89, 91, 100, 179, 200)] == [1, 7, 50, 89, 91, 100, 179, 200]
    with pytest.raises(ValueError):
        bbn_div_epoch(0)


def test_alpha_first_middle_last_epochs():
    assert bbn_alpha(1, 100) == 1.0
    assert bbn_alpha(51, 100) == pytest.approx(0.75, abs=1e-15)
    assert bbn_alpha(100, 100) == pytest.approx(0.0199, abs=1e-12)
    # E = 90 divides by 100: the last epoch keeps α = 1 − 0.89² = 0.2079
    assert bbn_alpha(90, bbn_div_epoch(90)) == pytest.approx(0.2079, abs=1e-12)
    assert bbn_alpha(180, bbn_div_epoch(180)) == pytest.approx(1 - (179 / 200) ** 2, abs=1e-12)
    alphas = [bbn_alpha(e, 100) for e in range(1, 101)]
    assert all(a > b for a, b in zip(alphas, alphas[1:])) and min(alphas) > 0
    for bad in [(0, 100), (1, 0)]:
        with pytest.raises(ValueError):
            bbn_alpha(*bad)


@pytest.mark.parametrize("epochs,div_epoch,expected", [
    (100, None, {0: 1.0, 50: 0.75, 99: 0.0199}),
    (90, None, {0: 1.0, 45: 1 - 0.45 ** 2, 89: 0.2079}),
    (20, None, {0: 1.0, 10: 0.75, 19: 1 - (19 / 20) ** 2}),
    (20, 40, {0: 1.0, 20: 0.75, 19: 1 - (19 / 40) ** 2}),
])
def test_method_sets_alpha_from_the_0_indexed_epoch(epochs, div_epoch, expected):
    method = BBN(div_epoch=div_epoch)
    method.setup(_info(epochs))
    for epoch, alpha in expected.items():
        method.on_epoch_start(epoch)
        assert method.epoch == epoch
        assert method.alpha.item() == pytest.approx(alpha, abs=1e-7)


def test_bad_hyperparameters_are_one_line():
    for params in [{"div_epoch": 0}, {"div_epoch": 2.5}, {"branch_blocks": 0}, {"mix_scale": 0.0}]:
        with pytest.raises(LtbenchError) as err:
            create_method("bbn", **params)
        assert "\n" not in str(err.value)


# --- reversed sampler ----------------------------------------------------------------------------
def test_reversed_sampler_frequencies_are_inverse_to_class_counts():
    counts = np.array([300, 60, 20, 8])
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.repeat(np.arange(4), counts))
    generator = torch.Generator().manual_seed(0)
    drawn = np.concatenate([np.concatenate(epoch_indices("reversed", labels, 32, generator)) for _ in range(60)])
    assert len(drawn) == 60 * len(labels)  # as many draws per epoch as the instance stream
    observed = np.bincount(labels[drawn], minlength=4)
    p = (counts.max() / counts) / (counts.max() / counts).sum()
    assert stats.chisquare(observed, p * len(drawn)).pvalue > 1e-3
    # The test has power: the class-balanced and the instance frequencies are rejected outright.
    assert stats.chisquare(observed, np.full(4, len(drawn) / 4)).pvalue < 1e-12
    assert stats.chisquare(observed, counts / counts.sum() * len(drawn)).pvalue < 1e-12
    # Within a class the image is uniform: the 8 images of the rarest class.
    rare = drawn[labels[drawn] == 3]
    per_image = np.unique(rare, return_counts=True)[1]
    assert len(per_image) == 8 and stats.chisquare(per_image).pvalue > 1e-3


# --- network ----------------------------------------------------------------------------------
def _network(arch: str = "small-cnn", branch_blocks: int | None = 1, seed: int = 0) -> BBNNetwork:
    torch.manual_seed(seed)
    net = BBNNetwork(build_backbone(arch), num_classes=4, branch_blocks=branch_blocks)
    with torch.no_grad():  # make the branches differ, so that a swap could not go unnoticed
        for p in net.rebalancing.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return net


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("arch,branch_blocks", [("small-cnn", 1), ("small-cnn", None), ("resnet18", 1),
                                                ("resnet18", None)])
def test_two_branches_own_their_tails_and_share_the_trunk(arch, branch_blocks):
    backbone = build_backbone(arch)
    trunk, tail = backbone.split_last_stage(branch_blocks)
    net = BBNNetwork(backbone, num_classes=4, branch_blocks=branch_blocks)
    assert _count(net) == _count(backbone) + _count(tail) + (2 * backbone.out_dim + 1) * 4
    assert net.classifier.in_features == 2 * backbone.out_dim
    conventional = {id(p) for p in net.conventional.parameters()}
    assert conventional.isdisjoint(id(p) for p in net.rebalancing.parameters())
    assert conventional.isdisjoint(id(p) for p in net.trunk.parameters())
    for a, b in zip(net.conventional.state_dict().values(), net.rebalancing.state_dict().values()):
        assert torch.equal(a, b)  # the copy starts from the same weights
    if arch == "resnet18":
        assert len(net.conventional) == (1 if branch_blocks == 1 else 2) + 2  # blocks + pool + flatten


def test_inference_is_W_times_both_branch_features_plus_b():
    net = _network().eval()
    method = BBN()
    method.setup(_info())
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        f_c = net.conventional(net.trunk(x))
        f_r = net.rebalancing(net.trunk(x))
        expected = torch.cat([f_c, f_r], 1) @ net.classifier.weight.T + net.classifier.bias
        assert not torch.allclose(f_c, f_r)
        torch.testing.assert_close(method.predict(net, x), expected, rtol=1e-6, atol=1e-6)


def _batch(images, labels):
    return Batch(views=[images], labels=labels, indices=torch.arange(len(labels)))


def test_training_step_sends_the_uniform_batch_to_the_conventional_branch():
    net = _network().train()
    method = BBN()
    method.setup(_info(epochs=10))
    method.on_epoch_start(3)
    alpha = 1 - (3 / 10) ** 2
    g = torch.Generator().manual_seed(1)
    x_u, x_r = torch.randn(6, 3, 16, 16, generator=g), torch.randn(6, 3, 16, 16, generator=g)
    y_u, y_r = torch.tensor([0, 0, 1, 0, 2, 0]), torch.tensor([3, 2, 1, 3, 2, 3])
    loss, logs = method.training_step(net, _batch(x_u, y_u), _batch(x_r, y_r))
    # the reference: each batch through the trunk on its own (BatchNorm batch statistics per batch)
    f_c = net.conventional(net.trunk(x_u))
    f_r = net.rebalancing(net.trunk(x_r))
    z = net.classifier(torch.cat([2 * alpha * f_c, 2 * (1 - alpha) * f_r], 1))
    expected = alpha * F.cross_entropy(z, y_u) + (1 - alpha) * F.cross_entropy(z, y_r)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert loss.dtype == torch.float32 and loss.requires_grad
    assert set(logs) == {"alpha", "train_acc"} and all(v.shape == () for v in logs.values())
    assert logs["alpha"].item() == pytest.approx(alpha)
    pred = z.argmax(1)
    acc = 100 * (alpha * (pred == y_u).float().mean() + (1 - alpha) * (pred == y_r).float().mean())
    assert logs["train_acc"].item() == pytest.approx(acc.item(), abs=1e-4)
    # swapping the streams gives another loss: the branches are not interchangeable
    swapped, _ = method.training_step(net, _batch(x_r, y_r), _batch(x_u, y_u))
    assert not torch.allclose(swapped, loss)


def test_training_step_under_bf16_autocast_computes_the_loss_in_float32():
    net = _network()
    method = BBN()
    method.setup(_info(epochs=4))
    method.on_epoch_start(1)
    x = torch.randn(4, 3, 16, 16)
    y = torch.tensor([0, 1, 2, 3])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = net(x, x, method.alpha)
        loss, logs = method.training_step(net, _batch(x, y), _batch(x, y.flip(0)))
    assert logits.dtype == torch.bfloat16  # the forward is in bf16 ...
    assert loss.dtype == torch.float32 and math.isfinite(loss.item())  # ... the loss is not
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


# --- whole runs ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data():
    return synthetic_data()


def test_fit_logs_alpha_per_epoch_and_is_reproducible(data):
    runs = [Trainer(cpu_config(epochs=2), progress=False).fit(create_method("bbn"), data.bundle) for _ in range(2)]
    history = runs[0].history
    assert [h["alpha"] for h in history] == pytest.approx([1.0, 0.75])  # E = 2: 1 − (k/2)²
    assert all(0 <= h["train_acc"] <= 100 and math.isfinite(h["train_loss"]) for h in history)
    np.testing.assert_array_equal(runs[0].arrays["test_probs"], runs[1].arrays["test_probs"])


def test_fit_under_bf16_autocast(data):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        run = Trainer(cpu_config(epochs=2), progress=False).fit(create_method("bbn"), data.bundle)
    assert all(math.isfinite(h["train_loss"]) for h in run.history)
    assert np.isfinite(run.arrays["test_probs"]).all()
    np.testing.assert_allclose(run.arrays["test_probs"].sum(1), 1.0, rtol=1e-3)
