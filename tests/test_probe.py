"""The probe stage (issue 20): a linear classifier fitted to convergence on frozen features.

References are independent of ``ltbench.trainer.probe``: scikit-learn's ``LogisticRegression`` (its own
L-BFGS on the same objective, scaled: C·Σ s_i ℓ_i + ½‖W‖² with C = 1/(l2·Σ s)) and a naive numpy
float64 objective whose finite-difference gradient must vanish at the returned solution.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression

from ltbench.errors import LtbenchError
from ltbench.method import Method
from ltbench.trainer.probe import fit_linear_probe, sample_weights
from ltbench.registry import create_method
from ltbench.stages import Probe, Stage
from ltbench.trainer import Trainer
from tests.helpers import cpu_config, synthetic_data

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _problem(n=120, d=5, c=3, seed=0):
    """Overlapping Gaussian classes (not separable), imbalanced, with one constant feature."""
    rng = np.random.default_rng(seed)
    y = rng.choice(c, size=n, p=[0.6, 0.3, 0.1])
    x = rng.normal(size=(n, d)) * rng.uniform(0.5, 3, size=d) + rng.normal(size=(c, d))[y] + 4.0
    x[:, -1] = 2.5  # constant: standardisation must not divide by zero
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y)


def _naive_objective(params, x, y, weights, l2, loss, c):
    """Σ w_i ℓ_i + l2/2 ‖W_std‖², in float64 numpy, parameters in the standardised space."""
    d = x.shape[1]
    w_mat, b = params[: c * d].reshape(c, d), params[c * d:]
    mean, std = x.mean(0), x.std(0)
    std = np.where(std > 1e-12, std, 1.0)
    z = (x - mean) / std
    logits = z @ w_mat.T + b
    logits = logits - logits.max(1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    ce = -log_p[np.arange(len(y)), y]
    per_sample = ce if loss == "ce" else (1 - np.exp(-ce)) ** 2 * ce
    return float((weights * per_sample).sum() + 0.5 * l2 * (w_mat ** 2).sum())


def _standardised_params(fit, x):
    """The fit's (W, b) mapped back to the standardised space the objective is written in."""
    mean, std = x.mean(0), x.std(0)
    std = np.where(std > 1e-12, std, 1.0)
    w_std = fit.weight.numpy() * std
    b = fit.bias.numpy() + fit.weight.numpy() @ mean
    return np.concatenate([w_std.ravel(), b])


def _focal(logits, labels):
    ce = F.cross_entropy(logits, labels, reduction="none")
    return (1 - torch.exp(-ce)) ** 2 * ce


@pytest.mark.parametrize("sampler", ["instance", "class_aware"])
def test_cross_entropy_probe_matches_scikit_learn(sampler):
    x, y = _problem()
    probe = Probe(l2=1e-2, tolerance=1e-8, sampler=sampler)
    fit = fit_linear_probe(x, y, 3, lambda z, t: F.cross_entropy(z, t, reduction="none"), probe)
    assert fit.converged and fit.grad_norm <= 1e-8
    x64 = x.double().numpy()
    counts = np.bincount(y.numpy(), minlength=3)
    s = np.ones(len(y)) if sampler == "instance" else 1.0 / counts[y.numpy()]
    mean, std = x64.mean(0), x64.std(0)
    z = (x64 - mean) / np.where(std > 1e-12, std, 1.0)
    ref = LogisticRegression(C=1.0 / (probe.l2 * s.sum()), tol=1e-12, max_iter=10_000).fit(z, y.numpy(),
                                                                                         sample_weight=s)
    ours = torch.softmax(torch.tensor(x64) @ fit.weight.T + fit.bias, dim=1).numpy()
    np.testing.assert_allclose(ours, ref.predict_proba(z), atol=1e-6)  # two solvers: not bit-equal


@pytest.mark.parametrize("loss_name,sampler", [("ce", "instance"), ("focal", "instance"), ("focal", "reversed")])
def test_the_solution_is_a_stationary_point_of_the_naive_objective(loss_name, sampler):
    x, y = _problem(seed=1)
    probe = Probe(l2=1e-3, tolerance=1e-7, sampler=sampler)  # 1e-9 is below the focal line search's precision
    loss = (lambda z, t: F.cross_entropy(z, t, reduction="none")) if loss_name == "ce" else _focal
    fit = fit_linear_probe(x, y, 3, loss, probe)
    assert fit.converged
    x64, y64 = x.double().numpy(), y.numpy()
    counts = np.bincount(y64, minlength=3).astype(float)
    per_class = {"instance": np.ones(3), "reversed": (counts.max() / counts) / counts}[sampler]
    weights = per_class[y64] / per_class[y64].sum()
    params = _standardised_params(fit, x64)
    value = _naive_objective(params, x64, y64, weights, probe.l2, loss_name, 3)
    assert math.isclose(value, fit.objective, rel_tol=1e-9)
    h = 1e-6
    grad = [(_naive_objective(params + h * e, x64, y64, weights, probe.l2, loss_name, 3)
             - _naive_objective(params - h * e, x64, y64, weights, probe.l2, loss_name, 3)) / (2 * h)
            for e in np.eye(len(params))]
    assert np.abs(grad).max() < 2e-7  # the fit's 1e-7 plus central differences' O(h²) error


