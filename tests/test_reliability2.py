"""Reliability II (issue 21): damaged result files, mixed settings in a report, leftovers of kills.

Real benches on the synthetic dataset, real damaged files, real SIGKILLs. Each damaged file is one
line naming it and the problem (exit 2), in ``report`` and ``bench`` alike; nothing is silently
dropped or averaged.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest

from ltbench.store.files import default_file_mode
from tests.test_cli import assert_one_line_error, run_inline

BENCH = """\
name: rel2
dataset: {name: synthetic}
split: {kind: grouped, seed: 0}
train: {backbone: small-cnn, image_size: 16, epochs: 1, batch_size: 32, lr: 0.05, device: cpu}
seeds: [0, 1]
methods: [ce]
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One real bench (ce, seeds 0 and 1), trained once for the module; tests work on copies."""
    from ltbench.cli import main

    root = tmp_path_factory.mktemp("trained")
    (root / "b.yaml").write_text(BENCH)
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, redirect_stdout(out), redirect_stderr(err):
        mp.chdir(root)
        mp.setenv("LTBENCH_CACHE", str(root / ".cache"))
        code = main(["bench", "--benchmark", str(root / "b.yaml"), "--out", str(root / "out"), "--quiet"])
    assert code == 0, err.getvalue()
    return root


@pytest.fixture
def work(trained: Path, tmp_path: Path) -> Path:
    shutil.copytree(trained / "out", tmp_path / "out")
    shutil.copy(trained / "b.yaml", tmp_path / "b.yaml")
    return tmp_path


@pytest.fixture
def cli(capsys, monkeypatch, tmp_path):
    return lambda *args: run_inline(*args, capsys=capsys, monkeypatch=monkeypatch, cwd=tmp_path)


# ------------------------------------------------------------------------------- damaged result files

def _edit_json(change):
    def mutate(run: Path) -> Path:
        path = run / "seed0.json"
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data))
        return path
    return mutate


def _replace_json(text: str):
    def mutate(run: Path) -> Path:
        (run / "seed0.json").write_text(text)
        return run / "seed0.json"
    return mutate


def _truncate_npz(run: Path) -> Path:
    data = (run / "seed0.npz").read_bytes()
    (run / "seed0.npz").write_bytes(data[: len(data) // 2])
    return run / "seed0.npz"


def _drop_npz_rows(run: Path) -> Path:
    with np.load(run / "seed0.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["test_labels"], arrays["test_probs"] = arrays["test_labels"][:-3], arrays["test_probs"][:-3]
    np.savez_compressed(run / "seed0.npz", **arrays)
    return run / "seed0.npz"


DAMAGE = {
    "empty object": (_replace_json("{}"), "not a result file (an empty JSON object)"),
    "a list": (_replace_json("[1, 2]"), "not a result file (a JSON list, expected an object)"),
    "non-numeric metric": (_edit_json(lambda d: d["test"].__setitem__("acc", "high")), "'test.acc' is 'high', expected a number"),
    "short confusion matrix": (_edit_json(lambda d: d["test"]["confusion_matrix_normalized"].pop()),
                               "'test.confusion_matrix_normalized' is not a 4x4 matrix of numbers (found 3 rows)"),
    "integer method": (_edit_json(lambda d: d.__setitem__("method", 5)), "'method' is 5, expected a row name (text)"),
    "no test": (_edit_json(lambda d: d.pop("test")), "not a complete result file (no 'test' key)"),
    "truncated npz": (_truncate_npz, "damaged arrays file (BadZipFile: File is not a zip file)"),
    "npz rows": (_drop_npz_rows, "'test_labels' has shape (31,), expected (34,) (the result's test images)"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_damaged_result_file_is_one_line_in_report_and_bench(work: Path, cli, case: str) -> None:
    mutate, fragment = DAMAGE[case]
    damaged = mutate(work / "out" / "runs" / "ce")
    before = damaged.read_bytes()
    for args in (("report", str(work / "out")),
                 ("bench", "--benchmark", str(work / "b.yaml"), "--out", str(work / "out"), "--quiet")):
        assert_one_line_error(cli(*args), f"{damaged}: {fragment}; remove it, or rerun the bench with --force")
    assert damaged.read_bytes() == before  # kept for the user to look at


def test_force_retrains_a_result_with_damaged_arrays(work: Path, cli) -> None:
    damaged = _truncate_npz(work / "out" / "runs" / "ce")
    proc = cli("bench", "--benchmark", str(work / "b.yaml"), "--out", str(work / "out"), "--quiet", "--force")
    assert proc.returncode == 0, proc.stderr
    assert "1 run(s) trained, 1 skipped" in proc.stdout
    with np.load(damaged) as npz:
        assert len(npz["test_labels"]) == 34
    assert cli("report", str(work / "out")).returncode == 0


# ------------------------------------------------------------------------------- mixed settings

@pytest.mark.slow
def test_report_leaves_out_runs_of_other_settings_after_a_forced_retrain(work: Path, cli) -> None:
    """lr changed in the file, seed 0 retrained with --force: seed 1 (lr 0.05) is not averaged with it."""
    (work / "b.yaml").write_text(BENCH.replace("lr: 0.05", "lr: 0.1"))
    forced = cli("bench", "--benchmark", str(work / "b.yaml"), "--out", str(work / "out"), "--quiet",
                 "--force", "--seeds", "0")
    assert forced.returncode == 0 and "1 run(s) trained" in forced.stdout
    stale = work / "out" / "runs" / "ce" / "seed1.json"
    proc = cli("report", str(work / "out"))
    assert_one_line_error(proc, "1 run(s) left out of the report, made with other settings than their row's newest run")
    warning = [line for line in proc.stderr.splitlines() if line.startswith("ltbench: warning:")]
    assert warning == [f"ltbench: warning: {stale}: ce seed 1 was made with other settings (lr 0.05 vs 0.1 in the "
                       "row's newest run, seed 0 (seed0.json)); left out of the table"]
    summary = (work / "out" / "summary.md").read_text()
    assert "seeds: 0 ·" in summary or summary.splitlines()[0].endswith("seeds: 0")
    assert "lr: 0.1" in summary and "Stale results" in summary and f"- ce seed 1: `{stale}` (lr 0.05 vs 0.1" in summary
    # the untouched bench folder reports cleanly (no false alarm from seeds of one configuration)
    forced_back = cli("bench", "--benchmark", str(work / "b.yaml"), "--out", str(work / "out"), "--quiet", "--force")
    assert forced_back.returncode == 0
    assert cli("report", str(work / "out")).returncode == 0


# ------------------------------------------------------------------------------- cache manifests

def _isic_root(tmp_path: Path) -> Path:
    from tests.test_cli import make_isic2018_layout

    root = tmp_path / "isic"
    make_isic2018_layout(root, per_class=5)
    return root


@pytest.mark.parametrize("damage,fragment", [
    (lambda m: [m], "a JSON list, not an object"),
    (lambda m: {**m, "original_sizes": "x" * m["count"]}, "'original_sizes' is not a list of 35 (height, width) pairs"),
])
def test_a_damaged_cache_manifest_is_one_note_and_a_rebuild(tmp_path: Path, cli, damage, fragment) -> None:
    root = _isic_root(tmp_path)
    args = ("data", "prepare", "--dataset", "isic2018", "--data-root", str(root), "--image-size", "16")
    assert cli(*args).returncode == 0
    manifest = next((tmp_path / ".cache").glob("pixels_*.json"))
    manifest.write_text(json.dumps(damage(json.loads(manifest.read_text()))))
    proc = cli(*args)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr
    assert f"ltbench: note: pixel cache manifest {manifest} is damaged ({fragment}): rebuilding the cache" in proc.stderr
    assert isinstance(json.loads(manifest.read_text())["original_sizes"], list)  # rebuilt
    again = cli(*args)
    assert again.returncode == 0 and "damaged" not in again.stderr


# ------------------------------------------------------------------------------- leftovers of kills

def _killed_writer(target: Path) -> Path:
    """A real writer of ``target`` (ltbench's own temp file), SIGKILLed mid-write: its leftover temp file."""
    code = ("import os, signal, sys\nfrom pathlib import Path\nfrom ltbench.store.files import make_temp\n"
            "fd, tmp = make_temp(Path(sys.argv[1]))\nos.write(fd, b'half a file')\nprint(tmp, flush=True)\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    left = Path(proc.stdout.strip())
    assert left.is_file() and left.name.startswith(f".{target.name}.")
    return left


@pytest.mark.slow
def test_a_killed_report_leaves_nothing_after_the_next_report(work: Path, cli) -> None:
    """``ltbench report`` SIGKILLed between a file's temp and its rename (summary.md, then a PNG)."""
    out = work / "out"
    leftovers = []
    for kill, name in (("write:1", "summary.md"), ("write:4", "confusion_matrices.png")):
        proc = subprocess.run([sys.executable, "-m", "ltbench.cli", "report", str(out)], capture_output=True, text=True,
                              timeout=300, env={**os.environ, "LTBENCH_TEST_KILL_AT": kill})
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        (left,) = [p for p in out.iterdir() if p.name.endswith(".tmp")]
        assert left.name.startswith(f".{name}.")
        assert stat.S_IMODE(left.stat().st_mode) == default_file_mode()  # the umask's, not mkstemp's 0600
        leftovers.append(left)
    # a live writer's temp file (another report on the same folder right now) is never touched
    live = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom pathlib import Path\n"
                             "from ltbench.store.files import make_temp\nfd, tmp = make_temp(Path(sys.argv[1]))\n"
                             "print(tmp, flush=True)\ntime.sleep(120)\n", str(out / "README.md")],
                            stdout=subprocess.PIPE, text=True)
    try:
        busy = Path(live.stdout.readline().strip())
        assert cli("report", str(out)).returncode == 0
        assert not any(p.exists() for p in leftovers)
        assert busy.is_file()
    finally:
        live.kill()
        live.wait()
    assert cli("report", str(out)).returncode == 0
    assert not busy.exists()  # its writer is gone now
    assert sorted(p.name for p in out.iterdir() if p.name.endswith(".tmp")) == []


