"""TSC (Li et al., CVPR 2022): targets, Hungarian assignment, both variants' losses, stages, bf16."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ltbench.losses import supcon_loss
from ltbench.method import Batch, TrainInfo
from ltbench.methods.tsc import (TSC, MomentumSupConNetwork, assign_targets, optimised_targets,
                                 simplex_targets, uniform_targets, uniformity_loss)
from ltbench.models import build_backbone
from ltbench.registry import create_method
from ltbench.trainer import Trainer
from tests.helpers import cpu_config, synthetic_data

CPU = torch.device("cpu")


# Tiny tensors: thread start-up dominates (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _info(epochs=10, counts=(8, 4, 2)):
    return TrainInfo(class_counts=counts, class_names=tuple("abcdefgh"[: len(counts)]), epochs=epochs,
                     steps_per_epoch=1, device=CPU)


def _min_angle_deg(points):
    cos = points @ points.T
    cos.fill_diagonal_(-1.0)
    return math.degrees(math.acos(cos.max().clamp(-1, 1).item()))


# --- targets -----------------------------------------------------------------------------------
@pytest.mark.parametrize("classes, dim", [(2, 1), (3, 2), (7, 128), (8, 7), (10, 9), (5, 16)])
def test_simplex_pairwise_cosines_are_minus_one_over_c_minus_one(classes, dim):
    t = uniform_targets(classes, dim)
    assert t.shape == (classes, dim) and t.dtype == torch.float64
    torch.testing.assert_close(t.norm(dim=1), torch.ones(classes, dtype=torch.float64))
    gram = t @ t.T
    off = gram[~torch.eye(classes, dtype=torch.bool)]
    torch.testing.assert_close(off, torch.full_like(off, -1.0 / (classes - 1)), rtol=0, atol=1e-12)
    torch.testing.assert_close(t.sum(dim=0), torch.zeros(dim, dtype=torch.float64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("classes, dim, best_angle", [(6, 2, 60.0), (4, 2, 90.0), (12, 3, 63.43)])
def test_optimised_targets_are_spread_when_dim_is_below_c_minus_one(classes, dim, best_angle):
    # Optimal minimum angles: regular hexagon / square on the circle, icosahedron on the sphere.
    t = uniform_targets(classes, dim)
    assert t.shape == (classes, dim)
    torch.testing.assert_close(t.norm(dim=1), torch.ones(classes, dtype=torch.float64))
    assert _min_angle_deg(t) > 0.9 * best_angle
    start = F.normalize(torch.randn(classes, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0)), dim=1)
    assert uniformity_loss(t) < uniformity_loss(start)
    if classes == 4:
        torch.testing.assert_close(optimised_targets(classes, dim), t)  # deterministic


def test_simplex_rejects_too_few_dimensions():
    with pytest.raises(ValueError):
        simplex_targets(5, 3)


# --- assignment --------------------------------------------------------------------------------
def test_hungarian_assignment_is_a_permutation_that_recovers_a_hidden_matching():
    targets = uniform_targets(6, 8).float()
    hidden = torch.tensor([3, 0, 5, 1, 4, 2])
    noisy = F.normalize(targets[hidden] + 0.1 * torch.randn(6, 8, generator=torch.Generator().manual_seed(1)), dim=1)
    perm = assign_targets(noisy, targets)
    assert perm.dtype == torch.long and sorted(perm.tolist()) == list(range(6))
    assert perm.tolist() == hidden.tolist()
    # Random centroids: still a permutation, and no other permutation scores higher (brute force).
    import itertools

    centroids = F.normalize(torch.randn(5, 4, generator=torch.Generator().manual_seed(2)), dim=1)
    t5 = uniform_targets(5, 4).float()
    perm = assign_targets(centroids, t5)
    assert sorted(perm.tolist()) == list(range(5))
    score = (centroids @ t5.T).double()
    best = max(sum(score[c, p[c]] for c in range(5)) for p in itertools.permutations(range(5)))
    assert abs(sum(score[c, perm[c]] for c in range(5)) - best) < 1e-9


# --- variant supcon ----------------------------------------------------------------------------
def test_supcon_variant_appends_repeated_targets_as_two_view_samples():
    method = TSC(dim=8, target_repeat=3)
    method.setup(_info())
    emb = F.normalize(torch.randn(4, 2, 8, generator=torch.Generator().manual_seed(3)), dim=-1)
    labels = torch.tensor([0, 0, 2, 1])
    extra_labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    extra = method.targets[extra_labels][:, None, :].expand(-1, 2, -1)
    expected = supcon_loss(torch.cat([emb, extra]), torch.cat([labels, extra_labels]), temperature=0.07,
                           base_temperature=0.07)
    torch.testing.assert_close(method.representation_loss(emb, labels), expected)
    assert (method.temperature, method.base_temperature, TSC().target_repeat) == (0.07, 0.07, 25)


# --- variant moco ------------------------------------------------------------------------------
def naive_moco_loss(q, k, labels, queue, queue_labels, targets, assignment, tr, temperature, weight):
    """Float64 loop over anchors of the spec's KCL/TSC formula (methods.md, TSC (b))."""
    b = q.shape[0]
    # columns: [k_i, queue_0 .. queue_{K-1}, target_0 x tr, target_1 x tr, ...]
    loss_class, loss_target = q.new_zeros(()), q.new_zeros(())
    for i in range(b):
        keys = [k[i]] + [queue[j] for j in range(queue.shape[0])] + [targets[c] for c in range(targets.shape[0])
                                                                     for _ in range(tr)]
        logits = torch.stack([q[i] @ key / temperature for key in keys])
        log_z = torch.log(sum(torch.exp(x) for x in logits))
        positives = [0] + [1 + j for j in range(queue.shape[0]) if int(queue_labels[j]) == int(labels[i])]
        assigned = int(assignment[int(labels[i])])
        target_cols = [1 + queue.shape[0] + assigned * tr + r for r in range(tr)]
        m = len(positives) + tr
        loss_class = loss_class - sum(logits[p] - log_z for p in positives) / m
        loss_target = loss_target - sum(logits[p] - log_z for p in target_cols) / m
    return loss_class / b, weight * loss_target / b


