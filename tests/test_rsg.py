"""RSG (methods/rsg.py, methods/_rsg.py): the module's losses and generated maps against a naive float64
per-sample implementation written from Jianf-Wang/RSG models/RSG.py; head classes, the generation epoch,
the network and a fit."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ltbench.method import Batch, TrainInfo
from ltbench.methods._rsg import RareSampleGenerator
from ltbench.methods.rsg import RSG, head_class_mask
from ltbench.models import build_backbone
from ltbench.registry import create_method
from ltbench.trainer import Trainer
from tests.helpers import cpu_config, synthetic_data

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def softmax(v):
    e = [torch.exp(x - max(float(t.detach()) for t in v)) for x in v]
    return [x / sum(e) for x in e]


def ce(logits, label):
    m = max(float(t.detach()) for t in logits)
    return -(logits[label] - (m + torch.log(sum(torch.exp(t - m) for t in logits))))


def pair_logits(mod, x, frozen):
    """One sample [2C, H, W] through the contrastive module and fc."""
    conv1, _, conv2 = mod.contrastive_module
    p = (lambda t: t.detach()) if frozen else (lambda t: t)  # noqa: E731
    out = F.relu(F.conv2d(x[None], p(conv1.weight), p(conv1.bias)))
    out = F.conv2d(out, p(conv2.weight), p(conv2.bias), padding=1)[0]
    pooled = torch.stack([out[c].sum() / (out.shape[1] * out.shape[2]) for c in range(out.shape[0])])
    fc = mod.contrastive_fc
    return [sum(p(fc.weight)[j, c] * pooled[c] for c in range(pooled.shape[0])) + p(fc.bias)[j] for j in range(2)]


def gamma(mod, f, y):
    C, H, W = f.shape
    pooled = [f[c].sum() / (H * W) for c in range(C)]
    return softmax([sum(pooled[c] * mod.linear[y, c, k] for c in range(C)) + mod.bias[y, k] for k in range(mod.n_center)])


def rows(t, C):
    """The official ``view(-1, C)`` of one sample: its CHW values in memory order, in rows of C."""
    flat = t.reshape(-1)
    return [flat[r * C:(r + 1) * C] for r in range(flat.numel() // C)]


def norm(v):
    return torch.sqrt(sum(x * x for x in v))


def naive_rsg(mod, maps, y, epoch):
    f = maps.detach()
    B, C, H, W = f.shape
    cesc = 0.0
    for i in range(B):
        g = gamma(mod, f[i], int(y[i]))
        for k in range(mod.n_center):
            cesc = cesc + g[k] * ((f[i] - mod.centers[int(y[i]), k][:, None, None]) ** 2).sum()
    cesc = cesc / B
    if epoch <= mod.epoch_thresh:
        half = B // 2
        pair = sum(ce(pair_logits(mod, torch.cat([f[i], f[half + i]]), False), int(y[i] == y[half + i]))
                   for i in range(half)) / half
        cesc = cesc + pair
    heads = [i for i in range(B) if mod.head_classes[int(y[i])]]
    tails = [i for i in range(B) if not mod.head_classes[int(y[i])]]
    generated, labels, mv, segment = [], [], 0.0, 1
    if heads and tails and epoch > mod.epoch_thresh:
        if len(heads) >= len(tails):
            segment = max(int(len(heads) * mod.strength / len(tails)), 1)
            segs = [(heads[j * len(tails):(j + 1) * len(tails)], tails) for j in range(segment)]
        else:
            segment = max(int(len(tails) * mod.strength / len(heads)), 1)
            segs = [(heads, tails[j * len(heads):(j + 1) * len(heads)]) for j in range(segment)]
        conv = mod.vec_transformation_module[0]
        for hs, ts in segs:
            n = len(ts)
            pair_ce, abs_norms, abs_dirs = 0.0, 0.0, 0.0
            for h, t in zip(hs, ts):
                gh, gt = gamma(mod, f[h], int(y[h])), gamma(mod, f[t], int(y[t]))
                kh = max(range(mod.n_center), key=lambda k: float(gh[k].detach()))
                kt = max(range(mod.n_center), key=lambda k: float(gt[k].detach()))
                ch = mod.centers[int(y[h]), kh].detach()[:, None, None]
                ct = mod.centers[int(y[t]), kt].detach()[:, None, None]
                v = f[h] - ch
                tv = F.conv2d(v[None], conv.weight, conv.bias, padding=1)[0]
                generated.append(f[t] + tv)
                labels.append(int(y[t]))
                for a, b in zip(rows(tv, C), rows(v, C)):
                    abs_norms = abs_norms + torch.abs(norm(a) - norm(b))
                for a, b in zip(rows(f[t] - ct, C), rows(tv, C)):
                    an, bn = a / max(norm(a), 1e-12), b / max(norm(b), 1e-12)
                    abs_dirs = abs_dirs + sum(torch.abs(p * q - 1) for p, q in zip(an, bn))
                pair_ce = pair_ce + ce(pair_logits(mod, torch.cat([f[h], tv]), True), 0)
            mv = mv + pair_ce / n + (abs_norms + abs_dirs) / n
        mv = mv / segment
    return cesc, mv, generated, labels


def module(epoch_thresh, strength=1.0, n_center=3, C=4, classes=5, head=(0, 1)):
    torch.manual_seed(0)
    mask = torch.zeros(classes, dtype=torch.bool)
    mask[list(head)] = True
    mod = RareSampleGenerator(C, classes, mask, n_center=n_center, contrastive_module_dim=6,
                              transfer_strength=strength, epoch_thresh=epoch_thresh).double()
    with torch.no_grad():
        mod.centers.normal_()  # official zeros at the start; random here so every term is exercised
        mod.linear.mul_(0.3)
    return mod


@pytest.mark.parametrize("epoch, labels", [
    (4, [0, 1, 2, 4, 0, 3, 1, 1]),        # up to the threshold: centres + contrastive pairs (class 2.. absent in halves)
    (5, [0, 1, 2, 4, 0, 3, 1, 1]),        # after it: 5 head / 3 tail → 1 segment of 3 pairs
    (5, [0, 2, 3, 4, 2, 3, 4, 1, 0]),     # 3 head / 6 tail (odd batch) → 2 segments
    (5, [2, 3, 4, 2, 3, 4]),              # no head sample: nothing generated
])
def test_module_matches_naive_float64_values_and_gradients(epoch, labels):
    mod = module(epoch_thresh=4)
    g = torch.Generator().manual_seed(1)
    y = torch.tensor(labels)
    maps = torch.randn(len(labels), 4, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    out, cesc, mv, target = mod(maps, y, epoch)
    r_cesc, r_mv, r_gen, r_labels = naive_rsg(mod, maps, y, epoch)
    torch.testing.assert_close(cesc, r_cesc, rtol=1e-10, atol=1e-10)
    assert target.tolist() == labels + r_labels
    torch.testing.assert_close(out[:len(labels)], maps)  # the batch itself first, with its gradient path
    if r_gen:
        torch.testing.assert_close(out[len(labels):], torch.stack(r_gen), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(mv, r_mv, rtol=1e-10, atol=1e-10)
    else:
        assert out.shape[0] == len(labels) and mv.item() == 0.0
    params = [p for p in mod.parameters()]
    got_total = cesc + 0.37 * mv + (out[len(labels):] ** 2).sum() if r_gen else cesc
    ref_total = r_cesc + 0.37 * r_mv + (torch.stack(r_gen) ** 2).sum() if r_gen else r_cesc
    got = torch.autograd.grad(got_total, params, allow_unused=True)
    ref = torch.autograd.grad(ref_total, params, allow_unused=True)
    for p, a, b in zip(params, got, ref):
        if a is None or b is None:
            assert a is None and b is None
        else:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
    # the RSG losses never reach the backbone: the maps get gradient only through the batch passed on
    (g_maps,) = torch.autograd.grad(cesc + mv, maps, allow_unused=True)
    assert g_maps is None or g_maps.abs().max() == 0


def test_contrastive_module_gets_no_gradient_after_the_threshold():
    mod = module(epoch_thresh=0)
    maps = torch.randn(6, 4, 3, 3, dtype=torch.float64)
    _, cesc, mv, _ = mod(maps, torch.tensor([0, 1, 2, 3, 4, 0]), 1)
    grads = torch.autograd.grad(cesc + mv, list(mod.contrastive_module.parameters()), allow_unused=True)
    assert all(g is None for g in grads)
    assert mv.item() > 0


def test_head_classes_are_the_most_frequent_ties_to_the_lower_index():
    assert head_class_mask([5, 50, 20, 50, 1, 3, 2, 2, 9, 9], 0.2).tolist() == \
        [False, True, False, True, False, False, False, False, False, False]
    assert head_class_mask([10, 9, 8, 7], 0.2).sum() == 0  # int(0.8) = 0, as official


@pytest.mark.parametrize("epochs, first", [(200, 160), (100, 80), (20, 16), (7, 5), (2, 1)])
def test_generation_starts_at_the_official_threshold(epochs, first):
    method = RSG()
    method.setup(TrainInfo(class_counts=(9, 3), class_names=("a", "b"), epochs=epochs, steps_per_epoch=1, device=CPU))
    assert method.first_generation_epoch == first
    model = method.build_model(build_backbone("small-cnn"), TrainInfo(class_counts=(9, 3), class_names=("a", "b"),
                                                                       epochs=epochs, steps_per_epoch=1, device=CPU))
    assert model.rsg.epoch_thresh == first - 1  # official: generation when epoch > epoch_thresh


def test_training_step_generates_tail_samples_after_the_threshold_and_predict_skips_the_module():
    counts = (50, 40, 10, 8, 6, 5, 4, 3, 2, 2)
    info = TrainInfo(class_counts=counts, class_names=tuple("abcdefghij"), epochs=10, steps_per_epoch=1, device=CPU)
    method = RSG()
    method.setup(info)
    torch.manual_seed(0)
    model = method.build_model(build_backbone("small-cnn"), info).train()
    assert model.rsg.C == 128 and model.rsg.head_classes.tolist()[:3] == [True, True, False]
    y = torch.tensor([0, 0, 1, 2, 3, 0, 1, 5])
    batch = Batch(views=[torch.randn(8, 3, 16, 16)], labels=y, indices=torch.arange(8))
    for epoch, generated in ((7, 0.0), (8, 3.0)):  # 5 head / 3 tail: one segment of 3
        method.on_epoch_start(epoch)
        loss, logs = method.training_step(model, batch)
        assert math.isfinite(loss.item()) and logs["generated"].item() == generated
    model.eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(method.predict(model, x), model.classifier(model.tail(model.trunk(x))))


def test_fits_on_synthetic_data():
    run = Trainer(cpu_config(epochs=2), progress=False).fit(create_method("rsg", head_tail_ratio=0.5),
                                                             synthetic_data().bundle)
    assert all(math.isfinite(h["train_loss"]) for h in run.history)
    assert run.history[-1]["generated"] > 0


def test_official_call_sets_the_head_classes():
    mod = module(epoch_thresh=0, head=())
    maps = torch.randn(6, 4, 3, 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    out, _, mv, target = mod.official_forward(maps, [0, 1], y, 1)
    assert mod.head_classes.tolist() == [True, True, False, False, False]
    r_cesc, r_mv, r_gen, r_labels = naive_rsg(mod, maps, y, 1)
    assert target.tolist() == y.tolist() + r_labels and out.shape[0] == 6 + len(r_gen)
    torch.testing.assert_close(mv, r_mv, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("epochs, bounds", [(100, [(0, 80), (80, 100)]), (20, [(0, 16), (16, 20)]), (2, [(0, 1), (1, 2)])])
def test_imagenet_script_variant_resamples_from_the_first_generating_epoch(epochs, bounds):
    from ltbench.methods.ldam_drw import ldam_margins
    from ltbench.models import NormedLinear
    from ltbench.stages import stage_bounds

    info = TrainInfo(class_counts=(50, 20, 5), class_names=("a", "b", "c"), epochs=epochs, steps_per_epoch=1,
                     device=CPU)
    method = RSG(loss="ldam", resample=True)
    method.setup(info)
    stages = method.stages(info)
    assert stage_bounds(stages, epochs) == bounds
    assert [s.samplers for s in stages] == [("instance",), ("class_balanced",)]
    torch.testing.assert_close(method.margins, ldam_margins((50, 20, 5), 0.3).float())  # max_m 0.3 (ImageNet-LT)
    assert isinstance(method.build_model(build_backbone("small-cnn"), info).classifier, NormedLinear)
    assert len(RSG().stages(info)) == 1  # the CIFAR script (default): one instance-sampled stage


def test_ldam_variant_trains_on_scaled_cosine_logits():
    counts = (50, 40, 10, 8, 6)
    info = TrainInfo(class_counts=counts, class_names=tuple("abcde"), epochs=4, steps_per_epoch=1, device=CPU)
    method = RSG(loss="ldam", head_tail_ratio=0.4)
    method.setup(info)
    torch.manual_seed(0)
    model = method.build_model(build_backbone("small-cnn"), info).train()
    method.on_epoch_start(3)
    batch = Batch(views=[torch.randn(6, 3, 16, 16)], labels=torch.tensor([0, 1, 0, 2, 3, 4]), indices=torch.arange(6))
    loss, logs = method.training_step(model, batch)
    assert math.isfinite(loss.item()) and logs["generated"].item() > 0
    model.eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(method.predict(model, x), 30.0 * model(x))
