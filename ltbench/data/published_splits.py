"""Readers of published ISIC 2019 splits: FlexSampling (MICCAI 2022) and FLamby's Fed-ISIC2019.

* **FlexSampling** (Ju et al., "Flexible Sampling for Long-tailed Skin Lesion Classification",
  MICCAI 2022; github.com/PyJulie/FlexSampling, ``dataset/``): ``train_{r}.npy``, ``val_{r}.npy``,
  ``test_{r}.npy`` for imbalance ratio ``r`` in 100/200/500 (8 classes; balanced validation 50/class
  and test 100/class) and ``train.npy``/``val.npy``/``test.npy`` of a 14-class set. The ``.npy``
  files are plain unicode arrays of file names (``ISIC_0063211.jpg``), read with
  ``allow_pickle=False``. Labels come from ``dic.csv`` (``image,label``: the upstream pickled
  ``dic.npy`` converted to CSV); FlexSampling numbers the 8 classes by frequency
  (0 NV, 1 MEL, 2 BCC, 3 BKL, 4 AK, 5 SCC, 6 VASC, 7 DF).
* **FLamby** (Ogier du Terrail et al., NeurIPS 2022 Datasets and Benchmarks; github.com/owkin/FLamby,
  ``flamby/datasets/fed_isic2019/dataset_creation_scripts/train_test_split``): one CSV
  ``image,<the 9 one-hot ground-truth columns>,target,center,fold,fold2`` with ``fold`` train/test.
  FLamby has no validation set; ltbench carves one out of its training part (see
  :func:`read_flamby_split`).

Class ids are always the dataset's (the official ground-truth column order): a published label is
only *checked* against it, and the first disagreement is refused, naming the file, the image and
both labels. All three splits are image-level and leak lesions between train and test (the run
reports the leak, ``splits.leak_report``).

**The 14-class FlexSampling set** (``14-class/``: ``train.npy``, ``val.npy``, ``test.npy``, ``dic.csv``
and ``additional_data_isic_metadata.csv`` = upstream's ``additional data.csv``, the ISIC-archive
metadata of the images it adds) is not a split of ISIC 2019 but of another image set:
:func:`flexsampling14_image_set` builds it from the ISIC 2019 training set —

* ISIC 2019 images keep their ground-truth class, refined by the archive diagnosis where the
  metadata file has one (BKL -> seborrheic keratosis / solar lentigo; BCC, AK, SCC, VASC and DF ->
  the archive's name of the same class); a BKL image without one stays ``BKL``. The 1,099 BKL
  images diagnosed "pigmented benign keratosis" have no 14-class label and are left out, as
  FlexSampling leaves them out. A diagnosis that contradicts the ground-truth column is refused.
* plus the images of ``dic.csv`` that ISIC 2019 does not have (788 in the published files: 532
  seborrheic keratoses, 70 BCC, 61 solar lentigines, 32 lichenoid keratoses, 28 SCC, 27 lentigines
  simplex, 15 angiomas, 14 atypical melanocytic proliferations, 7 DF, 2 AK; 59 of them clinical, not
  dermoscopic, photographs), labelled by their archive diagnosis. Upstream fetched them from the
  ISIC archive API and saved them resized to 384×384 (its ``download_additional_image`` notebook);
  ltbench reads them as ``<id>.jpg`` from ``DATA_ROOT/ISIC_Archive_Additional_Input/`` (or among the
  ISIC 2019 images) at whatever size they have, and refuses, in one line naming them, to run while
  any is missing.

Class ids of that set are FlexSampling's numbering (:data:`FLEX_14_CLASSES`): no official
14-class ground truth exists to take an order from. ``dic.csv`` is then checked image by image
against the labels derived above, as for the 8-class files.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ltbench.data.base import ImageSet, Split
from ltbench.data.isic import read_csv
from ltbench.errors import LtbenchError

PARTS = ("train", "val", "test")
FLEX_RATIOS = (100, 200, 500)
# FlexSampling's label index -> ISIC 2019 ground-truth column (its README; checked per image).
FLEX_8_CLASSES = ("NV", "MEL", "BCC", "BKL", "AK", "SCC", "VASC", "DF")
# The 14-class set's labels as its README names them (inferred upstream from ISIC-archive metadata).
FLEX_14_CLASSES = ("NV", "MEL", "basal cell carcinoma", "seborrheic keratosis", "actinic keratosis",
                   "squamous cell carcinoma", "BKL", "solar lentigo", "vascular lesion", "dermatofibroma",
                   "lichenoid keratosis", "lentigo simplex", "angioma", "atypical melanocytic proliferation")
# 14-class set: the archive metadata file (ours, then upstream's name) and where its extra images go.
FLEX14_METADATA = ("additional_data_isic_metadata.csv", "additional data.csv")
FLEX14_EXTRA_FOLDER = "ISIC_Archive_Additional_Input"
FLEX14_DIAGNOSIS_COLUMN = "meta.clinical.diagnosis"
FLEX14_LESION_COLUMN = "meta.clinical.lesion_id"
# An ISIC 2019 image without an archive diagnosis: its ground-truth column's 14-class name.
FLEX14_OF_COLUMN = {"NV": "NV", "MEL": "MEL", "BCC": "basal cell carcinoma", "AK": "actinic keratosis",
                    "BKL": "BKL", "DF": "dermatofibroma", "VASC": "vascular lesion", "SCC": "squamous cell carcinoma"}
# The ISIC 2019 column each archive diagnosis belongs to (ISIC 2019's class definitions: BKL = solar
# lentigo / seborrheic keratosis / lichen planus-like keratosis; VASC includes angiomas). None: no
# ISIC 2019 column (only extra images carry it). Used to refuse a diagnosis contradicting the ground truth.
FLEX14_COLUMN_OF = {"basal cell carcinoma": "BCC", "seborrheic keratosis": "BKL", "actinic keratosis": "AK",
                    "squamous cell carcinoma": "SCC", "solar lentigo": "BKL", "vascular lesion": "VASC",
                    "dermatofibroma": "DF", "lichenoid keratosis": "BKL", "angioma": "VASC",
                    "lentigo simplex": None, "atypical melanocytic proliferation": None}
# Archive diagnoses FlexSampling's 14 classes leave out (ISIC 2019 BKL images; 1,099 in the published set).
FLEX14_LEFT_OUT = ("pigmented benign keratosis",)
FLEX14_KIND = "flexsampling (14 classes)"
FLAMBY_FILE = "train_test_split.csv"
FLAMBY_VAL_FRACTION = 0.2
LEAK_NOTE = "image-level split: lesions leak between parts"


def _image_id(name: str) -> str:
    """``ISIC_0000000.jpg`` -> ``ISIC_0000000`` (the ground truth's ids have no extension)."""
    name = str(name).strip()
    return name[:-4] if name.lower().endswith(".jpg") else name


# --------------------------------------------------------------------------------- FlexSampling


def flexsampling_files(split_dir: Path, ratio: int | None) -> tuple[dict[str, Path], Path, tuple[str, ...]]:
    """The three ``.npy`` files, the label file and the label names for ``ratio`` (None: 14-class).

    ``split_dir`` may be the folder holding the files or its parent with ``8-class/`` and ``14-class/``.
    """
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise LtbenchError(f"--split-dir {split_dir}: folder not found")
    if ratio is not None and ratio not in FLEX_RATIOS:
        raise LtbenchError(f"--ratio {ratio}: choose one of {', '.join(map(str, FLEX_RATIOS))}")
    sub, names = ("8-class", FLEX_8_CLASSES) if ratio is not None else ("14-class", FLEX_14_CLASSES)
    suffix = f"_{ratio}" if ratio is not None else ""
    for folder in (split_dir, split_dir / sub):
        files = {p: folder / f"{p}{suffix}.npy" for p in PARTS}
        if all(f.is_file() for f in files.values()):
            labels = folder / "dic.csv"
            if not labels.is_file():
                raise LtbenchError(f"{labels}: FlexSampling label file not found (image,label per row)")
            return files, labels, names
    what = f"train{suffix}.npy, val{suffix}.npy and test{suffix}.npy"
    hint = "" if ratio is not None else " (the 14-class split, --classes 14; the 8-class ones: --ratio 100, 200 or 500)"
    raise LtbenchError(f"--split-dir {split_dir}: expected {what} there or in {sub}/{hint}")


def read_npy_names(path: Path) -> list[str]:
    """A FlexSampling split file: a 1-D array of strings, never unpickled."""
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as exc:  # an object (pickled) array
        raise LtbenchError(f"{path}: not a plain string array ({str(exc).splitlines()[0]})") from None
    except OSError as exc:
        raise LtbenchError(f"{path}: cannot read ({exc})") from None
    if arr.ndim != 1 or arr.dtype.kind not in "US":
        raise LtbenchError(f"{path}: expected a 1-D array of image names, got {arr.dtype} {arr.shape}")
    return [x.decode() if isinstance(x, bytes) else str(x) for x in arr.tolist()]


def check_label_file(image_set: ImageSet, path: Path, names: tuple[str, ...]) -> None:
    """Every listed image's label must name the dataset's class for it (first mismatch refused).

    Images of the label file that the dataset does not hold are skipped here (the split files are
    checked image by image); a label outside ``range(len(names))`` is refused.
    """
    df = read_csv(path, ["image", "label"])
    index = {i: r for r, i in enumerate(image_set.ids)}
    labels = pd.to_numeric(df["label"], errors="coerce")
    bad = np.flatnonzero(~labels.isin(range(len(names))).to_numpy())
    if len(bad):
        k = int(bad[0])
        raise LtbenchError(f"{path}: image {df['image'].iat[k]} (line {k + 2}) has label {df['label'].iat[k]!r}; "
                           f"expected 0..{len(names) - 1}")
    matched = 0
    for k, (image, label) in enumerate(zip(df["image"], labels.astype(int))):
        row = index.get(_image_id(image))
        if row is None:
            continue
        matched += 1
        theirs, ours = names[label], image_set.class_names[image_set.labels[row]]
        if theirs != ours:
            raise LtbenchError(
                f"{path}: image {image} (line {k + 2}) has label {label} = {theirs} but the ground truth says "
                f"{ours}; refusing a label file that disagrees with the official labels")
    if not matched:
        raise LtbenchError(f"{path}: none of its images is in the dataset (wrong dataset or folder?)")


def _rows(image_set: ImageSet, index: dict[str, int], names: list[str], path: Path, hint: str = "") -> np.ndarray:
    ids = [_image_id(n) for n in names]
    missing = [k for k, i in enumerate(ids) if i not in index]
    if missing:
        k = missing[0]
        raise LtbenchError(f"{path}: image {names[k]} (entry {k}) is not in the dataset "
                           f"({len(missing)} of {len(ids)} missing){hint}")
    rows = np.array([index[i] for i in ids], dtype=np.int64)
    if len(np.unique(rows)) != len(rows):
        raise LtbenchError(f"{path}: an image is listed more than once")
    return np.sort(rows)


def _flex14_metadata(folder: Path) -> Path:
    for name in FLEX14_METADATA:
        if (folder / name).is_file():
            return folder / name
    raise LtbenchError(f"{folder}: {FLEX14_METADATA[0]} (the ISIC-archive metadata of the 14-class split's images, "
                       f"upstream's '{FLEX14_METADATA[1]}') not found")


def _flex14_label(image: str, line: int, diagnosis: str, column: str | None, meta: Path) -> str | None:
    """The 14-class name of one image (None: left out), from its archive diagnosis and ISIC 2019 column."""
    if diagnosis in FLEX14_LEFT_OUT:
        return None
    if not diagnosis:
        if column is None:
            raise LtbenchError(f"{meta}: image {image} (an image of the 14-class split outside ISIC 2019) has no "
                               "diagnosis; its label cannot be derived")
        return FLEX14_OF_COLUMN[column]
    if diagnosis not in FLEX14_COLUMN_OF:
        raise LtbenchError(f"{meta}: image {image} (line {line}) has diagnosis {diagnosis!r}, which none of "
                           f"FlexSampling's 14 classes names")
    if column is not None and FLEX14_COLUMN_OF[diagnosis] != column:
        raise LtbenchError(f"{meta}: image {image} (line {line}) has diagnosis {diagnosis!r} but "
                           f"ISIC_2019_Training_GroundTruth.csv labels it {column}")
    return diagnosis


def _find_images(ids: list[str], folders: list[Path]) -> tuple[list[Path | None], list[str]]:
    """``<id>.jpg`` in the first folder holding it (one listdir per folder); the ids found nowhere."""
    listed = [(f, set(os.listdir(f))) for f in folders if f.is_dir()]
    paths = [next((f / f"{i}.jpg" for f, names in listed if f"{i}.jpg" in names), None) for i in ids]
    return paths, [i for i, p in zip(ids, paths) if p is None]


def flexsampling14_image_set(image_set: ImageSet, split_dir: Path, data_root: Path | None = None) -> ImageSet:
    """The image set of FlexSampling's 14-class split, built from the ISIC 2019 training set (module doc).

    ``image_set``: ISIC 2019 as ``ltbench.data.isic.load_isic2019`` reads it; ``data_root``: where the
    extra ISIC-archive images are looked for (``ISIC_Archive_Additional_Input/``, then
    ``ISIC_2019_Training_Input/``; default: the folder above the ISIC 2019 images). Labels come from
    the ground truth and the archive metadata, never from ``dic.csv`` (which is checked against them
    by :func:`read_flexsampling_split`).
    """
    from ltbench.data.isic import ISIC2019_COLUMNS

    if list(image_set.class_names) != ISIC2019_COLUMNS[:8] or image_set.paths is None:
        raise LtbenchError(f"--classes 14: FlexSampling's 14-class split is built on ISIC 2019 (--dataset isic2019); "
                           f"this dataset's classes are {', '.join(image_set.class_names)}")
    files, label_file, names = flexsampling_files(Path(split_dir), None)
    meta_path = _flex14_metadata(label_file.parent)
    meta = read_csv(meta_path, ["name", FLEX14_DIAGNOSIS_COLUMN])
    meta_line = {n: k + 2 for k, n in enumerate(meta["name"])}
    diagnosis = dict(zip(meta["name"], meta[FLEX14_DIAGNOSIS_COLUMN]))
    lesion = dict(zip(meta["name"], meta[FLEX14_LESION_COLUMN])) if FLEX14_LESION_COLUMN in meta.columns else {}
    index = {i: r for r, i in enumerate(image_set.ids)}

    keep, labels, left_out = [], [], 0
    for r, i in enumerate(image_set.ids):
        name = _flex14_label(i, meta_line.get(i, 0), diagnosis.get(i, ""), image_set.class_names[image_set.labels[r]],
                             meta_path)
        if name is None:
            left_out += 1
        else:
            keep.append(r)
            labels.append(names.index(name))
    listed = read_csv(label_file, ["image", "label"])["image"].map(_image_id).tolist()
    extra = [i for i in dict.fromkeys(listed) if i not in index]
    for i in extra:
        if i not in diagnosis:
            raise LtbenchError(f"{label_file}: image {i} is neither in ISIC_2019_Training_GroundTruth.csv nor in "
                               f"{meta_path.name}; its label cannot be derived")
        name = _flex14_label(i, meta_line[i], diagnosis[i], None, meta_path)
        if name is None:
            raise LtbenchError(f"{label_file}: image {i} has diagnosis {diagnosis[i]!r} ({meta_path.name}), which "
                               "FlexSampling's 14 classes leave out")
        labels.append(names.index(name))

    root = Path(data_root) if data_root is not None else Path(image_set.paths[0]).parent.parent
    folders = [root / FLEX14_EXTRA_FOLDER, root / "ISIC_2019_Training_Input"]
    extra_paths, missing = _find_images(extra, folders)
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise LtbenchError(
            f"--classes 14: {len(missing)} of the {len(extra)} ISIC-archive images that FlexSampling's 14-class split "
            f"adds to ISIC 2019 are not in the data folder ({shown}); download them from the ISIC archive "
            f"(https://www.isic-archive.com, by image id) as <id>.jpg into {folders[0]} (the list: the images of "
            f"{label_file} that ISIC_2019_Training_GroundTruth.csv lacks)")

    groups = None
    if image_set.groups is not None or lesion:
        base = np.asarray(image_set.groups, dtype=object)[keep] if image_set.groups is not None else [None] * len(keep)
        groups = np.array(list(base) + [lesion.get(i) or None for i in extra], dtype=object)
    return ImageSet(
        ids=[image_set.ids[r] for r in keep] + extra,
        labels=np.array(labels, dtype=np.int64),
        class_names=list(names),
        paths=[image_set.paths[r] for r in keep] + extra_paths,
        groups=groups,
        description=(f"FlexSampling's 14-class set: {image_set.description} ({len(keep)} images; {left_out} "
                     f"'pigmented benign keratosis' left out) + {len(extra)} ISIC-archive images"),
    )


def read_flexsampling_split(image_set: ImageSet, split_dir: Path, ratio: int | None = 100) -> Split:
    """FlexSampling's split at imbalance ``ratio`` (100, 200, 500), or its 14-class split (``None``)."""
    files, label_file, names = flexsampling_files(Path(split_dir), ratio)
    missing_names = [n for n in names if n not in image_set.class_names]
    if missing_names or len(names) != image_set.num_classes:
        raise LtbenchError(
            f"{label_file}: its classes ({', '.join(names)}) are not the dataset's ({', '.join(image_set.class_names)})"
            + ("; the 14-class split is made of the image set flexsampling14_image_set builds (ltbench: "
               "--split flexsampling --classes 14 on --dataset isic2019)" if ratio is None else ""))
    check_label_file(image_set, label_file, names)
    index = {i: r for r, i in enumerate(image_set.ids)}
    hint = "; the 14-class split includes ISIC-archive images outside ISIC 2019" if ratio is None else ""
    rows = {p: _rows(image_set, index, read_npy_names(files[p]), files[p], hint) for p in PARTS}
    details = {"split_dir": str(split_dir), "files": [f.name for f in files.values()], "labels": label_file.name,
               "ratio": ratio, "classes": 8 if ratio is not None else 14,
               "source": "FlexSampling (Ju et al., MICCAI 2022), github.com/PyJulie/FlexSampling dataset/",
               "note": LEAK_NOTE}
    # The 14-class split is of another image set (14 classes, extra images): its name says so everywhere.
    return Split(**rows, kind="flexsampling" if ratio is not None else FLEX14_KIND, details=details)


# --------------------------------------------------------------------------------------- FLamby


def flamby_file(split_dir: Path) -> Path:
    split_dir = Path(split_dir)
    path = split_dir if split_dir.is_file() else split_dir / FLAMBY_FILE
    if not path.is_file():
        raise LtbenchError(f"--split-dir {split_dir}: {FLAMBY_FILE} (FLamby's Fed-ISIC2019 split) not found")
    return path


def carve_validation(labels: np.ndarray, rows: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified hold-out: per class, ``round(fraction · n_c)`` rows (at least 1) of a seeded permutation.

    numpy's ``default_rng(seed)`` permutes each class in class order, so the carve depends on
    nothing but the seed, the rows and their labels. Returns (train, val), sorted.
    """
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(labels[rows]):
        members = rows[labels[rows] == c]
        k = min(max(1, int(round(fraction * len(members)))), len(members) - 1) if len(members) > 1 else 0
        val.append(rng.permutation(members)[:k])
    val = np.sort(np.concatenate(val)) if val else np.array([], dtype=np.int64)
    return np.setdiff1d(rows, val), val


def read_flamby_split(image_set: ImageSet, split_dir: Path, seed: int = 0,
                      val_fraction: float = FLAMBY_VAL_FRACTION) -> Split:
    """FLamby's Fed-ISIC2019 train/test split; validation = a stratified ``val_fraction`` of its train part.

    FLamby trains without a validation set; ltbench needs one for checkpoint selection, so it holds
    out ``val_fraction`` (0.2) of each class of FLamby's training images with ``numpy.random.default_rng(seed)``
    (the split seed, default 0). FLamby's test part is kept as is. The one-hot columns must be the
    dataset's ground-truth columns; each image's one-hot class and ``target`` must be the dataset's
    label for it.
    """
    path = flamby_file(Path(split_dir))
    df = read_csv(path, ["image", "target", "fold"])
    onehot = [c for c in df.columns if c not in ("image", "target", "center", "fold", "fold2")]
    gt_cols = list(image_set.class_names)
    if onehot[:len(gt_cols)] != gt_cols or any(c != "UNK" for c in onehot[len(gt_cols):]):
        first = next((k for k, (a, b) in enumerate(zip(onehot, gt_cols)) if a != b), min(len(onehot), len(gt_cols)))
        got = onehot[first] if first < len(onehot) else "nothing"
        want = gt_cols[first] if first < len(gt_cols) else "no further column but UNK"
        raise LtbenchError(f"{path}: label column {first + 1} is {got} but the ground truth's is {want} "
                           f"(columns {','.join(onehot)})")
    values = df[onehot].apply(pd.to_numeric, errors="coerce").to_numpy()
    target = pd.to_numeric(df["target"], errors="coerce").to_numpy()
    index = {i: r for r, i in enumerate(image_set.ids)}
    rows = _rows(image_set, index, df["image"].tolist(), path)  # sorted; keep file order below
    file_rows = np.array([index[_image_id(i)] for i in df["image"]], dtype=np.int64)
    ours = image_set.labels[file_rows]
    for k in range(len(df)):
        hot = np.flatnonzero(values[k] == 1.0)
        theirs = int(hot[0]) if len(hot) == 1 else None
        if theirs != ours[k] or target[k] != ours[k]:
            what = (f"one-hot {onehot[theirs] if theirs is not None else 'invalid'} and target {df['target'].iat[k]}")
            raise LtbenchError(f"{path}: image {df['image'].iat[k]} (line {k + 2}) has {what} but the ground truth "
                               f"says {image_set.class_names[ours[k]]} (label {ours[k]})")
    fold = df["fold"].to_numpy()
    bad = np.flatnonzero(~np.isin(fold, ("train", "test")))
    if len(bad):
        k = int(bad[0])
        raise LtbenchError(f"{path}: line {k + 2} has fold {fold[k]!r} (expected train or test)")
    del rows
    train, val = carve_validation(image_set.labels, np.sort(file_rows[fold == "train"]), val_fraction, seed)
    details = {"split_file": str(path), "source": "FLamby Fed-ISIC2019 (NeurIPS 2022), github.com/owkin/FLamby",
               "validation": f"stratified {val_fraction:g} of FLamby's train part per class, "
                             f"numpy default_rng({seed}) (FLamby itself has no validation set)",
               "seed": seed, "val_fraction": val_fraction, "note": LEAK_NOTE}
    return Split(train=train, val=val, test=np.sort(file_rows[fold == "test"]), kind="flamby", details=details)
