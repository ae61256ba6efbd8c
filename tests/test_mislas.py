"""MiSLAS (methods/mislas.py): label-aware smoothing ε and loss against naive float64 loops written from
dvlab-research/MiSLAS methods.py, the stage boundaries, the two stage-2 learning rates and shift learning on BN."""
from __future__ import annotations

import math

import pytest
import torch

from ltbench.method import Batch, TrainInfo
from ltbench.methods.mislas import MiSLAS, label_aware_smoothing_loss, las_smoothing
from ltbench.models import build_backbone
from ltbench.registry import create_method
from ltbench.stages import stage_bounds
from ltbench.trainer import Trainer
from tests.helpers import cpu_config, float64_logits, synthetic_data

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def naive_eps(counts, head, tail, shape, power=None):
    n1, nk = max(counts), min(counts)
    out = []
    for n in counts:
        x = (n - nk) / (n1 - nk)
        if shape == "concave":
            out.append(tail + (head - tail) * math.sin(x * math.pi / 2))
        elif shape == "linear":
            out.append(tail + (head - tail) * x)
        elif shape == "convex":
            out.append(head + (head - tail) * math.sin(1.5 * math.pi + x * math.pi / 2))
        else:
            out.append(tail + (head - tail) * x ** power)
    return out


def naive_las(z, y, eps):
    total = 0.0
    for i in range(z.shape[0]):
        row = [z[i, c] for c in range(z.shape[1])]
        m = max(float(v.detach()) for v in row)
        lse = m + torch.log(sum(torch.exp(v - m) for v in row))
        logp = [v - lse for v in row]
        e = eps[int(y[i])]
        total = total + (1 - e) * (-logp[int(y[i])]) + e * (-sum(logp) / len(logp))
    return total / z.shape[0]


@pytest.mark.parametrize("shape, power", [("concave", None), ("linear", None), ("convex", None), ("exp", 2.0)])
def test_smoothing_per_class_matches_the_official_formula(shape, power):
    counts = [500, 120, 37, 5]
    got = las_smoothing(counts, 0.4, 0.1, shape, power)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, torch.tensor(naive_eps(counts, 0.4, 0.1, shape, power), dtype=torch.float64))
    assert got[0].item() == pytest.approx(0.4) and got[-1].item() == pytest.approx(0.1)  # head ε_1, tail ε_K


def test_equal_counts_give_the_head_value_instead_of_nan():
    assert las_smoothing([7, 7, 7], 0.3, 0.0).tolist() == [0.3, 0.3, 0.3]


def test_bad_shape_is_one_error():
    with pytest.raises(Exception, match="las_shape"):
        create_method("mislas", las_shape="cubic")
    with pytest.raises(Exception, match="las_shape"):
        create_method("mislas", las_shape="exp")


