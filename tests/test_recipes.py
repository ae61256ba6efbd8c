"""Paper recipes (ltbench/recipes.py, docs/protocol.md "Paper recipes"): every recipe of every registered
method is valid data, the schedules translated to per-epoch settings give the official code's learning
rates, and ``ltbench methods --recipes`` lists them."""
from __future__ import annotations

import inspect
import re
import warnings
from bisect import bisect_right
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from ltbench import config as cfg
from ltbench import typed
from ltbench.cli import cli
from ltbench.errors import LtbenchError
from ltbench.recipes import Recipe
from ltbench.registry import create_method, get_method_class, list_methods
from ltbench.schedules import stage_lr
from ltbench.trainer import TrainConfig

# A small base the recipe's settings go over (as a benchmark row's settings go over the file's).
BASE = {"backbone": "small-cnn", "image_size": 32, "epochs": 2, "device": "cpu"}
RECIPES = [(name, label, recipe) for name in list_methods() for label, recipe in get_method_class(name).recipes.items()]
# Built-in methods without a recipe: Hybrid-SC has no official code, and its paper's settings could not be read;
# zero-shot CLIP trains nothing, so no training setting of a recipe applies.
WITHOUT_RECIPE = {"hybrid_sc", "zeroshot_clip"}
# Keywords of the SGD linear evaluation (methods/scl.py): inert unless probe="sgd".
SGD_PROBE_KEYS = ("probe_epochs", "classifier_lr", "classifier_weight_decay", "probe_milestones")


def check_recipe(name: str, recipe: object) -> tuple[TrainConfig, torch.nn.Module]:
    """The checks a recipe must pass; raises on the first problem, returns the config and the method."""
    if not isinstance(recipe, Recipe) or not isinstance(recipe.source, str) or not recipe.source.strip():
        raise ValueError(f"{name}: not a Recipe with a source: {recipe!r}")
    label = lambda key, value: f"{name} recipe {key}={value!r}"  # noqa: E731
    train = typed.read(cfg.train_settings(), recipe.train, label)  # each key a TrainConfig field, each value converts
    config = TrainConfig(**{**BASE, **train})  # and the whole configuration meets its rules
    for key, value in recipe.train.items():  # written as it runs: nothing converted on the way
        if getattr(config, key) != value or type(getattr(config, key)) is not type(value):
            raise ValueError(f"{name}: train {key}={value!r} runs as {getattr(config, key)!r}")
    keywords = inspect.signature(get_method_class(name).__init__).parameters
    if set(recipe.params) - set(keywords):
        raise ValueError(f"{name}: not __init__ keywords: {sorted(set(recipe.params) - set(keywords))}")
    params = cfg.method_params(name, dict(recipe.params), label)
    if params != dict(recipe.params):
        raise ValueError(f"{name}: params {dict(recipe.params)} run as {params}")
    if any(key in recipe.params for key in SGD_PROBE_KEYS) and recipe.params.get("probe") != "sgd":
        raise ValueError(f"{name}: SGD linear-evaluation settings without probe='sgd' have no effect")
    return config, create_method(name, **params)


@pytest.mark.parametrize("name, label, recipe", RECIPES, ids=[f"{n}-{lab}" for n, lab, _ in RECIPES])
def test_every_recipe_is_valid_data(name, label, recipe):
    _, method = check_recipe(name, recipe)
    assert isinstance(label, str) and label
    for key, value in recipe.params.items():  # the method holds what the recipe says
        assert getattr(method, key) == value
    assert recipe.source in recipe.describe()


@pytest.mark.parametrize("broken", [
    Recipe(source="", train={"lr": 0.1}),  # no source
    Recipe(source="x", train={"learning_rate": 0.1}),  # not a TrainConfig field
    Recipe(source="x", train={"lr": "fast"}),  # does not convert
    Recipe(source="x", train={"lr_milestones": (180, 160)}),  # breaks a rule
    Recipe(source="x", train={"warmup_start_factor": 0.0}),  # breaks a rule
    Recipe(source="x", train={"epochs": "200"}),  # converts, so it is not what the recipe shows
    Recipe(source="x", params={"gama": 1.0}),  # not an __init__ keyword
    Recipe(source="x", params={"gamma": "one"}),  # does not convert
], ids=["source", "field", "convert", "rule", "rule2", "silent", "keyword", "param"])
def test_check_recipe_rejects_broken_recipes(broken):
    with pytest.raises((ValueError, LtbenchError)):
        check_recipe("focal", broken)


def test_probe_settings_need_the_sgd_probe():
    with pytest.raises(ValueError, match="probe='sgd'"):
        check_recipe("scl", Recipe(source="x", params={"classifier_lr": 5.0}))
    check_recipe("scl", Recipe(source="x", params={"probe": "sgd", "classifier_lr": 5.0}))


