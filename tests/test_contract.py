"""The contract every registered method meets (after scikit-learn's estimator checks).

Each method builds with its defaults, trains two epochs on synthetic data on the CPU with a
finite loss (also under bf16 autocast, as on CUDA), round-trips its state dict, and gives
identical results for the same seed.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ltbench import LtbenchError, Method, create_method, get_method_class, list_methods
from ltbench.runs import DataSpec, prepare_data
from ltbench.trainer import Trainer
from ltbench.method import TrainInfo
from tests.helpers import cpu_config, synthetic_data, tiny_clip

METHODS = list_methods()
#: A tiny random-init model per backbone family a method may require (``Method.requires``, e.g. CLIP's text
#: tower): such a method meets the contract there instead of on small-cnn.
TINY_BACKBONES = {"open_clip": tiny_clip}


def config_for(name: str, **overrides):
    """The CPU config of a method's contract runs: small-cnn, or a tiny model of the family it requires."""
    requires = get_method_class(name).requires
    return cpu_config(backbone=TINY_BACKBONES[requires[0]]() if requires else "small-cnn", **overrides)


def info_of(data, epochs: int = 2) -> TrainInfo:
    return TrainInfo(class_counts=tuple(data.bundle.counts(data.split.train)),
                     class_names=tuple(data.bundle.class_names), epochs=epochs, steps_per_epoch=1,
                     device=torch.device("cpu"))


def trains(name: str, data) -> bool:
    """False for a method whose ``stages`` is empty (zero-shot): the trainer tests it as built, one validation."""
    method = create_method(name)
    method.setup(info_of(data))
    return bool(method.stages(info_of(data)))


@pytest.fixture(scope="module")
def data():
    return synthetic_data()


def test_the_core_methods_are_registered():
    assert {"ce", "focal"} <= set(METHODS)


@pytest.mark.parametrize("name", METHODS)
def test_hyperparameters_are_explicit_init_arguments(name):
    method = create_method(name)
    assert isinstance(method, Method) and method.name == name
    params = method.get_params()
    # scikit-learn's convention: rebuilding from get_params gives the same parameters
    assert create_method(name, **params).get_params() == params


@pytest.mark.parametrize("name", METHODS)
def test_two_epochs_on_cpu_are_finite_and_reproducible(name, data):
    runs = [Trainer(config_for(name), progress=False).fit(create_method(name), data.bundle) for _ in range(2)]
    for run in runs:
        # + a probe stage's one record (issue 20) or a post-hoc calibration's (Method.calibrate, issue 24)
        assert sum("probe" not in h and "calibration" not in h for h in run.history) == (2 if trains(name, data) else 1)
        assert all(math.isfinite(h["train_loss"]) for h in run.history if h.get("stage") != "untrained")
        assert run.arrays["test_probs"].shape == (len(data.split.test), 4)
        np.testing.assert_allclose(run.arrays["test_probs"].sum(1), 1.0, rtol=1e-5)
    assert [h.get("train_loss") for h in runs[0].history] == [h.get("train_loss") for h in runs[1].history]
    np.testing.assert_array_equal(runs[0].arrays["test_probs"], runs[1].arrays["test_probs"])
    assert runs[0].test == runs[1].test


@pytest.mark.parametrize("name", METHODS)
def test_trains_under_bf16_autocast(name, data):
    # The CUDA path trains under bf16 autocast; on the CPU the same context exercises the
    # method's dtype handling (losses in float32, no fp16 loss scaling).
    with torch.autocast("cpu", dtype=torch.bfloat16):
        run = Trainer(config_for(name, epochs=1), progress=False).fit(create_method(name), data.bundle)
    assert all(math.isfinite(h["train_loss"]) for h in run.history if h.get("stage") != "untrained")
    assert np.isfinite(run.arrays["test_probs"]).all()
    np.testing.assert_allclose(run.arrays["test_probs"].sum(1), 1.0, rtol=1e-3)


@pytest.mark.parametrize("name", METHODS)
def test_state_dict_round_trips(name, data):
    trained = create_method(name)
    Trainer(config_for(name, epochs=1), progress=False).fit(trained, data.bundle)
    state = trained.state_dict()
    fresh = create_method(name)
    from ltbench.method import TrainInfo

    info = TrainInfo(class_counts=tuple(data.bundle.counts(data.split.train)),
                     class_names=tuple(data.bundle.class_names), epochs=1, steps_per_epoch=1,
                     device=torch.device("cpu"))
    fresh.setup(info)
    fresh.load_state_dict(state)
    for key, value in fresh.state_dict().items():
        if torch.is_tensor(value):
            torch.testing.assert_close(value, state[key])
    assert get_method_class(name) is type(fresh)


@pytest.mark.parametrize("name", [n for n in METHODS if get_method_class(n).requires])
def test_a_method_refuses_a_backbone_it_does_not_require_in_one_line(name, data):
    with pytest.raises(LtbenchError) as error:
        Trainer(cpu_config(epochs=1), progress=False).fit(create_method(name), data.bundle)
    message = str(error.value)
    assert "\n" not in message and get_method_class(name).requires[0] in message and "small-cnn" in message


# --- every method on a tiny random-init ViT (issue 23) ------------------------------------------------
#: timm's ViT-Ti/16 (12 blocks, width 192, random init) at 32 px: 4 patch tokens and the class token.
VIT = "timm:vit_tiny_patch16_224"
#: A smaller synthetic set than the CNN runs' (66 training images): one epoch is 3 steps of 22.
VIT_DATA = DataSpec(dataset="synthetic", options={"num_classes": 4, "n_max": 50, "imbalance": 4.0},
                    split="grouped", split_seed=0)
VIT_METHODS = [n for n in METHODS if not getattr(get_method_class(n), "requires", ())]  # not CLIP-only methods
#: Methods built on a CNN's feature maps refuse a transformer in one line: HDCSA spatial attention gates the
#: BatchNorms of residual blocks; RSG transfers variation on the trunk's map before the last stage.
CNN_ONLY = {"rotation_hashing": "ResNet-specific", "rsg": "rsg: "}


@pytest.fixture(scope="module")
def vit_data():
    return prepare_data(VIT_DATA, 32)


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", VIT_METHODS)
def test_one_epoch_on_a_tiny_vit(name, bf16, vit_data):
    """Feature width and layers come from the model: every method trains on a transformer (one thread:
    thread start-up dominates these tiny steps on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = cpu_config(backbone=VIT, image_size=32, epochs=1, batch_size=22)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if name in CNN_ONLY:
                from ltbench.errors import LtbenchError

                with pytest.raises(LtbenchError) as error:
                    Trainer(config, progress=False).fit(create_method(name), vit_data.bundle)
                assert "\n" not in str(error.value) and CNN_ONLY[name] in str(error.value)
                return
            run = Trainer(config, progress=False).fit(create_method(name), vit_data.bundle)
    finally:
        torch.set_num_threads(threads)
    assert all(math.isfinite(h["train_loss"]) for h in run.history)
    assert run.arrays["test_probs"].shape == (len(vit_data.split.test), 4)
    assert np.isfinite(run.arrays["test_probs"]).all()
    np.testing.assert_allclose(run.arrays["test_probs"].sum(1), 1.0, rtol=1e-3 if bf16 else 1e-5)
    assert 0 < run.params["trainable"] <= run.params["total"]
