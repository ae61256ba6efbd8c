"""The command line as a user meets it: real subprocesses, real files, one-line errors."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

LTBENCH = Path(sys.executable).parent / "ltbench"
T18 = "ISIC2018_Task3"
COLUMNS = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]


def run(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "LTBENCH_CACHE": str((cwd or Path.cwd()) / ".cache")}
    return subprocess.run([str(LTBENCH), *args], capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env)


def run_inline(*args: str, capsys, monkeypatch, cwd: Path) -> subprocess.CompletedProcess:
    """The same CLI entry point in this process (no interpreter start-up): for the many error paths."""
    from ltbench.cli import main

    monkeypatch.chdir(cwd)
    monkeypatch.setenv("LTBENCH_CACHE", str(cwd / ".cache"))
    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


@pytest.fixture
def cli(capsys, monkeypatch, tmp_path):
    return lambda *args: run_inline(*args, capsys=capsys, monkeypatch=monkeypatch, cwd=tmp_path)


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    # progress bars may precede it; the error itself is one line, the last one
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    assert errors == [lines[-1]], proc.stderr
    assert lines[-1].startswith("ltbench: error: ")
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]


def make_isic2018_layout(root: Path, per_class: int = 6, seed: int = 0) -> pd.DataFrame:
    """An official ISIC 2018 training layout of small real JPEG files (coloured noise per class)."""
    rng = np.random.default_rng(seed)
    folder = root / f"{T18}_Training_Input"
    folder.mkdir(parents=True)
    rows = []
    for c, name in enumerate(COLUMNS):
        for k in range(per_class):
            image_id = f"ISIC_{c:03d}{k:04d}"
            pixels = np.clip(rng.normal(40 + 30 * c, 20, size=(40, 48, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{image_id}.jpg", quality=90)
            rows.append({"image": image_id, **{col: float(col == name) for col in COLUMNS}})
    gt = pd.DataFrame(rows)
    gt.to_csv(root / f"{T18}_Training_GroundTruth.csv", index=False)
    return gt


COLUMNS_2019 = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]


def make_isic2019_layout(root: Path, per_class: int = 6, seed: int = 0) -> None:
    """An official ISIC 2019 training layout (no metadata, so no lesion ids) of small real JPEGs."""
    rng = np.random.default_rng(seed)
    folder = root / "ISIC_2019_Training_Input"
    folder.mkdir(parents=True)
    rows = []
    for c, name in enumerate(COLUMNS_2019[:-1]):  # UNK has no image, as in the real set
        for k in range(per_class):
            image_id = f"ISIC_{c:03d}{k:04d}"
            pixels = np.clip(rng.normal(30 + 25 * c, 20, size=(36, 48, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{image_id}.jpg", quality=90)
            rows.append({"image": image_id, **{col: float(col == name) for col in COLUMNS_2019}})
    pd.DataFrame(rows).to_csv(root / "ISIC_2019_Training_GroundTruth.csv", index=False)


def cached_files(*folders: Path) -> list[Path]:
    return [p for folder in folders if folder.exists() for p in folder.rglob("*") if p.is_file()]


# ------------------------------------------------------------------------------- error paths


def test_unknown_method(tmp_path):
    assert_one_line_error(run("train", "--method", "nope", cwd=tmp_path), "unknown method 'nope'", "ce")


def test_unknown_dataset(tmp_path, cli):
    assert_one_line_error(cli("train", "--method", "ce", "--dataset", "mnist"),
                          "unknown dataset 'mnist'", "digits-lt")


def test_missing_data_root(tmp_path, cli):
    proc = run("train", "--method", "ce", "--dataset", "isic2018", "--data-root", str(tmp_path / "absent"),
               cwd=tmp_path)
    assert_one_line_error(proc, "--data-root", "absent")
    assert_one_line_error(cli("train", "--method", "ce", "--dataset", "isic2019"), "--data-root")


def test_csv_with_wrong_columns(tmp_path, cli):
    root = tmp_path / "data"
    gt = make_isic2018_layout(root)
    gt.rename(columns={"VASC": "VASCULAR"}).to_csv(root / f"{T18}_Training_GroundTruth.csv", index=False)
    proc = cli("train", "--method", "ce", "--dataset", "isic2018", "--data-root", str(root))
    assert_one_line_error(proc, f"{T18}_Training_GroundTruth.csv", "VASCULAR")


def test_image_listed_but_absent(tmp_path, cli):
    root = tmp_path / "data"
    gt = make_isic2018_layout(root)
    missing = gt["image"].iloc[3]
    (root / f"{T18}_Training_Input" / f"{missing}.jpg").unlink()
    proc = cli("train", "--method", "ce", "--dataset", "isic2018", "--data-root", str(root))
    assert_one_line_error(proc, missing)


def test_corrupt_jpeg(tmp_path, cli):
    root = tmp_path / "data"
    gt = make_isic2018_layout(root)
    bad = root / f"{T18}_Training_Input" / f"{gt['image'].iloc[5]}.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    proc = cli("train", "--method", "ce", "--dataset", "isic2018", "--data-root", str(root),
               "--epochs", "1")
    assert_one_line_error(proc, "cannot decode image", bad.name)


def test_bad_benchmark_files(tmp_path, cli):
    missing = cli("bench", "--benchmark", str(tmp_path / "none.yaml"))
    assert_one_line_error(missing, "none.yaml", "no such file")
    typo = tmp_path / "typo.yaml"
    typo.write_text("dataset: synthetic\nmethods: [ce]\ntrain: {epoch: 3}\n")
    assert_one_line_error(cli("bench", "--benchmark", str(typo)), "typo.yaml", "epoch")
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("dataset: synthetic\nmethods: [ce, nope]\n")
    assert_one_line_error(cli("bench", "--benchmark", str(unknown)), "unknown method 'nope'")


def test_bad_option_values(tmp_path, cli):
    assert_one_line_error(cli("train", "--method", "ce", "--epochs", "0"), "epochs")
    assert_one_line_error(cli("train", "--method", "focal", "--param", "gama=1"), "focal", "gama")
    assert_one_line_error(cli("train", "--method", "ce", "--device", "cuda:7"), "--device")
    assert_one_line_error(cli("report", str(tmp_path / "nothing")), "nothing")


BAD_FLAGS = [
    (["--epochs", "2.5"], "--epochs 2.5: expected an integer"),
    (["--batch-size", "16.0"], "--batch-size 16.0: expected an integer"),
    (["--lr", "-1"], "--lr -1: must be greater than 0"),
    (["--seed", "-1"], "--seed -1: must be an integer from 0"),
    (["--split-seed", "abc"], "--split-seed abc: expected an integer"),
    (["--param", "gamma=abc"], "--param gamma=abc: expected a number"),
    (["--image-size", "1e3"], "--image-size 1e3: expected an integer"),
    (["--pretrained", "imagenet"], "the small-cnn backbone has no pretrained weights"),
    # needs the data (after the label files, still before any pixel): BatchNorm needs 2 images
    (["--batch-size", "1"], "batch_size 1: method 'focal' on small-cnn has BatchNorm layers"),
]
BAD_BENCH_LINES = [
    ("train: {backbone: small-cnn, epochs: 2.5}", "train.epochs = 2.5: expected an integer"),
    ("train: {backbone: small-cnn, batch_size: 16.0}", "train.batch_size = 16.0: expected an integer"),
    ("train: {backbone: small-cnn, lr: -1}", "train.lr = -1: must be greater than 0"),
    ("split: {seed: abc}", "split.seed = 'abc': expected an integer"),
    ("seeds: [0, 1.5]", "seeds: seed 1.5: expected an integer"),
]


def test_bad_values_are_one_line_and_prepare_no_pixels(tmp_path, cli):
    """Every bad value of issue 14 part 3: exit 2, one line, no traceback, no cache file written."""
    root, cache = tmp_path / "data", tmp_path / "cache"
    make_isic2018_layout(root)
    base = ["train", "--method", "focal", "--dataset", "isic2018", "--data-root", str(root),
            "--cache-dir", str(cache), "--backbone", "small-cnn", "--pretrained", "none", "--image-size", "16"]
    for extra, fragment in BAD_FLAGS:
        assert_one_line_error(cli(*base, *extra), fragment)
        assert not cached_files(cache, tmp_path / ".cache"), extra
    (tmp_path / "afile").write_text("not a folder")
    assert_one_line_error(cli(*base, "--cache-dir", str(tmp_path / "afile")), "--cache-dir", "exists and is not a folder")
    assert (tmp_path / "afile").read_text() == "not a folder"
    for line, fragment in BAD_BENCH_LINES:
        bench = tmp_path / "bad.yaml"
        bench.write_text(f"dataset: {{name: isic2018, data_root: {root}}}\ncache_dir: {cache}\nmethods: [ce]\n"
                         f"{line}\n")
        assert_one_line_error(cli("bench", "--benchmark", str(bench), "--out", str(tmp_path / "out")),
                              "bad.yaml", fragment)
        assert not cached_files(cache, tmp_path / ".cache"), line
    bench.write_text(f"dataset: {{name: isic2018, data_root: {root}}}\ncache_dir: {tmp_path / 'afile'}\nmethods: [ce]\n")
    assert_one_line_error(cli("bench", "--benchmark", str(bench)), "cache_dir", "exists and is not a folder")
    for extra, fragment in ((["--epochs", "2.5"], "--epochs 2.5: expected an integer"),
                            (["--seeds", "0,-1"], "--seeds 0,-1: seed -1: must be an integer from 0"),
                            (["--methods", "ce,nope"], "--methods nope: not a row of the benchmark")):
        good = tmp_path / "good.yaml"
        good.write_text(f"dataset: {{name: isic2018, data_root: {root}}}\ncache_dir: {cache}\nmethods: [ce]\n")
        assert_one_line_error(cli("bench", "--benchmark", str(good), *extra), fragment)
    assert not cached_files(cache, tmp_path / ".cache")


def test_a_value_error_from_setup_is_one_line_before_pixels(tmp_path, cli):
    """Checks that need the data live in the method's setup; the runs layer makes them one line."""
    import torch.nn.functional as F

    from ltbench import LossMethod
    from ltbench.registry import register_method, unregister_method

    @register_method("test-weighted")
    class Weighted(LossMethod):  # a test-only method: one class weight per class, checked in setup
        def __init__(self, class_weights: list[float] | None = None) -> None:
            super().__init__()
            self.class_weights = class_weights

        def setup(self, info) -> None:
            if self.class_weights is not None and len(self.class_weights) != info.num_classes:
                raise ValueError(f"class_weights has {len(self.class_weights)} values for {info.num_classes} classes")

        def loss(self, logits, labels):
            return F.cross_entropy(logits, labels)

    try:
        root, cache = tmp_path / "data", tmp_path / "cache"
        make_isic2018_layout(root)
        proc = cli("train", "--method", "test-weighted", "--param", "class_weights=[1, 2e0]", "--dataset", "isic2018",
                   "--data-root", str(root), "--cache-dir", str(cache), "--backbone", "small-cnn", "--pretrained", "none")
        assert_one_line_error(proc, "method 'test-weighted': class_weights has 2 values for 7 classes")
        assert not cached_files(cache)
    finally:
        unregister_method("test-weighted")