def test_a_killed_cache_build_leaves_nothing_after_the_next_start(tmp_path: Path, cli) -> None:
    root = _isic_root(tmp_path)
    args = ("data", "prepare", "--dataset", "isic2018", "--data-root", str(root), "--image-size", "16")
    assert cli(*args).returncode == 0
    npy = next((tmp_path / ".cache").glob("pixels_*.npy"))
    left = _killed_writer(npy)
    assert cli(*args).returncode == 0  # the cache is valid: reused, and the dead build's temp removed
    assert not left.exists()
    # a real build of another size SIGKILLed mid-way, then the next start (at the first size) cleans it
    killed = subprocess.run([sys.executable, "-m", "ltbench.cli", *args[:-1], "32"], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "LTBENCH_CACHE": str(tmp_path / ".cache"),
                                              "LTBENCH_TEST_KILL_AT": "cache:1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    (left,) = [p for p in (tmp_path / ".cache").iterdir() if p.name.endswith(".tmp")]
    assert left.name.startswith(".pixels_37px_") and left.stat().st_size > 35 * 37 * 37 * 3  # ceil(32 * 8 / 7)
    assert cli(*args).returncode == 0
    assert not left.exists()
    assert [p.name for p in (tmp_path / ".cache").iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.slow
def test_a_run_killed_while_checkpointing_leaves_no_temp_and_no_prev(tmp_path: Path) -> None:
    """SIGKILL between a checkpoint's temp file and its rename, then a rerun with --keep-checkpoints:
    no temp file, no ``.ckpt.prev``, and the checkpoint, results and report are all 0644 under umask 022."""
    (tmp_path / "b.yaml").write_text(BENCH.replace("epochs: 1", "epochs: 2").replace("seeds: [0, 1]", "seeds: [0]"))
    env = {**os.environ, "LTBENCH_CACHE": str(tmp_path / ".cache")}
    cmd = [sys.executable, "-c", "import os, sys; os.umask(0o022); from ltbench.cli import main; sys.exit(main())",
           "bench", "--benchmark", str(tmp_path / "b.yaml"), "--out", str(tmp_path / "out"), "--quiet"]
    killed = subprocess.run(cmd, env={**env, "LTBENCH_TEST_KILL_AT": "checkpoint:2"}, capture_output=True,
                            text=True, timeout=300, cwd=tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    run = tmp_path / "out" / "runs" / "ce"
    temps = [p for p in run.iterdir() if p.name.endswith(".tmp")]
    assert [p.name.startswith(".seed0.ckpt.") for p in temps] == [True]
    assert stat.S_IMODE(temps[0].stat().st_mode) == 0o644  # not mkstemp's 0600
    done = subprocess.run([*cmd, "--keep-checkpoints"], env=env, capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in run.iterdir()) == ["seed0.ckpt", "seed0.json", "seed0.npz"]
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [*run.iterdir(), tmp_path / "out" / "summary.md"]}
    assert set(modes.values()) == {0o644}, modes


# ------------------------------------------------------------------------------- --pretrained FILE

def _weights(tmp_path: Path) -> dict[str, Path]:
    """Weights files as a user may hold them: fine, and damaged in the ways issue 21 met."""
    import torch
    import torchvision

    good = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), good)
    data = good.read_bytes()
    files = {"good": good}
    for name, content in {"text": b"hello, not weights\n", "empty": b"", "truncated": data[: len(data) // 2]}.items():
        files[name] = tmp_path / f"{name}.pth"
        files[name].write_bytes(content)
    files["not a state dict"] = tmp_path / "dict.pth"
    torch.save({"epoch": 3}, files["not a state dict"])
    files["resnet34"] = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), files["resnet34"])
    return files


