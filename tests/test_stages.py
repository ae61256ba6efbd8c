"""Stages and per-stream views in the trainer (ltbench/stages.py, Trainer.fit)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import ltbench.trainer.loop as trainer_module
from ltbench.errors import LtbenchError
from ltbench.method import Batch, Method
from ltbench.methods.scl import SCL
from ltbench.registry import create_method
from ltbench.schedules import cosine_lr
from ltbench.stages import Probe, Stage, stage_bounds, stage_index, stage_lengths, stream_specs, total_epochs
from ltbench.trainer import Trainer
from tests.helpers import cpu_config, synthetic_data


@pytest.fixture(scope="module")
def data():
    return synthetic_data()


# Tiny tensors: thread start-up dominates (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- lengths and boundaries --------------------------------------------------------------------
def test_lengths_fraction_rounds_half_up_and_one_stage_takes_the_rest():
    assert stage_lengths([Stage(fraction=0.25), Stage()], 10) == [3, 7]  # 2.5 -> 3 (half up, not to even)
    assert stage_lengths([Stage(), Stage(fraction=0.2)], 7) == [6, 1]  # 1.4 -> 1
    assert stage_lengths([Stage(epochs=2), Stage(), Stage(fraction=0.5)], 10) == [2, 3, 5]
    assert stage_bounds([Stage(epochs=2), Stage(), Stage(fraction=0.5)], 10) == [(0, 2), (2, 5), (5, 10)]
    assert stage_lengths([Stage(epochs=0), Stage()], 4) == [0, 4]
    assert stage_index([(0, 2), (2, 5), (5, 10)], 2) == 1 and stage_index([(0, 2), (2, 5), (5, 10)], 9) == 2


@pytest.mark.parametrize("stages, message", [
    ([Stage(fraction=0.5), Stage(fraction=0.5)], "do not add up"),  # 4 + 4 != 7
    ([Stage(), Stage()], "at most one stage"),
    ([Stage(epochs=9), Stage()], "do not add up"),
    ([], "at least one stage"),
])
def test_lengths_that_do_not_fit_are_one_clear_error(stages, message):
    with pytest.raises(LtbenchError, match=message):
        stage_lengths(stages, 7)


def test_stage_fields_are_checked():
    with pytest.raises(LtbenchError, match="epochs or fraction"):
        Stage(epochs=2, fraction=0.5)
    with pytest.raises(LtbenchError, match="trains"):
        Stage(trains="classifier")
    with pytest.raises(LtbenchError, match="fraction"):
        Stage(fraction=1.5)


def test_stream_specs_grammar():
    assert stream_specs(("instance", ("class_balanced", ("standard",))), ("contrastive", "contrastive")) == [
        ("instance", ("contrastive", "contrastive")), ("class_balanced", ("standard",))]
    for bad in [(("instance",),), (("instance", "standard"),), (("instance", ()),)]:
        with pytest.raises(LtbenchError):
            stream_specs(bad, ("standard",))


def test_scl_stage_boundaries_fall_at_the_documented_epochs(data):
    # Issue 20: the representation takes the whole budget E; the classifier comes after it.
    for epochs in (1, 7, 30):
        assert stage_bounds(SCL().stages(_info(data, epochs)), epochs) == [(0, epochs), (epochs, epochs)]
        assert stage_bounds(SCL(probe="sgd", probe_epochs=4).stages(_info(data, epochs)), epochs) == [
            (0, epochs), (epochs, epochs + 4)]
    run = Trainer(cpu_config(epochs=2), progress=False).fit(SCL(probe="sgd", probe_epochs=3, probe_milestones=(1,)),
                                                           data.bundle)
    assert [h["stage"] for h in run.history] == ["representation", "representation", "classifier", "classifier",
                                                 "classifier"]
    # Each stage restarts its own schedule from its own base lr (run lr 0.05, cosine; classifier 0.1, x0.2 at 1,
    # main_linear.py's lr_decay_rate).
    assert [h["lr"] for h in run.history] == [cosine_lr(0.05, 0, 2), cosine_lr(0.05, 1, 2), 0.1, 0.1 * 0.2,
                                              0.1 * 0.2]
    assert 2 <= run.best_epoch <= 4  # selectable: the classifier stage only
    # The run's warm-up is the representation stage's; the SGD probe stage has none (main_linear.py).
    warm = Trainer(cpu_config(epochs=2, warmup_epochs=1), progress=False).fit(
        SCL(probe="sgd", probe_epochs=1), data.bundle)
    assert [h["lr"] for h in warm.history] == [0.05 * 0.01, cosine_lr(0.05, 0, 1), 0.1]


def test_extra_and_probe_stages_are_checked():
    assert stage_lengths([Stage(), Stage(epochs=3, extra=True)], 5) == [5, 3]
    assert total_epochs([Stage(), Stage(epochs=3, extra=True)], 5) == 8
    assert stage_lengths([Stage(), Stage(trains=("classifier",), probe=Probe())], 5) == [5, 0]
    with pytest.raises(LtbenchError, match="extra.*needs epochs"):
        Stage(extra=True)
    with pytest.raises(LtbenchError, match="exactly one Linear"):
        Stage(probe=Probe())
    with pytest.raises(LtbenchError, match="exactly one Linear"):
        Stage(epochs=2, trains=("classifier",), probe=Probe())
    with pytest.raises(LtbenchError, match="must be the last stage"):
        stage_lengths([Stage(trains=("classifier",), probe=Probe()), Stage()], 5)
    with pytest.raises(LtbenchError, match="lr_schedule"):
        Stage(lr_schedule="linear")
    for bad in [dict(l2=-1.0), dict(tolerance=0.0), dict(max_iter=0), dict(sampler="x")]:
        with pytest.raises(LtbenchError, match="probe"):
            Probe(**bad)


def _info(data, epochs):
    from ltbench.method import TrainInfo

    return TrainInfo(class_counts=tuple(data.bundle.counts(data.split.train)),
                     class_names=tuple(data.bundle.class_names), epochs=epochs, steps_per_epoch=1,
                     device=torch.device("cpu"))


# --- freezing ----------------------------------------------------------------------------------
class _SnapshotSCL(SCL):
    """SCL that records the backbone's full state (parameters and BatchNorm buffers) when the
    classifier stage starts, and the train/eval mode of each part during that stage."""

    def training_step(self, model, batch):
        if self.in_classifier_stage() and not hasattr(self, "snapshot"):
            self.snapshot = {k: v.clone() for k, v in model.backbone.state_dict().items()}
            self.classifier_start = {k: v.clone() for k, v in model.classifier.state_dict().items()}
            self.modes = {name: m.training for name, m in model.named_modules() if name}
            self.grad_flags = {name: p.requires_grad for name, p in model.named_parameters()}
            self.model_ref = [model]  # a list: an nn.Module attribute would become a submodule
        return super().training_step(model, batch)


def test_a_frozen_stage_leaves_encoder_parameters_and_batchnorm_buffers_unchanged(data):
    method = _SnapshotSCL(probe="sgd", probe_epochs=1)
    run = Trainer(cpu_config(epochs=3), progress=False).fit(method, data.bundle)  # stages 3 + 1 beyond the budget
    assert run.best_epoch == 3  # the only selectable epoch
    model = method.model_ref[0]
    final = model.backbone.state_dict()
    assert any("running_mean" in k for k in final) and any("num_batches_tracked" in k for k in final)
    for key, value in method.snapshot.items():
        torch.testing.assert_close(final[key], value, rtol=0, atol=0, msg=key)
    assert any(not torch.equal(model.classifier.state_dict()[k], v) for k, v in method.classifier_start.items())
    # During the frozen stage: backbone and head in eval mode, the classifier in train mode.
    assert all(not mode for name, mode in method.modes.items() if name.startswith(("backbone", "head")))
    assert method.modes["classifier"]
    assert not any(flag for name, flag in method.grad_flags.items() if not name.startswith("classifier"))
    # After the run every parameter has its requires_grad back.
    assert all(p.requires_grad for p in model.parameters())


# --- views per stream --------------------------------------------------------------------------
class _TwoStreams(Method):
    """Hybrid-SC's stream shape: instance stream with two contrastive views, class-balanced with one."""

    samplers = (("instance", ("contrastive", "contrastive")), ("class_balanced", ("standard",)))

    def training_step(self, model, inst: Batch, cb: Batch):
        self.seen.append((len(inst.views), len(cb.views), tuple(inst.views[0].shape), tuple(cb.views[0].shape)))
        return F.cross_entropy(model(cb.views[0]).float(), cb.labels)

    def setup(self, info):
        self.seen = []