def test_moco_loss_matches_a_float64_loop_values_and_gradients():
    torch.manual_seed(4)
    method = TSC(variant="moco", dim=6, target_repeat=2, queue_size=7, target_weight=0.2)
    method.setup(_info(counts=(5, 3, 2, 1)))
    method.queue_labels.copy_(torch.tensor([0, 1, -1, 1, 3, 0, -1]))  # class 2 absent from the queue
    q = F.normalize(torch.randn(5, 6, dtype=torch.float64), dim=1).requires_grad_(True)
    k = F.normalize(torch.randn(5, 6, dtype=torch.float64), dim=1)
    labels = torch.tensor([0, 2, 1, 0, 2])  # class 3 absent from the batch
    assignment = torch.tensor([2, 0, 3, 1])
    method.queue = method.queue.double()
    method.targets = method.targets.double()
    got = method.moco_loss(q, k, labels, assignment)
    q64 = q.detach().clone().requires_grad_(True)
    ref = naive_moco_loss(q64, k, labels, method.queue, method.queue_labels, method.targets, assignment, 2, 0.07, 0.2)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b)
    sum(got).backward()
    sum(ref).backward()
    torch.testing.assert_close(q.grad, q64.grad)


def test_moco_step_updates_centroids_before_assigning_and_enqueues_keys():
    torch.manual_seed(5)
    method = TSC(variant="moco", dim=8, target_repeat=2, queue_size=6)
    info = _info(counts=(5, 3, 2))
    method.setup(info)
    model = method.build_model(build_backbone("small-cnn"), info)
    assert isinstance(model, MomentumSupConNetwork)
    assert not any(p.requires_grad for p in model.key_backbone.parameters())
    method.stages(info)
    method.on_epoch_start(0)
    before = method.centroids.clone()
    batch = Batch(views=[torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)], labels=torch.tensor([0, 0, 2, 2]),
                  indices=torch.arange(4))
    model.eval()
    with torch.no_grad():
        q = model.head(model.backbone(batch.views[0]))
    loss, logs = method.training_step(model, batch)
    assert math.isfinite(loss.item()) and set(logs) == {"loss_class", "loss_target"}
    for c in (0, 2):
        expected = F.normalize(0.9 * before[c] + 0.1 * F.normalize(q[batch.labels == c].mean(0), dim=0), dim=0)
        torch.testing.assert_close(method.centroids[c], expected)
    torch.testing.assert_close(method.centroids[1], before[1])  # absent class: unchanged
    assert method.queue_labels.tolist()[:4] == [0, 0, 2, 2] and int(method.queue_ptr) == 4
    method.training_step(model, batch)  # wraps around the 6-slot queue
    assert method.queue_labels.tolist() == [2, 2, 2, 2, 0, 0] and int(method.queue_ptr) == 2


@pytest.mark.parametrize("kwargs", [dict(), dict(variant="moco", queue_size=64)])
def test_fit_under_bfloat16_autocast_is_finite(kwargs):
    data = synthetic_data()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        run = Trainer(cpu_config(epochs=2), progress=False).fit(create_method("tsc", **kwargs), data.bundle)
    assert all(math.isfinite(h["train_loss"]) for h in run.history) and run.best_epoch == 2  # the probe
