"""Failed runs are isolated, stale results never mixed, bad input is one line (issue 9).

The bench runs in this process through the CLI's entry point (``ltbench.cli.main``), so the
test-only methods registered here are the real registry's entries (unregistered afterwards).
"""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch.nn.functional as F

from ltbench import LossMethod
from ltbench.registry import register_method, unregister_method
from tests.test_cli import assert_one_line_error, run_inline

BENCH = """\
name: fail
dataset: {name: synthetic}
split: {kind: grouped, seed: 0}
train: {backbone: small-cnn, image_size: 16, epochs: 2, batch_size: 32, lr: 0.05, device: cpu}
seeds: [0, 1]
methods: [%s]
"""


class NanAfterFirstEpoch(LossMethod):
    """Test-only: cross-entropy, then NaN from epoch 1 on."""

    def loss(self, logits, labels):
        loss = F.cross_entropy(logits, labels)
        return loss * float("nan") if self.epoch >= 1 else loss


class Raises(LossMethod):
    def loss(self, logits, labels):
        raise RuntimeError("boom in the loss")


@pytest.fixture
def methods():
    register_method("test-nan")(NanAfterFirstEpoch)
    register_method("test-raises")(Raises)
    yield
    unregister_method("test-nan")
    unregister_method("test-raises")


@pytest.fixture
def cli(capsys, monkeypatch, tmp_path):
    return lambda *args: run_inline(*args, capsys=capsys, monkeypatch=monkeypatch, cwd=tmp_path)


@pytest.mark.slow
def test_a_nan_run_and_a_raising_run_are_recorded_and_the_bench_goes_on(tmp_path, cli, methods):
    bench = tmp_path / "b.yaml"
    bench.write_text(BENCH % "test-nan, ce, test-raises")
    out = tmp_path / "out"
    proc = cli("bench", "--benchmark", str(bench), "--out", str(out), "--quiet", "--seeds", "0")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "[1/3] test-nan seed 0: FAILED in epoch 1: method 'test-nan': the training loss became nan" in proc.stdout
    assert "[2/3] ce seed 0: trained" in proc.stdout  # the bench went on
    assert "[3/3] test-raises seed 0: FAILED in epoch 0: RuntimeError: boom in the loss" in proc.stdout
    assert "1 run(s) trained, 0 skipped; 2 failed" in proc.stdout
    assert proc.stderr.strip().splitlines()[-1].startswith("ltbench: error: 3 runs: 1 finished, 2 failed")
    record = json.loads((out / "runs" / "test-nan" / "seed0.failed.json").read_text())
    assert record["epoch"] == 1 and "nan" in record["reason"] and record["log"] == "seed0.failed.log"
    log = (out / "runs" / "test-raises" / "seed0.failed.log").read_text()
    assert "Traceback" in log and "boom in the loss" in log and "in loss" in log
    assert not (out / "runs" / "test-nan" / "seed0.json").exists()
    summary = (out / "summary.md").read_text()
    nan_row = next(line for line in summary.splitlines() if line.startswith("| test-nan"))
    assert "seed 0: epoch 1" in nan_row and "n/a" in nan_row  # its row, not hidden
    assert "Failed runs" in summary and "boom in the loss" in summary
    assert "test-nan" in (out / "summary.csv").read_text()

    # A rerun reports the recorded failure again without training it; --retry-failed reruns it.
    again = cli("bench", "--benchmark", str(bench), "--out", str(out), "--quiet", "--seeds", "0", "--methods", "test-nan,ce")
    record = out / "runs" / "test-nan" / "seed0.failed.json"
    replay = f"(replaying the failure recorded in {record} at {json.loads(record.read_text())['time']}; --retry-failed"
    assert again.returncode == 2 and replay + " retrains it)" in again.stdout
    assert "0 run(s) trained, 1 skipped; 1 failed" in again.stdout
    retried = cli("bench", "--benchmark", str(bench), "--out", str(out), "--quiet", "--seeds", "0",
                  "--methods", "test-nan", "--retry-failed")
    assert retried.returncode == 2 and "replaying" not in retried.stdout
    assert "FAILED in epoch 1" in retried.stdout  # trained again (resumed from its epoch-0 checkpoint)


def test_a_stale_result_is_kept_listed_and_retrained_only_with_force(tmp_path, cli):
    bench = tmp_path / "b.yaml"
    bench.write_text(BENCH % "ce")
    out = tmp_path / "out"
    args = ("bench", "--benchmark", str(bench), "--out", str(out), "--quiet", "--seeds", "0", "--epochs", "1")
    assert cli(*args).returncode == 0
    before = (out / "runs" / "ce" / "seed0.json").read_text()
    bench.write_text((BENCH % "ce").replace("lr: 0.05", "lr: 0.1"))
    proc = cli(*args)  # the stored lr-0.05 result is another configuration's
    assert proc.returncode == 2
    assert "STALE" in proc.stdout and "--force" in proc.stdout
    assert (out / "runs" / "ce" / "seed0.json").read_text() == before  # not overwritten
    assert "no finished run, no report" in proc.stdout
    forced = cli(*args, "--force")
    assert forced.returncode == 0 and "1 run(s) trained" in forced.stdout
    assert json.loads((out / "runs" / "ce" / "seed0.json").read_text())["config"]["lr"] == 0.1


