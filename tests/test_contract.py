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
