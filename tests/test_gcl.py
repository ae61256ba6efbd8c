"""GCL (methods/gcl.py): the loss against a naive float64 implementation with a fixed noise tensor, the
noise generator, and the two stages at their boundary epochs."""
from __future__ import annotations

import math

import pytest
import torch

from ltbench import LtbenchError, TrainInfo, create_method
from ltbench.methods.gcl import GCL, gcl_loss, gcl_margins, gcl_noise, noise_generator
from ltbench.trainer import Trainer
from tests.helpers import cpu_config, float64_logits, synthetic_data
from tests.test_recipes import ldam_drw_lr

COUNTS = (500, 90, 20, 4)


def naive_gcl(cos, y, counts, noise, m, s, noise_mul, weights=None, train_cls=False, gamma=0.0):
    """Loops: z̃_ic = z_ic − noise_mul·|ε_ic|·d_c/max d − m·[c = y_i]; CE(s z̃) (weighted mean), or
    mean_i (1 − p_i)^γ w_yi CE_i with p_i = exp(−w_yi CE_i) a constant (detached)."""
    d = [math.log(max(counts)) - math.log(n) for n in counts]
    total, norm = 0.0, 0.0
    for i in range(cos.shape[0]):
        row = [s * (cos[i, k] - noise_mul * abs(float(noise[i, k])) * d[k] / max(d) - (m if k == int(y[i]) else 0.0))
               for k in range(cos.shape[1])]
        ce = torch.log(sum(torch.exp(r) for r in row)) - row[int(y[i])]
        w = 1.0 if weights is None else weights[int(y[i])]
        if train_cls:  # the code's reduction="none" CE is already weighted: p = exp(−w·CE)
            p = math.exp(-float(w * ce.detach()))
            total = total + (1 - p) ** gamma * w * ce
            norm += 1.0
        else:
            total = total + w * ce
            norm += w
    return total / norm


def _cosines(seed=0, b=8, absent=None):
    z, y = float64_logits(seed=seed, b=b, absent=absent)
    return torch.tanh(z.detach()).requires_grad_(), y  # cosines in (−1, 1)


def _noise(seed=0, b=8, c=4):
    return gcl_noise((b, c), torch.Generator().manual_seed(seed)).double()


def _info(counts=COUNTS, epochs=20, seed=0):
    return TrainInfo(class_counts=counts, class_names=tuple(map(str, range(len(counts)))), epochs=epochs,
                     steps_per_epoch=1, device=torch.device("cpu"), seed=seed, lr=0.05)


def test_margins_are_log_count_gaps_in_float32():
    d = gcl_margins(COUNTS)
    assert d.dtype == torch.float32 and d[0] == 0
    expected = torch.log(torch.tensor(COUNTS).float())
    assert torch.equal(d, expected.max() - expected)


@pytest.mark.parametrize("variant", [
    dict(m=0.0, s=30.0, noise_mul=0.5),  # stage 1 (cifar_train_backbone.py)
    dict(m=0.1, s=20.0, noise_mul=0.5, train_cls=True, gamma=1.0),  # stage 2 (cifar_train_classifier.py)
    dict(m=0.5, s=30.0, noise_mul=1.0),  # GCLLoss's own defaults
    dict(m=0.1, s=20.0, noise_mul=0.5, train_cls=True, gamma=0.0),
])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("absent", [None, 3, 0])
def test_loss_matches_naive_values_and_gradients(variant, weighted, absent):
    cos, y = _cosines(seed=1, absent=absent)
    noise = _noise(seed=2)
    weights = [0.1, 0.2, 0.3, 0.4] if weighted else None
    counts64 = torch.tensor(COUNTS, dtype=torch.float64)
    d = torch.log(counts64).max() - torch.log(counts64)
    loss = gcl_loss(cos, y, d, noise, weight=None if weights is None else torch.tensor(weights, dtype=torch.float64),
                    **variant)
    ref = naive_gcl(cos, y, COUNTS, noise, weights=weights, **variant)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(torch.autograd.grad(loss, cos)[0], torch.autograd.grad(ref, cos)[0])