class _ViewsThenOneView(Method):
    """Two stages with different streams and views."""

    def stages(self, info):
        return [Stage(epochs=1, samplers=(("instance", ("contrastive", "contrastive")),), name="a"),
                Stage(epochs=1, samplers=("class_balanced",), views=("standard",), name="b")]

    def setup(self, info):
        self.seen = []

    def training_step(self, model, batch: Batch):
        self.seen.append((self.epoch, len(batch.views)))
        return F.cross_entropy(model(batch.views[-1]).float(), batch.labels)


def _count_augmentations(monkeypatch):
    counts: dict[str, int] = {}
    real = trainer_module.get_augmentation

    def counting(name, image_size, *args, **kwargs):
        augment = real(name, image_size, *args, **kwargs)

        def run(images, generator=None, *a, **k):
            counts[name] = counts.get(name, 0) + 1
            return augment(images, generator, *a, **k)

        return run

    monkeypatch.setattr(trainer_module, "get_augmentation", counting)
    return counts


def test_each_stream_computes_only_the_views_it_declared(data, monkeypatch):
    counts = _count_augmentations(monkeypatch)
    method = _TwoStreams()
    run = Trainer(cpu_config(epochs=1), progress=False).fit(method, data.bundle)
    steps = len(method.seen)
    assert steps > 0 and all(s[:2] == (2, 1) for s in method.seen)
    # Training: 2 contrastive views of the instance stream and 1 standard view of the
    # class-balanced stream per step; evaluation uses "eval" only.
    assert counts["contrastive"] == 2 * steps and counts["standard"] == steps
    assert math.isfinite(run.history[0]["train_loss"])


