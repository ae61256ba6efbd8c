"""DisAlign (Zhang et al., CVPR 2021; methods/disalign.py): the adaptive calibration function and its
generalised re-weighting loss against a naive float64 transcription of cvpods' ``DisAlignLinear.forward``
and ``GRWCrossEntropyLoss`` (values, finite-difference gradients, a class absent from the batch), the
official initialisation, the stage-2 boundaries and the full-batch fit."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ltbench.method import TrainInfo
from ltbench.registry import create_method
from ltbench.stages import stage_bounds
from ltbench.trainer import Trainer
from ltbench.methods.disalign import DisAlignNetwork, disalign_logits
from ltbench.methods.grw import grw_loss, grw_weights
from ltbench.models import build_backbone
from tests.helpers import cpu_config, synthetic_data

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _naive_weights(counts, rho):
    """GRWCrossEntropyLoss._init_weights: ratio n/Σn, 1/ratio^ρ, / sum · C."""
    n = np.array(counts, dtype=np.float64)
    w = 1 / ((n / n.sum()) ** rho)
    return w / w.sum() * len(n)


def _naive_loss(x, z, y, v, c, alpha, beta, w):
    """Σ_i w_{y_i} CE_i / Σ_i w_{y_i} of ``(1 + σα) z + σβ``, σ = sigmoid(x·v + c), by loops."""
    num = den = 0.0
    for i in range(len(y)):
        s = 1 / (1 + math.exp(-(float(np.dot(x[i], v)) + c)))
        logits = [(1 + s * alpha[k]) * z[i][k] + s * beta[k] for k in range(len(alpha))]
        top = max(logits)
        lse = top + math.log(sum(math.exp(t - top) for t in logits))
        num += w[y[i]] * (lse - logits[y[i]])
        den += w[y[i]]
    return num / den


def _problem(absent=None, n=12, d=3, classes=4, seed=0):
    g = np.random.default_rng(seed)
    x, z = g.normal(size=(n, d)), g.normal(size=(n, classes)) * 2
    y = g.integers(0, classes, size=n)
    if absent is not None:
        y[y == absent] = (absent + 1) % classes
    params = [g.normal(size=d) * 0.5, float(g.normal()), 1 + g.normal(size=classes) * 0.3, g.normal(size=classes) * 0.3]
    return x, z, y, params


def test_grw_weights_are_disaligns_formula():
    counts = [500, 120, 30, 7]
    np.testing.assert_allclose(grw_weights(counts, 1.2, "sum").numpy(), _naive_weights(counts, 1.2), rtol=1e-6)


@pytest.mark.parametrize("absent", [None, 2])
def test_calibrated_loss_value_and_gradients(absent):
    x, z, y, (v, c, alpha, beta) = _problem(absent)
    w = _naive_weights([40, 25, 9, 3], 1.2)
    tensors = [torch.tensor(p, dtype=torch.float64, requires_grad=True) for p in (v, c, alpha, beta)]
    logits = disalign_logits(torch.tensor(x), torch.tensor(z), *tensors)
    loss = grw_loss(logits, torch.tensor(y), torch.tensor(w))
    assert float(loss.detach()) == pytest.approx(_naive_loss(x, z, y, v, c, alpha, beta, w), rel=1e-12)
    grads = torch.autograd.grad(loss, tensors)
    flat = [np.atleast_1d(np.array(p, dtype=np.float64)) for p in (v, c, alpha, beta)]
    eps = 1e-6
    for k, (param, grad) in enumerate(zip(flat, grads)):
        for j in range(param.size):
            def at(delta):
                moved = [p.copy() for p in flat]
                moved[k][j] += delta
                return _naive_loss(x, z, y, moved[0], float(moved[1][0]), moved[2], moved[3], w)
            fd = (at(eps) - at(-eps)) / (2 * eps)
            assert float(grad.reshape(-1)[j]) == pytest.approx(fd, rel=1e-6, abs=1e-9)
    if absent is not None:  # a class without labels still gets a gradient through the softmax
        assert float(grads[3][absent]) > 0


def test_official_initialisation_and_the_inactive_forward():
    torch.manual_seed(0)
    net = DisAlignNetwork(build_backbone("small-cnn", None), 5)
    cal = net.calibration
    assert torch.all(cal.confidence_layer.weight == 0.1) and torch.all(cal.logit_scale == 1)
    assert torch.all(cal.logit_bias == 0) and not bool(cal.active)
    images = torch.randn(3, 3, 16, 16)
    net.eval()
    plain = net.classifier(net.backbone(images))
    assert torch.equal(net(images), plain)  # stage 1: the plain classifier
    cal.active.fill_(True)
    features = net.backbone(images)
    conf = torch.sigmoid(features @ cal.confidence_layer.weight[0] + cal.confidence_layer.bias[0])[:, None]
    torch.testing.assert_close(net(images), (1 + conf) * plain, rtol=1e-6, atol=1e-6)  # α = 1, β = 0 at the start


def test_sgd_stage_boundaries_and_the_switch():
    method = create_method("disalign", probe="sgd")
    info = TrainInfo(class_counts=(50, 20, 5), class_names=("a", "b", "c"), epochs=20, steps_per_epoch=4,
                     device=torch.device("cpu"))
    method.setup(info)
    stages = method.stages(info)
    assert stage_bounds(stages, 20) == [(0, 20), (20, 30)]
    second = stages[1]
    assert second.trains == ("calibration",) and second.lr == 0.1 and second.weight_decay == 5e-4
    assert second.samplers == (("instance", ("standard",)),) and not stages[0].selectable
    net = DisAlignNetwork(build_backbone("small-cnn", None), 3)

    class Run:
        model = net

    method.on_train_start(Run())
    method.on_epoch_start(19)
    assert not bool(net.calibration.active) and not method.in_stage2()
    method.on_epoch_start(20)
    assert bool(net.calibration.active) and method.in_stage2()


@pytest.fixture(scope="module")
def data():
    return synthetic_data()


def test_default_fit_is_converged_and_predicts_the_calibrated_logits(data):
    method = create_method("disalign")
    trainer = Trainer(cpu_config(), progress=False)
    run = trainer.fit(method, data.bundle)
    record = run.history[-1]
    assert record["stage"] == "calibration" and record["probe"]["converged"]
    model, bundle = trainer.model, data.bundle
    x = trainer.infer(method, model, bundle, bundle.test, lambda m, images: m.backbone(images)).double()
    cal = model.calibration
    z = x @ model.classifier.weight.detach().double().T + model.classifier.bias.detach().double()
    logits = disalign_logits(x, z, cal.confidence_layer.weight[0].detach().double(),
                             cal.confidence_layer.bias[0].detach().double(), cal.logit_scale.detach().double(),
                             cal.logit_bias.detach().double())
    np.testing.assert_allclose(run.arrays["test_probs"], torch.softmax(logits, 1).numpy(), atol=1e-5)


def test_sgd_variant_trains_the_calibration_beyond_the_budget(data):
    run = Trainer(cpu_config(), progress=False).fit(create_method("disalign", probe="sgd", probe_epochs=2), data.bundle)
    assert [h["stage"] for h in run.history] == ["representation"] * 2 + ["classifier"] * 2
    assert run.best_epoch in (2, 3)
