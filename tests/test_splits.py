"""Splits on the real ISIC label files: grouped 3:1:1, ECL's files, split CSVs, official, stratified."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ltbench.data.base import ImageSet, Split
from ltbench.data.isic import ISIC2018_COLUMNS, ISIC2019_COLUMNS, read_onehot_csv
from ltbench.data.splits import (IMAGE_LEVEL_FALLBACK, _fast_stratified_group_kfold, group_codes, leak_report, lesion_leak,
                                  make_split, read_split_csv, write_split_csv)
from ltbench.errors import LtbenchError


def _fake_paths(ids: list[str]) -> list[Path]:
    return [Path(f"{i}.jpg") for i in ids]  # splitting never opens an image


def _ham_set(shared_data: Path) -> ImageSet:
    """ISIC 2018 training set (10,015 images / 7,470 lesions) straight from HAM10000_metadata.csv."""
    ham = pd.read_csv(shared_data / "isic" / "HAM10000_metadata.csv", dtype=str)
    ids = ham["image_id"].tolist()
    return ImageSet(ids=ids, labels=[ISIC2018_COLUMNS.index(d.upper()) for d in ham["dx"]],
                    class_names=list(ISIC2018_COLUMNS), paths=_fake_paths(ids),
                    groups=ham["lesion_id"].to_numpy(dtype=object))


@pytest.fixture(scope="module")
def ham_set(shared_data: Path) -> ImageSet:
    return _ham_set(shared_data)


@pytest.fixture(scope="module")
def grouped0(ham_set: ImageSet) -> Split:
    return make_split(ham_set, "grouped", seed=0)  # ~4 s: computed once for the module


@pytest.fixture(scope="module")
def isic2019_set(shared_data: Path) -> ImageSet:
    isic = shared_data / "isic"
    ids, labels = read_onehot_csv(isic / "ISIC_2019_Training_GroundTruth.csv", ISIC2019_COLUMNS)
    return ImageSet(ids=ids, labels=labels, class_names=ISIC2019_COLUMNS[:8], paths=_fake_paths(ids))


@pytest.fixture(scope="module")
def isic2019_grouped(shared_data: Path, isic2019_set: ImageSet) -> ImageSet:
    """ISIC 2019 with the metadata's lesion ids (2,084 images have none: each its own group)."""
    meta = pd.read_csv(shared_data / "isic" / "ISIC_2019_Training_Metadata.csv", dtype=str).set_index("image")
    groups = meta.loc[isic2019_set.ids, "lesion_id"].to_numpy(dtype=object)
    return ImageSet(ids=isic2019_set.ids, labels=isic2019_set.labels, class_names=isic2019_set.class_names,
                    paths=isic2019_set.paths, groups=groups)


def test_grouped_isic2019(isic2019_grouped: ImageSet) -> None:
    sp = make_split(isic2019_grouped, seed=0)
    assert lesion_leak(isic2019_grouped, sp)[0] == 0
    # 2,084 images have no lesion id: their leak is unknown and counted, not called "none"
    report = leak_report(isic2019_grouped, sp)
    assert report["test_images_without_lesion_id"] + report["train_images_without_lesion_id"] <= 2084
    assert 300 < report["test_images_without_lesion_id"] < 540 and report["test_images"] == len(sp.test)
    assert abs(len(sp.test) / len(isic2019_grouped) - 0.2) < 0.01
    nv = isic2019_grouped.class_names.index("NV")
    assert abs(sp.class_counts(isic2019_grouped, "test")[nv] - 12875 * 0.2) < 100


def _subset(s: ImageSet, rows: np.ndarray) -> ImageSet:
    return ImageSet(ids=[s.ids[r] for r in rows], labels=s.labels[rows], class_names=s.class_names,
                    paths=[s.paths[r] for r in rows],
                    groups=None if s.groups is None else s.groups[rows])