def test_every_builtin_method_declares_its_own_paper_recipe():
    builtin = [n for n in list_methods() if get_method_class(n).__module__.startswith("ltbench.methods.")]
    assert len(builtin) >= 16
    assert {n for n in builtin if "paper" not in get_method_class(n).recipes} == WITHOUT_RECIPE
    for name in builtin:  # declared on the class itself: an inherited recipe is another method's paper
        cls = get_method_class(name)
        assert not cls.recipes or "recipes" in vars(cls), name


# --- the translated schedules against the official code's per-epoch learning rates ---------------------
def ldam_drw_lr(epoch: int, lr: float = 0.1) -> float:
    """kaidic/LDAM-DRW cifar_train.py ``adjust_learning_rate`` (0-indexed epoch; 5-epoch warm-up, 160/180)."""
    epoch = epoch + 1
    if epoch <= 5:
        return lr * epoch / 5
    if epoch > 180:
        return lr * 0.0001
    if epoch > 160:
        return lr * 0.01
    return lr


def bbn_lr(epoch: int, lr: float = 0.1) -> float:
    """Megvii-Nanjing/BBN ``WarmupMultiStepLR.get_lr`` (factor 1/3, 5 epochs, steps 120/160 × 0.01), stepped
    at the start of each 1-indexed epoch (main/train.py), so ``last_epoch`` is the 1-indexed epoch."""
    last_epoch = epoch + 1
    factor = 1.0
    if last_epoch < 5:
        alpha = last_epoch / 5
        factor = (1.0 / 3) * (1 - alpha) + alpha
    return lr * factor * 0.01 ** bisect_right([120, 160], last_epoch)


def torch_multistep_lrs(lr: float, milestones: list[int], gamma: float, epochs: int) -> list[float]:
    """The lr of each epoch with torch's own MultiStepLR stepped at the start of each 1-indexed epoch
    (yaopengUSTC/mbit-skin-cancer main/train.py: ``for epoch in range(1, E + 1): scheduler.step()``)."""
    optimizer = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=lr)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=gamma)
    out = []
    with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()": the code's order
        warnings.simplefilter("ignore")
        for _ in range(epochs):
            scheduler.step()
            out.append(optimizer.param_groups[0]["lr"])
    return out


def rotation_hashing_lrs(lr: float = 0.01, epochs: int = 120) -> list[float]:
    """zylbuaa/dermoscopic_img_retrieval train.py: ``if epoch in [40, 60, 80, 100]: lr *= 0.1`` (0-indexed)."""
    out = []
    for epoch in range(epochs):
        if epoch in (40, 60, 80, 100):
            lr *= 0.1
        out.append(lr)
    return out


def logit_adjust_lr(lr_epoch: float, lr: float = 0.1) -> float:
    """google-research logit_adjustment ``utils.LearningRateSchedule`` (cifar10-lt) at a fractional epoch."""
    schedule = [(1.0, 20), (0.1, 604), (0.01, 926), (0.001, 1128)]
    value = lr * schedule[0][0] * lr_epoch / schedule[0][1]
    for mult, start in schedule:
        if lr_epoch >= start:
            value = lr * mult
    return value


def torch_cosine_lrs(lr: float, epochs: int) -> list[float]:
    """shijxcs/LIFT trainer.py: ``CosineAnnealingLR(optim, num_epochs)`` stepped after each epoch."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    out = []
    for _ in range(epochs):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def recipe_lrs(name: str) -> list[float]:
    """The per-epoch lr of a one-stage run under the method's paper recipe, as the trainer computes it."""
    c = TrainConfig(**{**BASE, **get_method_class(name).recipes["paper"].train})
    return [stage_lr(c.lr, e, c.epochs, c.lr_schedule, c.lr_milestones, c.lr_gamma, c.warmup_epochs,
                     c.warmup_start_factor) for e in range(c.epochs)]


@pytest.mark.parametrize("name, official", [
    ("ce", [ldam_drw_lr(e) for e in range(200)]),
    ("focal", [ldam_drw_lr(e) for e in range(200)]),
    ("ldam_drw", [ldam_drw_lr(e) for e in range(200)]),
    ("bbn", [bbn_lr(e) for e in range(200)]),
    ("mwnl", torch_multistep_lrs(4e-4, [30, 40, 50, 60], 0.1, 70)),
    ("rotation_hashing", rotation_hashing_lrs()),
    # per-step warm-up: each warm-up epoch at the ramp's value at its end; the steps from their first epoch
    ("logit_adjust", [logit_adjust_lr(e + 1 if e < 20 else e) for e in range(1241)]),
    ("lift", torch_cosine_lrs(0.01, 10)),
])
def test_recipe_schedule_gives_the_official_per_epoch_lr(name, official):
    # Two computations of the same rates in different operation orders (e.g. 0.1·0.1 vs 0.1²): a relative
    # tolerance of 1e-12, far below any difference a schedule error would make.
    assert recipe_lrs(name) == pytest.approx(official, rel=1e-12, abs=0)


