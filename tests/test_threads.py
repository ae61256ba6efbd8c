"""Torch thread counts (issue 21): recorded in every result, settable for one process, noted when a row mixes them.

On the CPU float sums depend on the thread count, so results reproduce bit for bit only at equal
counts; the count is a label of the result, not part of its run key.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ltbench.report.threads import thread_lines
from tests.test_cli import cli  # noqa: F401 — the cli fixture

BENCH = """\
name: threads
dataset: {name: synthetic}
split: {kind: grouped, seed: 0}
train: {backbone: small-cnn, image_size: 16, epochs: 1, batch_size: 32, lr: 0.05, device: cpu}
seeds: [0, 1]
methods: [ce]
"""
NOTE = "Mixed torch thread counts (CPU results reproduce only at equal counts; `--threads` fixes it): "


@pytest.fixture
def keep_threads():
    """--threads sets this (test) process's count: put it back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_train_sets_and_records_its_thread_count_outside_the_run_key(tmp_path: Path, cli, keep_threads) -> None:  # noqa: F811
    results = {}
    for threads in (1, 2):
        out = tmp_path / f"t{threads}"
        proc = cli("train", "--method", "ce", "--dataset", "synthetic", "--backbone", "small-cnn", "--image-size", "16",
                   "--epochs", "1", "--batch-size", "32", "--device", "cpu", "--threads", str(threads), "--out", str(out))
        assert proc.returncode == 0, proc.stderr
        assert torch.get_num_threads() == threads
        (path,) = out.glob("runs/ce/seed0.json")
        results[threads] = json.loads(path.read_text())
    assert results[1]["threads"] == 1 and results[2]["threads"] == 2
    assert results[1]["run_key"] == results[2]["run_key"]


def test_a_row_whose_runs_used_different_thread_counts_is_noted(tmp_path: Path, cli, keep_threads) -> None:  # noqa: F811
    """`bench --jobs 1 --threads T` (the sequential bench) sets the count; seed 0 at 1 thread, seed 1 at 2."""
    bench = tmp_path / "b.yaml"
    bench.write_text(BENCH)
    out = tmp_path / "out"
    first = cli("bench", "--benchmark", str(bench), "--out", str(out), "--quiet", "--seeds", "0", "--threads", "1")
    assert first.returncode == 0, first.stderr
    assert NOTE not in (out / "summary.md").read_text()  # one count: no note
    second = cli("bench", "--benchmark", str(bench), "--out", str(out), "--quiet", "--jobs", "1", "--threads", "2")
    assert second.returncode == 0 and "1 run(s) trained, 1 skipped" in second.stdout, second.stdout + second.stderr
    assert [json.loads((out / "runs" / "ce" / f"seed{s}.json").read_text())["threads"] for s in (0, 1)] == [1, 2]
    line = NOTE + "ce (1 thread: seed 0; 2 threads: seed 1)."
    assert line in (out / "summary.md").read_text().splitlines()
    rebuilt = cli("report", str(out))  # from the result files alone
    assert rebuilt.returncode == 0 and line in (out / "summary.md").read_text().splitlines()


def test_thread_lines_leave_out_gpu_runs_and_results_without_a_count() -> None:
    def run(method, seed, threads, device="cpu"):
        return {"method": method, "seed": seed, "device": device, **({"threads": threads} if threads else {})}

    assert thread_lines([run("ce", 0, 1), run("ce", 1, 1), run("ce", 2, None)]) == []
    assert thread_lines([run("ce", 0, 1, "cuda"), run("ce", 1, 8, "cuda:0")]) == []
    assert thread_lines([run("ce", 10, 2), run("ce", 2, 2), run("ce", 0, 1), run("focal", 0, 4)]) == [
        NOTE + "ce (1 thread: seed 0; 2 threads: seeds 2, 10).", ""]
