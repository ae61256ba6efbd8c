"""SAM and ImbSAM as the optimiser of any method (ltbench/trainer/sam.py; issue 24).

The update of ``SharpnessAware.step`` against a naive float64 implementation of each rule (a tiny
MLP with BatchNorm written out by hand, two steps so that SGD momentum and weight decay count); the
BatchNorm running statistics move once per step (the first pass's); the second pass sees the state
and draws the randomness of the first; ImbSAM's one-line refusal of a method without per-sample
losses; the settings' rules and their absence from run keys; real runs on digits-lt.
"""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

from ltbench import create_method
from ltbench.cli import cli
from ltbench.errors import LtbenchError
from ltbench.runs import run_identity
from ltbench.trainer import Trainer
from ltbench.trainer.sam import SharpnessAware, tail_classes
from tests.helpers import SYNTHETIC, cpu_config, synthetic_data

LR, MOMENTUM, WD, RHO = 0.1, 0.9, 1e-3, 0.05
BN_EPS, BN_MOMENTUM = 1e-5, 0.1


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.bn, self.fc2 = nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Linear(4, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


class Holder(nn.Module):
    """A stand-in method: one buffer the step changes (a counter), as EMA targets or queues do."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("count", torch.zeros((), dtype=torch.long))


def naive_loss(w: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor, reduction: str = "mean"):
    """The tiny model's CE in float64, written out: Linear, BatchNorm (batch statistics), ReLU, Linear."""
    w1, b1, gamma, beta, w2, b2 = w
    h = x @ w1.T + b1
    mean, var = h.mean(0), ((h - h.mean(0)) ** 2).mean(0)
    z = torch.relu((h - mean) / torch.sqrt(var + BN_EPS) * gamma + beta) @ w2.T + b2
    ce = torch.logsumexp(z, 1) - z[torch.arange(len(y)), y]
    return ce.mean() if reduction == "mean" else ce


def grad(f, w):
    w = [p.detach().clone().requires_grad_(True) for p in w]
    return [g.detach() for g in torch.autograd.grad(f(w), w)]


def naive_sgd(w, g, buf):
    """torch.optim.SGD's rule, written out: d = g + wd·w; buf = d (first step) or m·buf + d; w − lr·buf."""
    d = [gi + WD * wi for gi, wi in zip(g, w)]
    buf = d if buf is None else [MOMENTUM * b + di for b, di in zip(buf, d)]
    return [wi - LR * b for wi, b in zip(w, buf)], buf


def naive_sam(w, x, y, buf, adaptive=False):
    g = grad(lambda v: naive_loss(v, x, y), w)
    t = [wi.abs() if adaptive else torch.ones_like(wi) for wi in w]
    norm = math.sqrt(sum(float(((ti * gi) ** 2).sum()) for ti, gi in zip(t, g)))
    e = [RHO * ti * ti * gi / (norm + 1e-12) for ti, gi in zip(t, g)]
    g2 = grad(lambda v: naive_loss(v, x, y), [wi + ei for wi, ei in zip(w, e)])
    return naive_sgd(w, g2, buf)


def naive_imbsam(w, x, y, tail, buf):
    n = len(y)
    is_tail = tail[y]
    g_h = grad(lambda v: naive_loss(v, x, y, "none")[~is_tail].sum() / n, w)
    g_t = grad(lambda v: naive_loss(v, x, y, "none")[is_tail].sum() / n, w)
    norm = math.sqrt(sum(float((gi ** 2).sum()) for gi in g_t))
    e = [RHO * gi / (norm + 1e-16) for gi in g_t]
    g2 = grad(lambda v: naive_loss(v, x, y, "none")[is_tail].sum() / n, [wi + ei for wi, ei in zip(w, e)])
    return naive_sgd(w, [a + b for a, b in zip(g_h, g2)], buf)


def weights(model: Tiny) -> list[torch.Tensor]:
    return [model.fc1.weight, model.fc1.bias, model.bn.weight, model.bn.bias, model.fc2.weight, model.fc2.bias]


def setup_tiny(kind: str, adaptive: bool = False, tail=None):
    torch.manual_seed(0)
    model, holder = Tiny().double(), Holder()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)
    return model, holder, SharpnessAware(kind, optimizer, model, holder, RHO, adaptive, tail)


def batches(steps: int = 2):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(12, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (12,), generator=g))
            for _ in range(steps)]