WEIGHTS_PROBLEMS = {
    "text": "not a PyTorch state dict (not a file torch.save writes: it starts with b'hell')",
    "empty": "an empty file (0 bytes), not a PyTorch state dict",
    "truncated": "not a PyTorch state dict (a damaged or truncated torch.save archive: PytorchStreamReader failed",
    "not a state dict": "not a state dict: entry 'epoch' is a int, not a tensor",
    "resnet34": "not resnet18 weights (missing [], unexpected ['layer1.2.conv1.weight'",
}


def test_a_bad_weights_file_is_one_line_before_any_data_and_never_a_recorded_failure(tmp_path: Path, cli) -> None:
    files = _weights(tmp_path)
    bench = tmp_path / "b.yaml"
    out = tmp_path / "out"
    for case, fragment in WEIGHTS_PROBLEMS.items():
        bench.write_text(BENCH.replace("small-cnn", "resnet18").replace("seeds: [0, 1]", "seeds: [0]")
                         .replace("device: cpu", f"device: cpu, pretrained: {files[case]}"))
        proc = cli("bench", "--benchmark", str(bench), "--out", str(out), "--quiet")
        assert_one_line_error(proc, f"{bench}: train.pretrained = '{files[case]}': {fragment}")
        assert "(101)" not in proc.stderr and not out.exists()  # no data prepared, no run recorded as failed
        trained = cli("train", "--method", "ce", "--dataset", "synthetic", "--backbone", "resnet18", "--epochs", "1",
                      "--pretrained", str(files[case]), "--out", str(tmp_path / "train"))
        assert_one_line_error(trained, f"--pretrained {files[case]}: {fragment}")
    # the file fixed (same name), the bench trains: nothing was recorded to replay
    files["good"].replace(files["resnet34"])
    proc = cli("bench", "--benchmark", str(bench), "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "1 run(s) trained" in proc.stdout and not list(out.glob("runs/*/*.failed.json"))


def test_a_weights_file_damaged_while_the_bench_runs_stops_it_and_is_not_recorded(tmp_path: Path) -> None:
    """The file was fine when the settings were read and is damaged when the run builds its model."""
    from ltbench.errors import InputError
    from ltbench.runs import DataSpec, failure_paths, prepare_data, run_one
    from ltbench.trainer import TrainConfig

    bad = tmp_path / "w.pth"
    bad.write_bytes(b"\x80\x02garbage that unpickles to nothing")
    spec = DataSpec(dataset="synthetic")
    config = TrainConfig(backbone="resnet18", pretrained=str(bad), image_size=16, epochs=1, batch_size=32,
                         device="cpu")
    with pytest.raises(InputError, match=f"--pretrained {bad}: not a PyTorch state dict"):
        run_one("ce", {}, 0, config, spec, prepare_data(spec, 16), tmp_path / "out", progress=False)
    record, log = failure_paths(tmp_path / "out", "ce", 0)
    assert not record.exists() and not log.exists()


# ------------------------------------------------------------------------------- unclear messages

@pytest.mark.parametrize("change,fragment", [
    (lambda lines: [lines[0]] + [line + ",0.0" for line in lines[1:]], "line 2 has 9 fields, the header 8"),
    (lambda lines: lines[:3] + [lines[3].rsplit(",", 2)[0]] + lines[4:], "line 4 has 6 fields, the header 8"),
    (lambda lines: lines[:3] + [lines[3] + ",1.0"] + lines[4:], "line 4 has 9 fields, the header 8"),
])
def test_a_ragged_csv_row_is_named_as_ragged_not_as_a_duplicate(tmp_path: Path, cli, change, fragment) -> None:
    from tests.test_cli import T18

    root = _isic_root(tmp_path)
    csv = root / f"{T18}_Training_GroundTruth.csv"
    csv.write_text("\n".join(change(csv.read_text().splitlines())) + "\n")
    proc = cli("data", "prepare", "--dataset", "isic2018", "--data-root", str(root), "--image-size", "16")
    assert_one_line_error(proc, f"{csv}: {fragment}: a missing or extra comma")
    assert "more than once" not in proc.stderr


@pytest.mark.parametrize("content,fragment", [
    (b"", "an empty file (0 bytes)"),
    (b"GIF87a but not really an image", "not an image format PIL can read (30 bytes starting b'GIF87a b')"),
])
def test_an_unreadable_image_is_named_without_a_python_object(tmp_path: Path, cli, content, fragment) -> None:
    from tests.test_cli import T18

    root = _isic_root(tmp_path)
    image = sorted((root / f"{T18}_Training_Input").glob("*.jpg"))[0]
    image.write_bytes(content)
    proc = cli("data", "prepare", "--dataset", "isic2018", "--data-root", str(root), "--image-size", "16")
    assert_one_line_error(proc, f"cannot decode image {image}: {fragment}")
    assert "BytesIO" not in proc.stderr


@pytest.mark.parametrize("change,fragment", [
    (("dataset: {name: synthetic}", "dataset: {name: digits-lt, options: {imbalance: 0.5}}"),
     "dataset.options.imbalance = 0.5: must be at least 1 (the largest training class over the smallest)"),
    (("methods: [ce]", "methods: [ce]\nreferences: {source: paper, values: {ce: {acc: 50}}}"),
     "references.tolerance: missing; give the points a published number may differ by before it is flagged"),
])
def test_a_bad_value_names_its_file_and_key(tmp_path: Path, cli, change, fragment) -> None:
    bench = tmp_path / "b.yaml"
    bench.write_text(BENCH.replace(*change))
    assert_one_line_error(cli("bench", "--benchmark", str(bench), "--out", str(tmp_path / "out")), f"{bench}: {fragment}")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs /proc to find the worker processes")
def test_a_worker_killed_mid_run_is_reported_as_killed_with_its_signal(tmp_path: Path) -> None:
    """SIGKILL of one --jobs 2 worker while it trains: its run says so (not "FAILED before training")."""
    from tests.test_orphans import _cmdline, _descendants

    bench = tmp_path / "b.yaml"
    bench.write_text(BENCH.replace("epochs: 1", "epochs: 40"))
    out = tmp_path / "out"
    env = {**os.environ, "LTBENCH_CACHE": str(tmp_path / ".cache")}
    proc = subprocess.Popen([sys.executable, "-m", "ltbench.cli", "bench", "--benchmark", str(bench), "--out", str(out),
                             "--quiet", "--jobs", "2", "--threads", "1"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not list(out.glob("runs/ce/seed*.ckpt")):  # a worker has finished an epoch: it is mid-run
            assert time.monotonic() < deadline and proc.poll() is None, "no worker started training"
            time.sleep(0.1)
        workers = [pid for pid in _descendants(proc.pid) if "spawn_main" in _cmdline(pid)]
        assert workers
        os.kill(workers[0], signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = [line for line in stdout.splitlines() if "FAILED" in line]
    assert len(lines) == 1, stdout
    assert "was killed by SIGKILL (signal 9) while training it; rerun the bench to resume it" in lines[0]
    assert "before training" not in lines[0]
    assert "was killed by SIGKILL (signal 9)" in (out / "summary.md").read_text()
    assert "before training" not in (out / "summary.md").read_text()