def test_lists(tmp_path, cli):
    methods = cli("methods")
    assert methods.returncode == 0 and "focal" in methods.stdout and "gamma=2.0" in methods.stdout
    datasets = cli("datasets")
    assert datasets.returncode == 0
    for name in ("digits-lt", "synthetic", "isic2018", "isic2019"):
        assert name in datasets.stdout


# ------------------------------------------------------------------------------- benchmarks

TINY = """\
name: tiny
dataset: {name: synthetic}
split: {kind: grouped, seed: 0}
train: {backbone: small-cnn, image_size: 16, epochs: %(epochs)d, batch_size: 16, lr: 0.05, device: cpu}
seeds: [0, 1]
methods:
  ce: {}
  focal: {gamma: 1.0}
"""


def test_bench_writes_report_and_a_rerun_trains_nothing(tmp_path):
    bench = tmp_path / "tiny.yaml"
    bench.write_text(TINY % {"epochs": 2})
    out = tmp_path / "out"
    first = run("bench", "--benchmark", str(bench), "--out", str(out), "--quiet", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "4 run(s) trained, 0 skipped" in first.stdout and "wall time" in first.stdout
    summary = (out / "summary.md").read_text()
    assert "| ce " in summary and "| focal " in summary and "±" in summary
    for name in ("summary.csv", "summary.tex", "confusion_matrices.png", "confusion_ce.png", "README.md",
                 "split.csv"):
        assert (out / name).is_file(), name
    result = json.loads((out / "runs" / "focal" / "seed1.json").read_text())
    assert result["method_params"] == {"gamma": 1.0, "class_weights": None, "label_smoothing": 0.0,
                                       "mixup_alpha": 0.0, "sampler": "instance"}
    assert len(result["history"]) == 2 and result["split"]["hash"]
    leak = result["split"]["lesion_leak"]  # synthetic images come in "lesions" of 1-3
    assert leak["test_lesions"] > 0 and leak["test_lesions_also_in_train"] == 0
    assert "Lesion leak: none" in (out / "README.md").read_text()
    arrays = np.load(out / "runs" / "focal" / "seed1.npz")
    assert arrays["test_probs"].shape == (len(arrays["test_labels"]), 4)

    again = run("bench", "--benchmark", str(bench), "--out", str(out), "--quiet", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "0 run(s) trained, 4 skipped" in again.stdout
    assert (out / "summary.md").read_text() == summary

    # A changed config is a different run: its old result is neither reused nor silently replaced
    # (issue 9: listed as stale, exit 2); --force retrains it.
    changed = run("bench", "--benchmark", str(bench), "--out", str(out), "--quiet", "--epochs", "1",
                  "--methods", "ce", "--seeds", "0", cwd=tmp_path)
    assert changed.returncode == 2 and "STALE" in changed.stdout
    forced = run("bench", "--benchmark", str(bench), "--out", str(out), "--quiet", "--epochs", "1",
                 "--methods", "ce", "--seeds", "0", "--force", cwd=tmp_path)
    assert forced.returncode == 0 and "1 run(s) trained" in forced.stdout

    # The report rebuilt from the files alone does not average ce seed 1 (2 epochs) with the retrained
    # seed 0 (1 epoch): seed 1 is left out and listed, exit 2 (issue 21).
    rebuilt = run("report", str(out), cwd=tmp_path)
    assert rebuilt.returncode == 2, rebuilt.stderr
    assert "ce seed 1 was made with other settings (epochs 2 vs 1 in the row's newest run, seed 0" in rebuilt.stderr
    assert "Stale results" in (out / "summary.md").read_text()


def test_killed_bench_resumes_where_it_stopped(tmp_path):
    bench = tmp_path / "tiny.yaml"
    bench.write_text(TINY % {"epochs": 6})
    out = tmp_path / "out"
    env = {**os.environ, "LTBENCH_CACHE": str(tmp_path / ".cache")}
    proc = subprocess.Popen([str(LTBENCH), "bench", "--benchmark", str(bench), "--out", str(out), "--quiet"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = out / "runs" / "ce" / "seed0.json"
    deadline = time.time() + 240
    while not first.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert first.exists(), "the first run never finished"
    proc.send_signal(signal.SIGKILL)  # no chance to clean up: like a power cut
    proc.wait()
    finished = sorted(p.relative_to(out) for p in out.glob("runs/*/*.json"))
    assert len(finished) < 4
    # nothing half-written is left where a result would be read
    for path in out.glob("runs/*/*.json"):
        json.loads(path.read_text())
    resumed = run("bench", "--benchmark", str(bench), "--out", str(out), "--quiet", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{4 - len(finished)} run(s) trained, {len(finished)} skipped" in resumed.stdout


def test_variant_rows_never_overwrite_each_other(tmp_path, cli):
    bench = tmp_path / "variants.yaml"
    bench.write_text("""\
name: variants
dataset: {name: synthetic}
train: {backbone: small-cnn, image_size: 16, epochs: 1, batch_size: 32, lr: 1e-1, device: cpu}
seeds: [0]
methods:
  focal: {}
  focal_g1: {method: focal, gamma: 1}
""")
    out = tmp_path / "out"
    proc = cli("bench", "--benchmark", str(bench), "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "lr=0.1" in proc.stdout and "2 run(s) trained" in proc.stdout
    plain = json.loads((out / "runs" / "focal" / "seed0.json").read_text())
    variant = json.loads((out / "runs" / "focal_g1" / "seed0.json").read_text())
    assert (plain["method"], plain["registered_method"], plain["method_params"]["gamma"]) == ("focal", "focal", 2.0)
    assert (variant["method"], variant["registered_method"], variant["method_params"]["gamma"]) == ("focal_g1", "focal", 1)
    assert plain["run_key"] != variant["run_key"] and variant["pipeline"] == plain["pipeline"] >= 2
    summary = (out / "summary.md").read_text()
    assert "| focal " in summary and "| focal_g1 " in summary
    only = cli("bench", "--benchmark", str(bench), "--out", str(out), "--quiet", "--methods", "focal_g1")
    assert "0 run(s) trained, 1 skipped" in only.stdout, only.stderr


@pytest.fixture
def fake_imagenet_weights(tmp_path, monkeypatch) -> Path:
    """torch.hub's cache holding a file under ResNet-50's ImageNet name that is not ResNet-50.

    So the ISIC protocol's `pretrained: imagenet` finds "its" weights offline and online alike,
    and fails in one line at the point weights are loaded (after everything was checked).
    """
    import torch

    home = tmp_path / "torch"
    (home / "hub" / "checkpoints").mkdir(parents=True)
    torch.save({"conv1.weight": torch.zeros(1)}, home / "hub" / "checkpoints" / "resnet50-0676ba61.pth")
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


def test_train_runs_the_protocol_of_its_dataset(tmp_path, cli, fake_imagenet_weights):
    root = tmp_path / "isic2019"
    make_isic2019_layout(root)
    proc = cli("train", "--method", "ce", "--dataset", "isic2019", "--data-root", str(root), "--device", "cpu")
    settings = [line for line in proc.stdout.splitlines() if "settings:" in line]
    assert len(settings) == 1, proc.stdout
    for fact in ("backbone=resnet50", "pretrained=imagenet", "image_size=224", "epochs=100", "batch_size=64",
                 "lr=0.002", "momentum=0.9", "weight_decay=0.0001", "select_metric=sen", "isic2019 protocol"):
        assert fact in settings[0], settings[0]
    assert_one_line_error(proc, "--pretrained imagenet: not resnet50 weights")
    # "grouped" without lesion ids is named for what it is, with a warning, and the leak is unknown
    assert "warning: split 'grouped': no image has a lesion id" in proc.stderr
    assert "split stratified (image-level: no lesion ids)" in proc.stdout
    assert "lesion leak: unknown:" in proc.stdout and "test images without a lesion id" in proc.stdout


def test_train_flags_override_the_dataset_protocol(tmp_path, cli):
    root = tmp_path / "isic2019"
    make_isic2019_layout(root)
    out = tmp_path / "out"
    proc = cli("train", "--method", "ce", "--dataset", "isic2019", "--data-root", str(root), "--backbone", "small-cnn",
               "--image-size", "32", "--epochs", "1", "--device", "cpu", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    settings = next(line for line in proc.stdout.splitlines() if "settings:" in line)
    for fact in ("backbone=small-cnn", "pretrained=none", "image_size=32", "epochs=1", "lr=0.002", "batch_size=64"):
        assert fact in settings, settings
    result = json.loads((out / "runs" / "ce" / "seed0.json").read_text())
    config = result["config"]
    assert (config["backbone"], config["pretrained"], config["image_size"], config["epochs"]) == ("small-cnn", None, 32, 1)
    assert (config["lr"], config["batch_size"], config["momentum"]) == (0.002, 64, 0.9)  # the ISIC protocol's
    assert result["split"]["kind"] == "stratified (image-level: no lesion ids)"
    leak = result["split"]["lesion_leak"]
    assert leak["test_lesions"] == 0 and leak["test_images_without_lesion_id"] == leak["test_images"] > 0


def test_bench_takes_the_training_overrides_of_train(tmp_path, cli):
    # The shipped ISIC benchmark asks for ResNet-50 ImageNet weights; a CPU user overrides them on
    # the command line instead of writing a YAML. A bad override is one line and leaves no folder.
    root = tmp_path / "isic2019"
    make_isic2019_layout(root)
    bench_file = Path(__file__).resolve().parents[1] / "benchmarks" / "isic2019.yaml"
    bad = cli("bench", "--benchmark", str(bench_file), "--data-root", str(root), "--batch-size", "16.0",
              "--out", str(tmp_path / "bad"))
    assert_one_line_error(bad, "--batch-size 16.0")
    assert not (tmp_path / "bad").exists()
    out = tmp_path / "out"
    proc = cli("bench", "--benchmark", str(bench_file), "--data-root", str(root), "--methods", "ce", "--seeds", "0",
               "--backbone", "small-cnn", "--pretrained", "none", "--image-size", "16", "--epochs", "1",
               "--batch-size", "8", "--lr", "1e-2", "--select-metric", "f1", "--device", "cpu", "--out", str(out),
               "--quiet")
    assert proc.returncode == 0, proc.stderr
    config = json.loads((out / "runs" / "ce" / "seed0.json").read_text())["config"]
    assert (config["backbone"], config["pretrained"], config["image_size"], config["epochs"]) == ("small-cnn", None, 16, 1)
    assert (config["batch_size"], config["lr"], config["select_metric"]) == (8, 0.01, "f1")


def test_a_failed_bench_leaves_no_empty_output_folder(tmp_path, cli):
    bench_file = Path(__file__).resolve().parents[1] / "benchmarks" / "isic2019.yaml"
    out = tmp_path / "reports" / "isic2019"
    proc = cli("bench", "--benchmark", str(bench_file), "--data-root", str(tmp_path / "absent"), "--out", str(out))
    assert_one_line_error(proc, "absent")
    assert not (tmp_path / "reports").exists()
    kept = tmp_path / "mine"
    kept.mkdir()
    proc = cli("bench", "--benchmark", str(bench_file), "--data-root", str(tmp_path / "absent"), "--out", str(kept))
    assert proc.returncode == 2 and kept.is_dir()  # a folder the user made stays


def test_files_get_the_users_umask_not_mkstemps_0600(tmp_path):
    from ltbench.store.files import atomic_write, default_file_mode

    old = os.umask(0o002)
    try:
        assert default_file_mode() == 0o664
        written = atomic_write(tmp_path / "result.json", "{}")
        assert written.stat().st_mode & 0o777 == 0o664
    finally:
        os.umask(old)


# ------------------------------------------------------------------------------- real ISIC images


@pytest.fixture(scope="module")
def real_isic2018_root(tmp_path_factory, isic2018_test_images) -> Path:
    """The 1,512 real test images, laid out as the official *training* folder with its CSV."""
    root = tmp_path_factory.mktemp("real") / "isic2018"
    folder = root / f"{T18}_Training_Input"
    folder.mkdir(parents=True)
    gt = pd.read_csv(isic2018_test_images / f"{T18}_Test_GroundTruth.csv")
    for image_id in gt["image"]:
        os.symlink(isic2018_test_images / "images" / f"{image_id}.jpg", folder / f"{image_id}.jpg")
    gt.to_csv(root / f"{T18}_Training_GroundTruth.csv", index=False)
    return root


def test_train_on_real_isic2018_images_in_the_official_layout(tmp_path, real_isic2018_root):
    out = tmp_path / "out"
    proc = run("train", "--method", "ce", "--dataset", "isic2018", "--data-root", str(real_isic2018_root),
               "--epochs", "1", "--image-size", "32", "--backbone", "small-cnn", "--out", str(out),
               "--cache-dir", str(real_isic2018_root.parent / "cache"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "runs" / "ce" / "seed0.json").read_text())
    assert result["dataset"]["class_names"] == COLUMNS
    assert sum(sum(result["dataset"]["class_counts"][part]) for part in ("train", "val", "test")) == 1512
    # the official test CSV has no lesion ids: the "grouped" default is image-level, and says so
    assert result["split"]["kind"] == "stratified (image-level: no lesion ids)"
    assert "no image has a lesion id" in proc.stderr
    assert 0 <= result["test"]["acc"] <= 100 and len(result["test"]["confusion_matrix"]) == 7
    split = pd.read_csv(out / "split.csv")
    assert len(split) == 1512 and set(split["part"]) == {"train", "val", "test"}


def test_two_seed_ecl_bench_on_real_isic2018_images(tmp_path, real_isic2018_root):
    bench = tmp_path / "ecl.yaml"
    bench.write_text(f"""\
name: ecl-real
dataset: {{name: isic2018, data_root: {real_isic2018_root}}}
train: {{backbone: small-cnn, image_size: 32, epochs: 2, batch_size: 64, lr: 0.01, device: cpu}}
seeds: [0, 1]
methods: {{ecl: {{}}}}
cache_dir: {real_isic2018_root.parent / "cache"}
""")
    out = tmp_path / "out"
    proc = run("bench", "--benchmark", str(bench), "--out", str(out), "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "2 run(s) trained" in proc.stdout
    for seed in (0, 1):
        result = json.loads((out / "runs" / "ecl" / f"seed{seed}.json").read_text())
        assert result["method"] == "ecl" and result["seed"] == seed
        assert all(np.isfinite(h["train_loss"]) and np.isfinite(h["bhp"]) for h in result["history"])
    assert "| ecl " in (out / "summary.md").read_text()
