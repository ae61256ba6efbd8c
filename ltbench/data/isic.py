"""ISIC 2019 and ISIC 2018 Task 3 in their official download layouts.

Layouts (docs/spec data.md; https://challenge.isic-archive.com/data/):

* ISIC 2019: ``ISIC_2019_Training_Input/<image>.jpg``, ``ISIC_2019_Training_GroundTruth.csv``
  (``image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK``, float one-hot) and optionally
  ``ISIC_2019_Training_Metadata.csv`` (``lesion_id`` per image).
* ISIC 2018 Task 3: ``ISIC2018_Task3_{Training,Validation,Test}_Input/<image>.jpg`` and
  ``ISIC2018_Task3_{Training,Validation,Test}_GroundTruth.csv`` (``image,MEL,NV,BCC,AKIEC,BKL,DF,VASC``);
  the training labels may instead come from ``HAM10000_metadata.csv`` (``dx``; Tschandl et al. 2018),
  which also gives the lesion ids.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ltbench.data.base import ImageSet
from ltbench.errors import LtbenchError

ISIC2019_COLUMNS = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]
ISIC2018_COLUMNS = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
# HAM10000 ``dx`` codes -> ISIC 2018 Task 3 class columns (same order as the official CSV).
HAM_DX = {"mel": "MEL", "nv": "NV", "bcc": "BCC", "akiec": "AKIEC", "bkl": "BKL", "df": "DF", "vasc": "VASC"}

_2018_PARTS = {"train": "Training", "val": "Validation", "test": "Test"}


# --------------------------------------------------------------------------------------- CSV helpers


def read_csv(path: Path, required: list[str]) -> pd.DataFrame:
    """Read a CSV as strings with stripped headers and cells; error if a required column is absent."""
    if not path.is_file():
        raise LtbenchError(f"{path}: file not found")
    _check_ragged(path)
    try:
        # dtype=str keeps ids like "ISIC_0000000" intact; pandas handles CRLF line ends itself;
        # utf-8-sig drops the byte-order mark spreadsheet programs put before "image".
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise LtbenchError(f"{path}: cannot parse CSV: {str(e).splitlines()[0]}") from None
    df.columns = [str(c).strip() for c in df.columns]
    df = df.apply(lambda col: col.str.strip())
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise LtbenchError(
            f"{path}: missing column(s) {', '.join(missing)} (has {', '.join(df.columns)})"
        )
    return df


def _check_ragged(path: Path) -> None:
    """Every row has as many fields as the header: else one line naming it (issue 21).

    pandas takes a file whose rows all have one field more than the header as one with an index
    column, shifting every value (the class values then read as duplicate image ids), and reads a
    short row's missing fields as empty cells.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig", errors="replace") as fh:
            reader = csv.reader(fh, skipinitialspace=True)
            header = next(reader, None)
            for row in reader if header is not None else ():
                if row and len(row) != len(header) and any(cell.strip() for cell in row):
                    raise LtbenchError(f"{path}: line {reader.line_num} has {len(row)} fields, the header "
                                       f"{len(header)}: a missing or extra comma")
    except (OSError, csv.Error) as exc:
        raise LtbenchError(f"{path}: cannot parse CSV: {str(exc).splitlines()[0] if str(exc) else exc}") from None


def read_onehot_csv(path: Path, classes: list[str]) -> tuple[list[str], np.ndarray]:
    """Read an official ISIC ground-truth CSV (``image`` + one 0/1 column per class).

    Returns the image ids and the class index per row (into ``classes``). The columns must be
    exactly ``image`` + ``classes`` (any order); every row must have exactly one 1.
    """
    df = read_csv(path, ["image"])
    _check_columns(path, list(df.columns), ["image", *classes])
    ids = df["image"].tolist()
    _check_ids(path, ids)
    values = _onehot_values(path, df, classes)
    ones = (values == 1.0).sum(axis=1)
    bad = np.flatnonzero(ones != 1)
    if len(bad):
        r = int(bad[0])
        what = "no label" if ones[r] == 0 else f"{int(ones[r])} labels"
        # +2: the header is line 1 and rows count from 1.
        raise LtbenchError(
            f"{path}: image {ids[r]} (line {r + 2}) has {what}; "
            f"each row needs exactly one 1 ({len(bad)} such row(s))"
        )
    return ids, values.argmax(axis=1).astype(np.int64)