def _lesions(s: ImageSet, rows: np.ndarray) -> set:
    return set(s.groups[rows])


# --------------------------------------------------------------------------------- grouped


def test_grouped_no_lesion_in_two_parts(ham_set: ImageSet, grouped0: Split) -> None:
    parts = {p: _lesions(ham_set, r) for p, r in grouped0.parts().items()}
    assert not parts["train"] & parts["val"]
    assert not parts["train"] & parts["test"]
    assert not parts["val"] & parts["test"]
    assert sum(len(r) for r in grouped0.parts().values()) == len(ham_set) == 10015
    assert lesion_leak(ham_set, grouped0) == (0, len(parts["test"]))
    assert grouped0.kind == "grouped"
    assert grouped0.details["seed"] == 0 and grouped0.details["grouped_by"] == "lesion_id"


def test_grouped_per_class_proportions(ham_set: ImageSet, grouped0: Split) -> None:
    total = np.bincount(ham_set.labels)
    for part, share in (("train", 0.6), ("val", 0.2), ("test", 0.2)):
        frac = np.array(grouped0.class_counts(ham_set, part)) / total
        big = total >= 300  # MEL, NV, BCC, AKIEC, BKL
        assert np.all(np.abs(frac[big] - share) < 0.02), (part, frac)
        assert np.all(np.abs(frac - share) < 0.05), (part, frac)


def test_grouped_deterministic_per_seed(ham_set: ImageSet, grouped0: Split) -> None:
    again, other = make_split(ham_set, seed=0), make_split(ham_set, seed=1)
    assert again.hash(ham_set) == grouped0.hash(ham_set)
    for part in ("train", "val", "test"):
        np.testing.assert_array_equal(again.parts()[part], grouped0.parts()[part])
    assert other.hash(ham_set) != grouped0.hash(ham_set)
    assert not np.array_equal(other.test, grouped0.test)


@pytest.mark.parametrize("which", ["ham", "isic2019"])
def test_fast_group_kfold_equals_sklearn(which: str, ham_set: ImageSet, isic2019_grouped: ImageSet) -> None:
    """The vectorised fold search picks exactly the folds of the stock StratifiedGroupKFold."""
    from sklearn.model_selection import StratifiedGroupKFold

    full = ham_set if which == "ham" else isic2019_grouped
    codes = group_codes(full)
    s = _subset(full, np.flatnonzero(codes % 6 == 0))  # stock sklearn is slow: a sixth of the groups
    x, codes = np.zeros((len(s), 1)), group_codes(s)
    for seed in (0, 3):
        ours = _fast_stratified_group_kfold()(5, shuffle=True, random_state=seed).split(x, s.labels, codes)
        stock = StratifiedGroupKFold(5, shuffle=True, random_state=seed).split(x, s.labels, codes)
        for (_, a), (_, b) in zip(ours, stock):
            np.testing.assert_array_equal(a, b)


def test_grouped_missing_groups_are_singletons() -> None:
    groups = np.array(["L1", None, "", float("nan"), "L1", " ", "L2", None], dtype=object)
    s = ImageSet(ids=[str(i) for i in range(8)], labels=np.zeros(8), class_names=["a"],
                 paths=_fake_paths([str(i) for i in range(8)]), groups=groups)
    codes = group_codes(s)
    assert codes[0] == codes[4]
    assert len(set(codes[[1, 2, 3, 5, 7]])) == 5  # each ungrouped image its own group
    assert len(set(codes)) == 7


def test_stratified_image_level() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), [200, 60, 20, 10])
    ids = [f"im{i}" for i in range(len(labels))]
    s = ImageSet(ids=ids, labels=labels, class_names=list("abcd"), paths=_fake_paths(ids),
                 groups=rng.integers(0, 5, len(ids)).astype(str).astype(object))
    sp = make_split(s, "stratified", seed=1)
    assert sp.kind == "stratified"
    assert sp.class_counts(s, "train") == [120, 36, 12, 6]
    assert sp.class_counts(s, "test") == [40, 12, 4, 2]
    assert "grouped_by" not in sp.details


