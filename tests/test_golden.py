"""Golden regression: CE, focal and ECL give these exact numbers on the CPU for seed 0.

A refactor of the core (trainer, stages, loader, run store) must leave them bit-identical; a
change that alters results on purpose updates the values here *and* bumps a version in the run
key (``ltbench.runs``), and its commit says so. The values were recorded with
``python -m tests.test_golden`` (which prints the dict below) on this project's 2-core CPU
machine with torch 2.14.1.
"""
from __future__ import annotations

import hashlib
import sys

import numpy as np
import pytest

from ltbench import create_method
from ltbench.metrics import HEADLINE
from ltbench.runs import DataSpec, prepare_data
from ltbench.trainer import Trainer
from tests.helpers import cpu_config

# The embedded default (real digits, long-tailed), where the metrics are not all 100 %.
DIGITS = DataSpec(dataset="digits-lt", options={"imbalance": 10}, split="stratified", split_seed=0)


def digits_data():
    return prepare_data(DIGITS, 16)


# method -> (train losses per epoch, test headline metrics, sha256 of the test probabilities)
GOLDEN: dict[str, tuple[list[float], dict[str, float], str]] = {
    'ce': ([1.6083243233816964, 0.9431871686662946, 0.6586975370134626], {'acc': 83.09859154929578, 'sen': 60.964285714285715, 'pre': 58.16540404040404, 'f1': 58.58486811536324, 'auc': 97.45493968169316}, '84091cddd551615f'),
    'focal': ([1.115438665662493, 0.5325683185032436, 0.3288966247013637], {'acc': 86.61971830985915, 'sen': 68.28439153439152, 'pre': 69.52904040404042, 'f1': 67.02192060081772, 'auc': 97.53943142686579}, 'a876929ae5b3418a'),
    # ECL's contrastive view changed on purpose in issue 14 (crop boxes on the original geometry,
    # rotation inside the resized crop; run-key data-pipeline version 2). Before: losses
    # [5.7625258309500555, 5.255791255405971, 3.6013099125453403], test Acc 89.4366, F1 80.7186.
    'ecl': ([5.747905186244419, 5.270714351109096, 3.4777747562953403], {'acc': 88.73239436619718, 'sen': 81.26851851851852, 'pre': 80.05799755799757, 'f1': 79.50471943515423, 'auc': 98.95778516938455}, '490cdf348f1f2f50'),
}


def fingerprint(name: str, data) -> tuple[list[float], dict[str, float], str]:
    config = cpu_config(epochs=3, batch_size=64, eval_batch_size=512)
    run = Trainer(config, progress=False).fit(create_method(name), data.bundle)
    losses = [h["train_loss"] for h in run.history]
    metrics = {k: run.test[k] for k in HEADLINE}
    probs = np.ascontiguousarray(run.arrays["test_probs"], dtype=np.float32)
    return losses, metrics, hashlib.sha256(probs.tobytes()).hexdigest()[:16]


@pytest.fixture(scope="module")
def data():
    return digits_data()


@pytest.mark.parametrize("name", ["ce", "focal", "ecl"])
def test_results_are_bit_identical_to_the_recorded_ones(name, data):
    losses, metrics, probs_hash = fingerprint(name, data)
    want_losses, want_metrics, want_hash = GOLDEN[name]
    assert losses == want_losses  # exact: any change of the computation shows here first
    assert metrics == want_metrics
    assert probs_hash == want_hash


if __name__ == "__main__":  # print the values to paste into GOLDEN
    prepared = digits_data()
    for method in sys.argv[1:] or ["ce", "focal", "ecl"]:
        print(f"    {method!r}: {fingerprint(method, prepared)!r},")