def test_sample_weights_follow_the_sampler():
    y = torch.tensor([0, 0, 0, 1, 2, 2])
    torch.testing.assert_close(sample_weights(y, 3, "instance"), torch.full((6,), 1 / 6, dtype=torch.float64))
    balanced = sample_weights(y, 3, "class_balanced")
    assert [float(balanced[y == k].sum()) for k in range(3)] == pytest.approx([1 / 3] * 3)
    torch.testing.assert_close(sample_weights(y, 3, "class_aware"), balanced)


def test_a_capped_fit_reports_that_it_did_not_converge():
    x, y = _problem()
    fit = fit_linear_probe(x, y, 3, lambda z, t: F.cross_entropy(z, t, reduction="none"),
                           Probe(tolerance=1e-12, max_iter=2))
    assert not fit.converged and fit.iterations <= 2 and fit.grad_norm > 1e-12
    assert fit.record()["converged"] is False


def test_bad_features_are_one_clear_error():
    x, y = _problem()
    x[3, 1] = float("nan")
    with pytest.raises(LtbenchError, match="NaN"):
        fit_linear_probe(x, y, 3, lambda z, t: F.cross_entropy(z, t, reduction="none"), Probe())


# --- in the trainer ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data():
    return synthetic_data()


def test_trainer_fits_the_classifier_after_the_budget_and_records_it(data):
    method = create_method("scl")
    trainer = Trainer(cpu_config(epochs=2), progress=False)
    run = trainer.fit(method, data.bundle)
    assert [h["stage"] for h in run.history] == ["representation", "representation", "probe"]
    record = run.history[-1]
    assert record["epoch"] == 2 and run.best_epoch == 2 and record["probe"]["converged"]
    assert set(record["probe"]) == {"loss", "objective", "iterations", "grad_norm", "tolerance", "converged"}
    assert record["val"]["acc"] == run.val["acc"]
    # The tested classifier is the fit, folded back onto the raw backbone features: refitting on the
    # same frozen features gives the same layer.
    model = trainer.model
    features = trainer.infer(method, model, data.bundle, data.bundle.train, lambda m, x: m.backbone(x))
    refit = fit_linear_probe(features, torch.as_tensor(data.bundle.labels[data.bundle.train]),
                             len(data.bundle.class_names), method.probe_loss, Probe())
    torch.testing.assert_close(model.classifier.weight.double(), refit.weight, atol=1e-4, rtol=1e-4)


def test_a_probe_on_a_module_that_is_not_linear_is_one_clear_error(data):
    class ProbeTheBackbone(Method):
        def stages(self, info):
            return [Stage(epochs=None), Stage(trains=("backbone",), probe=Probe())]

        def training_step(self, model, batch):
            return F.cross_entropy(model(batch.views[0]).float(), batch.labels)

    with pytest.raises(LtbenchError, match="not an nn.Linear"):
        Trainer(cpu_config(epochs=1), progress=False).fit(ProbeTheBackbone(), data.bundle)


def test_a_loss_that_is_not_per_sample_is_one_clear_error():
    x, y = _problem()
    with pytest.raises(LtbenchError, match="one loss per sample"):
        fit_linear_probe(x, y, 3, lambda z, t: F.cross_entropy(z, t), Probe())


def test_a_layer_that_runs_twice_in_predict_is_one_clear_error(data):
    class TwiceThroughTheClassifier(Method):
        def stages(self, info):
            return [Stage(epochs=None), Stage(trains=("head",), probe=Probe())]

        def training_step(self, model, batch):
            return F.cross_entropy(model(batch.views[0]).float(), batch.labels)

        def predict(self, model, images):
            features = model.backbone(images)
            return model.head(features) + model.head(features)

    with pytest.raises(LtbenchError, match="ran 2 times"):
        Trainer(cpu_config(epochs=1), progress=False).fit(TwiceThroughTheClassifier(), data.bundle)