# --- the documentation -------------------------------------------------------------------------------
def docs_recipe_rows() -> dict[str, list[str]]:
    """The cells of docs/protocol.md's "Paper recipes" table, by method name."""
    text = (Path(__file__).parents[1] / "docs" / "protocol.md").read_text()
    section = text.split("\n## Paper recipes\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `"):
            rows[cells[0].strip("`")] = cells
    return rows


def numbers(cell: str) -> list[float]:
    return [float(x) for x in re.findall(r"\d+(?:\.\d+)?(?:e-?\d+)?", cell)]


def test_docs_table_matches_the_recipes():
    rows = docs_recipe_rows()
    builtin = [n for n in list_methods() if get_method_class(n).__module__.startswith("ltbench.methods.")]
    assert set(rows) == set(builtin)
    for name in builtin:
        recipes = get_method_class(name).recipes
        if "paper" not in recipes:
            assert "no recipe" in rows[name][-1], name
            continue
        c = TrainConfig(**{**BASE, **recipes["paper"].train})
        optimiser, schedule = rows[name][1], rows[name][2]
        assert optimiser.lower().startswith(c.optimizer), name
        assert {c.lr, c.batch_size, c.weight_decay} <= set(numbers(optimiser)), name
        expected = {c.epochs, *c.lr_milestones} | ({c.warmup_epochs} if c.warmup_epochs else set())
        assert expected <= set(numbers(schedule)), name
        assert {"step": "×", "cosine": "cosine", "constant": "constant"}[c.lr_schedule] in schedule, name


# --- the command line ---------------------------------------------------------------------------------
def test_methods_recipes_prints_a_line_per_recipe():
    result = CliRunner().invoke(cli, ["methods", "--recipes"])
    assert result.exit_code == 0, result.output
    expected = []
    for name in list_methods():
        recipes = get_method_class(name).recipes
        expected += [f"{name:14s} {label}: {recipe.describe()}" for label, recipe in recipes.items()]
        expected += [] if recipes else [f"{name:14s} no recipe beyond the shared protocol"]
    assert result.output.splitlines() == expected
    assert "hybrid_sc      no recipe beyond the shared protocol" in expected
    assert any(line.startswith("scl            paper: ") and "HobbitLong/SupContrast" in line for line in expected)


def test_plain_methods_listing_is_unchanged():
    result = CliRunner().invoke(cli, ["methods"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line.split()[0] for line in lines] == list_methods()
    focal = next(line for line in lines if line.startswith("focal "))
    assert focal == "focal          gamma=2.0, class_weights=None, label_smoothing=0.0, sampler='instance', " \
                    "mixup_alpha=0.0"
    assert not any("paper:" in line or "recipe" in line for line in lines)


# ----------------------------------------------------------------------------- a row's own train:

def _bench(tmp_path, row: str):
    from ltbench.bench import load_benchmark

    path = tmp_path / "b.yaml"
    path.write_text("dataset: digits-lt\ntrain: {epochs: 3}\nmethods:\n  ce: {}\n" + row)
    return load_benchmark(path)


def test_a_row_train_sets_that_rows_settings_over_its_recipe(tmp_path):
    bench = _bench(tmp_path, "  zs: {method: zeroshot_clip, train: {backbone: 'open_clip:ltbench-tiny-clip'}}\n"
                             "  ld: {method: ldam_drw, recipe: paper, train: {epochs: 4}}\n")
    assert bench.row_config(bench.methods["ce"]).backbone == "small-cnn-16"
    assert bench.row_config(bench.methods["zs"]).backbone == "open_clip:ltbench-tiny-clip"
    assert bench.row_config(bench.methods["zs"]).epochs == 3  # the file's, not overridden
    ld = bench.row_config(bench.methods["ld"])
    assert ld.epochs == 4 and ld.lr == get_method_class("ldam_drw").recipes["paper"].train["lr"]


@pytest.mark.parametrize("row, message", [
    ("  x: {method: ce, train: 3}\n", "methods.x.train = 3: expected a mapping of training settings"),
    ("  x: {method: ce, train: {image_size: 32}}\n", "methods.x.train.image_size: a bench-wide setting"),
    ("  x: {method: ce, train: {backbone: nope}}\n", "methods.x: train"),
])
def test_a_bad_row_train_is_one_line(tmp_path, row, message):
    with pytest.raises(LtbenchError, match=re.escape(message)) as info:
        _bench(tmp_path, row)
    assert "\n" not in str(info.value)


def test_the_report_names_rows_with_their_own_settings():
    from ltbench.launchers.grid import row_labels
    from ltbench.bench.file import MethodRow
    from ltbench.recipes import recipe_lines

    labels = row_labels(MethodRow("zs", "zeroshot_clip", train={"backbone": "open_clip:x"}))
    assert labels == {"row_train": {"backbone": "open_clip:x"}}
    (line, _) = recipe_lines([{"method": "zs", **labels}, {"method": "ce"}])
    assert "`zs`: backbone open_clip:x" in line and "Every other row: the shared protocol" in line