def test_a_stage_computes_only_its_own_streams_and_views(data, monkeypatch):
    counts = _count_augmentations(monkeypatch)
    method = _ViewsThenOneView()
    Trainer(cpu_config(epochs=2), progress=False).fit(method, data.bundle)
    steps = sum(1 for epoch, _ in method.seen if epoch == 0)
    assert {n for e, n in method.seen if e == 0} == {2} and {n for e, n in method.seen if e == 1} == {1}
    assert counts["contrastive"] == 2 * steps and counts["standard"] == steps


# --- selection ---------------------------------------------------------------------------------
class _UnlearnLast(Method):
    """Stage 1 learns CE (not selectable); stage 2 (selectable) ascends the CE of the head at a
    large lr, so its validation accuracy is worse than stage 1's best."""

    def stages(self, info):
        return [Stage(epochs=3, selectable=False, name="learn"),
                Stage(epochs=1, trains=("head",), lr=5.0, name="unlearn")]

    def training_step(self, model, batch):
        loss = F.cross_entropy(model(batch.views[0]).float(), batch.labels)
        return -loss if self.epoch == 3 else loss


def test_only_selectable_epochs_are_chosen(data):
    run = Trainer(cpu_config(epochs=4), progress=False).fit(_UnlearnLast(), data.bundle)
    accs = [h["val"]["acc"] for h in run.history]
    assert max(accs[:3]) > accs[3]  # a plain best-over-all-epochs rule would pick stage 1
    assert run.best_epoch == 3 and run.val["acc"] == accs[3]


def test_no_selectable_stage_and_unknown_part_are_one_clear_error(data):
    class NoSelectable(_UnlearnLast):
        def stages(self, info):
            return [Stage(selectable=False)]

    class UnknownPart(_UnlearnLast):
        def stages(self, info):
            return [Stage(trains=("classifier",))]

    with pytest.raises(LtbenchError, match="selectable"):
        Trainer(cpu_config(epochs=1), progress=False).fit(NoSelectable(), data.bundle)
    with pytest.raises(LtbenchError, match="'classifier'.*backbone, head"):
        Trainer(cpu_config(epochs=1), progress=False).fit(UnknownPart(), data.bundle)


def test_single_stage_history_keeps_its_shape(data):
    run = Trainer(cpu_config(epochs=1), progress=False).fit(create_method("ce"), data.bundle)
    assert set(run.history[0]) == {"epoch", "lr", "train_loss", "train_time_s", "val"}
