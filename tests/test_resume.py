"""Per-epoch checkpoints (issue 9): a run resumed from any epoch's checkpoint equals an uninterrupted one.

In-process: one uninterrupted run with a real CheckpointStore keeps a copy of every epoch's
checkpoint file; a fresh method + trainer resumed from each copy must reach the same history
(timings aside), best epoch, metrics and probabilities, bit for bit, on the CPU. Methods chosen for
their state: CE (plain), ECL (its own proxy optimiser in extra state, F1 weights in buffers), TSC
moco (queues in buffers, a frozen key encoder, two stages: resumption inside and across stages).
Subprocess tests (real SIGKILLs of `ltbench bench`) are at the end.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ltbench import create_method
from ltbench.store.checkpoint import CheckpointStore
from ltbench.trainer import Trainer
from tests.helpers import cpu_config, synthetic_data

LTBENCH = Path(sys.executable).parent / "ltbench"
TIMING = ("train_time_s",)


@pytest.fixture(scope="module")
def data():
    return synthetic_data()


class CopyingStore(CheckpointStore):
    """A real store that also keeps a copy of each epoch's checkpoint file (epoch e -> copies[e])."""

    def __init__(self, base: Path, key: str) -> None:
        super().__init__(base, key)
        self.copies: list[Path] = []

    def save(self, state: dict) -> None:
        super().save(state)
        copy = self.latest.with_name(f"epoch{state['epoch']}.ckpt")
        shutil.copyfile(self.latest, copy)
        self.copies.append(copy)


def untimed(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in TIMING} for h in history]


def assert_same_run(a, b) -> None:
    assert untimed(a.history) == untimed(b.history)
    assert a.best_epoch == b.best_epoch
    assert a.val == b.val and a.test == b.test
    for key in a.arrays:
        np.testing.assert_array_equal(a.arrays[key], b.arrays[key])


# TSC: stage 0 = epochs 0-1, stage 1 = epoch 2 (beyond the budget), so it resumes inside a stage and at a
# stage start. SCL: the L-BFGS probe after the last epoch, also from the last checkpoint (a kill during the probe).
CASES = [("ce", {}, 2), ("ecl", {}, 2), ("scl", {}, 2),
         pytest.param("tsc", {"variant": "moco", "queue_size": 64, "probe": "sgd", "probe_epochs": 1}, 2,
                      marks=pytest.mark.slow)]


@pytest.mark.parametrize("name,params,epochs", CASES, ids=["ce", "ecl", "scl", "tsc"])
def test_resuming_from_every_epoch_equals_the_uninterrupted_run(name, params, epochs, data, tmp_path):
    config = cpu_config(epochs=epochs)
    store = CopyingStore(tmp_path / "run", "key")
    saved_run = Trainer(config, progress=False).fit(create_method(name, **params), data.bundle, checkpoint=store)
    if name == "ce":  # writing checkpoints changes nothing (the golden test covers runs without a store)
        assert_same_run(Trainer(config, progress=False).fit(create_method(name), data.bundle), saved_run)
    plain_run = saved_run
    assert len(store.copies) == sum("probe" not in h for h in saved_run.history) and store.previous.is_file()
    for epoch, copy in enumerate(store.copies):  # the last too: a kill after the last epoch (probe, test)
        resumed_store = CheckpointStore(tmp_path / f"resume{epoch}", "key")
        shutil.copyfile(copy, resumed_store.latest)
        resumed = Trainer(config, progress=False).fit(create_method(name, **params), data.bundle,
                                                      checkpoint=resumed_store)
        assert resumed_store.resumed_from == resumed_store.latest
        assert_same_run(plain_run, resumed)


def test_a_corrupt_checkpoint_falls_back_to_the_previous_one_then_to_scratch(data, tmp_path):
    config = cpu_config(epochs=2, batch_size=32)
    store = CopyingStore(tmp_path / "run", "key")
    plain_run = Trainer(config, progress=False).fit(create_method("ce"), data.bundle, checkpoint=store)
    warnings: list[str] = []
    resumed = CheckpointStore(tmp_path / "again", "key", warn=warnings.append)
    shutil.copyfile(store.copies[0], resumed.previous)
    resumed.latest.write_bytes(store.copies[1].read_bytes()[:1000])  # truncated, as a full disk leaves it
    run = Trainer(config, progress=False).fit(create_method("ce"), data.bundle, checkpoint=resumed)
    assert resumed.resumed_from == resumed.previous
    assert len(warnings) == 1 and "unreadable" in warnings[0] and str(resumed.latest) in warnings[0]
    assert_same_run(plain_run, run)

    garbage = CheckpointStore(tmp_path / "garbage", "key", warn=warnings.append)
    garbage.latest.write_bytes(b"not a checkpoint")
    torch.save({"version": 1, "run_key": "other"}, garbage.previous)  # another configuration's
    run = Trainer(config, progress=False).fit(create_method("ce"), data.bundle, checkpoint=garbage)
    assert garbage.resumed_from is None and "another configuration" in warnings[-1]
    assert_same_run(plain_run, run)


