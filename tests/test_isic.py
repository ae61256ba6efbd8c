"""ISIC 2019 / 2018 loaders on official layouts built in tmp_path from the real CSVs and JPEGs."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ltbench.data.isic import ISIC2018_COLUMNS, ISIC2019_COLUMNS, load_isic2018, load_isic2019
from ltbench.errors import LtbenchError

T18 = "ISIC2018_Task3"


def _test_gt(images_dir: Path) -> pd.DataFrame:
    """The real ISIC 2018 test ground truth (1,512 rows), as strings."""
    return pd.read_csv(images_dir / f"{T18}_Test_GroundTruth.csv", dtype=str)


def _per_class(gt: pd.DataFrame, start: int, n: int) -> pd.DataFrame:
    """Rows start..start+n of each class, so every class is present."""
    label = gt[ISIC2018_COLUMNS].astype(float).to_numpy().argmax(axis=1)
    rows = np.concatenate([np.flatnonzero(label == c)[start:start + n] for c in range(7)])
    return gt.iloc[np.sort(rows)]


def _link_images(folder: Path, ids: list[str], sources: list[Path]) -> None:
    """Real JPEGs under the given ids, plus the non-image files a real download holds."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, src in zip(ids, sources):
        os.symlink(src, folder / f"{i}.jpg")
    (folder / "LICENSE.txt").write_text("CC BY-NC 4.0\n")
    (folder / "ATTRIBUTION.txt").write_text("ISIC\n")


def _labels(df: pd.DataFrame, columns: list[str]) -> np.ndarray:
    return df[columns].astype(float).to_numpy().argmax(axis=1)


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


# ----------------------------------------------------------------------------------- ISIC 2018


@pytest.fixture
def isic2018_root(tmp_path: Path, isic2018_test_images: Path) -> Path:
    """Official 2018 layout: 20/5/5 real images per class as Training/Validation/Test."""
    gt = _test_gt(isic2018_test_images)
    for part, start, n in (("Training", 0, 20), ("Validation", 20, 5), ("Test", 25, 5)):
        rows = _per_class(gt, start, n)
        ids = rows["image"].tolist()
        _link_images(tmp_path / f"{T18}_{part}_Input", ids,
                     [isic2018_test_images / "images" / f"{i}.jpg" for i in ids])
        rows.to_csv(tmp_path / f"{T18}_{part}_GroundTruth.csv", index=False)
    return tmp_path


def test_isic2018_official_layout(isic2018_root: Path, isic2018_test_images: Path) -> None:
    s = load_isic2018(isic2018_root)
    assert s.class_names == ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
    assert len(s) == 7 * 30
    assert list(pd.Series(s.official_split).value_counts().sort_index().items()) == [
        ("test", 35), ("train", 140), ("val", 35)]
    gt = _test_gt(isic2018_test_images).set_index("image")
    np.testing.assert_array_equal(s.labels, _labels(gt.loc[s.ids], ISIC2018_COLUMNS))
    assert all(p.is_file() and p.stem == i for p, i in zip(s.paths, s.ids))
    assert s.paths[0].parent.name == f"{T18}_Training_Input"
    assert s.groups is None  # no HAM10000 metadata or lesion groupings in this layout


def test_isic2018_val_needs_folder_and_csv(isic2018_root: Path) -> None:
    (isic2018_root / f"{T18}_Test_GroundTruth.csv").unlink()
    s = load_isic2018(isic2018_root)
    assert set(s.official_split) == {"train", "val"}
    for name in (f"{T18}_Validation_GroundTruth.csv",):
        (isic2018_root / name).unlink()
    assert load_isic2018(isic2018_root).official_split is None


def test_isic2018_from_ham10000_metadata(tmp_path: Path, shared_data: Path, isic2018_test_images: Path) -> None:
    """No training CSV: labels from HAM10000's dx, groups from its lesion_id (real rows)."""
    ham = pd.read_csv(shared_data / "isic" / "HAM10000_metadata.csv", dtype=str)
    ham = pd.concat([ham[ham["dx"] == dx].head(12) for dx in ham["dx"].unique()])
    ham.to_csv(tmp_path / "HAM10000_metadata.csv", index=False)
    sources = sorted((isic2018_test_images / "images").glob("*.jpg"))[: len(ham)]
    _link_images(tmp_path / f"{T18}_Training_Input", ham["image_id"].tolist(), sources)
    s = load_isic2018(tmp_path)
    assert s.ids == ham["image_id"].tolist()
    assert [s.class_names[k] for k in s.labels] == [d.upper() for d in ham["dx"]]
    assert list(s.groups) == ham["lesion_id"].tolist()
    assert s.official_split is None


