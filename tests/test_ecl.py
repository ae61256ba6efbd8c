"""ECL (Zhang et al., MICCAI 2023): proxy counts, BHP loss, BWCE curriculum, cycle update, state.

The BHP reference below is a naive float64 loop written from the formula in
../shared/spec/methods.md, independent of the vectorised implementation.
"""
from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F

from ltbench.method import Batch, TrainInfo
from ltbench.models import build_backbone
from ltbench.registry import create_method, get_method_class
from ltbench.schedules import bwce_curriculum, cosine_lr, scale_epoch
from ltbench.methods.ecl import ECL, ECLNetwork, bhp_loss, bwce_weights, proxy_counts, proxy_labels_for

CPU = torch.device("cpu")


# Tiny tensors: thread start-up dominates (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- proxy counts ------------------------------------------------------------------------------
def test_proxy_counts_isic2018_train():
    # MEL 1113, NV 6705, BCC 514, AKIEC 327, BKL 1099, DF 115, VASC 142; n_max = 6705 (NV).
    # MEL 6705/11130 -> 0 +2 = 2; NV largest = 1; BCC 6705/5140 = 1.30 -> 3; AKIEC 6705/3270 = 2.05 -> 4;
    # BKL 6705/10990 -> 2; DF 6705/1150 = 5.83 -> 7; VASC 6705/1420 = 4.72 -> 6.
    counts = proxy_counts([1113, 6705, 514, 327, 1099, 115, 142])
    assert counts == [2, 1, 3, 4, 2, 7, 6]
    assert sum(counts) == 25


def test_proxy_counts_isic2019_train():
    # MEL 4522, NV 12875, BCC 3323, AK 867, BKL 2624, DF 239, VASC 253, SCC 628; n_max = 12875.
    # MEL 12875/45220 -> 2; NV 1; BCC 12875/33230 -> 2; AK 12875/8670 = 1.48 -> 3; BKL 12875/26240 -> 2;
    # DF 12875/2390 = 5.39 -> 7; VASC 12875/2530 = 5.09 -> 7; SCC 12875/6280 = 2.05 -> 4.
    counts = proxy_counts([4522, 12875, 3323, 867, 2624, 239, 253, 628])
    assert counts == [2, 1, 2, 3, 2, 7, 7, 4]
    assert sum(counts) == 28


def test_proxy_counts_ecl_split_train():
    # The ECL paper's own training splits (train.py's cls_num_list, label order = os.listdir order).
    # 2019 AK 519, BCC 1993, BKL 1574, DF 143, MEL 2712, NV 7725, SCC 376, VASC 151; n_max = 7725:
    # 7725/5190 = 1.49 -> 3; /19930 -> 2; /15740 -> 2; /1430 = 5.40 -> 7; /27120 -> 2; 1; /3760 = 2.05 -> 4;
    # /1510 = 5.12 -> 7.
    assert proxy_counts([519, 1993, 1574, 143, 2712, 7725, 376, 151]) == [3, 2, 2, 7, 2, 1, 4, 7]
    # 2018 VASC 84, AKIEC 195, DF 69, NV 4023, BCC 308, BKL 659, MEL 667; n_max = 4023:
    # 4023/840 = 4.79 -> 6; /1950 = 2.06 -> 4; /690 = 5.83 -> 7; 1; /3080 = 1.31 -> 3; /6590 -> 2; /6670 -> 2.
    assert proxy_counts([84, 195, 69, 4023, 308, 659, 667]) == [6, 4, 7, 1, 3, 2, 2]


def test_proxy_counts_boundary_and_ties():
    # n_max / (10 n_c) exactly 1 -> floor 1 -> 3 proxies; a tie for the largest class -> 1 proxy each.
    assert proxy_counts([100, 10, 100, 11]) == [1, 3, 1, 2]
    with pytest.raises(ValueError):
        proxy_counts([5, 0])


def test_proxy_labels_are_class_major():
    assert proxy_labels_for([2, 1, 3]).tolist() == [0, 0, 1, 2, 2, 2]