@pytest.mark.parametrize("adaptive", [False, True], ids=["sam", "asam"])
def test_sam_update_equals_the_naive_float64_rule(adaptive):
    model, holder, sam = setup_tiny("sam", adaptive)
    w = [p.detach().clone() for p in weights(model)]
    buf = None
    for x, y in batches():
        def compute(per_sample):
            holder.count += 1
            return F.cross_entropy(model(x), y), {}
        loss = sam.step(compute)[0]
        assert torch.allclose(loss, naive_loss(w, x, y), rtol=0, atol=1e-12)  # the first pass's loss, at w
        w, buf = naive_sam(w, x, y, buf, adaptive)
        for got, want in zip(weights(model), w):
            torch.testing.assert_close(got.detach(), want, rtol=1e-10, atol=1e-12)
    assert int(holder.count) == 2  # the step's state change happened once per step


def test_imbsam_update_equals_the_naive_float64_rule():
    tail = torch.tensor([False, True, True])
    model, holder, sam = setup_tiny("imbsam", tail=tail)
    w = [p.detach().clone() for p in weights(model)]
    buf = None
    for x, y in batches():
        def compute(per_sample):
            assert per_sample
            return (F.cross_entropy(model(x), y, reduction="none"), y), {}
        sam.step(compute)
        w, buf = naive_imbsam(w, x, y, tail, buf)
        for got, want in zip(weights(model), w):
            torch.testing.assert_close(got.detach(), want, rtol=1e-10, atol=1e-12)


def test_imbsam_tail_is_the_classes_below_the_threshold():
    assert tail_classes((124, 20, 19, 12), 20).tolist() == [False, False, True, True]


def test_batchnorm_statistics_move_once_per_step_and_the_second_pass_repeats_the_first():
    model, holder, sam = setup_tiny("sam")
    w1, b1 = model.fc1.weight.detach().clone(), model.fc1.bias.detach().clone()
    (x, y), = batches(1)
    draws = []

    def compute(per_sample):
        draws.append(torch.rand(3))  # as a dropout mask or mixup's λ would draw
        holder.count += 1
        return F.cross_entropy(model(x), y), {}

    torch.manual_seed(7)
    sam.step(compute)
    after = torch.get_rng_state()
    assert torch.equal(draws[0], draws[1])  # same randomness in both passes
    torch.manual_seed(7)
    torch.rand(3)
    assert torch.equal(after, torch.get_rng_state())  # and the RNGs advance once per step
    h = x @ w1.T + b1  # the first pass's batch statistics, at w: one update with momentum 0.1
    torch.testing.assert_close(model.bn.running_mean, BN_MOMENTUM * h.mean(0))
    torch.testing.assert_close(model.bn.running_var, (1 - BN_MOMENTUM) + BN_MOMENTUM * h.var(0, unbiased=True))
    assert int(model.bn.num_batches_tracked) == 1 and int(holder.count) == 1



# --- in the trainer, on real runs ---------------------------------------------------------------
def test_settings_are_checked_and_absent_from_run_keys_at_their_defaults():
    for bad, fragment in [({"optimizer": "sgdm"}, "optimizer"), ({"sam_rho": -0.1}, "sam_rho"),
                          ({"sam_rho": float("inf")}, "sam_rho"), ({"imbsam_threshold": 0}, "imbsam_threshold")]:
        with pytest.raises(LtbenchError) as err:
            cpu_config(**bad)
        assert fragment in str(err.value) and "\n" not in str(err.value)
    key = lambda config: run_identity("ce", {}, 0, config, SYNTHETIC, "h")["config"]  # noqa: E731
    assert not {"sam_rho", "sam_adaptive", "imbsam_threshold"} & set(key(cpu_config()))
    assert key(cpu_config(optimizer="sam"))["optimizer"] == "sam"
    assert key(cpu_config(optimizer="sam", sam_rho=0.1))["sam_rho"] == 0.1


@pytest.fixture(scope="module")
def data():
    return synthetic_data()


def test_a_method_without_per_sample_losses_cannot_run_imbsam(data):
    assert create_method("ce").has_sample_losses() and not create_method("ce", mixup_alpha=0.2).has_sample_losses()
    assert not create_method("simclr").has_sample_losses()
    with pytest.raises(LtbenchError, match="optimizer imbsam: method 'simclr' gives no per-sample losses"):
        Trainer(cpu_config(epochs=1, optimizer="imbsam"), progress=False).fit(create_method("simclr"), data.bundle)


