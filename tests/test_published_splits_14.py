"""FlexSampling's 14-class split: on the shared published files (skipped when absent) and on a small
fake ISIC 2019 folder with extra ISIC-archive images (the image-presence check, the whole data path)."""
from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ltbench.data.base import ImageSet
from ltbench.data.published_splits import (FLEX14_EXTRA_FOLDER, FLEX14_KIND, FLEX_14_CLASSES,
                                           flexsampling14_image_set, read_npy_names)
from ltbench.data.splits import image_set_for_split, leak_report, make_split
from ltbench.errors import LtbenchError

PARTS = ("train", "val", "test")
# The shared files' README (flexible_sampling_splits/README.md), labels 0..13.
README_COUNTS = {"train": [9012, 3165, 2375, 1024, 608, 459, 268, 189, 177, 172, 22, 18, 10, 9],
                 "val": [1288, 452, 339, 147, 87, 65, 39, 27, 25, 24, 3, 3, 2, 2],
                 "test": [2575, 905, 679, 293, 174, 132, 77, 54, 51, 50, 7, 6, 3, 3]}


# ------------------------------------------------------------------------------ the shared files


@pytest.fixture(scope="module")
def flex14(shared_data: Path) -> Path:
    d = shared_data / "flexible_sampling_splits"
    if not (d / "14-class" / "dic.csv").is_file():
        pytest.skip(f"FlexSampling 14-class split not found at {d}")
    return d


@pytest.fixture(scope="module")
def isic2019(shared_isic2019: ImageSet) -> ImageSet:
    return shared_isic2019


def _extra_ids(flex14: Path, isic2019: ImageSet) -> list[str]:
    dic = pd.read_csv(flex14 / "14-class" / "dic.csv", dtype=str)
    known = set(isic2019.ids)
    return [n[:-4] for n in dic["image"] if n[:-4] not in known]


@pytest.fixture(scope="module")
def data_root(flex14: Path, isic2019: ImageSet, tmp_path_factory) -> Path:
    """A data folder holding the extra images as empty files: only their presence is checked here."""
    root = tmp_path_factory.mktemp("isic2019")
    (root / FLEX14_EXTRA_FOLDER).mkdir()
    for i in _extra_ids(flex14, isic2019):
        (root / FLEX14_EXTRA_FOLDER / f"{i}.jpg").touch()
    return root


@pytest.fixture(scope="module")
def set14(isic2019: ImageSet, flex14: Path, data_root: Path) -> ImageSet:
    return image_set_for_split(isic2019, "flexsampling", flex14, classes=14, data_root=data_root)


def test_shared_14_class_counts_labels_and_images(set14: ImageSet, flex14: Path, isic2019: ImageSet) -> None:
    sp = make_split(set14, "flexsampling", split_dir=flex14, classes=14)
    assert sp.kind == FLEX14_KIND and sp.details["classes"] == 14 and sp.details["ratio"] is None
    assert set14.class_names == list(FLEX_14_CLASSES)
    # 25,331 ISIC 2019 images - 1,099 "pigmented benign keratosis" + 788 ISIC-archive images
    assert len(set14) == 25020 and len(_extra_ids(flex14, isic2019)) == 788
    dic = pd.read_csv(flex14 / "14-class" / "dic.csv").set_index("image")["label"]
    for part in PARTS:
        names = read_npy_names(flex14 / "14-class" / f"{part}.npy")
        # the per-class counts the published files hold (their labels), and the README's
        held = Counter(dic.loc[names])
        assert sp.class_counts(set14, part) == [held[c] for c in range(14)] == README_COUNTS[part]
        assert sorted(set14.ids[r] for r in sp.parts()[part]) == sorted(n[:-4] for n in names)
    # every label ltbench derived (ground truth + archive diagnosis) is the published one
    ours = pd.Series(set14.labels, index=[f"{i}.jpg" for i in set14.ids])
    assert (ours.loc[dic.index] == dic).all()