# --- BHP loss ----------------------------------------------------------------------------------
def naive_bhp(f1, f2, labels, proxies_raw, proxy_labels, tau):
    """Straight from the formula: loops over anchors, classes and rows, float64."""
    proxies = [proxies_raw[p] / torch.sqrt((proxies_raw[p] ** 2).sum()) for p in range(proxies_raw.shape[0])]
    rows = [f1[b] for b in range(f1.shape[0])] + [f2[b] for b in range(f2.shape[0])] + proxies
    row_labels = labels.tolist() + labels.tolist() + proxy_labels.tolist()
    n = len(rows)
    classes = sorted(set(row_labels))
    count = {c: row_labels.count(c) for c in classes}

    def sim(i, k):
        return torch.exp(torch.dot(rows[i], rows[k]) / tau)

    anchor_losses = []
    for i in range(n):
        denominator = 0.0
        for c in classes:
            members = [k for k in range(n) if row_labels[k] == c and k != i]
            if not members:  # a class with no other row adds nothing
                continue
            denominator = denominator + sum(sim(i, k) for k in members) / (count[c] - (c == row_labels[i]))
        positives = [j for j in range(n) if j != i and row_labels[j] == row_labels[i]]
        if not positives:  # the guard: such an anchor is dropped
            continue
        anchor_losses.append(-sum(torch.log(sim(i, j) / denominator) for j in positives) / len(positives))
    return sum(anchor_losses) / len(anchor_losses)


def _inputs(labels, proxy_per_class, dim=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    b = len(labels)
    f1 = F.normalize(torch.randn(b, dim, generator=gen, dtype=torch.float64), dim=1).requires_grad_()
    f2 = F.normalize(torch.randn(b, dim, generator=gen, dtype=torch.float64), dim=1).requires_grad_()
    proxies = torch.randn(sum(proxy_per_class), dim, generator=gen, dtype=torch.float64).requires_grad_()
    return f1, f2, torch.tensor(labels), proxies, proxy_labels_for(proxy_per_class)


def _check_against_naive(labels, proxy_per_class, tau=0.1, seed=0):
    f1, f2, y, proxies, proxy_labels = _inputs(labels, proxy_per_class, seed=seed)
    fast = bhp_loss(f1, f2, y, proxies, proxy_labels, tau)
    slow = naive_bhp(f1, f2, y, proxies, proxy_labels, tau)
    assert torch.isfinite(fast)
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-12)
    grads_fast = torch.autograd.grad(fast, [f1, f2, proxies])
    grads_slow = torch.autograd.grad(slow, [f1, f2, proxies])
    for g_fast, g_slow in zip(grads_fast, grads_slow):
        assert torch.isfinite(g_fast).all()
        torch.testing.assert_close(g_fast, g_slow, rtol=1e-9, atol=1e-12)
    return fast


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bhp_matches_naive_all_classes_present(seed):
    # Class 1 is the largest (1 proxy); every class has samples in the batch.
    _check_against_naive([0, 1, 2, 3, 1, 1, 0, 3], [2, 1, 3, 4], seed=seed)


@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0])
def test_bhp_matches_naive_temperatures(tau):
    _check_against_naive([2, 2, 0, 1, 0, 2], [3, 2, 1], tau=tau)


def test_bhp_single_proxy_class_absent_is_finite_and_drops_that_anchor():
    # Class 1 has one proxy and no sample: its proxy has no positive (the official code gives NaN).
    loss = _check_against_naive([0, 0, 2, 3, 2], [2, 1, 3, 4])
    assert torch.isfinite(loss)


def test_bhp_several_classes_absent():
    # Only class 0 in the batch; classes 1 (single proxy), 2 and 3 absent.
    _check_against_naive([0, 0, 0], [2, 1, 3, 4], seed=3)
    # A single image of a class with several proxies, other classes absent.
    _check_against_naive([2], [1, 2, 3], seed=4)


def test_bhp_dropped_proxy_still_in_other_denominators():
    # Moving the dropped (positive-less) proxy changes the loss: it is in the others' denominators.
    f1, f2, y, proxies, proxy_labels = _inputs([0, 0, 2], [2, 1, 3])
    base = bhp_loss(f1, f2, y, proxies, proxy_labels, 0.1)
    moved = proxies.detach().clone()
    moved[2] = f1[0].detach()  # the class-1 proxy now sits on an anchor
    assert not torch.allclose(base, bhp_loss(f1, f2, y, moved, proxy_labels, 0.1))
    grad = torch.autograd.grad(base, proxies)[0]
    assert grad[2].abs().sum() > 0