def test_sam_runs_differ_from_sgd_and_reproduce(data):
    def fit(**settings):
        return Trainer(cpu_config(epochs=1, **settings), progress=False).fit(create_method("ce"), data.bundle)
    sgd, sam, again = fit(), fit(optimizer="sam"), fit(optimizer="sam")
    assert sgd.history[0]["train_loss"] != sam.history[0]["train_loss"]
    assert sam.history[0]["train_loss"] == again.history[0]["train_loss"]
    assert (sam.arrays["test_probs"] == again.arrays["test_probs"]).all()


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["sam", "imbsam"])
def test_a_run_with_sam_trains_on_digits_lt(optimizer, tmp_path):
    result = CliRunner().invoke(cli, ["train", "--method", "ce", "--dataset", "digits-lt", "--epochs", "2",
                                      "--set", f"optimizer={optimizer}", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    run = json.loads((tmp_path / "runs" / "ce" / "seed0.json").read_text())
    assert run["config"]["optimizer"] == optimizer
    losses = [h["train_loss"] for h in run["history"]]
    assert all(math.isfinite(v) for v in losses) and losses[1] < losses[0]
    assert run["test"]["acc"] > 30  # ten balanced classes: chance is 10


def test_a_subclass_that_changes_the_loss_alone_has_no_per_sample_losses():
    from ltbench.methods.ce import CrossEntropy

    class Squared(CrossEntropy):
        def loss(self, logits, labels):
            return super().loss(logits, labels) ** 2

    assert CrossEntropy().has_sample_losses() and not Squared().has_sample_losses()


def test_a_benchmark_row_runs_monicas_sam_row_through_its_recipe(tmp_path):
    from ltbench.bench.file import load_benchmark

    path = tmp_path / "b.yaml"
    path.write_text("name: b\ndataset: {name: synthetic}\nsplit: {kind: grouped, seed: 0}\n"
                    "train: {backbone: small-cnn, image_size: 16, epochs: 2, device: cpu}\nseeds: [0]\n"
                    "methods:\n  ldam_drw: {}\n  ldam_drw_sam: {method: ldam_drw, recipe: monica_sam}\n")
    bench = load_benchmark(path)
    assert bench.row_config(bench.methods["ldam_drw_sam"]).optimizer == "sam"
    assert bench.row_config(bench.methods["ldam_drw"]).optimizer == "sgd"


@pytest.mark.parametrize("name, params, counter", [
    ("ce", {"mixup_alpha": 0.2}, "mixup_generator_state"),  # mixup's λ and permutation: drawn once per step
    ("moco_v2", {"queue_size": 40, "dim": 16}, "queue_ptr"),  # one enqueue per step
    ("byol", {"hidden": 32, "dim": 16}, "ema_step"),  # one target update per step
    ("ecl", {}, None),  # its own parameters and optimiser (proxies)
])
def test_a_step_changes_method_state_once_under_sam(name, params, counter, data):
    def fit(optimizer):
        method = create_method(name, **params)
        run = Trainer(cpu_config(epochs=1, optimizer=optimizer), progress=False).fit(method, data.bundle)
        assert all(math.isfinite(h["train_loss"]) for h in run.history)
        return method, run
    (plain, _), (sam, run), (_, rerun) = fit("sgd"), fit("sam"), fit("sam")
    if counter is not None:
        assert torch.equal(getattr(plain, counter), getattr(sam, counter))
    assert (run.arrays["test_probs"] == rerun.arrays["test_probs"]).all()  # reproducible


def test_a_methods_own_parameters_take_the_first_pass_gradient_only():
    model, holder, sam = setup_tiny("sam")
    holder.proxy = nn.Parameter(torch.ones(3, dtype=torch.float64))  # as ECL's proxies: never in the optimiser
    (x, y), = batches(1)

    def loss_at(m):
        return F.cross_entropy(m(x) * holder.proxy, y)

    expected = torch.autograd.grad(loss_at(model), holder.proxy)[0]  # at w, before the step
    sam.step(lambda per_sample: (loss_at(model), {}))
    torch.testing.assert_close(holder.proxy.grad, expected, rtol=0, atol=0)