def test_shared_14_class_lesion_leak(set14: ImageSet, flex14: Path) -> None:
    sp = make_split(set14, "flexsampling", split_dir=flex14, classes=14)
    leak = leak_report(set14, sp, "test")
    # 2,122 test lesions also in train; 3,600 = the README's 3,565 ISIC 2019 lesions + 35 archive lesion ids
    assert (leak["test_lesions_also_in_train"], leak["test_lesions"]) == (2122, 3600)
    isic_only = set14.groups.copy()
    isic_only[[g is not None and str(g).startswith("IL_") for g in isic_only]] = None  # archive lesion ids
    only = leak_report(ImageSet(ids=set14.ids, labels=set14.labels, class_names=set14.class_names,
                                paths=set14.paths, groups=isic_only), sp, "test")
    assert (only["test_lesions_also_in_train"], only["test_lesions"]) == (2122, 3565)


def test_shared_14_class_missing_images_named(isic2019: ImageSet, flex14: Path, tmp_path: Path) -> None:
    with pytest.raises(LtbenchError) as err:
        image_set_for_split(isic2019, "flexsampling", flex14, classes=14, data_root=tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and "788 of the 788 ISIC-archive images" in msg and "ISIC_0024246" in msg
    assert str(tmp_path / FLEX14_EXTRA_FOLDER) in msg and "isic-archive.com" in msg


def test_shared_14_class_swapped_label_refused(isic2019: ImageSet, flex14: Path, data_root: Path,
                                               tmp_path: Path) -> None:
    out = tmp_path / "14-class"
    shutil.copytree(flex14 / "14-class", out)
    for f in out.iterdir():
        f.chmod(0o644)
    dic = pd.read_csv(out / "dic.csv", dtype=str)
    k = 4321
    dic.loc[k, "label"] = "13" if dic.at[k, "label"] != "13" else "0"
    dic.to_csv(out / "dic.csv", index=False)
    s14 = image_set_for_split(isic2019, "flexsampling", out, classes=14, data_root=data_root)
    image, label = dic.at[k, "image"], dic.at[k, "label"]
    with pytest.raises(LtbenchError, match=rf"dic.csv: image {image} \(line {k + 2}\) has label {label} "):
        make_split(s14, "flexsampling", split_dir=out, classes=14)


# ------------------------------------------------------------------------------- a fake layout

GT = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]
# (ISIC 2019 column or None for an extra archive image, archive diagnosis or "") per 14-class label
SOURCES = {"NV": ("NV", ""), "MEL": ("MEL", ""), "basal cell carcinoma": ("BCC", "basal cell carcinoma"),
           "seborrheic keratosis": ("BKL", "seborrheic keratosis"), "actinic keratosis": ("AK", "actinic keratosis"),
           "squamous cell carcinoma": ("SCC", "squamous cell carcinoma"), "BKL": ("BKL", ""),
           "solar lentigo": ("BKL", "solar lentigo"), "vascular lesion": ("VASC", "vascular lesion"),
           "dermatofibroma": ("DF", "dermatofibroma"), "lichenoid keratosis": (None, "lichenoid keratosis"),
           "lentigo simplex": (None, "lentigo simplex"), "angioma": (None, "angioma"),
           "atypical melanocytic proliferation": (None, "atypical melanocytic proliferation")}


