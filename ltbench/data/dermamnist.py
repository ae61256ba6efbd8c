"""DermaMNIST (MedMNIST v2; Yang et al., Scientific Data 2023; medmnist.com, github.com/MedMNIST/MedMNIST).

HAM10000's 10,015 dermatoscopic images (Tschandl et al. 2018), 7 classes, resized to 28 px
(``dermamnist.npz``) or 64/128/224 px (MedMNIST+: ``dermamnist_{64,128,224}.npz``), with MedMNIST's
own 7:1:2 train/val/test split (7,007 / 1,003 / 2,005). The ``.npz`` holds ``train_images``
(uint8 N×H×W×3), ``train_labels`` (N×1) and the same for ``val`` and ``test``; ltbench reads it
from ``--data-root`` and never downloads it (MedMNIST's Zenodo record 10519652, below; its MD5
values, from ``medmnist/info.py``, are checked when ``verify=True``).

MedMNIST's split is image-level: HAM10000 lesions with several images may leak between parts, and
the ``.npz`` carries no lesion id, so the leak is reported as unknown.
"""
from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np

from ltbench.data.base import ImageSet
from ltbench.errors import LtbenchError

# MedMNIST's label order (medmnist/info.py, INFO["dermamnist"]["label"]).
CLASS_NAMES = ["actinic keratoses and intraepithelial carcinoma", "basal cell carcinoma",
               "benign keratosis-like lesions", "dermatofibroma", "melanoma", "melanocytic nevi",
               "vascular lesions"]
SIZES = (28, 64, 128, 224)
ZENODO = "https://zenodo.org/records/10519652"
# medmnist/info.py (MedMNIST v3.0): MD5 of each file of the Zenodo record.
MD5 = {28: "0744692d530f8e62ec473284d019b0c7", 64: "b70a2f5635c6199aeaa28c31d7202e1f",
       128: "2defd784463fa5243564e855ed717de1", 224: "8974907d8e169bef5f5b96bc506ae45d"}
PARTS = ("train", "val", "test")


def file_name(size: int) -> str:
    return "dermamnist.npz" if size == 28 else f"dermamnist_{size}.npz"


def find_file(data_root: Path, size: int) -> Path:
    """``data_root`` itself (a ``.npz``) or ``data_root/dermamnist[_S].npz``; one line saying where to get it."""
    if size not in SIZES:
        raise LtbenchError(f"dermamnist size {size}: choose one of {', '.join(map(str, SIZES))}")
    data_root = Path(data_root)
    path = data_root if data_root.suffix == ".npz" else data_root / file_name(size)
    if not path.is_file():
        raise LtbenchError(f"{path}: not found; download {file_name(size)} from MedMNIST's Zenodo record "
                           f"{ZENODO}/files/{file_name(size)}?download=1 (MD5 {MD5[size]}) and put it there")
    return path


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_dermamnist(data_root: Path, size: int = 28, verify: bool = False) -> ImageSet:
    """DermaMNIST at ``size`` px with MedMNIST's split as ``official_split`` (use ``--split official``)."""
    path = find_file(data_root, size)
    if verify and (got := _md5(path)) != MD5[size]:
        raise LtbenchError(f"{path}: MD5 {got} is not MedMNIST's {MD5[size]} for {file_name(size)}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = set(npz.files)
            missing = [f"{p}_{k}" for p in PARTS for k in ("images", "labels") if f"{p}_{k}" not in keys]
            if missing:
                raise LtbenchError(f"{path}: missing array(s) {', '.join(missing)} (has {', '.join(sorted(keys))})")
            images = {p: npz[f"{p}_images"] for p in PARTS}
            labels = {p: npz[f"{p}_labels"] for p in PARTS}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise LtbenchError(f"{path}: not a readable MedMNIST .npz ({str(exc).splitlines()[0]})") from None
    for p in PARTS:
        img, lab = images[p], labels[p]
        if img.dtype != np.uint8 or img.ndim != 4 or img.shape[1:] != (size, size, 3):
            raise LtbenchError(f"{path}: {p}_images is {img.dtype} {img.shape}; expected uint8 N×{size}×{size}×3 "
                               f"(wrong size? dermamnist size={size})")
        lab = lab.reshape(-1) if lab.ndim == 2 and lab.shape[1] == 1 else lab
        if lab.ndim != 1 or len(lab) != len(img):
            raise LtbenchError(f"{path}: {p}_labels has shape {labels[p].shape}; expected [{len(img)}, 1]")
        bad = np.flatnonzero((lab < 0) | (lab >= len(CLASS_NAMES)))
        if len(bad):
            raise LtbenchError(f"{path}: {p}_labels[{bad[0]}] = {lab[bad[0]]}; expected 0..{len(CLASS_NAMES) - 1}")
        labels[p] = lab.astype(np.int64)
    ids = [f"dermamnist_{p}_{i:05d}" for p in PARTS for i in range(len(images[p]))]
    return ImageSet(
        ids=ids,
        labels=np.concatenate([labels[p] for p in PARTS]),
        class_names=list(CLASS_NAMES),
        pixels=np.ascontiguousarray(np.concatenate([images[p] for p in PARTS])),
        official_split=np.array([p for p in PARTS for _ in range(len(images[p]))], dtype=object),
        description=f"DermaMNIST {size}px (MedMNIST v2) from {path}",
    )