def test_too_small_class_is_an_error() -> None:
    labels = np.array([0] * 20 + [1] * 3)
    ids = [str(i) for i in range(len(labels))]
    s = ImageSet(ids=ids, labels=labels, class_names=["big", "tiny"], paths=_fake_paths(ids))
    with pytest.raises(LtbenchError, match="class tiny has 3 image"):
        make_split(s, "grouped")


def test_class_empty_in_a_part_is_an_error() -> None:
    # 5 images of class b but all in one lesion: grouping puts them in one part.
    labels = np.array([0] * 50 + [1] * 5)
    ids = [str(i) for i in range(len(labels))]
    groups = np.array([f"L{i}" for i in range(50)] + ["Lb"] * 5, dtype=object)
    s = ImageSet(ids=ids, labels=labels, class_names=["a", "b"], paths=_fake_paths(ids), groups=groups)
    with pytest.raises(LtbenchError, match="class b has no image in the (train|val|test) set"):
        make_split(s, "grouped")


# ------------------------------------------------------------------------------------- ECL


def test_ecl_2018_maps_by_image_and_leaks_lesions(ham_set: ImageSet, shared_data: Path) -> None:
    sp = make_split(ham_set, "ecl", split_dir=shared_data / "isic" / "splits_ecl_miccai2023",
                    dataset_name="isic2018")
    assert (len(sp.train), len(sp.val), len(sp.test)) == (6005, 2005, 2005)
    assert sp.kind == "ecl" and "split_dir" in sp.details
    # data.md: 583 of the 1,884 test lesions of ECL's 2018 split are also in its train set.
    assert lesion_leak(ham_set, sp) == (583, 1884)
    ecl = pd.read_csv(shared_data / "isic" / "splits_ecl_miccai2023" / "ISIC2018_test.csv")
    got = {ham_set.ids[r]: ham_set.class_names[ham_set.labels[r]] for r in sp.test}
    assert got == dict(zip(ecl["image"], ecl["category"]))


def test_ecl_2019(isic2019_set: ImageSet, shared_data: Path) -> None:
    sp = make_split(isic2019_set, "ecl", split_dir=shared_data / "isic" / "splits_ecl_miccai2023",
                    dataset_name="isic2019")
    assert (len(sp.train), len(sp.val), len(sp.test)) == (15193, 5069, 5069)


def test_ecl_plain_file_names(tmp_path: Path, ham_set: ImageSet, shared_data: Path) -> None:
    for part in ("train", "val", "test"):
        shutil.copy(shared_data / "isic" / "splits_ecl_miccai2023" / f"ISIC2018_{part}.csv", tmp_path / f"{part}.csv")
    sp = make_split(ham_set, "ecl", split_dir=tmp_path)
    assert len(sp.test) == 2005


def test_ecl_errors(tmp_path: Path, ham_set: ImageSet, shared_data: Path) -> None:
    ecl_dir = shared_data / "isic" / "splits_ecl_miccai2023"
    with pytest.raises(LtbenchError, match="ISIC2019_train.csv: image ISIC_\\d+ \\(line 2\\) is not in the dataset"):
        make_split(ham_set, "ecl", split_dir=ecl_dir, dataset_name="isic2019")
    with pytest.raises(LtbenchError, match="needs --split-dir"):
        make_split(ham_set, "ecl")
    with pytest.raises(LtbenchError, match="expected ISIC2020_train.csv"):
        make_split(ham_set, "ecl", split_dir=ecl_dir, dataset_name="isic2020")
    # ECL 2018 says AKIEC; an image set naming the class AK is the wrong dataset.
    renamed = ImageSet(ids=ham_set.ids, labels=ham_set.labels, paths=ham_set.paths,
                       class_names=[c.replace("AKIEC", "AK") for c in ISIC2018_COLUMNS])
    with pytest.raises(LtbenchError, match="has category 'AKIEC' but the dataset labels it 'AK'"):
        make_split(renamed, "ecl", split_dir=ecl_dir, dataset_name="isic2018")


