"""Train/val/test splits of an :class:`ImageSet`: grouped (default), ECL files, CSV, official, stratified.

The default is lesion-grouped stratified 3:1:1 (scikit-learn ``StratifiedGroupKFold``), because the
ECL (MICCAI 2023), FlexSampling and FLamby splits are image-level and leak lesions between train and
test (docs/spec data.md).
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ltbench.data.base import ImageSet, Split
from ltbench.data.isic import read_csv
from ltbench.errors import LtbenchError
from ltbench.store.files import atomic_write

KINDS = ("grouped", "stratified", "ecl", "csv", "official", "flexsampling", "flamby")
PARTS = ("train", "val", "test")
N_FOLDS = 5  # 3:1:1 = one fold test, one fold val, three folds train
# The name a "grouped" split goes by when the data has no lesion ids at all.
IMAGE_LEVEL_FALLBACK = "stratified (image-level: no lesion ids)"


def make_split(
    image_set: ImageSet,
    kind: str = "grouped",
    seed: int = 0,
    split_dir: Path | None = None,
    split_file: Path | None = None,
    dataset_name: str | None = None,
    ratio: int | None = None,
    classes: int | None = None,
) -> Split:
    """Split ``image_set`` by ``kind`` (one of :data:`KINDS`) and check every class is in every part.

    ``ratio``: FlexSampling's imbalance ratio (100, 200, 500; default 100; ``flexsampling`` only).
    ``classes``: FlexSampling's class set, 8 (default) or 14; the 14-class split is made of the image
    set :func:`image_set_for_split` returns, not of ISIC 2019 itself.
    """
    if ratio is not None and kind != "flexsampling":
        raise LtbenchError(f"--ratio {ratio}: applies to --split flexsampling only (the split is {kind!r})")
    if classes is not None and kind != "flexsampling":
        raise LtbenchError(f"--classes {classes}: applies to --split flexsampling only (the split is {kind!r})")
    if classes == 14 and ratio is not None:
        raise LtbenchError(f"--ratio {ratio}: FlexSampling's 14-class split has no imbalance ratio (one train/val/test "
                           "set with its natural profile); drop --ratio, or use --classes 8")
    if kind == "grouped":
        split = _kfold_split(image_set, seed, grouped=True)
    elif kind == "stratified":
        split = _kfold_split(image_set, seed, grouped=False)
    elif kind == "ecl":
        if split_dir is None:
            raise LtbenchError("--split ecl needs --split-dir (the folder of ECL's split CSVs)")
        split = read_ecl_split(image_set, Path(split_dir), dataset_name)
    elif kind == "csv":
        if split_file is None:
            raise LtbenchError("--split csv needs --split-file (a CSV with columns image,part)")
        split = read_split_csv(image_set, Path(split_file))
    elif kind == "official":
        split = _official_split(image_set)
    elif kind in ("flexsampling", "flamby"):
        # The published ISIC 2019 splits (ltbench/data/published_splits.py).
        from ltbench.data import published_splits

        if split_dir is None:
            raise LtbenchError(f"--split {kind} needs --split-dir (the folder of its split files)")
        if kind == "flexsampling":
            ratio = None if classes == 14 else (100 if ratio is None else ratio)
            split = published_splits.read_flexsampling_split(image_set, Path(split_dir), ratio)
        else:
            split = published_splits.read_flamby_split(image_set, Path(split_dir), seed)
    else:
        raise LtbenchError(f"--split: unknown kind {kind!r} (choose from {', '.join(KINDS)})")
    split.check(image_set)
    return split


def image_set_for_split(image_set: ImageSet, kind: str, split_dir: Path | None = None, classes: int | None = None,
                        data_root: Path | None = None) -> ImageSet:
    """The image set a split is made of: ``image_set`` itself, except for FlexSampling's 14-class split.

    That one (``kind="flexsampling"``, ``classes=14``) splits ISIC 2019 relabelled into FlexSampling's
    14 classes plus the ISIC-archive images it adds (``published_splits.flexsampling14_image_set``;
    ``data_root`` is where those images are looked for).
    """
    if kind != "flexsampling" or classes != 14:
        return image_set
    from ltbench.data import published_splits

    if split_dir is None:
        raise LtbenchError("--split flexsampling needs --split-dir (the folder of its split files)")
    return published_splits.flexsampling14_image_set(image_set, Path(split_dir),
                                                     Path(data_root).expanduser() if data_root else None)


# ------------------------------------------------------------------------------- k-fold (3:1:1)


def group_codes(image_set: ImageSet) -> np.ndarray:
    """An integer group per row; rows without a group (None/NaN/"") each get their own."""
    n = len(image_set)
    if image_set.groups is None:
        return np.arange(n)
    # A row without a group gets a key no real lesion id can equal ("\0" never occurs in a CSV).
    keys = [f"\0row{i}" if _missing(g) else str(g).strip() for i, g in enumerate(image_set.groups)]
    return pd.factorize(np.array(keys, dtype=object))[0]


def _missing(g: object) -> bool:
    return g is None or (isinstance(g, float) and np.isnan(g)) or (isinstance(g, str) and not g.strip())


def _kfold_split(image_set: ImageSet, seed: int, grouped: bool) -> Split:
    """Fold 0 = test, fold 1 = val, folds 2-4 = train (StratifiedGroupKFold / StratifiedKFold)."""
    # Imported here: scikit-learn takes seconds to import and other kinds don't need it.
    import sklearn
    from sklearn.model_selection import StratifiedKFold

    kind = "grouped" if grouped else "stratified"
    _check_class_sizes(image_set, kind)
    # With an official validation/test set present (ISIC 2018), the 3:1:1 split is made of the
    # official training images only; the official parts stay unseen unless --split official.
    pool = (np.arange(len(image_set)) if image_set.official_split is None
            else np.flatnonzero(np.asarray(image_set.official_split, dtype=object) == "train"))
    y = image_set.labels[pool]
    x = np.zeros((len(y), 1))
    with warnings.catch_warnings():
        # sklearn warns when a class has fewer groups than folds; Split.check reports it clearly.
        warnings.simplefilter("ignore", UserWarning)
        if grouped:
            folder = _fast_stratified_group_kfold()(n_splits=N_FOLDS, shuffle=True, random_state=seed)
            folds = [pool[test] for _, test in folder.split(x, y, group_codes(image_set)[pool])]
        else:
            folder = StratifiedKFold(n_splits=N_FOLDS, shuffle=True, random_state=seed)
            folds = [pool[test] for _, test in folder.split(x, y)]
    # The fold assignment may differ between scikit-learn versions (its shuffling has changed), so
    # the version is recorded; the split CSV written beside the results is the durable record.
    details: dict = {"seed": seed, "ratios": "3:1:1", "folds": f"{N_FOLDS} (test=0, val=1, train=2-4)",
                     "sklearn": sklearn.__version__}
    if grouped:
        has_ids = image_set.groups is not None and not all(_missing(g) for g in np.asarray(image_set.groups)[pool])
        details["grouped_by"] = "lesion_id" if has_ids else "image"
        if not has_ids:
            # Say what really ran (issue 11): with no lesion id each image is its own group, so the
            # split is an image-level stratified one and lesions may leak between its parts.
            kind = IMAGE_LEVEL_FALLBACK
            details["warning"] = ("split 'grouped': no image has a lesion id, so the split is image-level "
                                  "(lesions may have images in several parts)")
    return Split(
        train=np.sort(np.concatenate(folds[2:])),
        val=np.sort(folds[1]),
        test=np.sort(folds[0]),
        kind=kind,
        details=details,
    )


def _fast_stratified_group_kfold() -> type:
    """scikit-learn's ``StratifiedGroupKFold`` with its per-group fold search vectorised.

    sklearn scores the 5 candidate folds of each group in a Python loop (5-10 s for ISIC 2019 on
    a busy 2-core machine, < 1 s here); this scores them in one numpy call and then applies
    sklearn's own selection rule (lowest mean per-class std, ties by ``np.isclose`` broken
    towards the smaller fold), so the folds are identical (tests/test_splits.py compares it with the stock class).
    """
    from sklearn.model_selection import StratifiedGroupKFold

    class FastStratifiedGroupKFold(StratifiedGroupKFold):
        def _find_best_fold(self, y_counts_per_fold, y_cnt, group_y_counts):
            n, n_classes = y_counts_per_fold.shape
            x = np.repeat(y_counts_per_fold[None], n, axis=0)
            x[np.arange(n), np.arange(n)] += group_y_counts  # candidate i: the group joins fold i
            x = x / y_cnt.reshape(1, 1, -1)
            # np.std's own two-pass arithmetic with raw ufuncs (np.std's wrapper costs more than the maths).
            d = x - np.add.reduce(x, axis=1, keepdims=True) / n
            evals = (np.add.reduce(np.sqrt(np.add.reduce(d * d, axis=1) / n), axis=1) / n_classes).tolist()
            sizes = np.add.reduce(y_counts_per_fold, axis=1).tolist()
            best_fold, min_eval, min_samples = None, np.inf, np.inf
            for i in range(n):  # sklearn's sequential rule, kept as is for identical tie-breaking
                if evals[i] < min_eval or (_isclose(evals[i], min_eval) and sizes[i] < min_samples):
                    best_fold, min_eval, min_samples = i, evals[i], sizes[i]
            return best_fold

    return FastStratifiedGroupKFold


def _isclose(a: float, b: float) -> bool:
    """``np.isclose(a, b)`` (rtol 1e-5, atol 1e-8) for finite ``a``, without numpy's call overhead."""
    return math.isfinite(b) and abs(a - b) <= 1e-8 + 1e-5 * abs(b)