def test_noise_is_subtracted_from_every_entry_and_zero_for_the_head():
    cos, y = _cosines(seed=3)
    d = gcl_margins(COUNTS).double()
    big = torch.zeros(8, 4, dtype=torch.float64)
    big[:, 0] = 1.0  # noise only on the head column: d_0 = 0, so nothing changes
    assert torch.equal(gcl_loss(cos, y, d, big, m=0.0), gcl_loss(cos, y, d, torch.zeros_like(big), m=0.0))
    tail = torch.zeros(8, 4, dtype=torch.float64)
    tail[:, 3] = 1.0
    assert gcl_loss(cos, y, d, tail, m=0.0).item() != gcl_loss(cos, y, d, torch.zeros_like(tail), m=0.0).item()


def test_equal_counts_give_no_noise_term_instead_of_nan():
    cos, y = _cosines(seed=4)
    loss = gcl_loss(cos, y, gcl_margins((10, 10, 10, 10)).double(), _noise(), m=0.1)
    assert math.isfinite(loss.item())
    assert torch.equal(loss, gcl_loss(cos, y, torch.zeros(4, dtype=torch.float64), torch.zeros(8, 4), m=0.1))


def test_noise_distribution_and_generator():
    g = torch.Generator().manual_seed(0)
    noise = gcl_noise((4000, 50), g)
    assert noise.dtype == torch.float32 and noise.abs().max() <= 1.0
    assert abs(noise.mean().item()) < 0.01
    # N(0, 1/3) clamped at 3σ: std 0.3287 (a truncation at ±3σ keeps 98.6 % of the variance); 200,000 draws
    assert abs(noise.std().item() - (1 / 3) * math.sqrt(0.9866)) < 0.003
    assert torch.equal(gcl_noise((3, 4), torch.Generator().manual_seed(5)), gcl_noise((3, 4), torch.Generator().manual_seed(5)))
    a, b = noise_generator(0), noise_generator(1)
    assert not torch.equal(gcl_noise((3, 4), a), gcl_noise((3, 4), b))


