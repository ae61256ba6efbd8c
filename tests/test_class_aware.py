"""The class_aware sampler against a naive transcription of FlexSampling v0.2's ClassAwareSampler,
and the loss methods' ``sampler`` parameter reaching the training stream."""
from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pytest
import torch

from ltbench import create_method
from ltbench.data.samplers import SAMPLERS, class_aware_order, epoch_indices, steps_per_epoch
from ltbench.methods.ce import CrossEntropy
from ltbench.trainer import Trainer
from tests.helpers import cpu_config, synthetic_data


def _shuffle(items: list, generator: torch.Generator) -> None:
    """``random.shuffle`` (in place) on a torch generator."""
    items[:] = [items[i] for i in torch.randperm(len(items), generator=generator).tolist()]


class NaiveCyclicShuffler:
    """v0.2 ``_CyclicShuffler``: a class's indices in shuffled order, reshuffled when exhausted."""

    def __init__(self, indices, generator):
        self.indices, self.generator, self.pos = list(indices), generator, len(indices)

    def next(self):
        if self.pos == len(self.indices):
            _shuffle(self.indices, self.generator)
            self.pos = 0
        self.pos += 1
        return self.indices[self.pos - 1]


def naive_class_aware(labels, num_samples, generator, per_class=1):
    """v0.2 ``ClassAwareSampler.__iter__`` transcribed with explicit loops."""
    cls_to_indices = defaultdict(list)
    for idx, label in enumerate(labels):
        cls_to_indices[int(label)].append(idx)
    classes = sorted(cls_to_indices)
    cyclers = {c: NaiveCyclicShuffler(cls_to_indices[c], generator) for c in classes}
    out = []
    while len(out) < num_samples:
        _shuffle(classes, generator)
        for c in classes:
            for _ in range(per_class):
                if len(out) >= num_samples:
                    return out
                out.append(cyclers[c].next())
    return out


def _labels(seed=0, counts=(13, 6, 0, 3, 1)):
    rng = np.random.default_rng(seed)
    return rng.permutation(np.repeat(np.arange(len(counts)), counts))


def test_class_aware_is_registered():
    assert "class_aware" in SAMPLERS


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("per_class", [1, 3])
@pytest.mark.parametrize("num_samples", [23, 50])
def test_same_draws_as_the_naive_transcription(seed, per_class, num_samples):
    labels = _labels(seed)
    got = class_aware_order(labels, num_samples, torch.Generator().manual_seed(seed), per_class)
    want = naive_class_aware(labels.tolist(), num_samples, torch.Generator().manual_seed(seed), per_class)
    assert got.tolist() == want


def test_cycle_properties():
    labels = _labels(5)
    present = sorted(set(labels.tolist()))  # class 2 is absent
    order = class_aware_order(labels, 400, torch.Generator().manual_seed(3))
    drawn = labels[order]
    k = len(present)
    # every round of K consecutive draws visits each present class once, in a reshuffled order
    rounds = drawn[: len(drawn) // k * k].reshape(-1, k)
    assert all(sorted(r.tolist()) == present for r in rounds)
    assert len({tuple(r) for r in rounds}) > 1
    assert 2 not in drawn.tolist()
    # per class, each block of n_c consecutive visits is a permutation of the class's images
    for c in present:
        members = sorted(np.flatnonzero(labels == c).tolist())
        visits = order[drawn == c].tolist()
        n = len(members)
        for start in range(0, len(visits) - n + 1, n):
            assert sorted(visits[start:start + n]) == members
    counts = Counter(drawn.tolist())
    assert max(counts.values()) - min(counts.values()) <= 1


def test_differs_from_class_balanced_which_draws_classes_independently():
    labels = _labels(1)
    g = torch.Generator().manual_seed(0)
    drawn = labels[np.concatenate(epoch_indices("class_balanced", labels, 4, g))]
    rounds = drawn[: len(drawn) // 4 * 4].reshape(-1, 4)
    assert any(len(set(r.tolist())) < 4 for r in rounds)  # a class twice in a round: never in class_aware


def test_epoch_indices_batches_and_reproducibility():
    labels = _labels(2)
    batches = epoch_indices("class_aware", labels, 4, torch.Generator().manual_seed(9))
    assert len(batches) == steps_per_epoch(len(labels), 4)
    flat = np.concatenate(batches)
    assert flat.tolist() == class_aware_order(labels, len(flat), torch.Generator().manual_seed(9)).tolist()
    again = np.concatenate(epoch_indices("class_aware", labels, 4, torch.Generator().manual_seed(9)))
    other = np.concatenate(epoch_indices("class_aware", labels, 4, torch.Generator().manual_seed(10)))
    assert np.array_equal(flat, again) and not np.array_equal(flat, other)


class _Recording(CrossEntropy):
    """ce that records the labels of every batch its (real) stream gives it."""

    def __init__(self, sampler: str = "instance") -> None:
        super().__init__(sampler=sampler)
        self.seen: list = []

    def training_step(self, model, batch):
        self.seen.append(batch.labels.clone())
        return super().training_step(model, batch)


def test_the_sampler_parameter_builds_the_stage():
    from ltbench.stages import Stage

    info = None  # LossMethod.stages does not read it
    assert create_method("ce").stages(info) == [Stage(samplers=("instance",), views=("standard",))]
    assert create_method("grw", sampler="class_aware").stages(info) == [
        Stage(samplers=("class_aware",), views=("standard",))]


@pytest.mark.slow
def test_sampler_reaches_the_stream():
    data = synthetic_data()
    train = data.bundle.labels[data.split.train]
    seen = {}
    for sampler in ("instance", "class_balanced", "class_aware"):
        method = _Recording(sampler=sampler)
        Trainer(cpu_config(epochs=1), progress=False).fit(method, data.bundle)
        seen[sampler] = torch.cat(method.seen).numpy()
    num_classes = int(train.max()) + 1
    frac = {k: np.bincount(v, minlength=num_classes) / len(v) for k, v in seen.items()}
    imbalance = np.bincount(train) / len(train)
    np.testing.assert_allclose(frac["instance"], imbalance, atol=0.02)
    assert frac["instance"].max() > 0.4  # the synthetic training split is long-tailed
    np.testing.assert_allclose(frac["class_balanced"], 1 / num_classes, atol=0.08)
    # batch size 16 = 4 rounds of the 4 classes: every class_aware batch holds each class 4 times
    assert num_classes == 4
    batches = seen["class_aware"][: len(seen["class_aware"]) // 16 * 16].reshape(-1, 16)
    assert all((np.bincount(b, minlength=4) == 4).all() for b in batches)