def test_bhp_does_not_renormalise_view_features():
    # The view rows are taken as given: scaling them changes the loss, scaling the proxies does not.
    f1, f2, y, proxies, proxy_labels = _inputs([0, 1, 1], [2, 1])
    base = bhp_loss(f1, f2, y, proxies, proxy_labels, 0.1)
    torch.testing.assert_close(base, bhp_loss(f1, f2, y, 3 * proxies, proxy_labels, 0.1))
    assert not torch.allclose(base, bhp_loss(2 * f1, f2, y, proxies, proxy_labels, 0.1))


# --- BWCE --------------------------------------------------------------------------------------
COUNTS = (100, 20, 5)       # inverse 0.01, 0.05, 0.2, sum 0.26 -> C·(1/n)/Σ = 3/26, 15/26, 60/26
F1 = (0.8, 0.5, 0.25)       # inverse 1.25, 2, 4, sum 7.25      -> C·(1/F1)/Σ = 15/29, 24/29, 48/29
FREQ = torch.tensor([3 / 26, 15 / 26, 60 / 26], dtype=torch.float64)
F1W = torch.tensor([15 / 29, 24 / 29, 48 / 29], dtype=torch.float64)


@pytest.mark.parametrize(
    "epoch, expected",
    [
        (1, torch.ones(3, dtype=torch.float64)),
        (20, torch.ones(3, dtype=torch.float64)),
        (21, FREQ ** (1 / 30)),        # (21 - 20) / (50 - 20)
        (35, FREQ ** 0.5),             # 15 / 30
        (50, FREQ),                    # 30 / 30
        (51, F1W ** (1 / 50)),         # (51 - 50) / (100 - 50)
        (75, F1W ** 0.5),              # 25 / 50
        (100, F1W),                    # 50 / 50
    ],
)
def test_bwce_weights_stages(epoch, expected):
    weights = bwce_weights(epoch, COUNTS, F1, E1=20, E2=50, E=100, f1_floor=1e-4)
    assert weights.dtype == torch.float32
    torch.testing.assert_close(weights.double(), expected, rtol=1e-6, atol=0)


def test_bwce_curriculum_stages():
    assert bwce_curriculum(20, 20, 50, 100) == ("plain", 0.0)
    assert bwce_curriculum(21, 20, 50, 100) == ("frequency", 1 / 30)
    assert bwce_curriculum(51, 20, 50, 100) == ("f1", 1 / 50)
    with pytest.raises(ValueError):
        bwce_curriculum(0, 20, 50, 100)


