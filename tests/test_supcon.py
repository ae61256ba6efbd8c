"""The supervised-contrastive kernel (ltbench.losses.supcon_loss) against a naive float64 double loop
written from the formula of HobbitLong/SupContrast's SupConLoss (../shared/spec/methods.md, SCL)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ltbench.errors import LtbenchError
from ltbench.losses import supcon_loss


def naive_supcon(features, labels, temperature, base_temperature, contrast_mode="all"):
    """features [N, V, D] float64 (already normalised); labels list of N ids (None: instance ids)."""
    n, views, _ = features.shape
    ids = list(range(n)) if labels is None else [int(x) for x in labels]
    rows = [(v, i) for v in range(views) for i in range(n)]  # view-major
    anchors = rows if contrast_mode == "all" else [(0, i) for i in range(n)]
    total = features.new_zeros(())
    for a_pos, (va, ia) in enumerate(anchors):
        za = features[ia, va]
        denominator = features.new_zeros(())
        for k_pos, (vk, ik) in enumerate(rows):
            if k_pos != a_pos:
                denominator = denominator + torch.exp(za @ features[ik, vk] / temperature)
        terms, count = features.new_zeros(()), 0
        for k_pos, (vk, ik) in enumerate(rows):
            if k_pos != a_pos and ids[ik] == ids[ia]:
                terms = terms + (za @ features[ik, vk] / temperature - torch.log(denominator))
                count += 1
        total = total + (-(temperature / base_temperature) * terms / max(count, 1))
    return total / len(anchors)


def _features(n, views, dim, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, views, dim, generator=g, dtype=torch.float64), dim=-1)


def _check(features, labels, ref_labels, extra=None, extra_labels=None, **kw):
    """Value and gradient of the kernel (float32) vs the float64 loop, on the same inputs."""
    x = features.clone().float().requires_grad_(True)
    e = None if extra is None else extra.clone().float().requires_grad_(True)
    loss = supcon_loss(x, labels, extra_features=e, extra_labels=extra_labels, **kw)
    loss.backward()
    x64 = features.clone().requires_grad_(True)
    e64 = None if extra is None else extra.clone().requires_grad_(True)
    all64 = x64 if e64 is None else torch.cat([x64, e64])
    temperature = kw.get("temperature", 0.1)
    base = kw.get("base_temperature") or temperature
    ref = naive_supcon(all64, ref_labels, temperature, base, kw.get("contrast_mode", "all"))
    ref.backward()
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-4, atol=1e-5)
    if e is not None:
        torch.testing.assert_close(e.grad.double(), e64.grad, rtol=1e-4, atol=1e-5)
    return loss


@pytest.mark.parametrize("mode", ["all", "one"])
def test_supervised_two_views_with_a_single_sample_class_and_an_absent_class(mode):
    # Classes 0..4 of which 3 is absent; class 4 has a single sample (its positive is its other view).
    labels = torch.tensor([0, 0, 1, 2, 1, 0, 4])
    _check(_features(7, 2, 5, 0), labels, labels.tolist(), temperature=0.1, contrast_mode=mode)


def test_one_view_anchor_without_positive_adds_zero_but_counts():
    labels = torch.tensor([0, 0, 1, 2])  # V = 1: samples of classes 1 and 2 have no positive
    feats = _features(4, 1, 3, 1)
    loss = _check(feats, labels, labels.tolist(), temperature=0.2)
    # By hand: only the two class-0 anchors contribute; the mean divides by all 4 anchors.
    z = feats[:, 0]
    logits = z @ z.T / 0.2
    lp = [logits[a, b] - torch.logsumexp(logits[a][torch.arange(4) != a], 0) for a, b in ((0, 1), (1, 0))]
    torch.testing.assert_close(loss.double(), -(lp[0] + lp[1]) / 4, rtol=1e-5, atol=1e-6)


def test_temperature_and_base_temperature():
    labels = torch.tensor([0, 1, 1, 0, 2])
    feats = _features(5, 2, 4, 2)
    _check(feats, labels, labels.tolist(), temperature=0.1, base_temperature=0.07)
    plain = supcon_loss(feats.float(), labels, temperature=0.1)
    scaled = supcon_loss(feats.float(), labels, temperature=0.1, base_temperature=0.07)
    torch.testing.assert_close(scaled, plain * (0.1 / 0.07))


def test_extra_target_rows_are_samples_and_anchors():
    # TSC: C = 3 targets, each repeated twice, both views equal to the target.
    labels = torch.tensor([0, 2, 2, 1, 0])
    targets = F.normalize(torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3)), dim=1)
    extra_labels = torch.arange(3).repeat(2)
    extra = targets[extra_labels][:, None, :].expand(-1, 2, -1).contiguous()
    _check(_features(5, 2, 4, 4), labels, labels.tolist() + extra_labels.tolist(), extra, extra_labels,
           temperature=0.1, base_temperature=0.07)


def test_no_labels_is_nt_xent():
    feats = _features(6, 2, 5, 5)
    _check(feats, None, None, temperature=0.5)
    # NT-Xent by hand for anchor (view 0, sample 0): positive = (view 1, sample 0) = row 6.
    z = torch.cat([feats[:, 0], feats[:, 1]])
    logits = z @ z.T / 0.5
    manual = torch.stack([logits[a, (a + 6) % 12] - torch.logsumexp(logits[a][torch.arange(12) != a], 0)
                          for a in range(12)])
    torch.testing.assert_close(supcon_loss(feats, None, temperature=0.5).double(), -manual.mean(),
                               rtol=1e-6, atol=1e-6)


def test_bfloat16_autocast_is_computed_in_float32():
    feats = _features(6, 2, 8, 6).float()
    labels = torch.tensor([0, 1, 0, 1, 2, 2])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = supcon_loss(feats.bfloat16(), labels)
    assert loss.dtype == torch.float32 and math.isfinite(loss.item())


def test_bad_input_is_one_clear_error():
    feats = _features(4, 2, 3, 7).float()
    with pytest.raises(LtbenchError, match="contrast_mode"):
        supcon_loss(feats, torch.tensor([0, 1, 0, 1]), contrast_mode="both")
    with pytest.raises(LtbenchError, match=r"\[B, V, D\]"):
        supcon_loss(feats[:, 0], torch.tensor([0, 1, 0, 1]))
    with pytest.raises(LtbenchError, match="extra_labels"):
        supcon_loss(feats, torch.tensor([0, 1, 0, 1]), extra_features=feats)