def test_ecl_category_mismatch(tmp_path: Path, ham_set: ImageSet, shared_data: Path) -> None:
    for part in ("train", "val", "test"):
        shutil.copy(shared_data / "isic" / "splits_ecl_miccai2023" / f"ISIC2018_{part}.csv", tmp_path)
    val = pd.read_csv(tmp_path / "ISIC2018_val.csv", dtype=str)
    val.loc[10, "category"] = "MEL" if val.loc[10, "category"] != "MEL" else "NV"
    val.to_csv(tmp_path / "ISIC2018_val.csv", index=False)
    with pytest.raises(LtbenchError, match=f"ISIC2018_val.csv: image {val.loc[10, 'image']} \\(line 12\\)"):
        make_split(ham_set, "ecl", split_dir=tmp_path, dataset_name="isic2018")


# -------------------------------------------------------------------------------- split CSV


def test_split_csv_round_trip(tmp_path: Path, ham_set: ImageSet, grouped0: Split) -> None:
    path = tmp_path / "out" / "split.csv"
    write_split_csv(ham_set, grouped0, path)
    assert [p.name for p in path.parent.iterdir()] == ["split.csv"]  # no temporary file left
    df = pd.read_csv(path)
    assert list(df.columns) == ["image", "label", "class", "part"]
    assert df["part"].value_counts().to_dict() == {
        "train": len(grouped0.train), "val": len(grouped0.val), "test": len(grouped0.test)}
    back = make_split(ham_set, "csv", split_file=path)
    assert back.kind == "csv" and back.hash(ham_set) == grouped0.hash(ham_set)
    for part in ("train", "val", "test"):
        np.testing.assert_array_equal(back.parts()[part], grouped0.parts()[part])
    # Only image,part are required.
    df[["part", "image"]].to_csv(tmp_path / "minimal.csv", index=False)
    assert read_split_csv(ham_set, tmp_path / "minimal.csv").hash(ham_set) == grouped0.hash(ham_set)


def test_split_csv_errors(tmp_path: Path, ham_set: ImageSet, grouped0: Split) -> None:
    path = tmp_path / "split.csv"
    write_split_csv(ham_set, grouped0, path)
    df = pd.read_csv(path, dtype=str)

    def broken(edit) -> Path:
        bad = df.copy()
        edit(bad)
        bad.to_csv(tmp_path / "bad.csv", index=False)
        return tmp_path / "bad.csv"

    with pytest.raises(LtbenchError, match=r"bad.csv: image ISIC_9999999 \(line 4\) is not in the dataset"):
        read_split_csv(ham_set, broken(lambda d: d.__setitem__("image", d["image"].where(d.index != 2, "ISIC_9999999"))))
    with pytest.raises(LtbenchError, match="part 'holdout'"):
        read_split_csv(ham_set, broken(lambda d: d.__setitem__("part", d["part"].where(d.index != 0, "holdout"))))
    with pytest.raises(LtbenchError, match="has class 'XX' but the dataset has"):
        read_split_csv(ham_set, broken(lambda d: d.__setitem__("class", d["class"].where(d.index != 5, "XX"))))
    with pytest.raises(LtbenchError, match="missing column.s. part"):
        read_split_csv(ham_set, broken(lambda d: d.__delitem__("part")))
    with pytest.raises(LtbenchError, match="needs --split-file"):
        make_split(ham_set, "csv")


# ------------------------------------------------------------------------------ official etc.