def _check_columns(path: Path, got: list[str], expected: list[str]) -> None:
    unknown = [c for c in got if c not in expected]
    missing = [c for c in expected if c not in got]
    if unknown or missing:
        parts = []
        if unknown:
            parts.append(f"unknown column(s) {', '.join(unknown)}")
        if missing:
            parts.append(f"missing column(s) {', '.join(missing)}")
        raise LtbenchError(f"{path}: {'; '.join(parts)} (expected {','.join(expected)})")


def _check_ids(path: Path, ids: list[str]) -> None:
    if not ids:
        raise LtbenchError(f"{path}: no rows")
    empty = [i for i, x in enumerate(ids) if not x]
    if empty:
        raise LtbenchError(f"{path}: line {empty[0] + 2} has an empty image id")
    dup = pd.Index(ids)[pd.Index(ids).duplicated()]
    if len(dup):
        raise LtbenchError(f"{path}: image {dup[0]} is listed more than once")


def _onehot_values(path: Path, df: pd.DataFrame, classes: list[str]) -> np.ndarray:
    numeric = df[classes].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isin(numeric, (0.0, 1.0))  # NaN (non-numeric) and e.g. 0.5 both fail
    if bad.any():
        r, c = (int(x) for x in np.argwhere(bad)[0])
        raise LtbenchError(
            f"{path}: image {df['image'].iat[r]} (line {r + 2}) has value "
            f"{df[classes[c]].iat[r]!r} in column {classes[c]}; expected 0 or 1"
        )
    return numeric


# ----------------------------------------------------------------------------------- folder helpers


def _require_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        raise LtbenchError(f"{path}: {what} folder not found")


def _image_paths(folder: Path, ids: list[str], csv_path: Path) -> list[Path]:
    """``folder/<id>.jpg`` per id; error (one line) if any is absent."""
    # One listdir instead of 25k stat calls; folders may also hold LICENSE, ATTRIBUTION, *.txt.
    present = set(os.listdir(folder))
    missing = [i for i in ids if f"{i}.jpg" not in present]
    if missing:
        raise LtbenchError(
            f"{csv_path}: image listed but absent: {folder / (missing[0] + '.jpg')}"
            f" ({len(missing)} of {len(ids)} listed images are missing)"
        )
    return [folder / f"{i}.jpg" for i in ids]


def _groups_from(path: Path, id_col: str, ids: list[str]) -> np.ndarray:
    """Lesion id per image from a metadata CSV; None where it is empty or the image is not listed."""
    df = read_csv(path, [id_col, "lesion_id"])
    lesion = dict(zip(df[id_col], df["lesion_id"]))
    return np.array([lesion.get(i) or None for i in ids], dtype=object)


# ------------------------------------------------------------------------------------------ ISIC 2019


def load_isic2019(data_root: Path) -> ImageSet:
    """The ISIC 2019 training set (25,331 images, 8 classes; UNK has no image and is dropped).

    Groups are the ``lesion_id`` of ``ISIC_2019_Training_Metadata.csv`` when it is present;
    an image without one is its own group.
    """
    data_root = Path(data_root)
    _require_dir(data_root, "data root")
    folder = data_root / "ISIC_2019_Training_Input"
    _require_dir(folder, "ISIC 2019 image")
    csv_path = data_root / "ISIC_2019_Training_GroundTruth.csv"
    ids, labels = read_onehot_csv(csv_path, ISIC2019_COLUMNS)
    unk = ISIC2019_COLUMNS.index("UNK")
    if (labels == unk).any():
        first = ids[int(np.flatnonzero(labels == unk)[0])]
        raise LtbenchError(
            f"{csv_path}: image {first} is labelled UNK ({int((labels == unk).sum())} rows); "
            "ltbench drops UNK, which has no training image in ISIC 2019"
        )
    meta = data_root / "ISIC_2019_Training_Metadata.csv"
    groups = _groups_from(meta, "image", ids) if meta.is_file() else None
    return ImageSet(
        ids=ids,
        labels=labels,
        class_names=ISIC2019_COLUMNS[:unk],
        paths=_image_paths(folder, ids, csv_path),
        groups=groups,
        description=f"ISIC 2019 training set from {data_root}",
    )


