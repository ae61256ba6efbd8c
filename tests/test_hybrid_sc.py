"""Hybrid-SC: the loss against a naive float64 implementation (values and gradients, with an absent
class), the α schedule, and the streams (two views of instance batches, one view of class-balanced
batches) in a real fit."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ltbench import create_method
from ltbench.methods.hybrid_sc import HybridSC, hybrid_alpha, hybrid_sc_loss
from ltbench.trainer import Trainer
from tests.helpers import cpu_config, synthetic_data


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def naive_supcon(v1, v2, labels, temperature):
    """SupCon over the 2B views (all anchors), from the formula, no T/T_base factor (float64)."""
    rows = list(v1) + list(v2)
    row_labels = labels.tolist() * 2
    total = 0.0
    for i in range(len(rows)):
        denominator = sum(torch.exp(rows[i] @ rows[k] / temperature) for k in range(len(rows)) if k != i)
        positives = [k for k in range(len(rows)) if k != i and row_labels[k] == row_labels[i]]
        total = total - sum(rows[i] @ rows[k] / temperature - torch.log(denominator) for k in positives) / len(positives)
    return total / len(rows)


def naive_ce(logits, labels):
    return -sum(z[y] - torch.log(torch.exp(z).sum()) for z, y in zip(logits, labels.tolist())) / len(labels)


@pytest.mark.parametrize("alpha", [1.0, 0.75, 0.19])
def test_loss_matches_naive_float64(alpha) -> None:
    labels = torch.tensor([0, 2, 2, 0, 0])          # class 1 (and 3) absent from the SC batch
    balanced_labels = torch.tensor([3, 1, 2, 3])    # class 0 absent from the CE batch
    raw = [torch.randn(5, 6, generator=_gen(1), dtype=torch.float64).requires_grad_(),
           torch.randn(5, 6, generator=_gen(2), dtype=torch.float64).requires_grad_(),
           (3 * torch.randn(4, 4, generator=_gen(3), dtype=torch.float64)).requires_grad_()]
    v1, v2 = F.normalize(raw[0], dim=1), F.normalize(raw[1], dim=1)
    ref = alpha * naive_supcon(v1, v2, labels, 0.1) + (1 - alpha) * naive_ce(raw[2], balanced_labels)
    ref_grads = torch.autograd.grad(ref, raw)

    raw32 = [t.detach().float().requires_grad_() for t in raw]
    embeddings = torch.stack([F.normalize(raw32[0], dim=1), F.normalize(raw32[1], dim=1)], dim=1)
    loss, sc, ce = hybrid_sc_loss(embeddings, labels, raw32[2], balanced_labels, alpha, temperature=0.1)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sc.double(), naive_supcon(v1, v2, labels, 0.1), rtol=1e-5, atol=1e-6)
    for g, r in zip(torch.autograd.grad(loss, raw32), ref_grads):
        torch.testing.assert_close(g.double(), r, rtol=1e-4, atol=1e-5)


def test_alpha_schedule_uses_the_zero_indexed_epoch() -> None:
    assert hybrid_alpha(0, 10) == 1.0
    assert hybrid_alpha(5, 10) == 0.75
    assert hybrid_alpha(9, 10) == pytest.approx(0.19)
    assert hybrid_alpha(9, 10, offset=1) == 0.0  # the 1-indexed reading
    with pytest.raises(ValueError):
        hybrid_alpha(0, 0)


def test_defaults() -> None:
    assert create_method("hybrid_sc").get_params() == {"temperature": 0.1, "dim": 128, "alpha_offset": 0}


class _Recording(HybridSC):
    """Hybrid-SC that records what each training step receives."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.seen: list[tuple] = []

    def training_step(self, model, instance, balanced):
        self.seen.append((self.epoch, self.alpha(), len(instance.views), len(balanced.views),
                          torch.bincount(balanced.labels, minlength=4)))
        return super().training_step(model, instance, balanced)


@pytest.mark.slow
def test_streams_views_and_alpha_in_a_fit() -> None:
    data = synthetic_data()
    method = _Recording()
    run = Trainer(cpu_config(epochs=2), progress=False).fit(method, data.bundle)
    assert {(v_inst, v_bal) for _, _, v_inst, v_bal, _ in method.seen} == {(2, 1)}
    assert {(e, a) for e, a, *_ in method.seen} == {(0, 1.0), (1, 0.75)}
    assert [h["alpha"] for h in run.history] == pytest.approx([1.0, 0.75])
    # The CE branch's batches are class-balanced: the rarest class is drawn as often as the others.
    drawn = torch.stack([c for *_, c in method.seen]).sum(0).float()
    assert drawn.min() / drawn.max() > 0.6