def test_isic2018_lesion_groupings_csv(isic2018_root: Path) -> None:
    ids = pd.read_csv(isic2018_root / f"{T18}_Training_GroundTruth.csv")["image"]
    lesions = [f"IL_{k // 2:07d}" if k % 3 else "" for k in range(len(ids))]
    pd.DataFrame({"image": ids, "lesion_id": lesions, "diagnosis_confirm_type": "histo"}).to_csv(
        isic2018_root / f"{T18}_Training_LesionGroupings.csv", index=False)
    s = load_isic2018(isic2018_root)
    train = s.official_split == "train"
    assert list(s.groups[train]) == [x or None for x in lesions]
    assert all(g is None for g in s.groups[~train])  # val/test have no lesion ids


# ----------------------------------------------------------------------------------- ISIC 2019


def _subset_lines(src: Path, dst: Path, keep: set[str]) -> None:
    """Copy the header and the rows whose first field is in ``keep``, bytes untouched (CRLF)."""
    lines = src.read_bytes().splitlines(keepends=True)
    dst.write_bytes(lines[0] + b"".join(l for l in lines[1:] if l.split(b",")[0].decode() in keep))


@pytest.fixture
def isic2019_root(tmp_path: Path, shared_data: Path, isic2018_test_images: Path) -> Path:
    """Official 2019 layout: 5 real GT/metadata rows per class, real JPEGs saved under 2019 names."""
    isic = shared_data / "isic"
    gt = pd.read_csv(isic / "ISIC_2019_Training_GroundTruth.csv", dtype=str)
    label = _labels(gt, ISIC2019_COLUMNS)
    keep = set(gt["image"].iloc[np.concatenate([np.flatnonzero(label == c)[:5] for c in range(8)])])
    _subset_lines(isic / "ISIC_2019_Training_GroundTruth.csv", tmp_path / "ISIC_2019_Training_GroundTruth.csv", keep)
    _subset_lines(isic / "ISIC_2019_Training_Metadata.csv", tmp_path / "ISIC_2019_Training_Metadata.csv", keep)
    sources = sorted((isic2018_test_images / "images").glob("*.jpg"))[: len(keep)]
    _link_images(tmp_path / "ISIC_2019_Training_Input", sorted(keep), sources)
    return tmp_path


def test_isic2019_official_layout(isic2019_root: Path, shared_data: Path) -> None:
    assert b"\r\n" in (isic2019_root / "ISIC_2019_Training_GroundTruth.csv").read_bytes()
    s = load_isic2019(isic2019_root)
    assert s.class_names == ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"]
    assert len(s) == 40 and np.bincount(s.labels).tolist() == [5] * 8
    gt = pd.read_csv(shared_data / "isic" / "ISIC_2019_Training_GroundTruth.csv").set_index("image")
    np.testing.assert_array_equal(s.labels, _labels(gt.loc[s.ids], ISIC2019_COLUMNS))
    meta = pd.read_csv(shared_data / "isic" / "ISIC_2019_Training_Metadata.csv").set_index("image")
    expected = [None if pd.isna(x) else x for x in meta.loc[s.ids, "lesion_id"]]
    assert list(s.groups) == expected
    assert None in expected and any(expected)  # both kinds are exercised
    assert s.official_split is None
    assert all(p.is_file() for p in s.paths)


def test_isic2019_without_metadata_has_no_groups(isic2019_root: Path) -> None:
    (isic2019_root / "ISIC_2019_Training_Metadata.csv").unlink()
    assert load_isic2019(isic2019_root).groups is None


# ------------------------------------------------------------------------------------ errors


def _rewrite_gt(root: Path, edit) -> Path:
    path = root / "ISIC_2019_Training_GroundTruth.csv"
    df = pd.read_csv(path, dtype=str)
    out = edit(df)  # edits either return a new frame or change df in place
    df = df if out is None else out
    df.to_csv(path, index=False)
    return path