# ------------------------------------------------------------------------------------------ ISIC 2018


def _ham_labels(path: Path) -> tuple[list[str], np.ndarray]:
    """Image ids and class indices from HAM10000's ``dx`` column (= the 2018 training CSV)."""
    df = read_csv(path, ["image_id", "dx"])
    ids = df["image_id"].tolist()
    _check_ids(path, ids)
    unknown = sorted(set(df["dx"]) - set(HAM_DX))
    if unknown:
        r = int(np.flatnonzero(df["dx"] == unknown[0])[0])
        raise LtbenchError(
            f"{path}: image {ids[r]} (line {r + 2}) has unknown dx {unknown[0]!r} "
            f"(expected one of {', '.join(HAM_DX)})"
        )
    index = {c: k for k, c in enumerate(ISIC2018_COLUMNS)}
    return ids, np.array([index[HAM_DX[d]] for d in df["dx"]], dtype=np.int64)


def _isic2018_training(data_root: Path) -> tuple[list[str], np.ndarray, np.ndarray | None]:
    """Ids, labels and lesion groups of the 2018 training part (official CSV or HAM10000)."""
    gt = data_root / "ISIC2018_Task3_Training_GroundTruth.csv"
    ham = data_root / "HAM10000_metadata.csv"
    groupings = data_root / "ISIC2018_Task3_Training_LesionGroupings.csv"
    if gt.is_file():
        ids, labels = read_onehot_csv(gt, ISIC2018_COLUMNS)
    elif ham.is_file():
        ids, labels = _ham_labels(ham)
    else:
        raise LtbenchError(
            f"{data_root}: neither ISIC2018_Task3_Training_GroundTruth.csv nor HAM10000_metadata.csv found"
        )
    if ham.is_file():
        groups = _groups_from(ham, "image_id", ids)
    elif groupings.is_file():
        groups = _groups_from(groupings, "image", ids)
    else:
        groups = None
    return ids, labels, groups


def load_isic2018(data_root: Path) -> ImageSet:
    """ISIC 2018 Task 3: the training images (10,015), plus validation (193) and test (1,512).

    Validation/test images are included only when both their ``_Input`` folder and their
    ground-truth CSV are present; ``official_split`` then says "train"/"val"/"test" per row.
    Only training images have lesion groups (from HAM10000_metadata.csv or the official
    LesionGroupings CSV); the others are each their own group.
    """
    data_root = Path(data_root)
    _require_dir(data_root, "data root")
    folder = data_root / "ISIC2018_Task3_Training_Input"
    _require_dir(folder, "ISIC 2018 Task 3 training image")
    ids, labels, groups = _isic2018_training(data_root)
    paths = _image_paths(folder, ids, folder)
    parts = ["train"] * len(ids)
    all_groups = list(groups) if groups is not None else [None] * len(ids)
    for part in ("val", "test"):
        name = f"ISIC2018_Task3_{_2018_PARTS[part]}"
        part_dir, part_csv = data_root / f"{name}_Input", data_root / f"{name}_GroundTruth.csv"
        if not (part_dir.is_dir() and part_csv.is_file()):
            continue
        p_ids, p_labels = read_onehot_csv(part_csv, ISIC2018_COLUMNS)
        paths += _image_paths(part_dir, p_ids, part_csv)
        ids, labels = ids + p_ids, np.concatenate([labels, p_labels])
        parts += [part] * len(p_ids)
        all_groups += [None] * len(p_ids)
    _check_ids(data_root, ids)  # an image in two official parts would leak
    has_extra = len(set(parts)) > 1
    return ImageSet(
        ids=ids,
        labels=labels,
        class_names=list(ISIC2018_COLUMNS),
        paths=paths,
        groups=np.array(all_groups, dtype=object) if groups is not None else None,
        official_split=np.array(parts, dtype=object) if has_extra else None,
        description=f"ISIC 2018 Task 3 ({', '.join(sorted(set(parts), reverse=True))}) from {data_root}",
    )