def fake_flex14(root: Path, extras_in: str = FLEX14_EXTRA_FOLDER) -> dict[str, list[str]]:
    """ISIC 2019's official layout (real JPEGs) + FlexSampling's 14-class files: one image per class and part,
    one 'pigmented benign keratosis' BKL image (left out); extra images in ``extras_in``. Returns part -> ids."""
    from PIL import Image

    images = root / "ISIC_2019_Training_Input"
    images.mkdir(parents=True)
    (root / extras_in).mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    gt, meta, archive, dic, parts = [], [], [], [], {p: [] for p in PARTS}

    def add(image: str, column: str | None, diagnosis: str, label: int | None, part: str | None, lesion: str) -> None:
        folder = images if column is not None else root / extras_in
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(folder / f"{image}.jpg")
        if column is not None:
            gt.append([image] + ["1.0" if c == column else "0.0" for c in GT])
            meta.append([image, "50", "head", lesion, "male"])
        if diagnosis:
            archive.append([f"oid{len(archive)}", image, diagnosis, lesion if column is None else ""])
        if label is not None:
            dic.append((f"{image}.jpg", label))
            parts[part].append(image)

    k = 0
    for label, name in enumerate(FLEX_14_CLASSES):
        column, diagnosis = SOURCES[name]
        for part in PARTS:
            # one lesion per class in train and test: the test image's lesion leaks
            lesion = f"{'IL' if column is None else 'BCN'}_{label:02d}{'x' if part == 'val' else ''}"
            add(f"ISIC_{k:07d}", column, diagnosis, label, part, lesion)
            k += 1
    add(f"ISIC_{k:07d}", "BKL", "pigmented benign keratosis", None, None, "BCN_99")
    pd.DataFrame(gt, columns=["image", *GT]).to_csv(root / "ISIC_2019_Training_GroundTruth.csv", index=False)
    pd.DataFrame(meta, columns=["image", "age_approx", "anatom_site_general", "lesion_id", "sex"]).to_csv(
        root / "ISIC_2019_Training_Metadata.csv", index=False)
    flex = root / "flexible_sampling_splits" / "14-class"
    flex.mkdir(parents=True)
    for part, ids in parts.items():
        np.save(flex / f"{part}.npy", np.array([f"{i}.jpg" for i in ids]))
    pd.DataFrame(dic, columns=["image", "label"]).to_csv(flex / "dic.csv", index=False)
    pd.DataFrame(archive, columns=["_id", "name", "meta.clinical.diagnosis", "meta.clinical.lesion_id"]).to_csv(
        flex / "additional_data_isic_metadata.csv", index=False)
    return parts


def _spec(root: Path, tmp_path: Path, **kw):
    from ltbench.runs import DataSpec

    return DataSpec(dataset="isic2019", data_root=str(root), split="flexsampling",
                    split_dir="flexible_sampling_splits", cache_dir=str(tmp_path / "cache"), **kw)


@pytest.mark.parametrize("extras_in", [FLEX14_EXTRA_FOLDER, "ISIC_2019_Training_Input"])
def test_fake_layout_prepares_the_14_class_data(tmp_path: Path, extras_in: str) -> None:
    from ltbench.runs import prepare_data

    root = tmp_path / "isic2019"
    parts = fake_flex14(root, extras_in)
    prepared = prepare_data(_spec(root, tmp_path, split_classes=14), image_size=16)
    s, sp = prepared.image_set, prepared.split
    assert s.class_names == list(FLEX_14_CLASSES) and len(s) == 42  # the left-out BKL image is not in it
    assert prepared.bundle.class_names == list(FLEX_14_CLASSES) and prepared.bundle.pixels.shape[0] == 42
    for part in PARTS:
        assert sp.class_counts(s, part) == [1] * 14
        assert sorted(s.ids[r] for r in sp.parts()[part]) == sorted(parts[part])
    in_extra_folder = sum(Path(p).parent.name == FLEX14_EXTRA_FOLDER for p in s.paths)
    assert in_extra_folder == (12 if extras_in == FLEX14_EXTRA_FOLDER else 0)  # else found beside ISIC 2019's
    # every class leaks one lesion into test (archive lesion ids included), the report says so
    assert prepared.leak["test_lesions_also_in_train"] == 14 == prepared.leak["test_lesions"]
    assert sp.kind == FLEX14_KIND


