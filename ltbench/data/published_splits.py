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

The 14-class FlexSampling set includes ISIC-archive images that are not in the ISIC 2019 training
set and 6 classes that its ground truth does not have; it can only be read for an image set that
holds those images with FlexSampling's 14 class names (ltbench has no such dataset yet), and is
refused otherwise with the first missing image named.
"""
from __future__ import annotations

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
    hint = "" if ratio is not None else " (the 14-class split; for the 8-class ones give --ratio 100, 200 or 500)"
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


def read_flexsampling_split(image_set: ImageSet, split_dir: Path, ratio: int | None = 100) -> Split:
    """FlexSampling's split at imbalance ``ratio`` (100, 200, 500), or its 14-class split (``None``)."""
    files, label_file, names = flexsampling_files(Path(split_dir), ratio)
    missing_names = [n for n in names if n not in image_set.class_names]
    if missing_names or len(names) != image_set.num_classes:
        raise LtbenchError(
            f"{label_file}: its classes ({', '.join(names)}) are not the dataset's ({', '.join(image_set.class_names)})"
            + ("; the 14-class split needs a dataset with FlexSampling's 14 classes and extra ISIC-archive images"
               if ratio is None else ""))
    check_label_file(image_set, label_file, names)
    index = {i: r for r, i in enumerate(image_set.ids)}
    hint = "; the 14-class split includes ISIC-archive images outside ISIC 2019" if ratio is None else ""
    rows = {p: _rows(image_set, index, read_npy_names(files[p]), files[p], hint) for p in PARTS}
    details = {"split_dir": str(split_dir), "files": [f.name for f in files.values()], "labels": label_file.name,
               "ratio": ratio, "classes": 8 if ratio is not None else 14,
               "source": "FlexSampling (Ju et al., MICCAI 2022), github.com/PyJulie/FlexSampling dataset/",
               "note": LEAK_NOTE}
    return Split(**rows, kind="flexsampling", details=details)


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
