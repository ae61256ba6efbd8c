"""SCL (Khosla et al., NeurIPS 2020): defaults, network, loss wiring, stages, joint variant, bf16."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ltbench.errors import LtbenchError
from ltbench.losses import supcon_loss
from ltbench.method import Batch, TrainInfo
from ltbench.methods.scl import SCL, SupConNetwork
from ltbench.stages import Probe, stage_bounds
from ltbench.models import build_backbone
from ltbench.registry import create_method
from ltbench.trainer import Trainer
from tests.helpers import cpu_config, synthetic_data

CPU = torch.device("cpu")


# Tiny tensors: thread start-up dominates (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _info(epochs=10, counts=(8, 4, 2)):
    return TrainInfo(class_counts=counts, class_names=tuple("abc"[: len(counts)]), epochs=epochs,
                     steps_per_epoch=1, device=CPU)


def test_defaults_are_documented():
    method = SCL()
    assert method.temperature == 0.1 and method.base_temperature is None  # T = T_base = 0.1
    assert method.contrast_mode == "all" and not method.joint
    # The classifier: the converged L-BFGS probe; main_linear.py's SGD evaluation as probe="sgd".
    assert (method.probe, method.probe_l2, method.probe_tolerance, method.probe_sampler) == ("lbfgs", 1e-3, 1e-5,
                                                                                           "instance")
    assert (method.probe_epochs, method.classifier_lr, method.classifier_weight_decay, method.probe_milestones) == (
        100, 0.1, 0.0, (60, 75, 90))


def test_stages_representation_over_the_whole_budget_then_linear_classifier():
    first, second = SCL().stages(_info(30))
    assert (first.epochs, first.samplers, first.trains, first.selectable) == (
        None, (("class_balanced", ("contrastive", "contrastive")),), ("backbone", "head"), False)
    assert (second.probe, second.trains, second.selectable) == (Probe(1e-3, 1e-5, 1000, "instance"), ("classifier",),
                                                                True)
    assert stage_bounds([first, second], 30) == [(0, 30), (30, 30)]
    first, second = SCL(probe="sgd", probe_epochs=7).stages(_info(30))
    assert (second.epochs, second.extra, second.samplers, second.trains, second.lr, second.weight_decay,
            second.lr_schedule, second.lr_milestones) == (
        7, True, (("instance", ("standard",)),), ("classifier",), 0.1, 0.0, "step", (60, 75, 90))
    assert stage_bounds([first, second], 30) == [(0, 30), (30, 37)]
    (joint,) = SCL(joint=True).stages(_info(30))
    assert joint.epochs is None and joint.trains is None and joint.selectable


def test_network_runs_both_views_as_one_batch():
    torch.manual_seed(0)
    model = SupConNetwork(build_backbone("small-cnn"), 3, dim=16).train()
    v1, v2 = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)
    features, embeddings = model(v1, v2)
    assert features.shape == (8, model.backbone.out_dim) and embeddings.shape == (4, 2, 16)
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(4, 2))
    # Row v·B + i of the 2B batch is view v of image i: the embeddings are its [B, 2, D] reshape.
    flat = model.head(features)
    torch.testing.assert_close(embeddings[:, 0], flat[:4])
    torch.testing.assert_close(embeddings[:, 1], flat[4:])
    assert model(v1).shape == (4, 3)


def test_representation_step_is_supcon_of_the_two_views_and_classifier_step_is_ce():
    torch.manual_seed(0)
    method = SCL(dim=16, probe="sgd", probe_epochs=2)
    info = _info(5)
    method.setup(info)
    model = method.build_model(build_backbone("small-cnn"), info)
    method.stages(info)
    labels = torch.tensor([0, 1, 1, 2])
    batch = Batch(views=[torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)], labels=labels,
                  indices=torch.arange(4))
    method.on_epoch_start(0)
    model.eval()  # BatchNorm with running statistics: the two forward passes agree
    loss = method.training_step(model, batch)
    _, embeddings = model(*batch.views)
    torch.testing.assert_close(loss, supcon_loss(embeddings, labels, temperature=0.1))
    method.on_epoch_start(4)
    assert not method.in_classifier_stage()
    method.on_epoch_start(5)  # the classifier stage, after the budget
    assert method.in_classifier_stage()
    single = Batch(views=[batch.views[0]], labels=labels, indices=torch.arange(4))
    torch.testing.assert_close(method.training_step(model, single), F.cross_entropy(model(batch.views[0]), labels))


def test_joint_variant_trains_the_classifier_on_detached_features():
    torch.manual_seed(0)
    method = SCL(dim=16, joint=True)
    info = _info(3)
    method.setup(info)
    model = method.build_model(build_backbone("small-cnn"), info)
    method.stages(info)
    method.on_epoch_start(0)
    batch = Batch(views=[torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)], labels=torch.tensor([0, 1, 1, 2]),
                  indices=torch.arange(4))
    loss, logs = method.training_step(model, batch)
    torch.testing.assert_close(loss, logs["contrastive"] + logs["ce"])
    # The CE term reaches the classifier only: its gradient w.r.t. the backbone comes from SupCon alone.
    model.zero_grad()
    _, embeddings = model(*batch.views)
    supcon_loss(embeddings, batch.labels, temperature=0.1).backward()
    supcon_grad = [p.grad.clone() for p in model.backbone.parameters()]
    model.zero_grad()
    method.training_step(model, batch)[0].backward()
    for a, b in zip(supcon_grad, [p.grad for p in model.backbone.parameters()]):
        torch.testing.assert_close(a, b)
    assert model.classifier.weight.grad is not None and model.classifier.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("kwargs", [dict(probe="x"), dict(probe_sampler="x"), dict(probe_l2=-1.0), dict(probe_epochs=0),
                                    dict(temperature=0.0), dict(contrast_mode="x")])
def test_bad_values_are_one_line(kwargs):
    with pytest.raises(LtbenchError):
        create_method("scl", **kwargs)


def test_fit_under_bfloat16_autocast_is_finite():
    data = synthetic_data()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        run = Trainer(cpu_config(epochs=2), progress=False).fit(create_method("scl"), data.bundle)
    assert all(math.isfinite(h["train_loss"]) for h in run.history) and run.best_epoch == 2  # the probe