def test_fake_layout_missing_extra_image_is_one_line(tmp_path: Path) -> None:
    from ltbench.runs import prepare_data

    root = tmp_path / "isic2019"
    parts = fake_flex14(root)
    gone = parts["test"][-1]  # an extra image (the last class comes from the archive)
    (root / FLEX14_EXTRA_FOLDER / f"{gone}.jpg").unlink()
    with pytest.raises(LtbenchError) as err:
        prepare_data(_spec(root, tmp_path, split_classes=14), image_size=16)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("--classes 14: 1 of the 12 ISIC-archive images")
    assert f"({gone})" in msg and str(root / FLEX14_EXTRA_FOLDER) in msg
    assert not (tmp_path / "cache").exists()  # refused before any pixel was decoded


def test_fake_layout_contradicting_diagnosis_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "isic2019"
    parts = fake_flex14(root)
    meta = root / "flexible_sampling_splits" / "14-class" / "additional_data_isic_metadata.csv"
    df = pd.read_csv(meta, dtype=str, keep_default_na=False)
    bcc = parts["train"][FLEX_14_CLASSES.index("basal cell carcinoma")]
    k = int(np.flatnonzero(df["name"] == bcc)[0])
    df.loc[k, "meta.clinical.diagnosis"] = "dermatofibroma"
    df.to_csv(meta, index=False)
    from ltbench.data.isic import load_isic2019

    with pytest.raises(LtbenchError, match=rf"image {bcc} \(line {k + 2}\) has diagnosis 'dermatofibroma' but "
                                           r"ISIC_2019_Training_GroundTruth.csv labels it BCC"):
        flexsampling14_image_set(load_isic2019(root), root / "flexible_sampling_splits", root)


def test_classes_option_rules(tmp_path: Path) -> None:
    from ltbench.data.datasets import load_dataset
    from ltbench.runs import DataSpec

    synthetic = load_dataset("synthetic")
    with pytest.raises(LtbenchError, match="--classes 14: applies to --split flexsampling only"):
        make_split(synthetic, "stratified", classes=14)
    with pytest.raises(LtbenchError, match="--ratio 200: FlexSampling's 14-class split has no imbalance ratio"):
        make_split(synthetic, "flexsampling", split_dir=tmp_path, ratio=200, classes=14)
    with pytest.raises(LtbenchError, match="built on ISIC 2019"):
        image_set_for_split(synthetic, "flexsampling", tmp_path, classes=14)
    assert image_set_for_split(synthetic, "flexsampling", tmp_path, classes=8) is synthetic
    # the 8-class default leaves the data identity (so every run key) as it was
    base = DataSpec(dataset="isic2019", split="flexsampling").identity()
    assert "split_classes" not in base and DataSpec(dataset="isic2019", split="flexsampling",
                                                    split_classes=8).identity() == base
    assert DataSpec(dataset="isic2019", split="flexsampling", split_classes=14).identity()["split_classes"] == 14


@pytest.mark.slow
def test_cli_train_classes_14(tmp_path: Path, capsys, monkeypatch) -> None:
    """``ltbench train --split flexsampling --classes 14`` end to end (1 epoch of a small CNN)."""
    from ltbench.cli import main

    root = tmp_path / "isic2019"
    parts = fake_flex14(root)
    monkeypatch.setenv("LTBENCH_CACHE", str(tmp_path / "cache"))
    common = ["train", "--method", "ce", "--dataset", "isic2019", "--data-root", str(root), "--split", "flexsampling",
              "--split-dir", str(root / "flexible_sampling_splits"), "--backbone", "small-cnn", "--image-size", "16",
              "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--out", str(tmp_path / "out")]
    assert main([*common, "--classes", "9"]) == 2
    assert "--classes 9" in capsys.readouterr().err
    (root / FLEX14_EXTRA_FOLDER / f"{parts['val'][-1]}.jpg").rename(tmp_path / "away.jpg")
    assert main([*common, "--classes", "14"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and parts["val"][-1] in err
    (tmp_path / "away.jpg").rename(root / FLEX14_EXTRA_FOLDER / f"{parts['val'][-1]}.jpg")
    assert main([*common, "--classes", "14"]) == 0
    out = capsys.readouterr().out
    assert f"split {FLEX14_KIND} (14/14/14)" in out and "lesion leak" in out
