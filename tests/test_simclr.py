"""SimCLR + focal linear probe: NT-Xent without labels on instance batches, then focal on the frozen encoder."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ltbench.losses import supcon_loss
from ltbench.method import Batch, TrainInfo
from ltbench.methods.focal import focal_loss
from ltbench.methods.simclr import SimCLR
from ltbench.models import build_backbone
from ltbench.registry import create_method
from ltbench.trainer import Trainer
from tests.helpers import cpu_config, synthetic_data

CPU = torch.device("cpu")


# Tiny tensors: thread start-up dominates (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _info(epochs=10):
    return TrainInfo(class_counts=(8, 4, 2), class_names=("a", "b", "c"), epochs=epochs, steps_per_epoch=1,
                     device=CPU)


def test_stages_instance_batches_two_contrastive_views_then_probe():
    first, second = SimCLR().stages(_info(30))
    assert first.samplers == (("instance", ("contrastive", "contrastive")),) and not first.selectable
    assert (first.epochs, second.epochs, second.trains, second.probe.sampler) == (None, None, ("classifier",),
                                                                                  "instance")


def test_representation_loss_ignores_labels_and_probe_is_focal():
    torch.manual_seed(0)
    method = SimCLR(dim=16, probe="sgd", probe_epochs=1)
    info = _info(5)
    method.setup(info)
    model = method.build_model(build_backbone("small-cnn"), info).eval()
    method.stages(info)
    views = [torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)]
    method.on_epoch_start(0)
    a = method.training_step(model, Batch(views=views, labels=torch.tensor([0, 0, 1, 1]), indices=torch.arange(4)))
    b = method.training_step(model, Batch(views=views, labels=torch.tensor([2, 1, 0, 2]), indices=torch.arange(4)))
    torch.testing.assert_close(a, b)
    _, embeddings = model(*views)
    torch.testing.assert_close(a, supcon_loss(embeddings, None, temperature=0.1))
    method.on_epoch_start(5)  # the SGD probe's epoch after the budget
    labels = torch.tensor([0, 2, 1, 1])
    probe = method.training_step(model, Batch(views=views[:1], labels=labels, indices=torch.arange(4)))
    torch.testing.assert_close(probe, focal_loss(model(views[0]), labels, 2.0))
    assert not torch.allclose(probe, F.cross_entropy(model(views[0]), labels))


def test_fit_under_bfloat16_autocast_is_finite():
    data = synthetic_data()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        run = Trainer(cpu_config(epochs=2), progress=False).fit(create_method("simclr"), data.bundle)
    assert all(math.isfinite(h["train_loss"]) for h in run.history) and run.best_epoch == 2  # the probe
