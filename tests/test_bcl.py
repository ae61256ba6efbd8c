"""BCL: BalSCL and LA-CE against naive float64 references (values and gradients, with an absent
class), the class-averaging divisors on a hand-worked case, and the network's data flow."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ltbench import create_method
from ltbench.method import Batch, TrainInfo
from ltbench.models import build_backbone
from ltbench.methods.bcl import (BCLNetwork, balanced_supcon_loss, bcl_class_weights, class_log_prior,
                                 logit_adjusted_cross_entropy)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------ naive float64 references


def naive_balscl(v1, v2, labels, centers, temperature):
    """BalSCL written from the spec, one anchor and one term at a time (float64 in, float64 out)."""
    rows = list(v1) + list(v2) + list(centers)
    row_labels = labels.tolist() * 2 + list(range(len(centers)))
    count = {j: row_labels.count(j) for j in range(len(centers))}
    total = 0.0
    anchors = 2 * len(labels)
    for i in range(anchors):
        denominator = 0.0
        for k in range(len(rows)):
            if k == i:
                continue
            w = count[row_labels[k]] - (1 if row_labels[k] == row_labels[i] else 0)
            denominator = denominator + torch.exp(rows[i] @ rows[k] / temperature) / w
        positives = [k for k in range(len(rows)) if k != i and row_labels[k] == row_labels[i]]
        term = sum(rows[i] @ rows[k] / temperature - torch.log(denominator) for k in positives)
        total = total - term / len(positives)
    return total / anchors


def naive_la_ce(logits, labels, counts, tau):
    prior = torch.tensor(counts, dtype=torch.float64) / sum(counts)
    total = 0.0
    for z, y in zip(logits, labels.tolist()):
        adjusted = z + tau * torch.log(prior)
        total = total - (adjusted[y] - torch.log(torch.exp(adjusted).sum()))
    return total / len(labels)


def _unit(*shape, seed):
    return torch.randn(*shape, generator=_gen(seed), dtype=torch.float64)


@pytest.mark.parametrize("labels,num_classes,temperature", [
    ([0, 0, 1, 2, 1, 0], 3, 0.07),   # every class present
    ([0, 2, 2, 0], 4, 0.1),          # classes 1 and 3 absent: only their centres
    ([1, 1, 1], 3, 0.5),             # one class in the batch
])
def test_balanced_supcon_matches_naive_float64(labels, num_classes, temperature) -> None:
    labels = torch.tensor(labels)
    raw = [_unit(len(labels), 5, seed=1).requires_grad_(), _unit(len(labels), 5, seed=2).requires_grad_(),
           _unit(num_classes, 5, seed=3).requires_grad_()]
    v1, v2, c = (F.normalize(t, dim=1) for t in raw)
    ref = naive_balscl(v1, v2, labels, c, temperature)
    ref_grads = torch.autograd.grad(ref, raw)

    raw32 = [t.detach().float().requires_grad_() for t in raw]
    v1, v2, c = (F.normalize(t, dim=1) for t in raw32)
    ours = balanced_supcon_loss(torch.stack([v1, v2], dim=1), labels, c, temperature)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-6)
    for g, r in zip(torch.autograd.grad(ours, raw32), ref_grads):
        torch.testing.assert_close(g.double(), r, rtol=1e-4, atol=1e-5)


def test_class_averaging_weights_hand_worked() -> None:
    # B = 3 with labels (0, 0, 1), C = 3 (class 2 absent). Views + centres per class:
    # n_0 = 4 + 1 = 5, n_1 = 2 + 1 = 3, n_2 = 0 + 1 = 1. Columns: v1 (0, 0, 1), v2 (0, 0, 1),
    # centres (0, 1, 2). A class-0 anchor divides other class-0 terms by 4, class-1 terms by 3 and
    # the class-2 centre by 1; a class-1 anchor divides class-0 terms by 5, class-1 by 2, class 2 by 1.
    # (The anchor's own column keeps n_y; it is excluded from the sum.)
    expected = torch.tensor([
        [5, 4, 3, 4, 4, 3, 4, 3, 1],
        [4, 5, 3, 4, 4, 3, 4, 3, 1],
        [5, 5, 3, 5, 5, 2, 5, 2, 1],
        [4, 4, 3, 5, 4, 3, 4, 3, 1],
        [4, 4, 3, 4, 5, 3, 4, 3, 1],
        [5, 5, 2, 5, 5, 3, 5, 2, 1],
    ], dtype=torch.float32)
    assert torch.equal(bcl_class_weights(torch.tensor([0, 0, 1]), 3), expected)


def test_class_averaging_balances_the_denominator() -> None:
    # All rows equal: every logit is 1/T. Class averaging makes E_i = C · exp(1/T) whatever the
    # class sizes, so every log-probability is −log C and the loss is log C (SupCon over the same
    # 2B + C rows would give log(2B + C − 1)).
    labels = torch.tensor([0, 0, 0, 0, 1])
    same = F.normalize(torch.ones(5), dim=0)
    loss = balanced_supcon_loss(same.expand(5, 2, 5), labels, same.expand(3, 5), temperature=0.07)
    assert loss.item() == pytest.approx(math.log(3), rel=1e-5)


@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_logit_adjusted_ce_matches_naive_float64(tau) -> None:
    counts = [50, 20, 5, 1]
    labels = torch.tensor([0, 0, 1, 0, 1])  # classes 2 and 3 absent
    logits = (30 * torch.tanh(_unit(5, 4, seed=4))).requires_grad_()
    ref = naive_la_ce(logits, labels, counts, tau)
    (ref_grad,) = torch.autograd.grad(ref, logits)
    ours_in = logits.detach().float().requires_grad_()
    ours = logit_adjusted_cross_entropy(ours_in, labels, class_log_prior(counts), tau)
    torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-6)
    (grad,) = torch.autograd.grad(ours, ours_in)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-4, atol=1e-6)


def test_class_log_prior() -> None:
    torch.testing.assert_close(class_log_prior([3, 1]), torch.tensor([math.log(0.75), math.log(0.25)]))
    with pytest.raises(ValueError, match="positive count"):
        class_log_prior([3, 0])


# ------------------------------------------------------------------ network and method


def _network(num_classes: int = 4) -> BCLNetwork:
    torch.manual_seed(0)
    return BCLNetwork(build_backbone("small-cnn"), num_classes, dim=16)


def test_three_views_are_one_backbone_batch() -> None:
    net = _network()
    sizes = []
    net.backbone.register_forward_hook(lambda m, inp, out: sizes.append(inp[0].shape[0]))
    views = [torch.randn(5, 3, 16, 16, generator=_gen(i)) for i in range(3)]
    logits, embeddings, centers = net(*views)
    assert sizes == [15]
    assert logits.shape == (5, 4) and embeddings.shape == (5, 2, 16) and centers.shape == (4, 16)
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(5, 2))
    # Logits are 30 × cosine; the centres are normalize(head_fc(W.T)).
    assert logits.abs().max() <= 30 + 1e-4
    torch.testing.assert_close(centers, net.head_fc(net.classifier.weight.T))
    # The embeddings of views 1, 2 are rows B..3B of one head pass (BatchNorm over all 3B).
    feats = net.backbone(torch.cat(views))
    torch.testing.assert_close(embeddings.transpose(0, 1).reshape(10, 16), net.head(feats)[5:])


def test_centres_are_learned_through_the_classifier_weights() -> None:
    net = _network()
    views = [torch.randn(6, 3, 16, 16, generator=_gen(i)) for i in range(3)]
    _, embeddings, centers = net(*views)
    loss = balanced_supcon_loss(embeddings, torch.tensor([0, 1, 1, 2, 0, 0]), centers)
    loss.backward()
    assert net.classifier.weight.grad.abs().sum() > 0  # not detached: BalSCL moves W
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.head_fc.parameters())


def test_training_step_is_the_weighted_sum_and_predict_is_scaled_cosine() -> None:
    method = create_method("bcl", alpha=2.0, beta=0.6, temperature=0.1)
    counts = (40, 10, 5, 2)
    info = TrainInfo(class_counts=counts, class_names=tuple("abcd"), epochs=1, steps_per_epoch=1,
                     device=torch.device("cpu"))
    method.setup(info)
    torch.testing.assert_close(method.log_prior, class_log_prior(counts))
    net = method.build_model(build_backbone("small-cnn"), info)
    views = [torch.randn(6, 3, 16, 16, generator=_gen(i)) for i in range(3)]
    labels = torch.tensor([0, 1, 1, 3, 0, 0])
    loss, logs = method.training_step(net, Batch(views=views, labels=labels, indices=torch.arange(6)))
    logits, embeddings, centers = net(*views)  # train mode: BatchNorm on batch statistics, the same values
    expected = (2.0 * logit_adjusted_cross_entropy(logits, labels, class_log_prior(counts))
                + 0.6 * balanced_supcon_loss(embeddings, labels, centers, 0.1))
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(logs["la_ce"], logit_adjusted_cross_entropy(logits, labels, class_log_prior(counts)))
    net.eval()
    x = torch.randn(3, 3, 16, 16, generator=_gen(9))
    feats = net.backbone(x)
    torch.testing.assert_close(method.predict(net, x),
                               30 * F.normalize(feats, dim=1) @ F.normalize(net.classifier.weight, dim=0))


def test_defaults_are_the_released_imagenet_ones() -> None:
    params = create_method("bcl").get_params()
    assert params == {"alpha": 1.0, "beta": 0.35, "temperature": 0.07, "tau": 1.0, "scale": 30.0, "dim": 128}
    assert type(create_method("bcl")).views == ("randaugment", "contrastive", "contrastive")
