"""rotation_hashing: its losses against naive float64 formulas, its views, HDCSA, the training step."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ltbench import create_method
from ltbench.errors import LtbenchError
from ltbench.method import Batch, TrainInfo
from ltbench.models import AttendedNorm, DilatedSpatialAttention, add_spatial_attention, build_backbone
from ltbench.methods.rotation_hashing import (HashNetwork, RotationHashing, batch_frequency_ce, binary_codes,
                                              cauchy_rotation_invariance_loss, rotated_views)


# ----------------------------------------------------------------------------- naive float64

def naive_cri(codes, eps):
    b, bits = len(codes[0]), len(codes[0][0])
    total = 0.0
    for k in range(len(codes)):
        s = 0.0
        for i in range(b):
            for j in range(bits):
                mean = sum(u[i][j] for u in codes) / len(codes)
                s += math.log(1.0 + abs(codes[k][i][j] - mean) / eps)
        total += s / (b * bits)
    return total


def naive_bf_ce(logits, labels, num_classes):
    n = [sum(1 for y in labels if y == c) for c in range(num_classes)]
    num, den = 0.0, 0.0
    for z, y in zip(logits, labels):
        lse = math.log(sum(math.exp(v) for v in z))
        w = n[y] / len(labels)
        num += w * (lse - z[y])
        den += w
    return num / den


def _grad(fn, *tensors):
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    value = fn(*leaves)
    value.backward()
    return value.detach(), [t.grad for t in leaves]


def _numeric_grad(fn, values, h=1e-6):
    """Central differences of a float64 python function over a nested list."""
    flat = [(i, j) for i in range(len(values)) for j in range(len(values[0]))]
    grads = [[0.0] * len(values[0]) for _ in values]
    for i, j in flat:
        up = [row[:] for row in values]; up[i][j] += h
        dn = [row[:] for row in values]; dn[i][j] -= h
        grads[i][j] = (fn(up) - fn(dn)) / (2 * h)
    return grads


def test_cri_matches_the_naive_formula_values_and_gradients():
    torch.manual_seed(0)
    codes = [torch.rand(3, 4, dtype=torch.float64) for _ in range(4)]
    value, grads = _grad(lambda *u: cauchy_rotation_invariance_loss(*u, epsilon=0.5), *codes)
    lists = [u.tolist() for u in codes]
    assert value.item() == pytest.approx(naive_cri(lists, 0.5), rel=1e-12)
    for k in range(4):
        def f(view, k=k):
            return naive_cri([view if m == k else lists[m] for m in range(4)], 0.5)
        torch.testing.assert_close(grads[k], torch.tensor(_numeric_grad(f, lists[k]), dtype=torch.float64),
                                   rtol=1e-5, atol=1e-7)
    # epsilon is a parameter; float32 input agrees with float64
    assert cauchy_rotation_invariance_loss(*(u.float() for u in codes), epsilon=0.1).item() == pytest.approx(
        naive_cri(lists, 0.1), rel=1e-5)


def test_identical_views_give_zero_loss_and_zero_gradient():
    u = torch.rand(3, 4, dtype=torch.float64)
    value, grads = _grad(lambda *v: cauchy_rotation_invariance_loss(*v), u, u, u, u)
    assert value.item() == 0.0
    assert all(torch.count_nonzero(g) == 0 for g in grads)


@pytest.mark.parametrize("labels", [[0, 0, 1, 2, 2, 2, 0, 1], [2, 2, 2, 2], [1, 3, 3, 1, 1]],
                         ids=["absent-class-3", "single-class", "absent-0-and-2"])
def test_batch_frequency_ce_matches_the_naive_formula(labels):
    torch.manual_seed(1)
    logits = torch.randn(len(labels), 4, dtype=torch.float64)
    y = torch.tensor(labels)
    value, (grad,) = _grad(lambda z: batch_frequency_ce(z, y, 4), logits)
    assert value.item() == pytest.approx(naive_bf_ce(logits.tolist(), labels, 4), rel=1e-12)
    numeric = _numeric_grad(lambda z: naive_bf_ce(z, labels, 4), logits.tolist())
    torch.testing.assert_close(grad, torch.tensor(numeric, dtype=torch.float64), rtol=1e-5, atol=1e-8)
    if len(set(labels)) == 1:
        assert value.item() == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-12)


def test_batch_frequency_weights_up_weight_frequent_classes():
    # The spec's example: 16 labels, classes 6 and 7 absent.
    labels = torch.tensor([0] * 5 + [1] * 4 + [2] * 3 + [3] * 2 + [4, 5])
    counts = torch.bincount(labels, minlength=8).double() / 16
    assert counts.tolist() == [.3125, .25, .1875, .125, .0625, .0625, 0, 0]
    logits = torch.randn(16, 8, dtype=torch.float64)
    expected = F.cross_entropy(logits, labels, weight=counts)
    assert batch_frequency_ce(logits, labels, 8).item() == pytest.approx(expected.item(), rel=1e-12)


def test_the_four_views_equal_the_official_construction_and_torch_rot90():
    x = torch.randn(2, 3, 5, 5)

    def official_rot90(t):  # train.py: transpose(index_select(x, 3, reversed), 2, 3)
        return torch.transpose(torch.index_select(t, 3, torch.arange(t.shape[3] - 1, -1, -1)), 2, 3)

    views = rotated_views(x)
    expected = [x, official_rot90(x), official_rot90(official_rot90(x)),
                official_rot90(official_rot90(official_rot90(x)))]
    for k, (v, e) in enumerate(zip(views, expected)):
        assert torch.equal(v, e) and torch.equal(v, torch.rot90(x, k, dims=(2, 3))), k
    with pytest.raises(LtbenchError, match="square"):
        rotated_views(torch.randn(1, 3, 3, 5))


def test_binary_codes_are_sign_of_u_minus_half():
    assert binary_codes(torch.tensor([0.2, 0.5, 0.9])).tolist() == [-1.0, 0.0, 1.0]


# ----------------------------------------------------------------------------- HDCSA

def test_hdcsa_map_shape_and_range():
    attention = DilatedSpatialAttention(64)
    a = attention(torch.randn(2, 64, 9, 11))
    assert a.shape == (2, 1, 9, 11) and bool(((a > 0) & (a < 1)).all())
    # channels // 16 reduced width; the 7x7 spatial conv has no bias
    assert attention.gate_s[0].out_channels == 4 and attention.conv1.bias is None
    with pytest.raises(ValueError, match="reduction_ratio"):
        DilatedSpatialAttention(8)


def test_resnet18_with_hdcsa_has_the_official_parameter_count_and_placement():
    plain = build_backbone("resnet18")
    n_plain = sum(p.numel() for p in plain.parameters())
    assert not any(isinstance(m, AttendedNorm) for m in plain.modules())  # default build unchanged
    # The spec's counts with 4 classes and 16 bits: 11,184,788 without HDCSA, 11,304,492 with.
    assert sum(p.numel() for p in HashNetwork(plain, 4, 16).parameters()) == 11_184_788
    attended = add_spatial_attention(plain)  # in place
    assert sum(p.numel() for p in HashNetwork(attended, 4, 16).parameters()) == 11_304_492
    assert sum(p.numel() for p in attended.parameters()) - n_plain == 119_704
    blocks = [m for layer in ("layer1", "layer2", "layer3", "layer4") for m in getattr(attended.body, layer)]
    assert len(blocks) == 8 and all(isinstance(b.bn2, AttendedNorm) for b in blocks)
    assert [b.bn2.attention.gate_s[0].out_channels for b in blocks] == [4, 4, 8, 8, 16, 16, 32, 32]
    with torch.no_grad():
        assert attended.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 512)


def test_bottleneck_and_small_cnn_placement():
    r50 = add_spatial_attention(build_backbone("resnet50"))
    blocks = [m for layer in ("layer1", "layer2", "layer3", "layer4") for m in getattr(r50.body, layer)]
    assert all(isinstance(b.bn3, AttendedNorm) and not isinstance(b.bn2, AttendedNorm) for b in blocks)
    cnn = add_spatial_attention(build_backbone("small-cnn"))
    kinds = [type(m).__name__ for m in cnn.body]
    assert kinds[:3] == ["Conv2d", "AttendedNorm", "ReLU"] and kinds.count("AttendedNorm") == 4
    assert cnn(torch.randn(2, 3, 16, 16)).shape == (2, cnn.out_dim)
    trunk, tail = cnn.split_last_stage()  # the other capability still works
    assert tail(trunk(torch.randn(2, 3, 16, 16))).shape == (2, cnn.out_dim)


# ----------------------------------------------------------------------------- the method

def _info(num_classes=3):
    return TrainInfo(class_counts=(10, 5, 2)[:num_classes], class_names=("a", "b", "c")[:num_classes],
                     epochs=2, steps_per_epoch=1, device=torch.device("cpu"))


def test_training_step_runs_five_train_mode_passes_and_combines_the_losses():
    torch.manual_seed(0)
    method = create_method("rotation_hashing")
    model = method.build_model(build_backbone("small-cnn"), _info())
    calls = []
    model.backbone.register_forward_hook(lambda m, i, o: calls.append(m.training))
    x = torch.randn(6, 3, 16, 16)
    labels = torch.tensor([0, 0, 1, 2, 0, 1])
    loss, logs = method.training_step(model.train(), Batch(views=[x], labels=labels, indices=torch.arange(6)))
    assert calls == [True] * 5
    assert loss.item() == pytest.approx((logs["ce"] + 0.5 * logs["cri"]).item(), rel=1e-6)
    loss.backward()
    assert model.backbone.body[1].attention.conv1.weight.grad is not None
    with torch.no_grad():
        logits, u = model.eval().encode(x)
    assert logits.shape == (6, 3) and u.shape == (6, 16) and bool(((u > 0) & (u < 1)).all())


def test_without_attention_is_the_plain_hashing_network():
    method = create_method("rotation_hashing", attention=False, bits=12)
    model = method.build_model(build_backbone("small-cnn"), _info())
    assert not any(isinstance(m, AttendedNorm) for m in model.modules())
    assert model.hash_layer.out_features == 12
    with pytest.raises(LtbenchError):
        create_method("rotation_hashing", epsilon=0.0)


def test_cri_is_bit_identical_to_the_official_op_order_in_float32():
    torch.manual_seed(3)
    u1, u2, u3, u4 = (torch.rand(64, 16) for _ in range(4))
    # network/LossFunction.py, rotation_invariance_loss(0.5).forward(u1, u2, u3, u4), transcribed
    u_mean = (u1 + u2 + u3 + u4) / 4.0
    losses = [torch.mean(torch.log(1 + torch.abs(u - u_mean) / 0.5)) for u in (u1, u2, u3, u4)]
    official = torch.mean(losses[0] + losses[1] + losses[2] + losses[3])
    assert torch.equal(cauchy_rotation_invariance_loss(u1, u2, u3, u4, epsilon=0.5), official)


def test_hdcsa_parameter_names_are_the_official_ones():
    names = list(DilatedSpatialAttention(64).state_dict())
    assert names[:3] == ["gate_s.gate_s_conv_reduce0.weight", "gate_s.gate_s_conv_reduce0.bias",
                         "gate_s.gate_s_bn_reduce0.weight"]
    assert "gate_s.gate_s_conv_di_2.weight" in names and "gate_s.gate_s_bn_di_2.running_var" in names
    assert names[-3:] == ["gate_s.gate_s_conv_final.weight", "gate_s.gate_s_conv_final.bias", "conv1.weight"]


def test_class_totals_of_the_batch_frequency_ce_grow_with_the_square_of_the_class_count():
    """Why rotation_hashing's accuracy row is a retrieval method's (``retrieval_method``): each sample
    weighs the count of its class in the batch, so a class of 16 outweighs a class of 2 by (16/2)² = 64."""
    labels = torch.tensor([0] * 16 + [9] * 2)
    logits = torch.zeros(len(labels), 10, dtype=torch.float64, requires_grad=True)
    batch_frequency_ce(logits, labels, 10).backward()
    # d loss / d logit_{i, y_i} = −(1 − 1/C) · w_i / Σ_j w_j at zero logits: the sample's share of the loss.
    share = -logits.grad[torch.arange(len(labels)), labels] / (1 - 1 / 10)
    totals = torch.stack([share[labels == 0].sum(), share[labels == 9].sum()])
    assert totals.sum().item() == pytest.approx(1.0, rel=1e-12)
    assert (totals[0] / totals[1]).item() == pytest.approx(64.0, rel=1e-12)
    assert RotationHashing.retrieval_method is True
    from ltbench.registry import get_method_class, list_methods

    marked = [name for name in list_methods() if getattr(get_method_class(name), "retrieval_method", False)]
    assert marked == ["rotation_hashing"]