@pytest.mark.parametrize("absent", [None, 1])
def test_method_loss_is_gcl_with_the_noise_of_its_generator(absent):
    method = create_method("gcl", mixup_alpha=0.0)
    method.setup(_info(seed=3))
    method.stages(_info(seed=3))
    method.on_epoch_start(0)
    cos, y = _cosines(seed=5, absent=absent)
    c32 = cos.detach().float()
    generator = noise_generator(3)
    first, second = gcl_noise((8, 4), generator), gcl_noise((8, 4), generator)
    d = gcl_margins(COUNTS)
    assert torch.equal(method.loss(c32, y), gcl_loss(c32, y, d, first, m=0.0, s=30.0, noise_mul=0.5))
    assert torch.equal(method.loss(c32, y), gcl_loss(c32, y, d, second, m=0.0, s=30.0, noise_mul=0.5))  # state moves
    method.on_epoch_start(17)  # E = 20: stage 2 from epoch 17
    third = gcl_noise((8, 4), generator)
    assert torch.equal(method.loss(c32, y), gcl_loss(c32, y, d, third, m=0.1, s=20.0, noise_mul=0.5, train_cls=True,
                                                     gamma=1.0))
    ref = naive_gcl(cos, y, COUNTS, third.double(), 0.1, 20.0, 0.5, train_cls=True, gamma=1.0)
    torch.testing.assert_close(gcl_loss(c32, y, d, third, 0.1, 20.0, 0.5, train_cls=True, gamma=1.0).double(), ref,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("epochs, first, second", [(20, 17, 3), (230, 200, 30), (7, 6, 1), (2, 1, 1), (1, 0, 1)])
def test_stages_at_their_boundary_epochs(epochs, first, second):
    method = create_method("gcl")
    info = _info(epochs=epochs)
    method.setup(info)
    stages = method.stages(info)
    assert [s.epochs for s in stages] == [first, second]
    one, two = stages
    assert not one.selectable and one.trains is None and one.samplers == ("instance",)
    assert two.selectable and two.trains == ("head",) and two.samplers == ("class_balanced",)
    assert two.lr == pytest.approx(0.02 * 0.05) and two.lr_schedule == "cosine" and two.warmup_epochs == 0
    if first:
        method.on_epoch_start(first - 1)  # the last stage-1 epoch
        assert not method.in_classifier_stage() and method.scale.item() == 30.0
    method.on_epoch_start(first)  # the first stage-2 epoch
    assert method.in_classifier_stage() and method.scale.item() == 20.0


def test_stage_two_beyond_the_budget_and_one_stage():
    method = create_method("gcl", classifier_epochs=30, classifier_stage_lr=0.002)
    info = _info(epochs=200)
    method.setup(info)
    one, two = method.stages(info)
    assert (one.epochs, two.epochs, two.extra, two.lr) == (200, 30, True, 0.002)
    method.on_epoch_start(199)
    assert not method.in_classifier_stage()
    method.on_epoch_start(200)
    assert method.in_classifier_stage()
    single = create_method("gcl", two_stage=False)
    single.setup(info)
    (only,) = single.stages(info)
    assert only.selectable and only.trains is None
    single.on_epoch_start(199)
    assert not single.in_classifier_stage() and single.scale.item() == 30.0


def test_predict_scales_the_cosine_classifier():
    method = create_method("gcl")
    info = _info()
    method.setup(info)
    method.stages(info)
    from ltbench.models import build_backbone

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = method.build_model(build_backbone("small-cnn"), info).eval()
    images = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        cos = model(images)
        assert cos.abs().max() <= 1.0 + 1e-6  # NormedLinear: cosines
        method.on_epoch_start(0)
        torch.testing.assert_close(method.predict(model, images), 30.0 * cos)
        method.on_epoch_start(19)
        torch.testing.assert_close(method.predict(model, images), 20.0 * cos)


class _Watched(GCL):
    """GCL that snapshots the backbone when stage 2 starts, and the modes and gradient flags in it."""

    def training_step(self, model, batch):
        if self.in_classifier_stage() and not hasattr(self, "snapshot"):
            self.snapshot = {k: v.clone() for k, v in model.backbone.state_dict().items()}
            self.head_start = model.head.weight.detach().clone()
            self.modes = {name: m.training for name, m in model.named_modules() if name}
            self.grad_flags = {name: p.requires_grad for name, p in model.named_parameters()}
            self.model_ref = [model]  # a list: an nn.Module attribute would become a submodule
        return super().training_step(model, batch)


def test_stage_two_trains_only_the_classifier():
    data = synthetic_data()
    method = _Watched()
    run = Trainer(cpu_config(epochs=3), progress=False).fit(method, data.bundle)  # stages 2 + 1
    assert run.best_epoch == 2  # stage 1 is not selectable
    assert [h.get("stage") for h in run.history] == ["gcl", "gcl", "classifier"]
    model = method.model_ref[0]
    final = model.backbone.state_dict()
    assert any("running_mean" in k for k in final)
    for key, value in method.snapshot.items():  # frozen, BatchNorm statistics included
        assert torch.equal(final[key], value), key
    assert not torch.equal(model.head.weight, method.head_start)
    assert method.modes["head"] and not any(mode for name, mode in method.modes.items() if name.startswith("backbone"))
    assert [name for name, flag in method.grad_flags.items() if flag] == ["head.weight"]


@pytest.mark.parametrize("params", [{"m": -0.1}, {"s": 0}, {"classifier_fraction": 1.0}, {"classifier_epochs": 0},
                                    {"classifier_stage_lr": -1.0}, {"classifier_sampler": "balanced"},
                                    {"noise_mul": float("inf")}])
def test_bad_parameters_are_one_line_errors(params):
    with pytest.raises(LtbenchError) as info:
        create_method("gcl", **params)
    assert "\n" not in str(info.value) and "gcl" in str(info.value)


def test_recipe_is_the_cifar_scripts():
    recipe = GCL.recipes["paper"]
    assert dict(recipe.params) == {"classifier_epochs": 30, "classifier_stage_lr": 0.002}
    # cifar_train_backbone.adjust_learning_rate: lr·e/5 (1-indexed e ≤ 5), ×0.1 after 160, ×0.01 after 180
    from tests.test_recipes import recipe_lrs

    official = [ldam_drw_lr(e) if e < 160 else (0.01 if e < 180 else 0.001) for e in range(200)]
    assert recipe_lrs("gcl") == pytest.approx(official, rel=1e-12, abs=0)