def _check_class_sizes(image_set: ImageSet, kind: str) -> None:
    counts = np.bincount(image_set.labels, minlength=image_set.num_classes)
    small = np.flatnonzero(counts < N_FOLDS)
    if len(small):
        c = int(small[0])
        raise LtbenchError(
            f"split '{kind}': class {image_set.class_names[c]} has {counts[c]} image(s); "
            f"a 3:1:1 split needs at least {N_FOLDS}"
        )


# ------------------------------------------------------------------------------------- official


def _official_split(image_set: ImageSet) -> Split:
    if image_set.official_split is None:
        raise LtbenchError(
            "--split official: this dataset has no official validation/test split "
            "(for ISIC 2018, add the Validation/Test _Input folders and ground-truth CSVs)"
        )
    parts = np.asarray(image_set.official_split, dtype=object)
    rows = {p: np.flatnonzero(parts == p) for p in PARTS}
    return Split(**rows, kind="official", details={"source": image_set.description})


# ------------------------------------------------------------------------------------------- ECL


def ecl_split_files(split_dir: Path, dataset_name: str | None) -> dict[str, Path]:
    """ECL's ``ISIC2018_{train,val,test}.csv`` / ``ISIC2019_...`` (by ``dataset_name``) or ``{part}.csv``."""
    if not split_dir.is_dir():
        raise LtbenchError(f"--split-dir {split_dir}: folder not found")
    if dataset_name:
        prefix = dataset_name.strip().upper() + "_"
        files = {p: split_dir / f"{prefix}{p}.csv" for p in PARTS}
        if all(f.is_file() for f in files.values()):
            return files
    files = {p: split_dir / f"{p}.csv" for p in PARTS}
    if all(f.is_file() for f in files.values()):
        return files
    expected = f"{dataset_name.strip().upper()}_" if dataset_name else ""
    raise LtbenchError(
        f"--split-dir {split_dir}: expected {expected}train.csv, {expected}val.csv and "
        f"{expected}test.csv (or train.csv, val.csv, test.csv)"
    )


