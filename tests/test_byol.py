"""BYOL (methods/byol.py): the loss against a naive float64 implementation (values, gradients, no gradient
into the target), the τ schedule at its boundary steps, the EMA update against the naive rule at the first,
second and last steps of a run, and a resumed run equal to an uninterrupted one (the target network and the
step counter travel in checkpoints)."""
from __future__ import annotations

import math
import shutil

import pytest
import torch

from ltbench import create_method
from ltbench.method import Batch, TrainInfo
from ltbench.methods.byol import byol_loss, regression_loss, target_tau
from ltbench.models import build_backbone
from ltbench.store.checkpoint import CheckpointStore
from ltbench.trainer import Trainer
from tests.helpers import cpu_config, synthetic_data
from tests.test_resume import CopyingStore, assert_same_run


def naive_regression(x, y):
    """2 − 2·cos(x, y) per row, from the dot product and the norms (float64)."""
    dot = (x * y).sum(-1)
    return 2 - 2 * dot / (x.norm(dim=-1) * y.norm(dim=-1))


def test_loss_equals_the_naive_float64_loss_with_its_gradients():
    g = torch.Generator().manual_seed(0)
    q1, q2, z1, z2 = (torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(4))
    loss = byol_loss(q1, q2, z1, z2)
    want = (naive_regression(q1, z2.detach()) + naive_regression(q2, z1.detach())).mean()
    assert loss.item() == pytest.approx(want.item(), rel=1e-12)
    got = torch.autograd.grad(loss, [q1, q2])
    expected = torch.autograd.grad(want, [q1, q2])
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    loss = byol_loss(q1, q2, z1, z2)
    loss.backward()
    assert z1.grad is None and z2.grad is None  # the target is a constant of the online loss
    # identical directions: zero loss; opposite: 4 per view pair
    x = torch.randn(3, 4, dtype=torch.float64, generator=g)
    assert torch.allclose(regression_loss(x, 2 * x), torch.zeros(3, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(regression_loss(x, -x), torch.full((3,), 4.0, dtype=torch.float64))


def test_tau_schedule_at_its_boundaries():
    K, base = 160, 0.996
    assert target_tau(0, K, base) == base  # the first step: τ_base exactly
    assert target_tau(K, K, base) == 1.0 and target_tau(K + 5, K, base) == 1.0  # the last: 1, clipped after
    assert target_tau(K // 2, K, base) == pytest.approx(1 - (1 - base) / 2, rel=1e-15)
    last = 1 - (1 - base) * (math.cos(math.pi * (K - 1) / K) + 1) / 2
    assert target_tau(K - 1, K, base) == pytest.approx(last, rel=1e-15)
    assert all(target_tau(k, K, base) < target_tau(k + 1, K, base) for k in range(K))


def _byol(steps_per_epoch: int = 4, epochs: int = 2):
    torch.manual_seed(0)
    info = TrainInfo(class_counts=(6, 4, 2), class_names=("a", "b", "c"), epochs=epochs,
                     steps_per_epoch=steps_per_epoch, device=torch.device("cpu"))
    method = create_method("byol", hidden=32, dim=8)
    method.setup(info)
    model = method.build_model(build_backbone("small-cnn"), info)
    method.stages(info)
    model.train()
    return method, model


def _batch(seed: int) -> Batch:
    g = torch.Generator().manual_seed(seed)
    views = [torch.randn(6, 3, 16, 16, generator=g) for _ in range(2)]
    return Batch(views=views, labels=torch.zeros(6, dtype=torch.long), indices=torch.arange(6))


def _params(model, which):
    return [p.detach().double().clone() for p in getattr(model, f"{which}_parameters")()]


@pytest.mark.parametrize("step", [0, 1, 7], ids=["first", "second", "last"])
def test_ema_update_of_a_step_equals_the_naive_rule(step):
    method, model = _byol()  # K = 2 epochs × 4 steps = 8
    with torch.no_grad():  # a target apart from the online network, as after some training
        for p in model.target_parameters():
            p.add_(0.01 * torch.randn_like(p))
    method.ema_step.fill_(step)
    online, target = _params(model, "online"), _params(model, "target")
    method.training_step(model, _batch(step))
    assert int(method.ema_step) == step + 1
    if step == 0:  # no online update has happened yet: the target stays
        expected = target
    else:  # the update after step − 1: x + (1 − τ_{step−1})(y − x)
        tau = 1 - (1 - 0.996) * (math.cos(math.pi * (step - 1) / 8) + 1) / 2
        expected = [t + (1 - tau) * (o - t) for o, t in zip(online, target)]
    for got, want in zip(_params(model, "target"), expected):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(_params(model, "online"), online))  # the step moves no online weight


def test_a_run_counts_its_steps_and_trains_only_the_online_network():
    data = synthetic_data()
    method = create_method("byol", hidden=64, dim=16)
    trainer = Trainer(cpu_config(epochs=2), progress=False)
    run = trainer.fit(method, data.bundle)
    steps = sum(h.get("steps", trainer_steps(data)) for h in run.history if "probe" not in h)
    assert int(method.ema_step) == steps
    assert run.history[-1]["probe"]["converged"]
    for p in trainer.model.target_parameters():
        assert not p.requires_grad


def trainer_steps(data) -> int:
    from ltbench.data.samplers import steps_per_epoch

    return steps_per_epoch(len(data.split.train), cpu_config().batch_size)


def test_resuming_from_every_epoch_equals_the_uninterrupted_run(tmp_path):
    data = synthetic_data()
    config = cpu_config(epochs=2)
    params = {"hidden": 64, "dim": 16}
    store = CopyingStore(tmp_path / "run", "key")
    plain_run = Trainer(config, progress=False).fit(create_method("byol", **params), data.bundle, checkpoint=store)
    state = torch.load(store.copies[0], weights_only=True)
    assert "ema_step" in state["method"] and any(k.startswith("target_backbone.") for k in state["model"])
    for epoch, saved in enumerate(store.copies):
        resumed_store = CheckpointStore(tmp_path / f"resume{epoch}", "key")
        shutil.copyfile(saved, resumed_store.latest)
        resumed = Trainer(config, progress=False).fit(create_method("byol", **params), data.bundle,
                                                      checkpoint=resumed_store)
        assert resumed_store.resumed_from == resumed_store.latest
        assert_same_run(plain_run, resumed)
