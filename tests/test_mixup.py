"""Mixup and label smoothing of the loss methods against naive float64 formulas."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F
from torch import nn

from ltbench import Batch, LtbenchError, TrainInfo, create_method
from ltbench.methods.ce import CrossEntropy
from ltbench.losses import draw_mixup, mixup_generator, mixup_seed
from ltbench.trainer import Trainer
from tests.helpers import cpu_config, synthetic_data

COUNTS = (50, 20, 5, 2)
LOSS_METHODS = ["ce", "focal", "cb_loss", "grw", "ldam_drw", "logit_adjust", "mwnl"]


def info(seed=0):
    return TrainInfo(class_counts=COUNTS, class_names=tuple("abcd"), epochs=4, steps_per_epoch=1,
                     device=torch.device("cpu"), seed=seed)


def batch(seed=0, b=6, absent=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 3, 2, 2, generator=g)
    y = torch.randint(0, 4, (b,), generator=g)
    if absent is not None:
        y[y == absent] = (absent + 1) % 4
    return Batch(views=[x], labels=y, indices=torch.arange(b))


def model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 4))


def naive_log_softmax(z):
    return [[z[i, k] - torch.log(sum(torch.exp(z[i, j]) for j in range(z.shape[1]))) for k in range(z.shape[1])]
            for i in range(z.shape[0])]


def naive_ce(z, y, eps=0.0, w=None):
    """Per-sample (1−ε)·w_y·(−log p_y) + (ε/C)·Σ_c w_c·(−log p_c) (PyTorch's smoothed CE)."""
    c = z.shape[1]
    w = [1.0] * c if w is None else w
    logp = naive_log_softmax(z)
    return [(1 - eps) * w[y[i]] * -logp[i][y[i]] + eps / c * sum(w[k] * -logp[i][k] for k in range(c))
            for i in range(z.shape[0])]


# --- α = 0: nothing drawn, the plain loss bit for bit ------------------------------------------------
@pytest.mark.parametrize("name", LOSS_METHODS)
def test_alpha_zero_draws_nothing_and_is_the_plain_loss(name):
    method = create_method(name, mixup_alpha=0.0)
    method.setup(info())
    assert "mixup_generator_state" not in method.state_dict()
    net, b = model(), batch()
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    loss = method.training_step(net, b)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert all(np.array_equal(a, c) for a, c in zip(np.random.get_state(), np_state))
    assert torch.equal(loss, method.loss(net(b.views[0]).float(), b.labels))


def test_ce_defaults_are_exactly_plain_cross_entropy():
    method = create_method("ce")
    net, b = model(), batch(absent=2)
    assert torch.equal(method.training_step(net, b), F.cross_entropy(net(b.views[0]), b.labels))


# --- α > 0 against a naive λ-mix -------------------------------------------------------------------
@pytest.mark.parametrize("alpha", [0.2, 1.0])
@pytest.mark.parametrize("absent", [None, 3])
def test_ce_mixup_matches_a_naive_lambda_mix(alpha, absent):
    method = create_method("ce", mixup_alpha=alpha)
    method.setup(info(seed=11))
    net, b = model(1), batch(seed=4, absent=absent)
    loss = method.training_step(net, b)
    # Naive replica: the generator seeded from the run's seed, λ by the Beta quantile, then randperm.
    g = torch.Generator().manual_seed(mixup_seed(11))
    u = torch.rand((), generator=g, dtype=torch.float64).item()
    lam = scipy.stats.beta.ppf(u, alpha, alpha)
    perm = torch.randperm(len(b.labels), generator=g).tolist()
    x = b.views[0].double()
    mixed = torch.stack([lam * x[i] + (1 - lam) * x[perm[i]] for i in range(len(perm))])
    net64 = model(1).double()
    z = net64(mixed)
    y = b.labels.tolist()
    ya, yb = y, [y[p] for p in perm]
    ref = lam * sum(naive_ce(z, ya)) / len(y) + (1 - lam) * sum(naive_ce(z, yb)) / len(y)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)
    grads = torch.autograd.grad(loss, list(net.parameters()))
    refs = torch.autograd.grad(ref, list(net64.parameters()))
    for got, want in zip(grads, refs):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", LOSS_METHODS)