@pytest.mark.parametrize("absent", [None, 2])
def test_las_loss_value_and_gradient_match_naive_float64(absent):
    z, y = float64_logits(seed=3, b=7, c=4, absent=absent)
    eps = las_smoothing([300, 90, 20, 4], 0.3, 0.05)
    got = label_aware_smoothing_loss(z, y, eps)
    (g_got,) = torch.autograd.grad(got, z)
    ref = naive_las(z, y, eps.tolist())
    (g_ref,) = torch.autograd.grad(ref, z)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_got, g_ref, rtol=1e-12, atol=1e-12)
    if absent is not None:  # an absent class: d/dz_c = (p_c − ε_y / C) / B, the smoothing term's pull
        p = torch.softmax(z.detach(), dim=1)[:, absent]
        torch.testing.assert_close(g_got[:, absent], (p - eps[y] / 4) / 7, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("epochs, bounds", [(20, [(0, 10), (10, 20)]), (12, [(0, 6), (6, 12)]),
                                            (2, [(0, 1), (1, 2)]), (1, [(0, 1), (1, 1)]),
                                            (190, [(0, 180), (180, 190)])])
def test_stage_boundaries(epochs, bounds):
    method = create_method("mislas")
    info = TrainInfo(class_counts=(50, 20, 5), class_names=("a", "b", "c"), epochs=epochs, steps_per_epoch=1,
                     device=CPU, lr=0.1)
    method.setup(info)
    stages = method.stages(info)
    assert stage_bounds(stages, epochs) == bounds
    assert stages[1].samplers == ("class_aware",) and stages[1].trains == ("classifier", "lws")
    assert stages[1].lr == pytest.approx(0.05 * 0.1) and stages[1].lr_schedule == "cosine"
    start = bounds[1][0]
    for epoch, expected in ((start - 1, False), (start, True)):
        if 0 <= epoch < epochs:
            method.on_epoch_start(epoch)
            assert method.in_stage2() is expected


def _stage2_setup(shift_bn: bool):
    torch.manual_seed(0)
    method = MiSLAS(shift_bn=shift_bn, lr_factor=0.2)
    info = TrainInfo(class_counts=(40, 10, 4), class_names=("a", "b", "c"), epochs=4, steps_per_epoch=1,
                     device=CPU, lr=0.1)
    method.setup(info)
    model = method.build_model(build_backbone("small-cnn"), info)
    method.stages(info)
    method.on_epoch_start(3)
    model.eval()  # the trainer: frozen modules in eval mode, trained ones in train mode
    model.classifier.train()
    model.lws.train()
    g = torch.Generator().manual_seed(1)
    batch = Batch(views=[torch.randn(6, 3, 16, 16, generator=g)], labels=torch.tensor([0, 1, 2, 0, 1, 1]),
                  indices=torch.arange(6))
    return method, model, batch


@pytest.mark.parametrize("shift_bn", [True, False])
def test_stage2_trains_classifier_and_scale_and_shifts_only_bn_statistics(shift_bn):
    method, model, batch = _stage2_setup(shift_bn)
    bns = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [(m.running_mean.clone(), m.weight.detach().clone()) for m in bns]
    loss = method.training_step(model, batch)
    loss.backward()
    for m, (mean, weight) in zip(bns, before):
        assert m.weight.grad is None and torch.equal(m.weight, weight)  # affine fixed, no gradient
        assert torch.equal(m.running_mean, mean) is (not shift_bn)  # statistics move only with shift_bn
    assert model.classifier.weight.grad is not None and model.lws.learned_norm.grad is not None


def test_stage2_rates_are_lr_factor_for_the_classifier_and_lr_for_the_scale():
    method, model, batch = _stage2_setup(True)
    lr = 0.1
    s0, w0 = model.lws.scale().detach().clone(), model.classifier.weight.detach().clone()
    torch.testing.assert_close(s0, torch.ones_like(s0))
    loss = method.training_step(model, batch)
    gs, gw = torch.autograd.grad(loss, [model.lws.learned_norm, model.classifier.weight], retain_graph=True)
    # d loss / d s from the scale's own gradient: ds = gain · du
    g_scale = gs / model.lws.gain
    opt = torch.optim.SGD([model.lws.learned_norm, model.classifier.weight], lr=0.2 * lr)  # the stage's one lr
    loss.backward()
    opt.step()
    torch.testing.assert_close(model.lws.scale().detach(), s0 - lr * g_scale)  # official group 2: lr
    torch.testing.assert_close(model.classifier.weight.detach(), w0 - 0.2 * lr * gw)  # group 1: lr_factor · lr


def test_stage1_is_mixup_cross_entropy():
    method = create_method("mislas", mixup_alpha=1.0)
    assert method.mixup_alpha == 1.0 and method.get_params()["mixup_alpha"] == 1.0


def test_fits_on_synthetic_data_with_both_stages():
    data = synthetic_data()
    run = Trainer(cpu_config(epochs=4), progress=False).fit(create_method("mislas"), data.bundle)
    assert [h["stage"] for h in run.history] == ["mixup", "mixup", "las", "las"]
    assert all(math.isfinite(h["train_loss"]) for h in run.history)


@pytest.mark.parametrize("lr_factor", [0.05, 0.1, 0.2, 0.5, 0.3, 1.0])
def test_logit_scale_starts_at_exactly_one(lr_factor):
    from ltbench.methods.mislas import ScaledLogits

    scale = ScaledLogits(5, 1.0 / math.sqrt(lr_factor)).scale()
    assert torch.equal(scale, torch.ones(1, 5))  # stage 1 logits are the classifier's, bit for bit


def test_official_interface_is_the_same_loss():
    from ltbench.methods.mislas import LabelAwareSmoothing

    z, y = float64_logits(seed=8, b=5, c=3, absent=1)
    counts = [100, 30, 3]
    criterion = LabelAwareSmoothing(counts, 0.4, 0.1)
    assert criterion.smooth.dtype == torch.float32
    torch.testing.assert_close(criterion(z, y), label_aware_smoothing_loss(z, y, las_smoothing(counts, 0.4, 0.1).float()))
