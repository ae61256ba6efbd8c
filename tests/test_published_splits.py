"""FlexSampling and FLamby split readers on the shared published files (skipped when absent)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ltbench.data.base import ImageSet
from ltbench.data.published_splits import FLEX_8_CLASSES, carve_validation, read_npy_names
from ltbench.data.splits import leak_report, make_split
from ltbench.errors import LtbenchError

FLEX_TRAIN = {100: [5000, 2590, 1342, 695, 360, 187, 97, 51], 200: [5000, 2346, 1101, 517, 243, 114, 54, 25],
              500: [5000, 2058, 847, 349, 144, 60, 25, 11]}
FLEX_TEST_LEAK = {100: (328, 674), 200: (260, 662), 500: (214, 671)}  # README: shared / test lesions


@pytest.fixture(scope="module")
def isic2019(shared_isic2019: ImageSet) -> ImageSet:
    return shared_isic2019


@pytest.fixture(scope="module")
def flex_dir(shared_data: Path) -> Path:
    d = shared_data / "flexible_sampling_splits"
    if not (d / "8-class").is_dir():
        pytest.skip(f"FlexSampling splits not found at {d}")
    return d


def _counts_in_flex_order(s: ImageSet, rows: np.ndarray) -> list[int]:
    ours = np.bincount(s.labels[rows], minlength=s.num_classes)
    return [int(ours[s.class_names.index(c)]) for c in FLEX_8_CLASSES]


@pytest.mark.parametrize("ratio", [100, 200, 500])
def test_flexsampling_counts_labels_and_leak(isic2019: ImageSet, flex_dir: Path, ratio: int) -> None:
    sp = make_split(isic2019, "flexsampling", split_dir=flex_dir, ratio=ratio)
    assert sp.kind == "flexsampling" and sp.details["ratio"] == ratio
    assert _counts_in_flex_order(isic2019, sp.train) == FLEX_TRAIN[ratio]
    assert _counts_in_flex_order(isic2019, sp.val) == [50] * 8
    assert _counts_in_flex_order(isic2019, sp.test) == [100] * 8
    # class ids stay the ground truth's column order, whatever FlexSampling's numbering
    assert isic2019.class_names == ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"]
    leak = leak_report(isic2019, sp, "test")
    assert (leak["test_lesions_also_in_train"], leak["test_lesions"]) == FLEX_TEST_LEAK[ratio]
    # the exact images of the published file, in any order
    names = read_npy_names(flex_dir / "8-class" / f"test_{ratio}.npy")
    assert sorted(isic2019.ids[r] for r in sp.test) == sorted(n[:-4] for n in names)


def test_flexsampling_accepts_the_8_class_folder_itself(isic2019: ImageSet, flex_dir: Path) -> None:
    sp = make_split(isic2019, "flexsampling", split_dir=flex_dir / "8-class", ratio=100)
    assert len(sp.train) == 10322


def _copy_8class(flex_dir: Path, tmp_path: Path) -> Path:
    out = tmp_path / "8-class"
    shutil.copytree(flex_dir / "8-class", out)
    for f in out.iterdir():
        f.chmod(0o644)
    return out


def test_flexsampling_swapped_label_is_refused(isic2019: ImageSet, flex_dir: Path, tmp_path: Path) -> None:
    out = _copy_8class(flex_dir, tmp_path)
    dic = pd.read_csv(out / "dic.csv", dtype=str)
    k = 1234
    dic.loc[k, "label"] = "7" if dic.at[k, "label"] != "7" else "0"  # one image gets another class
    dic.to_csv(out / "dic.csv", index=False)
    with pytest.raises(LtbenchError, match=rf"dic.csv: image {dic.at[k, 'image']} \(line {k + 2}\) has label"):
        make_split(isic2019, "flexsampling", split_dir=out, ratio=100)


def test_flexsampling_bad_files(isic2019: ImageSet, flex_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(LtbenchError, match="--ratio 300"):
        make_split(isic2019, "flexsampling", split_dir=flex_dir, ratio=300)
    with pytest.raises(LtbenchError, match="needs --split-dir"):
        make_split(isic2019, "flexsampling")
    out = _copy_8class(flex_dir, tmp_path)
    np.save(out / "val_100.npy", np.array(["ISIC_0000000.jpg", "ISIC_9999999.jpg"]))
    with pytest.raises(LtbenchError, match="val_100.npy: image ISIC_9999999.jpg"):
        make_split(isic2019, "flexsampling", split_dir=out, ratio=100)
    np.save(out / "val_100.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(LtbenchError, match="not a plain string array"):
        make_split(isic2019, "flexsampling", split_dir=out, ratio=100)


def test_flexsampling_14_class_needs_its_images(isic2019: ImageSet, flex_dir: Path) -> None:
    from ltbench.data.published_splits import read_flexsampling_split

    with pytest.raises(LtbenchError, match="14-class split is made of the image set flexsampling14_image_set builds"):
        read_flexsampling_split(isic2019, flex_dir, ratio=None)


@pytest.fixture(scope="module")
def flamby_dir(shared_data: Path) -> Path:
    d = shared_data / "isic" / "splits_flamby_fed_isic2019"
    if not (d / "train_test_split.csv").is_file():
        pytest.skip(f"FLamby split not found at {d}")
    return d


def test_flamby_split(isic2019: ImageSet, flamby_dir: Path) -> None:
    sp = make_split(isic2019, "flamby", split_dir=flamby_dir, seed=0)
    ff = pd.read_csv(flamby_dir / "train_test_split.csv")
    assert len(sp.test) == 4650 and len(sp.train) + len(sp.val) == 18597
    # validation: a stratified 20 % of FLamby's train part, per class
    train_counts = np.bincount(isic2019.labels[np.concatenate([sp.train, sp.val])], minlength=8)
    val_counts = np.bincount(isic2019.labels[sp.val], minlength=8)
    assert np.array_equal(val_counts, np.maximum(1, np.round(0.2 * train_counts)).astype(int))
    assert sorted(isic2019.ids[r] for r in sp.test) == sorted(ff.loc[ff.fold == "test", "image"])
    assert sp.details["seed"] == 0 and "stratified 0.2" in sp.details["validation"]
    leak = leak_report(isic2019, sp, "test")
    assert leak["test_lesions_also_in_train"] > 0  # image-level: lesions leak (PROVENANCE: 2302 incl. val)
    other = make_split(isic2019, "flamby", split_dir=flamby_dir, seed=1)
    assert np.array_equal(other.test, sp.test) and not np.array_equal(other.val, sp.val)


def test_flamby_label_mismatch_is_refused(isic2019: ImageSet, flamby_dir: Path, tmp_path: Path) -> None:
    df = pd.read_csv(flamby_dir / "train_test_split.csv", dtype=str)
    swapped = df.copy()
    swapped.columns = ["image", "NV", "MEL", *df.columns[3:]]  # two ground-truth columns swapped
    swapped.to_csv(tmp_path / "train_test_split.csv", index=False)
    with pytest.raises(LtbenchError, match="label column 1 is NV but the ground truth's is MEL"):
        make_split(isic2019, "flamby", split_dir=tmp_path)
    wrong = df.copy()
    wrong.loc[5, "target"] = str((int(wrong.at[5, "target"]) + 1) % 8)
    wrong.to_csv(tmp_path / "train_test_split.csv", index=False)
    with pytest.raises(LtbenchError, match=rf"image {wrong.at[5, 'image']} \(line 7\)"):
        make_split(isic2019, "flamby", split_dir=tmp_path)


def test_carve_validation_is_stratified_and_seeded() -> None:
    labels = np.repeat([0, 1, 2], [50, 10, 2])
    rows = np.arange(len(labels))
    train, val = carve_validation(labels, rows, 0.2, seed=3)
    assert np.bincount(labels[val]).tolist() == [10, 2, 1]
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == len(rows)
    assert np.array_equal(carve_validation(labels, rows, 0.2, seed=3)[1], val)


# ------------------------------------------------------------- end to end on a fake official layout

GT_COLUMNS = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]
PER_CLASS = {"train": 4, "val": 2, "test": 2}


def fake_isic2019(root: Path) -> Path:
    """A tiny ISIC 2019 folder (real JPEGs, official CSVs) with FlexSampling and FLamby split files in it."""
    from PIL import Image

    images = root / "ISIC_2019_Training_Input"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows, meta, parts = [], [], {p: [] for p in PER_CLASS}
    k = 0
    for c in range(8):
        for part, n in PER_CLASS.items():
            for _ in range(n):
                image = f"ISIC_{k:07d}"
                Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(images / f"{image}.jpg")
                rows.append([image] + ["1.0" if j == c else "0.0" for j in range(9)])
                meta.append([image, "50", "head", f"HAM_{c}_{k % 2}", "male"])  # lesions in every part: leaks
                parts[part].append((image, c))
                k += 1
    pd.DataFrame(rows, columns=["image", *GT_COLUMNS]).to_csv(root / "ISIC_2019_Training_GroundTruth.csv", index=False)
    pd.DataFrame(meta, columns=["image", "age_approx", "anatom_site_general", "lesion_id", "sex"]).to_csv(
        root / "ISIC_2019_Training_Metadata.csv", index=False)
    flex = root / "flexible_sampling_splits" / "8-class"
    flex.mkdir(parents=True)
    for part, items in parts.items():
        for ratio in (100, 500):  # the same images: only which files are read differs
            np.save(flex / f"{part}_{ratio}.npy", np.array([f"{i}.jpg" for i, _ in items]))
    flex_label = {GT_COLUMNS.index(n): j for j, n in enumerate(FLEX_8_CLASSES)}
    pd.DataFrame([(f"{r[0]}.jpg", flex_label[r[1:].index("1.0")]) for r in rows],
                 columns=["image", "label"]).to_csv(flex / "dic.csv", index=False)
    flamby = root / "splits_flamby_fed_isic2019"
    flamby.mkdir()
    fold = {i: ("test" if p == "test" else "train") for p, items in parts.items() for i, _ in items}
    pd.DataFrame([[*r, r[1:].index("1.0"), 0, fold[r[0]], f"{fold[r[0]]}_0"] for r in rows],
                 columns=["image", *GT_COLUMNS, "target", "center", "fold", "fold2"]).to_csv(
        flamby / "train_test_split.csv", index=False)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("name,ratio", [("isic2019-flexsampling", None), ("isic2019-flexsampling", 500),
                                        ("isic2019-monica", None), ("isic2019-flamby", None)])
def test_shipped_benchmark_runs_on_a_fake_official_layout(tmp_path: Path, name: str, ratio: int | None) -> None:
    """`make bench DATASET=NAME DATA_ROOT=... [RATIO=500]` with the shipped file, on a CPU without ImageNet
    weights: the overrides come from the command line (Makefile variables), not from an edited copy."""
    import json
    import os
    import subprocess

    import yaml

    repo = Path(__file__).resolve().parents[1]
    if not (repo / ".venv" / "bin" / ".installed").is_file():
        pytest.skip("make bench needs the project's .venv (make install)")
    root = fake_isic2019(tmp_path / "isic2019")
    out = tmp_path / "out"
    env = {**os.environ, "LTBENCH_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        ["make", "-s", "-C", str(repo), "bench", f"DATASET={name}", f"DATA_ROOT={root}", f"OUT={out}",
         "EPOCHS=1", "SEEDS=0", "METHODS=ce", "BACKBONE=small-cnn", "PRETRAINED=none", "IMAGE_SIZE=16",
         "BATCH_SIZE=8", "DEVICE=cpu", *([f"RATIO={ratio}"] if ratio else [])],
        capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((out / "runs" / "ce" / "seed0.json").read_text())
    shipped = yaml.safe_load((repo / "benchmarks" / f"{name}.yaml").read_text())
    kind = shipped["split"]["kind"]
    assert result["split"]["kind"] == kind
    # the file's protocol arrives, with only the Make variables' overrides on top
    for key, value in shipped["train"].items():
        if key not in ("backbone", "pretrained", "image_size", "batch_size", "epochs"):
            assert result["config"][key] == value, key
    if kind == "flexsampling":
        assert result["split"]["details"]["ratio"] == (ratio or 100)
        assert result["split"]["details"]["files"][0] == f"train_{ratio or 100}.npy"
    if name == "isic2019-monica":
        # equal training counts here, so the two head classes are the first two by class index
        assert "group_acc" in result["test"] and result["test"]["groups"]["head"] == ["MEL", "NV"]
        assert "Group-mean acc (MONICA)" in (out / "summary.md").read_text()
    assert result["split"]["lesion_leak"]["test_lesions_also_in_train"] > 0
    counts = result["dataset"]["class_counts"]
    if kind == "flexsampling":
        assert counts == {"train": [4] * 8, "val": [2] * 8, "test": [2] * 8}
    else:  # FLamby: 6 train images per class, 20 % (1) held out for validation
        assert counts == {"train": [5] * 8, "val": [1] * 8, "test": [2] * 8}


def test_ratio_only_for_flexsampling() -> None:
    from ltbench.data.datasets import load_dataset

    with pytest.raises(LtbenchError, match="--ratio 200: applies to --split flexsampling only"):
        make_split(load_dataset("synthetic"), "stratified", ratio=200)
