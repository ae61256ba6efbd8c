"""Decoupling (Kang et al., ICLR 2020): crt, tau_norm, lws, knn (methods/crt.py, tau_norm.py, lws.py, knn.py,
_decoupling.py) and the post-hoc hook ``Method.calibrate`` they use.

References are naive float64 numpy transcriptions of facebookresearch/classifier-balancing @ 22370c6
(``tau_norm.py``'s ``pnorm`` loop and class-mean accuracy, ``run_networks.get_knncentroids``,
``KNNClassifier.forward``), written independently of the module under test; LWS's objective and gradient
are derived by hand (softmax cross-entropy of ``f ⊙ a``).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ltbench.errors import LtbenchError
from ltbench.method import TrainInfo
from ltbench.registry import create_method
from ltbench.stages import stage_bounds
from ltbench.trainer import Trainer
from ltbench.methods._decoupling import (OFFICIAL_TAU_GRID, balanced_sample_weights, choose_tau, lbfgs_fit,
                                         ncm_centroids, ncm_logits, tau_normalised)
from ltbench.methods.crt import reinitialise_linear
from ltbench.methods.lws import lws_objective
from tests.helpers import cpu_config, synthetic_data

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data():
    return synthetic_data()


def _features(n=60, d=5, c=4, seed=0, absent=None):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, size=n)
    if absent is not None:
        y[y == absent] = (absent + 1) % c
    x = rng.normal(size=(n, d)) + rng.normal(size=(c, d))[y] * 1.5 + 0.7
    return torch.tensor(x), torch.tensor(y)


# ----------------------------------------------------------------------------- τ-norm
def test_official_grid_is_linspace_0_2_21():
    assert OFFICIAL_TAU_GRID == pytest.approx(np.linspace(0, 2, 21).tolist(), abs=1e-15)


@pytest.mark.parametrize("tau", [0.0, 0.3, 1.0, 1.7])
def test_tau_normalised_matches_the_pnorm_loop(tau):
    w = torch.randn(5, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected = w.numpy().copy()
    for i in range(expected.shape[0]):  # pnorm: ws[i] = weights[i] / torch.pow(normB[i], p)
        expected[i] = expected[i] / math.sqrt(float((expected[i] ** 2).sum())) ** tau
    np.testing.assert_allclose(tau_normalised(w, tau).numpy(), expected, rtol=1e-13)
    if tau == 1.0:
        np.testing.assert_allclose(tau_normalised(w, tau).norm(dim=1).numpy(), 1.0, rtol=1e-13)


def _naive_class_mean_acc(pred, y, c):
    accs = [np.mean(pred[y == k] == k) for k in range(c) if np.any(y == k)]
    return float(np.mean(accs))


@pytest.mark.parametrize("absent", [None, 2])
def test_choose_tau_matches_a_naive_grid_search(absent):
    x, y = _features(absent=absent)
    w = torch.randn(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    w[0] *= 6  # a "head" class with a large norm: τ matters
    tau, scores = choose_tau(x, y, w, OFFICIAL_TAU_GRID)
    naive = []
    for p in np.linspace(0, 2, 21):
        ws = w.numpy() / np.linalg.norm(w.numpy(), axis=1, keepdims=True) ** p
        naive.append(_naive_class_mean_acc((x.numpy() @ ws.T).argmax(1), y.numpy(), 4))
    np.testing.assert_allclose(scores, naive, rtol=1e-12)
    assert tau == pytest.approx(np.linspace(0, 2, 21)[int(np.argmax(naive))])  # argmax: the first of ties


def test_choose_tau_keeps_the_first_of_tied_taus():
    x, y = _features()
    w = torch.eye(4, 5, dtype=torch.float64)  # unit norms: every τ gives the same classifier
    tau, scores = choose_tau(x, y, w, (0.5, 0.0, 1.0))
    assert len(set(scores)) == 1 and tau == 0.5


# ----------------------------------------------------------------------------- NCM
def _naive_knn(train_x, train_y, test_x, c, feat_type, dist_type):
    """get_knncentroids + KNNClassifier.forward, transcribed in numpy float64."""
    feats, labels = train_x.numpy(), train_y.numpy()
    featmean = feats.mean(axis=0)
    if feat_type == "un":
        z = feats
    elif feat_type == "l2n":
        z = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    else:
        z = (feats - featmean) / np.linalg.norm(feats - featmean, axis=1, keepdims=True)
    present = np.unique(labels)
    centroids = np.stack([z[labels == k].mean(axis=0) for k in present])
    inputs = test_x.numpy()
    if feat_type == "cl2n":
        inputs = inputs - featmean
    if feat_type in ("l2n", "cl2n"):
        inputs = inputs / np.linalg.norm(inputs, axis=1, keepdims=True)
    if dist_type == "cos":
        logit = inputs @ centroids.T / inputs.shape[1]
    else:
        logit = -((inputs ** 2).sum(1, keepdims=True) + (centroids ** 2).sum(1)[None] - 2 * inputs @ centroids.T)
    full = np.full((len(inputs), c), -np.inf)
    full[:, present] = logit
    return full


@pytest.mark.parametrize("feat_type", ["un", "l2n", "cl2n"])
@pytest.mark.parametrize("dist_type", ["cos", "l2"])
@pytest.mark.parametrize("absent", [None, 1])
def test_ncm_matches_the_official_computation(feat_type, dist_type, absent):
    x, y = _features(absent=absent)
    test_x, _ = _features(n=20, seed=5)
    mean, centroids, present = ncm_centroids(x, y, 4, feat_type)
    ours = ncm_logits(test_x, mean, centroids, present, feat_type, dist_type).numpy()
    naive = _naive_knn(x, y, test_x, 4, feat_type, dist_type)
    np.testing.assert_allclose(ours, naive, rtol=1e-12, atol=1e-14)
    assert (absent is None) == bool(present.all())


# ----------------------------------------------------------------------------- LWS
def _naive_lws(scales, logits, labels, weights, wd):
    """Value and hand-derived gradient: d/df_c = Σ_i w_i (p_ic − [y_i = c]) a_ic + λ f_c."""
    f, a, y, w = scales.numpy(), logits.numpy(), labels.numpy(), weights.numpy()
    value, grad = 0.5 * wd * float((f ** 2).sum()), wd * f.copy()
    for i in range(len(y)):
        z = f * a[i]
        z = z - z.max()
        p = np.exp(z) / np.exp(z).sum()
        value += w[i] * -math.log(p[y[i]])
        onehot = np.zeros_like(p)
        onehot[y[i]] = 1
        grad += w[i] * (p - onehot) * a[i]
    return value, grad


@pytest.mark.parametrize("absent", [None, 3])
def test_lws_objective_value_and_gradient(absent):
    a, y = _features(n=40, d=4, absent=absent)  # 4 "logits" per sample
    weights = balanced_sample_weights(y, 4)
    f = torch.tensor([0.7, 1.3, 0.9, 1.1], dtype=torch.float64, requires_grad=True)
    value = lws_objective(f, a, y, weights, 5e-4)
    (grad,) = torch.autograd.grad(value, f)
    naive_value, naive_grad = _naive_lws(f.detach(), a, y, weights, 5e-4)
    assert float(value.detach()) == pytest.approx(naive_value, rel=1e-12)
    np.testing.assert_allclose(grad.numpy(), naive_grad, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("absent", [None, 0])
def test_balanced_weights_weigh_every_present_class_alike(absent):
    _, y = _features(absent=absent)
    w = balanced_sample_weights(y, 4)
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-15)
    totals = [float(w[y == k].sum()) for k in range(4) if bool((y == k).any())]
    np.testing.assert_allclose(totals, 1 / len(totals), rtol=1e-12)


def test_lws_fit_reaches_a_zero_gradient_of_the_naive_objective():
    a, y = _features(n=80, d=4)
    weights = balanced_sample_weights(y, 4)
    f = torch.ones(4, dtype=torch.float64, requires_grad=True)
    record = lbfgs_fit([f], lambda: lws_objective(f, a, y, weights, 5e-4), 1e-9, 500)
    assert record["converged"] and record["grad_norm"] <= 1e-9
    _, naive_grad = _naive_lws(f.detach(), a, y, weights, 5e-4)
    assert np.abs(naive_grad).max() < 1e-8


# ----------------------------------------------------------------------------- stages and boundaries
@pytest.mark.parametrize("name, epochs", [("crt", 10), ("lws", 5)])
def test_sgd_classifier_stage_boundaries(name, epochs):
    method = create_method(name, probe="sgd")
    info = TrainInfo(class_counts=(50, 20, 5), class_names=("a", "b", "c"), epochs=20, steps_per_epoch=4,
                     device=torch.device("cpu"))
    method.setup(info)
    stages = method.stages(info)
    assert stage_bounds(stages, 20) == [(0, 20), (20, 20 + epochs)]
    assert not stages[0].selectable and stages[1].extra and stages[1].lr == 0.2 and stages[1].weight_decay == 5e-4
    assert [method.in_stage2(e) for e in (19, 20, 19 + epochs)] == [False, True, True]


def test_crt_reinitialises_the_classifier_at_the_first_epoch_of_its_sgd_stage_only():
    method = create_method("crt", probe="sgd", probe_epochs=3)
    info = TrainInfo(class_counts=(5, 5), class_names=("a", "b"), epochs=4, steps_per_epoch=1,
                     device=torch.device("cpu"), seed=7)
    method.setup(info)
    method.stages(info)
    layer = torch.nn.Linear(6, 2)

    class Run:  # what on_train_start keeps: the run's model
        model = torch.nn.Module()

    Run.model.classifier = layer
    method.on_train_start(Run())
    expected = torch.nn.Linear(6, 2)
    reinitialise_linear(expected, 7)
    for epoch in (3, 5):  # the epoch before the stage and one inside it: untouched
        before = layer.weight.detach().clone()
        method.on_epoch_start(epoch)
        assert torch.equal(layer.weight, before)
    method.on_epoch_start(4)
    assert torch.equal(layer.weight, expected.weight) and torch.equal(layer.bias, expected.bias)


def test_crt_default_is_a_class_balanced_probe(data):
    run = Trainer(cpu_config(), progress=False).fit(create_method("crt"), data.bundle)
    assert [h.get("stage") for h in run.history] == ["representation", "representation", "probe"]
    assert run.history[-1]["probe"]["converged"] and run.best_epoch == 2


@pytest.mark.parametrize("name", ["crt", "lws"])
def test_sgd_variants_freeze_everything_but_their_layer(name, data):
    method = create_method(name, probe="sgd", probe_epochs=2)
    trainer = Trainer(cpu_config(), progress=False)
    run = trainer.fit(method, data.bundle)
    assert [h["stage"] for h in run.history] == ["representation"] * 2 + ["classifier"] * 2
    assert run.best_epoch in (2, 3)  # stage 1 is not selectable


# ----------------------------------------------------------------------------- the calibrate hook
def test_tau_norm_chooses_tau_on_validation_and_predicts_with_it(data):
    method = create_method("tau_norm")
    trainer = Trainer(cpu_config(), progress=False)
    run = trainer.fit(method, data.bundle)
    record = run.history[-1]
    assert record["stage"] == "calibration" and record["calibration"]["tau"] in OFFICIAL_TAU_GRID
    model = trainer.model
    bundle = data.bundle
    val_x = trainer.infer(method, model, bundle, bundle.val, lambda m, x: m.backbone(x)).double()
    tau, scores = choose_tau(val_x, torch.as_tensor(bundle.labels[bundle.val]), model.classifier.weight.detach(),
                             OFFICIAL_TAU_GRID)
    assert tau == record["calibration"]["tau"] and scores == record["calibration"]["val_class_mean_acc"]
    # the test probabilities are the bias-free τ-normalised classifier's
    test_x = trainer.infer(method, model, bundle, bundle.test, lambda m, x: m.backbone(x)).double()
    logits = test_x @ tau_normalised(model.classifier.weight.detach().double(), tau).T
    np.testing.assert_allclose(run.arrays["test_probs"], torch.softmax(logits, 1).numpy(), atol=1e-5)
    assert run.val["acc"] == record["val"]["acc"]  # the run's validation metrics are the calibrated model's


def test_fixed_tau_skips_the_search(data):
    run = Trainer(cpu_config(epochs=1), progress=False).fit(create_method("tau_norm", tau=1.0), data.bundle)
    assert run.history[-1]["calibration"]["tau"] == 1.0 and run.history[-1]["calibration"]["val_class_mean_acc"] == []


def test_knn_centroids_are_those_of_the_training_features(data):
    method = create_method("knn")
    trainer = Trainer(cpu_config(), progress=False)
    run = trainer.fit(method, data.bundle)
    bundle, model = data.bundle, trainer.model
    x = trainer.infer(method, model, bundle, bundle.train, lambda m, images: m.backbone(images))
    y = torch.as_tensor(bundle.labels[bundle.train])
    test_x = trainer.infer(method, model, bundle, bundle.test, lambda m, images: m.backbone(images))
    naive = _naive_knn(x.double(), y, test_x.double(), 4, "cl2n", "cos")
    probs = torch.softmax(torch.tensor(naive), 1).numpy()
    np.testing.assert_allclose(run.arrays["test_probs"], probs, atol=1e-5)
    assert run.history[-1]["stage"] == "calibration"


def test_lws_fit_is_recorded_as_a_converged_probe(data):
    run = Trainer(cpu_config(), progress=False).fit(create_method("lws"), data.bundle)
    record = run.history[-1]
    assert record["probe"]["converged"] and len(record["calibration"]["scales"]) == 4


def test_a_calibrate_without_a_finite_loss_is_one_error_line(data):
    method = create_method("tau_norm")
    method.calibrate = lambda run: {"tau": 1.0}
    with pytest.raises(LtbenchError, match="calibrate must return a dict with a finite 'loss'"):
        Trainer(cpu_config(epochs=1), progress=False).fit(method, data.bundle)


def test_calibrate_never_sees_the_test_rows(data):
    method = create_method("knn")
    seen = []
    original = method.calibrate

    def spy(run):
        with pytest.raises(ValueError, match="split must be 'train' or 'val'"):
            run.infer(lambda m, x: x, split="test")
        seen.append(len(run.infer(lambda m, x: m.backbone(x), split="val")))
        return original(run)

    method.calibrate = spy
    Trainer(cpu_config(epochs=1), progress=False).fit(method, data.bundle)
    assert seen == [len(data.split.val)]
