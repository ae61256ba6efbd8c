"""The trainer's active training subset (issue 15): ``Method.training_rows``, ``RunAccess``.

A small method defined here grows its subset after every validation and asks for an optimiser
reset; the tests check what the trainer does with that: streams draw only from the subset, an
epoch's length follows it, the optimiser's momentum is gone after a reset, ``infer`` gives the
eval-mode outputs, and a resumed run equals the uninterrupted one.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from torch.nn import functional as F
from torch.optim.optimizer import register_optimizer_step_pre_hook

from ltbench.store.checkpoint import CheckpointStore
from ltbench.data.augment import get_augmentation
from ltbench.data.samplers import steps_per_epoch
from ltbench.errors import LtbenchError
from ltbench.method import LossMethod
from ltbench.trainer import Trainer
from tests.helpers import cpu_config, synthetic_data
from tests.test_resume import CopyingStore, assert_same_run


class GrowingSubset(LossMethod):
    """Starts on the first ``start`` training rows; each validation adds ``step`` more and resets."""

    def __init__(self, start: int = 20, step: int = 20, reset: bool = True) -> None:
        super().__init__()
        self.start, self.step, self.reset = start, step, reset
        self.register_buffer("active", torch.zeros(0, dtype=torch.bool))
        self.seen: list[tuple[int, np.ndarray]] = []  # (epoch, Batch.indices) per step, for the tests
        self.features: torch.Tensor | None = None

    def on_train_start(self, run) -> None:
        self.run = run
        n = len(run.train_labels)
        self.active = torch.zeros(n, dtype=torch.bool)
        self.active[: self.start] = True
        self.features = run.infer(lambda model, x: model.backbone(x), positions=np.arange(5))

    def training_rows(self):
        return self.active

    def training_step(self, model, batch):
        assert bool(self.active[batch.indices].all())
        self.seen.append((self.epoch, batch.indices.numpy().copy()))
        return super().training_step(model, batch)

    def loss(self, logits, labels):
        return F.cross_entropy(logits, labels)

    def on_epoch_end(self, epoch, val_metrics):
        grown = self.active.clone()
        grown[: int(self.active.sum()) + self.step] = True
        self.active = grown
        if self.reset:
            self.run.reset_optimizer()


@pytest.fixture(scope="module")
def data():
    return synthetic_data()


def test_streams_draw_only_from_the_subset_and_epochs_follow_its_length(data):
    method = GrowingSubset()
    run = Trainer(cpu_config(epochs=3), progress=False).fit(method, data.bundle)
    for epoch in range(3):
        drawn = np.concatenate([ix for e, ix in method.seen if e == epoch])
        size = 20 + 20 * epoch
        assert drawn.max() < size  # the subset is the first `size` positions of the training split
        assert len(drawn) == len(np.unique(drawn))  # instance sampler: each row once an epoch
        expected_steps = steps_per_epoch(size, 16)
        assert sum(1 for e, _ in method.seen if e == epoch) == expected_steps
        assert run.history[epoch]["steps"] == expected_steps
    assert len(data.bundle.train) > 60  # so every epoch above was shorter than a full one


def test_infer_gives_the_eval_transform_outputs_of_the_initial_model(data):
    method = GrowingSubset()
    Trainer(cpu_config(epochs=1), progress=False).fit(method, data.bundle)
    # Rebuild the initial model exactly as the run did (seeded) and compare.
    from ltbench.models import build_backbone
    from ltbench.trainer import seed_everything

    seed_everything(0)  # the run's first draws are the backbone's initialisation
    backbone = build_backbone("small-cnn", None).eval()
    rows = data.bundle.train[:5]
    x = get_augmentation("eval", 16)(torch.from_numpy(data.bundle.pixels[rows]).permute(0, 3, 1, 2))
    with torch.inference_mode():
        want = backbone(x)
    torch.testing.assert_close(method.features, want.float(), rtol=0, atol=0)


def _momentum_at_epoch_starts(method, config, data) -> list[bool]:
    """Whether the optimiser had momentum buffers at the first step of each epoch."""
    seen_epochs, had = set(), []

    def pre_step(optimizer, args, kwargs):
        if method.epoch not in seen_epochs:
            seen_epochs.add(method.epoch)
            had.append(any("momentum_buffer" in s for s in optimizer.state.values()))

    handle = register_optimizer_step_pre_hook(pre_step)
    try:
        Trainer(config, progress=False).fit(method, data.bundle)
    finally:
        handle.remove()
    return had


def test_a_reset_clears_the_momentum_and_without_one_it_stays(data):
    config = cpu_config(epochs=3)
    assert _momentum_at_epoch_starts(GrowingSubset(reset=True), config, data) == [False, False, False]
    assert _momentum_at_epoch_starts(GrowingSubset(reset=False), config, data) == [False, True, True]


def test_a_resumed_run_with_a_subset_equals_the_uninterrupted_one(data, tmp_path):
    config = cpu_config(epochs=3)
    store = CopyingStore(tmp_path / "run", "key")
    plain = Trainer(config, progress=False).fit(GrowingSubset(), data.bundle, checkpoint=store)
    for epoch, copy in enumerate(store.copies[:-1]):
        resumed_store = CheckpointStore(tmp_path / f"resume{epoch}", "key")
        shutil.copyfile(copy, resumed_store.latest)
        resumed = Trainer(config, progress=False).fit(GrowingSubset(), data.bundle, checkpoint=resumed_store)
        assert resumed_store.resumed_from == resumed_store.latest
        assert_same_run(plain, resumed)


def test_without_a_subset_nothing_changes(data):
    """A method whose training_rows() is None trains as before: no `steps` in the history."""
    class Plain(GrowingSubset):
        def training_rows(self):
            return None

        def training_step(self, model, batch):
            return LossMethod.training_step(self, model, batch)

    run = Trainer(cpu_config(epochs=1), progress=False).fit(Plain(), data.bundle)
    assert "steps" not in run.history[0]


@pytest.mark.parametrize("mask,problem", [
    (lambda n: torch.ones(n - 1, dtype=torch.bool), "bool mask of the"),
    (lambda n: torch.ones(n, dtype=torch.int64), "bool mask of the"),
    (lambda n: torch.zeros(n, dtype=torch.bool), "selects no training row"),
])
def test_a_bad_mask_is_one_clear_error(data, mask, problem):
    class Bad(GrowingSubset):
        def training_rows(self):
            return mask(len(data.bundle.train))

    with pytest.raises(LtbenchError, match=problem):
        Trainer(cpu_config(epochs=1), progress=False).fit(Bad(), data.bundle)


def test_stream_positions_must_match_its_rows(data):
    from ltbench.data.loader import TrainStream

    b = data.bundle
    with pytest.raises(ValueError, match="positions and rows differ in length"):
        TrainStream(b.pixels, b.train[:4], b.labels[b.train[:4]], "instance", 2, [], torch.device("cpu"),
                    torch.Generator(), positions=np.arange(3))
