"""Flexible Sampling (methods/flexsampling.py): the official formulas on hand-built inputs and against
naive float64 copies, real Monte-Carlo dropout, the growing active set seen from the streams, the
optimiser reset seen in the parameter update, SSL / CB-focal variants, and state carried by buffers."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ltbench import create_method
from ltbench.store.checkpoint import CheckpointStore
from ltbench.data.augment import get_augmentation
from ltbench.data.samplers import steps_per_epoch
from ltbench.errors import LtbenchError
from ltbench.method import TrainInfo
from ltbench.methods import flexsampling as fs
from ltbench.models import build_backbone
from ltbench.runs import DataSpec, prepare_data
from ltbench.schedules import stage_lr
from ltbench.trainer import Trainer
from tests.helpers import cpu_config, synthetic_data

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LTBENCH_COUNTS = [2712, 7725, 1993, 519, 1574, 143, 151, 376]
REPO_TRAIN_100 = [5000, 2590, 1342, 695, 360, 187, 97, 51]


@pytest.fixture(scope="module")
def data():
    return synthetic_data()


# --- anchors -------------------------------------------------------------------------------------
def test_anchor_counts_follow_the_code_including_its_float_truncation():
    # spec §2.2: the official code on these counts; 376 -> 375 is int(143 * (376/143)) = 375.
    assert fs.anchor_counts(LTBENCH_COUNTS, 0.1) == [772, 772, 772, 519, 772, 143, 151, 375]
    assert fs.anchor_counts(REPO_TRAIN_100, 0.1) == [500, 500, 500, 500, 360, 187, 97, 51]
    assert 143 * (376 / 143) < 376  # the float fact behind the trap
    # the repository's own r = 200 / 500 splits: DF 114 -> 113, 60 -> 59
    assert fs.anchor_counts([5000, 2346, 1101, 517, 243, 114, 54, 25], 0.1)[5] == 113
    assert fs.anchor_counts([5000, 2058, 847, 349, 144, 60, 25, 11], 0.1)[5] == 59


def test_exact_anchor_counts_fix_the_truncation_and_nothing_else():
    exact = fs.anchor_counts(LTBENCH_COUNTS, 0.1, rounding="exact")
    assert exact == [772, 772, 772, 519, 772, 143, 151, 376]
    # naive: every class capped at floor(s * n_max), at least min_per_class, at most n_c
    for counts, s in [(LTBENCH_COUNTS, 0.05), (REPO_TRAIN_100, 0.2), ([3, 1, 40], 0.1)]:
        cap = math.floor(max(counts) * s + 1e-9)  # s · n_max in decimal (no float truncation)
        want = [min(n, max(2, cap)) for n in counts]
        assert fs.anchor_counts(counts, s, rounding="exact") == want
    assert fs.anchor_counts([3, 1, 40], 0.1) == [3, 1, 4]  # cap 4; min_per_class 2 but never above n_c
    assert fs.anchor_counts([5, 0, 9]) == [2, 0, 2]  # an absent class: 0, not in n_min
    with pytest.raises(LtbenchError, match="rounding"):
        fs.anchor_counts([1, 2], rounding="round")


def test_select_anchors_takes_the_samples_nearest_each_prototype():
    # class 0: 10 points on a line, prototype 4.5 -> nearest 4 and 5 (cap: int(2 * min(5, 5 * 0.2)) = 2);
    # class 1: 2 points, kept whole. Labels interleaved so indices differ from within-class ranks.
    x0 = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9], dtype=np.float32)
    feats = np.zeros((12, 2), dtype=np.float32)
    labels = np.array([0] * 5 + [1] + [0] * 5 + [1])
    feats[labels == 0, 0] = x0[[9, 0, 4, 7, 2, 5, 1, 8, 3, 6]]
    feats[labels == 1] = [[100, 100], [100, -100]]
    anchors = fs.select_anchors(feats, labels, scaling=0.2)
    zero = np.flatnonzero(labels == 0)
    want = sorted([int(zero[2]), int(zero[5]), 5, 11])  # values 4 and 5, and both of class 1
    assert anchors == want
    # Euclidean, not cosine: a far point in the prototype's direction is not chosen
    # (class 0's prototype is (3.125, -0.075): [10, 0] has its direction, [1, 0.9] is nearest)
    f = np.array([[10, 0], [1, 0.9], [1, -1.2], [0.5, 0], [0, 5], [0, 6], [0, 8]], dtype=np.float32)
    assert fs.anchor_counts([4, 3], 0.25, min_per_class=1) == [1, 1]
    assert fs.select_anchors(f, np.array([0, 0, 0, 0, 1, 1, 1]), scaling=0.25, min_per_class=1) == [1, 5]
    # spatial features are pooled first
    spatial = np.repeat(feats[:, :, None, None], 3, axis=2).repeat(2, axis=3)
    assert fs.select_anchors(spatial.transpose(0, 2, 3, 1), labels, scaling=0.2) == want


# --- class weights, quotas, query ----------------------------------------------------------------
def test_class_probabilities():
    p = fs.class_probabilities({0: 0.5, 1: 0.9, 2: 0.8}, 3)
    raw = [0.5, 0.1, 0.2]
    assert p == pytest.approx({c: raw[c] * 3 / sum(raw) for c in range(3)}, rel=1e-15)
    assert sum(p.values()) == pytest.approx(3)
    assert fs.class_probabilities({0: 1.0, 1: 1.0}, 2) == {0: 1.0, 1: 1.0}  # all perfect: uniform
    missing = fs.class_probabilities({0: 1.0, 1: 0.5}, 3)  # class 2 absent -> a = 0
    assert missing == pytest.approx({0: 0.0, 1: 0.5 * 3 / 1.5, 2: 1.0 * 3 / 1.5})


def test_class_quotas():
    p = fs.class_probabilities({0: 1.0, 1: 0.5, 2: 0.0}, 3)  # {0: 0, 1: 1, 2: 2}
    # 17745eb: int(|pool| * 0.1 * p / 3), at least 1, at most |pool|
    assert fs.class_quotas([1000, 600, 90], p) == [1, 20, 6]
    # 8f31c0c: no /C
    assert fs.class_quotas([1000, 600, 90], p, divide_by_classes=False) == [1, 60, 18]
    assert fs.class_quotas([0, 5, 1], p) == [0, 1, 1]  # empty pool: 0; p = 0 still 1
    assert fs.class_quotas([3, 3], {0: 1.0, 1: 1.0}, query_ratio=1.0, divide_by_classes=False) == [3, 3]
    # perfect accuracy everywhere: p = 1, 300 * 0.1 * 1 / 3 = 10
    assert fs.class_quotas([300, 300, 300], fs.class_probabilities({0: 1, 1: 1, 2: 1}, 3)) == [10, 10, 10]


def test_curriculum_query_takes_the_most_uncertain_of_each_pool_ties_in_index_order():
    labels = [0, 0, 0, 0, 1, 1, 1, 2, 0, 1]
    scores = np.array([0.9, 0.1, 0.5, 0.5, 0.3, 0.3, 0.2, 0.0, 0.5, 0.7], dtype=np.float32)
    active = {0, 7}  # class 2's pool is empty
    # accuracies {0: 0, 1: 0}, class 2 missing -> p = 1 each; q = 1, no /C: quota = pool size
    new = fs.curriculum_query(labels, active, scores, {0: 0.0, 1: 0.0}, 3, query_ratio=0.5, divide_by_classes=False)
    # class 0 pool [1, 2, 3, 8] (quota 2): 0.5, 0.5, 0.5 tie -> 2, 3; class 1 pool [4, 5, 6, 9] (quota 2): 9, then 4
    assert new == [2, 3, 9, 4]
    assert fs.curriculum_query(labels, set(range(10)), scores, {}, 3) == []


# --- BALD and Monte-Carlo dropout ------------------------------------------------------------------
def naive_bald(probs: np.ndarray) -> np.ndarray:
    probs = probs.astype(np.float64)
    mean = probs.mean(axis=0)
    h_mean = -(mean * np.log(mean + 1e-10)).sum(axis=1)
    h_each = -(probs * np.log(probs + 1e-10)).sum(axis=2)
    return h_mean - h_each.mean(axis=0)


def test_bald_matches_a_naive_float64_formula():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(10, 7, 5, generator=g) * 3
    logits[:, 0] = logits[0, 0]  # sample 0: identical passes -> BALD 0
    logits[:, 1, 2] = 40.0  # sample 1: near one-hot (a probability ~ 0: the epsilon matters)
    probs = torch.softmax(logits, dim=2)
    got = fs.bald_scores(probs)
    np.testing.assert_allclose(got.numpy(), naive_bald(probs.numpy()), atol=2e-6)
    got64 = fs.bald_scores(probs.double())
    np.testing.assert_allclose(got64.numpy(), naive_bald(probs.numpy()), rtol=1e-12, atol=1e-15)
    assert abs(float(got[0])) < 1e-6 and (got[2:] > 0).all()
    with pytest.raises(LtbenchError, match="T, N, C"):
        fs.bald_scores(probs[0])


def test_mc_passes_differ_with_the_dropout_layer_and_evaluation_is_deterministic():
    torch.manual_seed(0)
    net = fs.FlexSamplingNetwork(build_backbone("small-cnn"), 4, dropout=0.1).eval()
    images = torch.randn(6, 3, 16, 16)
    with torch.inference_mode():
        probs = fs._mc_dropout_probs(10)(net, images)  # [N, T, C]
        assert probs.shape == (6, 10, 4)
        assert not net.dropout.training  # switched back
        assert (fs.bald_scores(probs.transpose(0, 1)) > 0).all()
        assert not torch.equal(probs[:, 0], probs[:, 1])
        torch.testing.assert_close(net(images), net(images), rtol=0, atol=0)  # dropout off in eval
        # dropout = 0: the official ResNet's situation, ten identical passes, BALD 0
        net0 = fs.FlexSamplingNetwork(build_backbone("small-cnn"), 4, dropout=0.0).eval()
        probs0 = fs._mc_dropout_probs(10)(net0, images)
        assert torch.equal(probs0[:, 0], probs0[:, 9])
        assert fs.bald_scores(probs0.transpose(0, 1)).abs().max() < 1e-6


def test_query_trigger():
    assert fs.query_trigger(2, 3, 99, 1, 99, 1) is None  # warm-up
    assert fs.query_trigger(3, 3, 1, 1, 0, 0) == "plateau"
    assert fs.query_trigger(3, 3, 0, 1, 5, 0) is None  # 17745eb: no scheduled queries
    assert fs.query_trigger(3, 3, 0, 1, 5, 5) == "scheduled"
    assert fs.query_trigger(3, 3, 2, 2, 5, 5) == "plateau"


# --- losses of the variants ------------------------------------------------------------------------
def test_cb_focal_and_weights_match_naive_float64():
    counts = [50, 7, 1, 1]
    w = fs.class_balanced_weights(counts, 0.9999)
    naive_w = [(1 - 0.9999) / (1 - 0.9999 ** n) for n in counts]
    naive_w = np.array(naive_w) / sum(naive_w) * 4
    np.testing.assert_allclose(w.numpy(), naive_w, rtol=1e-6)
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 0, 1, 1])  # classes 2 and 3 absent from the batch
    for gamma in (1.0, 2.0):
        got_in = logits.detach().float().requires_grad_(True)
        got = fs.cb_focal_loss(got_in, labels, w, gamma)
        p = torch.softmax(logits, 1)[torch.arange(6), labels]
        want = (torch.as_tensor(naive_w)[labels] * (1 - p) ** gamma * -torch.log(p)).mean()
        assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-5)
        (g_got,) = torch.autograd.grad(got, got_in)
        (g_want,) = torch.autograd.grad(want, logits)
        np.testing.assert_allclose(g_got.numpy(), g_want.numpy(), rtol=1e-4, atol=1e-6)
    active = torch.tensor([True, True, False, True, False])
    assert fs.active_class_counts([0, 1, 1, 0, 2], active, 4) == [2, 1, 1, 1]  # absent classes count 1


def test_nt_xent_equals_the_official_formula():
    g = torch.Generator().manual_seed(2)
    z1 = F.normalize(torch.randn(5, 8, generator=g, dtype=torch.float64), dim=1).requires_grad_(True)
    z2 = F.normalize(torch.randn(5, 8, generator=g, dtype=torch.float64), dim=1).requires_grad_(True)
    # naive copy of ssl_pretrain.nt_xent_loss in float64
    z = torch.cat([z1, z2])
    sim = (z @ z.t() / 0.5).masked_fill(torch.eye(10, dtype=torch.bool), -1e9)
    want = F.cross_entropy(sim, torch.cat([torch.arange(5) + 5, torch.arange(5)]))
    a, b = z1.detach().float().requires_grad_(True), z2.detach().float().requires_grad_(True)
    got = fs.nt_xent_loss(a, b, 0.5)
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-5)
    ga = torch.autograd.grad(got, [a, b])
    gw = torch.autograd.grad(want, [z1, z2])
    for x, y in zip(ga, gw):
        np.testing.assert_allclose(x.numpy(), y.numpy(), rtol=1e-4, atol=1e-6)


def test_ssl_view_is_registered_reproducible_and_blurs():
    view = get_augmentation(fs.SSL_VIEW, 64)
    assert view.kernel == 7  # 2 * floor(0.05 * 64) + 1 (23 at 224)
    images = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    a = view(images, torch.Generator().manual_seed(3))
    b = view(images, torch.Generator().manual_seed(3))
    assert a.shape == (4, 3, 64, 64) and torch.isfinite(a).all() and torch.equal(a, b)
    base = view.base(images, torch.Generator().manual_seed(3))
    assert a.std() < base.std()  # the blur smooths the noise image


# --- the method in runs ------------------------------------------------------------------------------
class Recording(fs.FlexSampling):
    """Records each epoch's active mask and every batch's training-split indices (no mocks)."""

    def on_epoch_start(self, epoch):
        super().on_epoch_start(epoch)
        self.masks = getattr(self, "masks", [])
        self.masks.append(self.active.clone())
        self.drawn = getattr(self, "drawn", [])
        self.drawn.append([])

    def training_step(self, model, batch):
        self.drawn[-1].append(batch.indices.clone())
        return super().training_step(model, batch)


QUERY_EVERY_EPOCH = dict(warmup_epochs=0, query_interval=1, reference_epochs=None)


def test_the_active_set_only_grows_and_every_stream_draws_only_from_it(data):
    method = Recording(**QUERY_EVERY_EPOCH)
    run = Trainer(cpu_config(epochs=4), progress=False).fit(method, data.bundle)
    counts = data.bundle.counts(data.split.train)
    assert int(method.masks[0].sum()) == sum(fs.anchor_counts(counts))
    for before, after in zip(method.masks, method.masks[1:]):
        assert (after | before).equal(after) and after.sum() > before.sum()  # grows, never drops a row
    for mask, batches in zip(method.masks, method.drawn):
        drawn = torch.cat(batches)
        assert mask[drawn].all()  # only active rows
        assert len(drawn) == len(set(drawn.tolist()))  # instance sampler: each active row once
    assert [h["active_size"] for h in run.history] == [float(m.sum()) for m in method.masks]
    assert [h["steps"] for h in run.history] == [steps_per_epoch(int(m.sum()), 16) for m in method.masks]


class StepProbe(fs.FlexSampling):
    """Checks the first parameter update of each epoch against a fresh SGD step (no momentum)."""

    def __init__(self, lr_of, **kw):
        super().__init__(**kw)
        self._lr_of = lr_of
        self.fresh_first_step = {}

    def training_step(self, model, batch):
        out = super().training_step(model, batch)
        loss = out[0]
        params = [model.fc.weight]
        if getattr(self, "_pending", None) is not None:
            epoch, p0, g0 = self._pending
            lr = self._lr_of(epoch)
            fresh = p0 - lr * (g0 + 1e-4 * p0)  # SGD without a momentum buffer
            self.fresh_first_step[epoch] = torch.allclose(params[0].detach(), fresh, rtol=1e-5, atol=1e-7)
            self._pending = None
        if self._step_in_epoch == 0:
            (g,) = torch.autograd.grad(loss, params, retain_graph=True)
            self._pending = (self.epoch, params[0].detach().clone(), g.detach().clone())
        self._step_in_epoch += 1
        return out

    def on_epoch_start(self, epoch):
        super().on_epoch_start(epoch)
        self._step_in_epoch = 0


@pytest.mark.parametrize("reset", [True, False])
def test_a_reset_optimiser_has_no_momentum_left(data, reset):
    config = cpu_config(epochs=3)
    probe = StepProbe(lambda e: stage_lr(config.lr, e, config.epochs), dropout=0.0, reset_optimizer=reset,
                      **QUERY_EVERY_EPOCH)
    Trainer(config, progress=False).fit(probe, data.bundle)
    assert int(probe.queries) == 2  # after epochs 0 and 1 (not after the last)
    # epoch 0 starts with a fresh optimiser in both cases; epochs 1 and 2 follow a query
    assert probe.fresh_first_step == {0: True, 1: reset, 2: reset}


def test_state_dict_round_trip_and_best_restore_carry_the_active_set(data):
    method = fs.FlexSampling(**QUERY_EVERY_EPOCH)
    run = Trainer(cpu_config(epochs=3), progress=False).fit(method, data.bundle)
    state = method.state_dict()
    assert {"active", "best_score", "epochs_without_improvement", "epochs_since_last_query", "queries"} <= set(state)
    # the best-validation restore put back the buffers of the best epoch (after its query, which the
    # next epoch trained on; none after the last epoch)
    sizes = [h["active_size"] for h in run.history]
    assert sizes[0] < sizes[1] < sizes[2]
    assert int(state["active"].sum()) == sizes[min(run.best_epoch + 1, 2)]
    fresh = fs.FlexSampling(**QUERY_EVERY_EPOCH)
    fresh.setup(TrainInfo(class_counts=tuple(data.bundle.counts(data.split.train)),
                          class_names=tuple(data.bundle.class_names), epochs=3, steps_per_epoch=1,
                          device=torch.device("cpu")))
    fresh.load_state_dict(state)
    assert torch.equal(fresh.active, state["active"]) and int(fresh.queries) == int(state["queries"])


def test_resuming_after_a_query_equals_the_uninterrupted_run(data, tmp_path):
    class Copying(CheckpointStore):
        def __init__(self, *args):
            super().__init__(*args)
            self.copies = []

        def save(self, state):
            super().save(state)
            target = self.latest.with_name(f"epoch{state['epoch']}.ckpt")
            target.write_bytes(self.latest.read_bytes())
            self.copies.append(target)

    config = cpu_config(epochs=3)
    store = Copying(tmp_path / "run", "key")
    full = Trainer(config, progress=False).fit(fs.FlexSampling(**QUERY_EVERY_EPOCH), data.bundle, checkpoint=store)
    resumed_store = CheckpointStore(tmp_path / "again", "key")
    resumed_store.latest.write_bytes(store.copies[0].read_bytes())  # after epoch 0's query
    resumed = Trainer(config, progress=False).fit(fs.FlexSampling(**QUERY_EVERY_EPOCH), data.bundle,
                                                  checkpoint=resumed_store)
    strip = lambda hist: [{k: v for k, v in h.items() if k != "train_time_s"} for h in hist]  # noqa: E731
    assert strip(resumed.history) == strip(full.history)
    np.testing.assert_array_equal(resumed.arrays["test_probs"], full.arrays["test_probs"])


def test_ssl_stage_then_anchors_from_its_encoder_and_cb_focal(data):
    # 4 epochs: round(4 · 100/200) = 2 SSL + 2 main; warm-up 0, interval max(1, round(2/100)) = 1
    method = Recording(ssl_epochs=100, loss="cb_focal", sampler="class_aware", warmup_epochs=0, query_interval=1)
    run = Trainer(cpu_config(epochs=4), progress=False).fit(method, data.bundle)
    assert [h["stage"] for h in run.history] == ["ssl", "ssl", "main", "main"]
    n_train = len(data.split.train)
    for batches in method.drawn[:2]:  # the SSL stage draws from every row
        assert len(set(torch.cat(batches).tolist())) >= n_train - 1  # (a last batch of one is dropped)
    assert not method.masks[0].any() and not method.masks[1].any()  # no active set before the anchors
    assert 0 < int(method.masks[2].sum()) < n_train and method.masks[3].sum() > method.masks[2].sum()
    for mask, batches in zip(method.masks[2:], method.drawn[2:]):  # class-aware draws inside the active set
        assert mask[torch.cat(batches)].all()
    assert all(math.isfinite(h["train_loss"]) for h in run.history)
    counts = fs.active_class_counts(np.asarray(data.bundle.labels[data.split.train]), method.active, 4)
    torch.testing.assert_close(method.class_weights, fs.class_balanced_weights(counts, 0.9999))


def test_mixup_variant_trains_and_is_reproducible(data):
    runs = [Trainer(cpu_config(epochs=2), progress=False).fit(fs.FlexSampling(mixup_alpha=0.2, **QUERY_EVERY_EPOCH),
                                                              data.bundle) for _ in range(2)]
    plain = Trainer(cpu_config(epochs=2), progress=False).fit(fs.FlexSampling(**QUERY_EVERY_EPOCH), data.bundle)
    assert runs[0].history[0]["train_loss"] == runs[1].history[0]["train_loss"] != plain.history[0]["train_loss"]
    np.testing.assert_array_equal(runs[0].arrays["test_probs"], runs[1].arrays["test_probs"])


def test_bad_parameters_are_one_line_errors():
    with pytest.raises(LtbenchError, match="dropout"):
        create_method("flexsampling", dropout=1.0)
    with pytest.raises(LtbenchError, match="loss"):
        create_method("flexsampling", loss="ldam")
    with pytest.raises(LtbenchError, match="label_smoothing"):
        create_method("flexsampling", loss="cb_focal", label_smoothing=0.1)
    from ltbench.data.samplers import SAMPLERS

    if "class_aware" in SAMPLERS:
        assert create_method("flexsampling", sampler="class_aware").sampler == "class_aware"
    else:
        with pytest.raises(LtbenchError, match="class_aware"):
            create_method("flexsampling", sampler="class_aware")


def test_schedule_scales_from_100_epochs():
    info = TrainInfo(class_counts=(5, 3), class_names=("a", "b"), epochs=30, steps_per_epoch=1,
                     device=torch.device("cpu"))
    method = fs.FlexSampling(query_interval=5)
    method.stages(info)
    assert method.schedule == {"warmup": 9, "patience": 3, "interval": 2}  # round(1.5) = 2 (half to even)
    method.stages(TrainInfo(**{**info.__dict__, "epochs": 2}))
    assert method.schedule == {"warmup": 1, "patience": 1, "interval": 1}  # at least 1


@pytest.mark.slow
def test_a_short_digits_lt_run_makes_a_query():
    prepared = prepare_data(DataSpec(dataset="digits-lt", options={"imbalance": 10}), 16)
    config = cpu_config(epochs=10, batch_size=64, eval_batch_size=512)
    run = Trainer(config, progress=False).fit(create_method("flexsampling"), prepared.bundle)
    sizes = [h["active_size"] for h in run.history]
    counts = prepared.bundle.counts(prepared.split.train)
    assert sizes[0] == sum(fs.anchor_counts(counts)) < sum(counts)
    assert run.history[-1]["queries"] >= 1 and sizes[-1] > sizes[0]
    assert run.test["acc"] > 30.0  # well above chance (10 %)
