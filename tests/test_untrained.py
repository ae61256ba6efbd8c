"""A method without stages trains nothing (zero-shot, issue 23): the model as built is validated once, is the
checkpoint, and is tested; no parameter moves and the history holds one record."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ltbench import Method
from ltbench.models import build_backbone
from ltbench.trainer import Trainer
from ltbench.trainer.loop import seed_everything
from tests.helpers import cpu_config, synthetic_data


class Untrained(Method):
    def stages(self, info):
        return []

    def training_step(self, model, batch):  # never called
        raise AssertionError("a method without stages has no training step")


@pytest.fixture(scope="module")
def data():
    return synthetic_data()


def test_a_method_without_stages_tests_the_model_as_built(data):
    trainer = Trainer(cpu_config(epochs=3), progress=False)
    run = trainer.fit(Untrained(), data.bundle)
    assert len(run.history) == 1 and run.best_epoch == 0
    record = run.history[0]
    assert record["stage"] == "untrained" and record["lr"] == 0.0 and "train_loss" not in record
    # the trainer's order with the same seed builds the same model: its test probabilities, bit for bit
    built = Untrained()
    seed_everything(0)
    built.setup(_info(data))
    model = built.build_model(build_backbone("small-cnn"), _info(data))
    probs = trainer.evaluate(built, model, data.bundle, data.split.test)["probs"]
    np.testing.assert_array_equal(run.arrays["test_probs"], probs)
    for key, value in model.state_dict().items():  # nothing moved
        torch.testing.assert_close(trainer.model.state_dict()[key], value, rtol=0, atol=0)


def _info(data):
    from ltbench.method import TrainInfo

    return TrainInfo(class_counts=tuple(data.bundle.counts(data.split.train)),
                     class_names=tuple(data.bundle.class_names), epochs=3, steps_per_epoch=1,
                     device=torch.device("cpu"))