def read_ecl_split(image_set: ImageSet, split_dir: Path, dataset_name: str | None = None) -> Split:
    """The ECL paper's split files (zylbuaa/ECL, data/ISIC20xx/*.csv; columns image,category,label).

    ECL's ``label`` follows ``os.listdir`` order, not ours, so rows are matched by image id and
    ECL's ``category`` must equal our class name for that image.
    """
    files = ecl_split_files(split_dir, dataset_name)
    index = {i: r for r, i in enumerate(image_set.ids)}
    rows = {p: _ecl_rows(image_set, index, files[p]) for p in PARTS}
    return Split(
        **rows,
        kind="ecl",
        details={"split_dir": str(split_dir), "files": [f.name for f in files.values()],
                 "note": "image-level split (ECL, MICCAI 2023): lesions leak between parts"},
    )


def _ecl_rows(image_set: ImageSet, index: dict[str, int], path: Path) -> np.ndarray:
    df = read_csv(path, ["image", "category"])
    rows = _rows_of(index, df["image"].tolist(), path)
    ours = [image_set.class_names[image_set.labels[r]] for r in rows]
    bad = [k for k, (theirs, mine) in enumerate(zip(df["category"], ours)) if theirs != mine]
    if bad:
        k = bad[0]
        raise LtbenchError(
            f"{path}: image {df['image'].iat[k]} (line {k + 2}) has category {df['category'].iat[k]!r} "
            f"but the dataset labels it {ours[k]!r} ({len(bad)} mismatch(es); wrong dataset?)"
        )
    return np.sort(rows)