def test_official_split() -> None:
    labels = np.tile([0, 1], 15)
    ids = [str(i) for i in range(30)]
    official = np.array(["train"] * 18 + ["val"] * 6 + ["test"] * 6, dtype=object)
    s = ImageSet(ids=ids, labels=labels, class_names=["a", "b"], paths=_fake_paths(ids), official_split=official)
    sp = make_split(s, "official")
    assert (len(sp.train), len(sp.val), len(sp.test)) == (18, 6, 6) and sp.kind == "official"
    no_official = ImageSet(ids=ids, labels=labels, class_names=["a", "b"], paths=_fake_paths(ids))
    with pytest.raises(LtbenchError, match="--split official: this dataset has no official"):
        make_split(no_official, "official")
    with pytest.raises(LtbenchError, match="unknown kind 'random'"):
        make_split(s, "random")


def test_kfold_splits_use_only_the_official_training_images_when_official_parts_exist():
    from ltbench.data.datasets import load_dataset

    base = load_dataset("synthetic")
    n = len(base)
    official = np.array(["train"] * n, dtype=object)
    official[::7] = "test"  # some rows of every class belong to an official test set
    official[3::7] = "val"
    image_set = ImageSet(ids=base.ids, labels=base.labels, class_names=base.class_names, pixels=base.pixels,
                         groups=base.groups, official_split=official)
    for kind in ("grouped", "stratified"):
        split = make_split(image_set, kind=kind, seed=0)
        used = np.concatenate([split.train, split.val, split.test])
        assert set(official[used]) == {"train"}, kind
        assert len(used) == int((official == "train").sum())
    split = make_split(image_set, kind="official")
    assert set(official[split.test]) == {"test"} and set(official[split.val]) == {"val"}


# ------------------------------------------------------------------------- leak with unknown ids


def _grouped_set(groups: list, labels: list[int]) -> ImageSet:
    ids = [f"im{i}" for i in range(len(labels))]
    return ImageSet(ids=ids, labels=np.array(labels), class_names=["a", "b"], paths=_fake_paths(ids),
                    groups=np.array(groups, dtype=object))


def test_leak_report_counts_test_images_without_a_lesion_id() -> None:
    # rows:      0     1     2     3     4    5     6     7
    groups = ["L1", "L2", "L3", None, "", "L1", "L4", None]
    s = _grouped_set(groups, [0, 1, 0, 1, 0, 1, 0, 1])
    split = Split(train=np.array([0, 1, 7]), val=np.array([2]), test=np.array([3, 4, 5, 6]), kind="csv")
    # test lesions with an id: L1 (also in train through row 0) and L4; rows 3 and 4 have no id
    assert lesion_leak(s, split) == (1, 2)
    assert leak_report(s, split) == {"test_lesions_also_in_train": 1, "test_lesions": 2,
                                     "test_images_without_lesion_id": 2, "test_images": 4,
                                     "train_images_without_lesion_id": 1}
    no_ids = ImageSet(ids=s.ids, labels=s.labels, class_names=s.class_names, paths=s.paths)
    assert leak_report(no_ids, split)["test_images_without_lesion_id"] == 4
    assert leak_report(no_ids, split)["test_lesions"] == 0


def test_grouped_without_any_lesion_id_says_it_is_image_level() -> None:
    labels = [0] * 30 + [1] * 20
    ids = [f"im{i}" for i in range(50)]
    for groups in (None, np.array([None, ""] * 25, dtype=object)):
        s = ImageSet(ids=ids, labels=np.array(labels), class_names=["a", "b"], paths=_fake_paths(ids), groups=groups)
        sp = make_split(s, "grouped", seed=0)
        assert sp.kind == IMAGE_LEVEL_FALLBACK == "stratified (image-level: no lesion ids)"
        assert sp.details["grouped_by"] == "image" and "no image has a lesion id" in sp.details["warning"]
    some = _grouped_set(["L0"] + [None] * 49, labels)
    sp = make_split(some, "grouped", seed=0)
    assert sp.kind == "grouped" and "warning" not in sp.details and sp.details["grouped_by"] == "lesion_id"