def test_error_missing_folders(tmp_path: Path, isic2019_root: Path) -> None:
    with pytest.raises(LtbenchError, match="data root folder not found") as e:
        load_isic2019(tmp_path / "nope")
    _one_line(e)
    with pytest.raises(LtbenchError, match=f"{T18}_Training_Input: ISIC 2018 Task 3 training image folder not found"):
        load_isic2018(isic2019_root)
    (isic2019_root / "ISIC_2019_Training_GroundTruth.csv").unlink()
    with pytest.raises(LtbenchError, match="ISIC_2019_Training_GroundTruth.csv: file not found"):
        load_isic2019(isic2019_root)


def test_error_wrong_columns(isic2019_root: Path) -> None:
    _rewrite_gt(isic2019_root, lambda df: df.rename(columns={"SCC": "FOO"}))
    with pytest.raises(LtbenchError, match="unknown column.s. FOO; missing column.s. SCC") as e:
        load_isic2019(isic2019_root)
    assert "ISIC_2019_Training_GroundTruth.csv" in _one_line(e)


def test_error_no_image_column(isic2019_root: Path) -> None:
    _rewrite_gt(isic2019_root, lambda df: df.rename(columns={"image": "image_id"}))
    with pytest.raises(LtbenchError, match="missing column.s. image"):
        load_isic2019(isic2019_root)


def test_error_row_with_two_labels(isic2019_root: Path) -> None:
    def edit(df):
        df.loc[3, ["MEL", "NV"]] = "1.0"
    _rewrite_gt(isic2019_root, edit)
    image = pd.read_csv(isic2019_root / "ISIC_2019_Training_GroundTruth.csv")["image"][3]
    with pytest.raises(LtbenchError, match=f"image {image} \\(line 5\\) has 2 labels") as e:
        load_isic2019(isic2019_root)
    _one_line(e)


def test_error_row_with_no_label(isic2019_root: Path) -> None:
    def edit(df):
        df.loc[0, ISIC2019_COLUMNS] = "0.0"
    _rewrite_gt(isic2019_root, edit)
    with pytest.raises(LtbenchError, match=r"\(line 2\) has no label"):
        load_isic2019(isic2019_root)


def test_error_non_numeric_cell(isic2019_root: Path) -> None:
    def edit(df):
        df.loc[1, "BCC"] = "yes"
    _rewrite_gt(isic2019_root, edit)
    with pytest.raises(LtbenchError, match="value 'yes' in column BCC"):
        load_isic2019(isic2019_root)


def test_error_unk_row(isic2019_root: Path) -> None:
    def edit(df):
        df.loc[2, ISIC2019_COLUMNS] = "0.0"
        df.loc[2, "UNK"] = "1.0"
    _rewrite_gt(isic2019_root, edit)
    with pytest.raises(LtbenchError, match="labelled UNK"):
        load_isic2019(isic2019_root)


def test_error_image_listed_but_absent(isic2019_root: Path) -> None:
    folder = isic2019_root / "ISIC_2019_Training_Input"
    victims = sorted(folder.glob("ISIC_*.jpg"))[:2]
    for v in victims:
        v.unlink()
    with pytest.raises(LtbenchError, match="image listed but absent") as e:
        load_isic2019(isic2019_root)
    msg = _one_line(e)
    assert str(victims[0]) in msg and "2 of 40" in msg


def test_error_2018_without_training_labels(isic2018_root: Path) -> None:
    (isic2018_root / f"{T18}_Training_GroundTruth.csv").unlink()
    with pytest.raises(LtbenchError, match="neither ISIC2018_Task3_Training_GroundTruth.csv nor HAM10000"):
        load_isic2018(isic2018_root)


def test_error_2018_image_in_two_parts(isic2018_root: Path) -> None:
    train_csv = isic2018_root / f"{T18}_Training_GroundTruth.csv"
    val = pd.read_csv(isic2018_root / f"{T18}_Validation_GroundTruth.csv", dtype=str)
    pd.concat([pd.read_csv(train_csv, dtype=str), val.head(1)]).to_csv(train_csv, index=False)
    os.symlink(os.readlink(isic2018_root / f"{T18}_Validation_Input" / f"{val['image'][0]}.jpg"),
               isic2018_root / f"{T18}_Training_Input" / f"{val['image'][0]}.jpg")
    with pytest.raises(LtbenchError, match=f"image {val['image'][0]} is listed more than once"):
        load_isic2018(isic2018_root)