def test_a_stale_result_never_enters_the_table(tmp_path, cli):
    bench = tmp_path / "b.yaml"
    bench.write_text(BENCH % "ce")
    out = tmp_path / "out"
    args = ("bench", "--benchmark", str(bench), "--out", str(out), "--quiet", "--epochs", "1")
    assert cli(*args, "--seeds", "0").returncode == 0
    stale = out / "runs" / "ce" / "seed0.json"
    data = json.loads(stale.read_text())
    data["run_key"] = "0" * 20  # as if made by another configuration
    stale.write_text(json.dumps(data))
    proc = cli(*args, "--seeds", "0,1")
    assert proc.returncode == 2 and "1 run(s) trained" in proc.stdout
    summary = (out / "summary.md").read_text()
    assert "seeds: 1" in summary and "Stale results" in summary and str(stale) in summary


# ------------------------------------------------------------------------------- bad input

BAD_YAML = [
    ("methods: [ce]\ncolour: red\n", "unknown key(s) colour"),
    ("methods: [ce]\ntrain: {epochs: two}\n", "train.epochs = 'two': expected an integer"),
    ("methods: [ce]\ntrain: {epochs: 0}\n", "train.epochs = 0: must be at least 1"),
    ("methods: [ce]\ntrain: {epochs: -3}\n", "train.epochs = -3: must be at least 1"),
    ("methods: [ce]\nseeds: [0, a]\n", "seeds: seed 'a': expected an integer"),
    ("methods: [ce]\nseeds: [0.5]\n", "seeds: seed 0.5: expected an integer"),
    ("methods: [ce, nope]\n", "unknown method 'nope'"),
    ("methods: {focal: {gama: 1}}\n", "methods.focal.gama"),
]


@pytest.mark.parametrize("body,fragment", BAD_YAML, ids=[f[1][:24] for f in BAD_YAML])
def test_bad_benchmark_yaml_is_one_line(tmp_path, cli, body, fragment):
    bench = tmp_path / "bad.yaml"
    bench.write_text("dataset: {name: synthetic}\n" + body)
    assert_one_line_error(cli("bench", "--benchmark", str(bench), "--out", str(tmp_path / "out")), "bad.yaml", fragment)
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; see the patched test below")
def test_a_read_only_output_folder_is_one_line(tmp_path, cli):
    bench = tmp_path / "b.yaml"
    bench.write_text(BENCH % "ce")
    out = tmp_path / "out"
    out.mkdir(mode=0o555)
    try:
        assert_one_line_error(cli("bench", "--benchmark", str(bench), "--out", str(out)), "--out", "not writable")
    finally:
        out.chmod(0o755)


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_an_unwritable_or_unreadable_output_folder_is_one_line(tmp_path, cli, monkeypatch, code):
    """A read-only mount or a folder we may not use, as the OS reports it (also when running as root)."""
    import tempfile

    bench = tmp_path / "b.yaml"
    bench.write_text(BENCH % "ce")
    out = tmp_path / "out"
    out.mkdir()
    real = tempfile.mkstemp

    def refuse(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == out:
            raise OSError(code, os.strerror(code), str(out))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    proc = cli("bench", "--benchmark", str(bench), "--out", str(out))
    assert_one_line_error(proc, f"--out {out}: cannot write and read files there ({os.strerror(code)})")


def test_a_full_disk_while_writing_is_one_line(tmp_path, cli, monkeypatch):
    """ENOSPC from the first write of a result: one line, exit 2; the next bench finishes the work."""
    import ltbench.runs

    bench = tmp_path / "b.yaml"
    bench.write_text(BENCH % "ce")
    out = tmp_path / "out"
    real = ltbench.runs._atomic_savez

    def full(path, arrays):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(ltbench.runs, "_atomic_savez", full)
    args = ("bench", "--benchmark", str(bench), "--out", str(out), "--quiet", "--seeds", "0")
    proc = cli(*args)
    assert_one_line_error(proc, "cannot write", "seed0.npz", "No space left on device")
    assert (out / "runs" / "ce" / "seed0.ckpt").is_file()  # the trained epochs are kept
    monkeypatch.setattr(ltbench.runs, "_atomic_savez", real)
    again = cli(*args)
    assert again.returncode == 0 and "1 run(s) trained" in again.stdout


def test_a_truncated_result_json_is_one_line(tmp_path, cli):
    bench = tmp_path / "b.yaml"
    bench.write_text(BENCH % "ce")
    out = tmp_path / "out"
    truncated = out / "runs" / "ce" / "seed1.json"
    truncated.parent.mkdir(parents=True)
    truncated.write_text('{"schema": 1, "run_key": "abc", "hist')
    assert_one_line_error(cli("bench", "--benchmark", str(bench), "--out", str(out)),
                          str(truncated), "unreadable result file", "--force")
    assert truncated.read_text().endswith('"hist')  # kept for the user to look at
