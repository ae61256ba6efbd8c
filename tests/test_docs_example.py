"""The worked example of docs/adding-a-method.md runs as written: its one ```python block
registers ``cb_ce``, which trains two CPU epochs with a finite loss and keeps the class-balanced
weights of Cui et al. (CVPR 2019) in a buffer."""
from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from ltbench import LtbenchError, create_method, get_method_class, list_methods
from ltbench.registry import unregister_method
from ltbench.trainer import Trainer
from tests.helpers import cpu_config, synthetic_data

DOC = Path(__file__).resolve().parents[1] / "docs" / "adding-a-method.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


@pytest.fixture(scope="module")
def example():
    """Execute the doc's code block (it registers ``cb_ce``); unregister afterwards."""
    blocks = python_blocks(DOC.read_text(encoding="utf-8"))
    assert len(blocks) == 1, "docs/adding-a-method.md must hold exactly one ```python block"
    assert "cb_ce" not in list_methods()
    namespace = {"__name__": "ltbench_docs_example"}
    exec(compile(blocks[0], str(DOC), "exec"), namespace)
    try:
        yield namespace
    finally:
        unregister_method("cb_ce")


def naive_cb_weights(counts: list[int], beta: float) -> list[float]:
    effective = [(1 - beta**n) / (1 - beta) for n in counts]
    raw = [1 / e for e in effective]
    return [w * len(counts) / sum(raw) for w in raw]


def test_the_example_registers_cb_ce(example):
    assert "cb_ce" in list_methods()
    assert get_method_class("cb_ce") is example["ClassBalancedCE"]
    method = create_method("cb_ce")
    assert method.name == "cb_ce"
    assert method.get_params() == {"beta": 0.9999}
    assert create_method("cb_ce", beta=0.99).get_params() == {"beta": 0.99}


def test_the_example_rejects_a_bad_beta_in_one_line(example):
    with pytest.raises(LtbenchError, match="beta"):
        create_method("cb_ce", beta=1.0)


def test_the_example_trains_two_epochs_with_class_balanced_weights(example):
    data = synthetic_data()
    method = create_method("cb_ce")
    run = Trainer(cpu_config(), progress=False).fit(method, data.bundle)

    assert len(run.history) == 2
    assert all(math.isfinite(h["train_loss"]) for h in run.history)

    counts = data.bundle.counts(data.split.train)
    assert len(set(counts)) > 1, "the synthetic training split should be long-tailed"
    expected = torch.tensor(naive_cb_weights(counts, 0.9999), dtype=torch.float64)
    weights = method.class_weights
    torch.testing.assert_close(weights.double(), expected, rtol=1e-6, atol=1e-6)
    # The rarest class weighs the most, and the weights are in the method's state.
    assert int(torch.argmax(weights)) == counts.index(min(counts))
    torch.testing.assert_close(method.state_dict()["class_weights"], weights)