def test_bwce_zero_f1_is_floored():
    weights = bwce_weights(100, COUNTS, [0.0, 0.5, 1.0], E1=20, E2=50, E=100, f1_floor=1e-4)
    assert torch.isfinite(weights).all()
    inverse = torch.tensor([1e4, 2.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(weights.double(), 3 * inverse / inverse.sum(), rtol=1e-6, atol=0)
    all_zero = bwce_weights(75, COUNTS, [0.0, 0.0, 0.0], E1=20, E2=50, E=100, f1_floor=1e-4)
    torch.testing.assert_close(all_zero, torch.ones(3))


def test_stage_epochs_scale_with_the_budget():
    assert scale_epoch(20, 100, 100) == 20 and scale_epoch(50, 100, 100) == 50
    assert scale_epoch(20, 10, 100) == 2 and scale_epoch(50, 10, 100) == 5
    assert scale_epoch(20, 10, None) == 20


# --- network and training step -----------------------------------------------------------------
def _info(counts=(40, 10, 4), epochs=5, steps=3) -> TrainInfo:
    return TrainInfo(tuple(counts), tuple(f"c{i}" for i in range(len(counts))), epochs, steps, CPU)


def _batches(n_batches, batch_size=6, num_classes=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        labels = torch.randint(0, num_classes, (batch_size,), generator=gen)
        views = [torch.randn(batch_size, 3, 32, 32, generator=gen) for _ in ECL.views]
        out.append(Batch(views=views, labels=labels, indices=torch.arange(batch_size)))
    return out


def _setup(seed=0, **params):
    torch.manual_seed(seed)
    method = ECL(**params)
    info = _info()
    method.setup(info)
    model = method.build_model(build_backbone("small-cnn"), info)
    return method, model, info


def test_registered_with_defaults():
    assert get_method_class("ecl") is ECL
    method = create_method("ecl")
    assert method.get_params() == dict(
        dim=128, temperature=0.1, ce_weight=2.0, bhp_weight=1.0, proxy_lr=None, proxy_momentum=0.9,
        proxy_weight_decay=1e-4, E1=20, E2=50, reference_epochs=100, f1_floor=1e-4,
    )
    assert ECL.views == ("standard", "contrastive")


def test_setup_builds_proxies_and_network():
    method, model, info = _setup()
    assert method.proxy_counts == [1, 2, 3]  # 40 / 100 -> 0 + 2, 40 / 40 -> 1 + 2
    assert method.proxies.shape == (6, 128)
    bound = math.sqrt(6 / (6 + 128))  # Xavier-uniform, gain 1
    assert method.proxies.abs().max() <= bound
    assert method.stage_epochs == (1, 2)  # 20 and 50 of 100 epochs, scaled to 5
    assert isinstance(model, ECLNetwork)
    assert not any(p is method.proxies for p in model.parameters())


def test_network_forwards_each_view_separately():
    method, model, _ = _setup()
    batch = _batches(1)[0]
    model.train()
    logits, z1, z2 = model(*batch.views)
    assert logits.shape == (6, 3) and z1.shape == z2.shape == (6, 128)
    torch.testing.assert_close(z1.norm(dim=1), torch.ones(6))
    # Own backbone pass per view: the classifier view's logits do not depend on the other view
    # (BatchNorm statistics per view), and they are what model(images) returns.
    torch.testing.assert_close(logits, model(batch.views[0]))
    other = model(batch.views[0], torch.randn_like(batch.views[1]))
    torch.testing.assert_close(other[0], logits)


def test_training_step_combines_the_two_losses():
    method, model, info = _setup()
    method.val_f1.copy_(torch.tensor([0.9, 0.5, 0.2]))
    batch = _batches(1)[0]
    for epoch in (0, 1, 3):  # plain, frequency and F1 stages at E = 5 (E1 = 1, E2 = 2)
        method.on_epoch_start(epoch)
        loss, logs = method.training_step(model, batch)
        logits, z1, z2 = model(*batch.views)
        weights = bwce_weights(epoch + 1, info.class_counts, [0.9, 0.5, 0.2], 1, 2, 5, 1e-4)
        bwce = F.cross_entropy(logits, batch.labels, weight=weights)
        bhp = bhp_loss(z1, z2, batch.labels, method.proxies, method.proxy_labels, 0.1)
        torch.testing.assert_close(logs["bwce"], bwce.detach())
        torch.testing.assert_close(logs["bhp"], bhp.detach())
        torch.testing.assert_close(loss, 2 * bwce + bhp)
        assert not logs["bwce"].requires_grad and not logs["bhp"].requires_grad


def test_validation_f1_percent_feeds_the_next_epoch():
    method, model, info = _setup()
    method.on_epoch_start(2)
    method.on_epoch_end(2, {"per_class": {"f1": [80.0, 50.0, 0.0]}})
    torch.testing.assert_close(method.val_f1, torch.tensor([0.8, 0.5, 0.0]))
    method.on_epoch_start(3)  # 1-indexed 4 > E2 = 2: power (4 - 2) / (5 - 2)
    inverse = torch.tensor([1 / 0.8, 1 / 0.5, 1 / 1e-4], dtype=torch.float64)
    expected = (3 * inverse / inverse.sum()) ** (2 / 3)
    torch.testing.assert_close(method.class_weights().double(), expected, rtol=1e-5, atol=0)


# --- cycle update ------------------------------------------------------------------------------
def test_cycle_update_sums_gradients_and_steps_once_at_lr_e():
    method, model, info = _setup()
    model_optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    wd, momentum = 1e-4, 0.9
    momentum_buffer = None
    for epoch, seed in ((0, 10), (1, 11)):
        method.on_epoch_start(epoch)
        assert method.proxies.grad is None or (method.proxies.grad == 0).all()
        start = method.proxies.detach().clone()
        grad_sum = torch.zeros_like(start)
        for batch in _batches(3, seed=seed):
            model_optimizer.zero_grad()
            if method.proxies.grad is not None:  # the model's zero_grad leaves the proxies alone
                torch.testing.assert_close(method.proxies.grad, grad_sum)
            loss, _ = method.training_step(model, batch)
            grad_sum += torch.autograd.grad(loss, method.proxies, retain_graph=True)[0]
            loss.backward()
            model_optimizer.step()
            torch.testing.assert_close(method.proxies.detach(), start)  # unchanged within the epoch
        assert grad_sum.abs().sum() > 0
        torch.testing.assert_close(method.proxies.grad, grad_sum)  # summed, not averaged

        method.on_epoch_end(epoch, {"per_class": {"f1": [50.0, 50.0, 50.0]}})
        lr_e = cosine_lr(0.002, epoch, info.epochs)  # lr_e, not lr_{e+1}
        step = grad_sum + wd * start
        momentum_buffer = step if momentum_buffer is None else momentum * momentum_buffer + step
        expected = start - lr_e * momentum_buffer
        assert not torch.equal(method.proxies.detach(), start)
        torch.testing.assert_close(method.proxies.detach(), expected, rtol=1e-6, atol=1e-7)


# --- state -------------------------------------------------------------------------------------
def _train_one_epoch(method, model, epoch=0):
    method.on_epoch_start(epoch)
    for batch in _batches(2, seed=20 + epoch):
        loss, _ = method.training_step(model, batch)
        loss.backward()
    method.on_epoch_end(epoch, {"per_class": {"f1": [70.0, 40.0, 10.0]}})


def test_state_dict_round_trip_with_proxy_momentum():
    method, model, info = _setup(seed=0)
    _train_one_epoch(method, model)
    buffer = method.proxy_optimizer.state[method.proxies]["momentum_buffer"]
    assert buffer.abs().sum() > 0

    saved = io.BytesIO()
    torch.save(method.state_dict(), saved)
    saved.seek(0)
    fresh, _, _ = _setup(seed=1)
    assert not torch.equal(fresh.proxies, method.proxies)
    fresh.load_state_dict(torch.load(saved, weights_only=True))
    torch.testing.assert_close(fresh.proxies, method.proxies)
    torch.testing.assert_close(fresh.val_f1, torch.tensor([0.7, 0.4, 0.1]))
    torch.testing.assert_close(fresh.proxy_optimizer.state[fresh.proxies]["momentum_buffer"], buffer)

    # The same gradient gives the same next step (momentum restored, not restarted).
    grad = torch.randn_like(method.proxies)
    for m in (method, fresh):
        m.on_epoch_start(1)
        m.proxies.grad = grad.clone()
        m.on_epoch_end(1, {"per_class": {"f1": [1.0, 1.0, 1.0]}})
    torch.testing.assert_close(fresh.proxies, method.proxies)
    restarted, _, _ = _setup(seed=1)
    restarted.load_state_dict({k: v for k, v in method.state_dict().items() if k != "_extra_state"}, strict=False)
    assert restarted.proxy_optimizer.state == {}  # without the extra state there is no momentum


def test_saved_optimizer_state_is_a_copy():
    # A best-validation checkpoint kept in memory must not follow later proxy steps.
    method, model, _ = _setup()
    _train_one_epoch(method, model, epoch=0)
    extra = method.state_dict()["_extra_state"]
    kept = extra["proxy_optimizer"]["state"][0]["momentum_buffer"].clone()
    _train_one_epoch(method, model, epoch=1)
    assert not torch.equal(kept, method.proxy_optimizer.state[method.proxies]["momentum_buffer"])
    torch.testing.assert_close(extra["proxy_optimizer"]["state"][0]["momentum_buffer"], kept)


def test_proxy_learning_rate_follows_the_runs_lr_unless_set():
    import dataclasses

    info = dataclasses.replace(_info(), lr=0.05)
    tied, fixed = ECL(), ECL(proxy_lr=0.01)
    tied.setup(info)
    fixed.setup(info)
    for method, base in ((tied, 0.05), (fixed, 0.01)):
        method.on_epoch_start(1)
        method.proxies.grad = torch.ones_like(method.proxies)
        method.on_epoch_end(1, {"per_class": {"f1": [50.0, 50.0, 50.0]}})
        assert method.proxy_optimizer.param_groups[0]["lr"] == pytest.approx(cosine_lr(base, 1, info.epochs))