def test_checkpoints_load_with_weights_only(data, tmp_path):
    store = CheckpointStore(tmp_path / "run", "key")
    Trainer(cpu_config(epochs=1), progress=False).fit(create_method("ecl"), data.bundle, checkpoint=store)
    state = torch.load(store.latest, weights_only=True)
    assert state["epoch"] == 0 and state["run_key"] == "key"
    assert set(state) >= {"model", "method", "optimizer", "streams", "rng", "history", "best", "stage"}
    assert "_extra_state" in state["method"]  # ECL's proxy optimiser travels too


# ------------------------------------------------------------------- real processes, real SIGKILLs

TINY = """\
name: tiny
dataset: {name: synthetic}
split: {kind: grouped, seed: 0}
train: {backbone: small-cnn, image_size: 16, epochs: 2, batch_size: 32, lr: 0.05, device: cpu}
seeds: [0, 1]
methods:
  ce: {}
  focal: {gamma: 1.0}
"""
# Kill points of consecutive attempts (ltbench/store/checkpoint.py's test hook; counts start anew in each
# process; 4 steps per epoch): mid-epoch 1 of the first run; while writing the first checkpoint
# (of a resumed run); between a run's arrays and its JSON; after another run's last epoch, before
# its test and result.
KILLS = ["step:6", "checkpoint:1", "result:2", "epoch:2"]


def bench_cmd(bench: Path, out: Path) -> list[str]:
    return [str(LTBENCH), "bench", "--benchmark", str(bench), "--out", str(out), "--quiet"]


def comparable(out: Path) -> dict:
    """Every result without its timings, every saved array, and the summary."""
    found = {}
    for path in sorted(out.glob("runs/*/*.json")):
        result = json.loads(path.read_text())
        result.pop("wall_time_s")
        result.pop("memory", None)  # peak memory of the process: differs between attempts
        result["history"] = untimed(result["history"])
        found[str(path.relative_to(out))] = result
    for path in sorted(out.glob("runs/*/*.npz")):
        with np.load(path) as arrays:
            found[str(path.relative_to(out))] = {k: arrays[k].tobytes() for k in arrays}
    found["summary.md"] = (out / "summary.md").read_text()
    return found


@pytest.mark.slow
def test_a_bench_killed_at_four_moments_ends_as_an_uninterrupted_one(tmp_path):
    bench = tmp_path / "tiny.yaml"
    bench.write_text(TINY)
    env = {**os.environ, "LTBENCH_CACHE": str(tmp_path / ".cache")}
    env.pop("LTBENCH_TEST_KILL_AT", None)
    reference = subprocess.Popen(bench_cmd(bench, tmp_path / "reference"), env=env, cwd=tmp_path,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, outputs = tmp_path / "out", []
    for kill in KILLS:
        proc = subprocess.run(bench_cmd(bench, out), env={**env, "LTBENCH_TEST_KILL_AT": kill}, cwd=tmp_path,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == -signal.SIGKILL, (kill, proc.stdout, proc.stderr)
        outputs.append(proc.stdout)
        for path in out.glob("runs/*/*.json"):  # nothing half-written where a result is read
            json.loads(path.read_text())
        if kill.startswith("checkpoint"):  # killed mid-write: a stray temporary file, the older checkpoint kept
            assert list(out.glob("runs/*/.seed*.ckpt.*.tmp")) and list(out.glob("runs/*/seed*.ckpt"))
    assert list(out.glob("runs/*/*.ckpt*"))  # the last attempt left a checkpoint to resume from
    final = subprocess.run(bench_cmd(bench, out), env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr
    outputs.append(final.stdout)
    ref_stdout, ref_stderr = reference.communicate(timeout=600)
    assert reference.returncode == 0, ref_stderr
    for row, seed in [("ce", 0), ("ce", 1), ("focal", 0), ("focal", 1)]:  # each run trained exactly once
        assert sum(f"{row} seed {seed}: trained" in line for o in outputs for line in o.splitlines()) == 1
    assert comparable(out) == comparable(tmp_path / "reference")
    leftovers = [p.name for p in out.glob("runs/*/*") if p.suffix not in (".json", ".npz")]
    leftovers += [p.name for p in out.glob("runs/*/.*")]
    assert leftovers == []  # checkpoints, claims and temporary files are gone