def test_mixup_wraps_each_loss_method(name):
    method = create_method(name, mixup_alpha=0.4)
    method.setup(info(seed=2))
    net, b = model(3), batch(seed=5)
    loss = method.training_step(net, b)
    g = mixup_generator(2)
    lam, perm = draw_mixup(0.4, len(b.labels), g)
    z = net(lam * b.views[0] + (1 - lam) * b.views[0][perm]).float()
    ref = lam * method.loss(z, b.labels) + (1 - lam) * method.loss(z, b.labels[perm])
    torch.testing.assert_close(loss, ref, rtol=0, atol=0)
    assert 0.0 < lam < 1.0


def test_lambda_is_beta_distributed():
    g = mixup_generator(0)
    lams = [draw_mixup(0.2, 4, g)[0] for _ in range(3000)]
    assert scipy.stats.kstest(lams, scipy.stats.beta(0.2, 0.2).cdf).pvalue > 0.01
    g = mixup_generator(0)
    lams1 = [draw_mixup(1.0, 4, g)[0] for _ in range(3000)]
    assert scipy.stats.kstest(lams1, "uniform").pvalue > 0.01  # Beta(1, 1)


def test_the_generator_is_seeded_from_the_run_seed_and_not_a_stream_seed():
    assert mixup_seed(0) != mixup_seed(1)
    stream_seeds = {s * 1000 + 100 * k + j for s in range(5) for k in range(3) for j in range(3)}
    assert not {mixup_seed(s) for s in range(5)} & stream_seeds
    a, b = create_method("ce", mixup_alpha=0.2), create_method("ce", mixup_alpha=0.2)
    a.setup(info(seed=0))
    b.setup(info(seed=1))
    assert not torch.equal(a.mixup_generator_state, b.mixup_generator_state)


def test_generator_state_is_a_buffer_that_round_trips():
    first = create_method("focal", mixup_alpha=0.2)
    first.setup(info(seed=7))
    net, b = model(), batch()
    first.training_step(net, b)
    state = {k: v.clone() for k, v in first.state_dict().items()}
    after = first.training_step(net, b)
    fresh = create_method("focal", mixup_alpha=0.2)
    fresh.setup(info(seed=99))  # another seed: the loaded buffer replaces it
    fresh.load_state_dict(state)
    assert torch.equal(fresh.training_step(net, b), after)


class _Recording(CrossEntropy):
    """ce that records which training rows each step drew (the real stream, no mock)."""

    def __init__(self, mixup_alpha: float = 0.0) -> None:
        super().__init__(mixup_alpha=mixup_alpha)
        self.seen: list = []

    def training_step(self, model, batch):
        self.seen.append(batch.indices.clone())
        return super().training_step(model, batch)


@pytest.mark.slow
def test_mixup_leaves_the_streams_untouched():
    data = synthetic_data()
    runs = {}
    for key, alpha in (("plain", 0.0), ("mix", 0.2)):
        method = _Recording(mixup_alpha=alpha)
        runs[key] = (method, Trainer(cpu_config(epochs=1), progress=False).fit(method, data.bundle))
    plain, mix = runs["plain"][0].seen, runs["mix"][0].seen
    assert len(plain) == len(mix) and all(torch.equal(p, m) for p, m in zip(plain, mix))
    assert runs["mix"][1].history[0]["train_loss"] != runs["plain"][1].history[0]["train_loss"]


# --- label smoothing -------------------------------------------------------------------------------
@pytest.mark.parametrize("eps", [0.1, 0.3])
@pytest.mark.parametrize("absent", [None, 0])
def test_ce_label_smoothing_matches_naive(eps, absent):
    g = torch.Generator().manual_seed(1)
    z = (torch.randn(6, 4, generator=g, dtype=torch.float64) * 2).requires_grad_()
    y = batch(seed=1, absent=absent).labels
    loss = create_method("ce", label_smoothing=eps).loss(z, y)
    ref = sum(naive_ce(z, y.tolist(), eps)) / 6
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(torch.autograd.grad(loss, z)[0], torch.autograd.grad(ref, z)[0])