def _rows_of(index: dict[str, int], ids: list[str], path: Path) -> np.ndarray:
    unknown = [k for k, i in enumerate(ids) if i not in index]
    if unknown:
        k = unknown[0]
        raise LtbenchError(
            f"{path}: image {ids[k]} (line {k + 2}) is not in the dataset "
            f"({len(unknown)} unknown image(s))"
        )
    return np.array([index[i] for i in ids], dtype=np.int64)


# -------------------------------------------------------------------------------- split CSV I/O


def write_split_csv(image_set: ImageSet, split: Split, path: Path) -> None:
    """Write ``image,label,class,part`` (one row per image in the split), atomically."""
    path = Path(path)
    frames = [
        pd.DataFrame({
            "image": [image_set.ids[r] for r in rows],
            "label": image_set.labels[rows],
            "class": [image_set.class_names[image_set.labels[r]] for r in rows],
            "part": part,
        })
        for part, rows in split.parts().items()
    ]
    atomic_write(path, pd.concat(frames, ignore_index=True).to_csv(index=False, lineterminator="\n"))


def read_split_csv(image_set: ImageSet, path: Path) -> Split:
    """Read a split CSV (``image,part`` required; ``label``/``class`` checked when present)."""
    path = Path(path)
    df = read_csv(path, ["image", "part"])
    ids = df["image"].tolist()
    dup = df["image"][df["image"].duplicated()]
    if len(dup):
        raise LtbenchError(f"{path}: image {dup.iat[0]} is listed more than once")
    bad_part = df.index[~df["part"].isin(PARTS)]
    if len(bad_part):
        k = int(bad_part[0])
        raise LtbenchError(
            f"{path}: line {k + 2} has part {df['part'].iat[k]!r} (expected train, val or test)"
        )
    rows = _rows_of({i: r for r, i in enumerate(image_set.ids)}, ids, path)
    _check_csv_labels(image_set, df, rows, path)
    parts = {p: np.sort(rows[(df["part"] == p).to_numpy()]) for p in PARTS}
    return Split(**parts, kind="csv", details={"split_file": str(path)})


def _check_csv_labels(image_set: ImageSet, df: pd.DataFrame, rows: np.ndarray, path: Path) -> None:
    ours = image_set.labels[rows]
    checks = []
    if "label" in df.columns:
        checks.append(("label", df["label"].tolist(), [str(x) for x in ours]))
    if "class" in df.columns:
        checks.append(("class", df["class"].tolist(), [image_set.class_names[x] for x in ours]))
    for col, theirs, mine in checks:
        bad = [k for k, (a, b) in enumerate(zip(theirs, mine)) if a != b]
        if bad:
            k = bad[0]
            raise LtbenchError(
                f"{path}: image {df['image'].iat[k]} (line {k + 2}) has {col} {theirs[k]!r} "
                f"but the dataset has {mine[k]!r}"
            )


# ------------------------------------------------------------------------------------ diagnostics


def lesion_leak(image_set: ImageSet, split: Split, part: str = "test") -> tuple[int, int]:
    """(lesions of ``part`` that also appear in train, lesions in ``part``); images without a group don't count."""
    if image_set.groups is None:
        return 0, 0
    groups = np.asarray(image_set.groups, dtype=object)

    def lesions(rows: np.ndarray) -> set:
        return {g for g in groups[rows] if not _missing(g)}

    other = lesions(split.parts()[part])
    return len(other & lesions(split.train)), len(other)


def leak_report(image_set: ImageSet, split: Split, part: str = "test") -> dict[str, int]:
    """What is known about lesions of ``part`` that also have images in train.

    Images without a lesion id make the leak *unknown* for them (ISIC 2018's official
    validation/test images, 2,084 ISIC 2019 images), so they are counted, never taken as "no
    leak": ``{part}_lesions`` and ``{part}_lesions_also_in_train`` count the lesions with an id,
    ``{part}_images_without_lesion_id`` the rest (``train_images_without_lesion_id`` too: such
    a training image may show a test lesion).
    """
    rows = split.parts()[part]
    shared, total = lesion_leak(image_set, split, part)
    if image_set.groups is None:
        unknown, unknown_train = len(rows), len(split.train)
    else:
        groups = np.asarray(image_set.groups, dtype=object)
        unknown = sum(_missing(g) for g in groups[rows])
        unknown_train = sum(_missing(g) for g in groups[split.train])
    return {f"{part}_lesions_also_in_train": shared, f"{part}_lesions": total,
            f"{part}_images_without_lesion_id": int(unknown), f"{part}_images": len(rows),
            "train_images_without_lesion_id": int(unknown_train)}