@pytest.mark.parametrize("eps", [0.0, 0.2])
@pytest.mark.parametrize("weights", [None, [0.5, 1.0, 2.0, 4.0]])
@pytest.mark.parametrize("absent", [None, 2])
def test_focal_label_smoothing_matches_naive(eps, weights, absent):
    g = torch.Generator().manual_seed(2)
    z = (torch.randn(6, 4, generator=g, dtype=torch.float64) * 2).requires_grad_()
    y = batch(seed=2, absent=absent).labels
    method = create_method("focal", gamma=2.0, class_weights=weights, label_smoothing=eps).double()
    loss = method.loss(z, y)
    terms = [(1 - torch.exp(-ce)) ** 2.0 * ce for ce in naive_ce(z, y.tolist(), eps, weights)]
    ref = sum(terms) / len(terms)  # plain mean over B
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(torch.autograd.grad(loss, z)[0], torch.autograd.grad(ref, z)[0])


# --- parameters, errors and run keys ---------------------------------------------------------------
@pytest.mark.parametrize("params", [{"mixup_alpha": -0.1}, {"mixup_alpha": float("nan")}, {"mixup_alpha": "x"},
                                    {"label_smoothing": -0.1}, {"label_smoothing": 1.0}, {"sampler": "weighted"}])
def test_bad_values_are_one_line_errors(params):
    with pytest.raises(LtbenchError):
        create_method("ce", **params)


def test_new_keywords_at_their_defaults_leave_run_keys_unchanged():
    from ltbench.runs import DataSpec, run_key

    config, spec = cpu_config(), DataSpec("digits-lt")
    for name in LOSS_METHODS:
        params = create_method(name).get_params()
        old = {k: v for k, v in params.items() if k not in ("sampler", "mixup_alpha", "label_smoothing")}
        assert run_key(name, params, 0, config, spec, "h") == run_key(name, old, 0, config, spec, "h")
    plain = run_key("ce", create_method("ce").get_params(), 0, config, spec, "h")
    assert run_key("ce", create_method("ce", mixup_alpha=0.2).get_params(), 0, config, spec, "h") != plain
    assert run_key("ce", create_method("ce", label_smoothing=0.1).get_params(), 0, config, spec, "h") != plain


@pytest.mark.slow
def test_a_resumed_mixup_run_equals_the_uninterrupted_one(tmp_path):
    # The mixup generator lives in a buffer, so the per-epoch checkpoint carries it (class_aware too:
    # its draws come from the stream's generator alone).
    import shutil

    from ltbench.store.checkpoint import CheckpointStore

    data, config = synthetic_data(), cpu_config(epochs=2)
    params = {"mixup_alpha": 0.2, "sampler": "class_aware"}

    class Copying(CheckpointStore):
        def save(self, state):
            super().save(state)
            if state["epoch"] == 0:
                shutil.copyfile(self.latest, tmp_path / "epoch0.ckpt")

    full = Trainer(config, progress=False).fit(create_method("ce", **params), data.bundle,
                                               checkpoint=Copying(tmp_path / "run", "key"))
    store = CheckpointStore(tmp_path / "resume", "key")
    shutil.copyfile(tmp_path / "epoch0.ckpt", store.latest)
    resumed = Trainer(config, progress=False).fit(create_method("ce", **params), data.bundle, checkpoint=store)
    assert store.resumed_from == store.latest
    strip = lambda h: [{k: v for k, v in e.items() if k != "train_time_s"} for e in h]  # noqa: E731
    assert strip(full.history) == strip(resumed.history) and full.test == resumed.test
    np.testing.assert_array_equal(full.arrays["test_probs"], resumed.arrays["test_probs"])
