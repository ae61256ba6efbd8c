"""Dataset registry: name -> loader returning an :class:`ImageSet`.

- ``digits-lt`` (the embedded default): scikit-learn's real 8×8 handwritten digits (1,797
  images, 10 classes) made long-tailed with the exponential profile used for CIFAR-10-LT
  (Cui et al., CVPR 2019): ``n_c = n_max · imbalance^(-c / (C-1))``. Needs no download.
- ``synthetic``: seeded coloured shapes with a long-tailed profile and lesion-like groups, for tests.
- ``isic2018`` / ``isic2019``: the official ISIC challenge layouts under ``--data-root``.

Each dataset also declares the flips and rotations its labels survive (``geometry``,
``ltbench.data.geometry``): the training views drop the others. Registering without one gives a
horizontal flip only.

Each dataset carries its default training protocol (TrainConfig fields), so that ``ltbench train
--dataset isic2019`` runs the ISIC protocol without a benchmark file (``benchmarks/`` is not
installed with the package). A benchmark file's ``train:`` section and command-line flags override
it, in that order (``ltbench.config.train_config``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from ltbench.data.base import ImageSet
from ltbench.data.geometry import ANY_GEOMETRY, DEFAULT_GEOMETRY, ViewGeometry
from ltbench.errors import LtbenchError


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    load: Callable[..., ImageSet]
    description: str
    needs_root: bool
    default_split: str
    protocol: Mapping[str, object] = field(default_factory=dict)  # default TrainConfig fields
    # Bumped when the loader's images, labels or shipped split change, or the geometry it declares;
    # part of the data identity (run keys) when above 1, so results of an older version are never reused.
    version: int = 1
    # The flips and rotations its labels survive: training views drop the others.
    geometry: ViewGeometry = DEFAULT_GEOMETRY
    # A rule per loader keyword (problem text or None), checked where the option is read (the benchmark
    # file's dataset.options), so a bad value is named by file and key before anything is loaded.
    option_rules: Mapping[str, Callable[[object], str | None]] = field(default_factory=dict)


DATASETS: dict[str, DatasetSpec] = {}

# The shared protocol of the ECL paper (MICCAI 2023, Table 1) for the skin-lesion sets, except the
# checkpoint: their validation splits are as imbalanced as the data (~60 % NV), so the best epoch is
# chosen by balanced accuracy (sen), ISIC's own metric (docs/protocol.md, issue 26).
ISIC_PROTOCOL = {"backbone": "resnet50", "pretrained": "imagenet", "image_size": 224, "epochs": 100,
                 "batch_size": 64, "lr": 0.002, "momentum": 0.9, "weight_decay": 0.0001, "select_metric": "sen"}
# A small CNN from scratch on 8x8 digits: benchmarks/digits-lt.yaml's settings (lr 0.05: the
# protocol's 0.002 is tuned for a pretrained ResNet-50).
DIGITS_PROTOCOL = {"backbone": "small-cnn-16", "image_size": 16, "epochs": 20, "batch_size": 64, "lr": 0.05,
                   "eval_batch_size": 512}
# A digit has an orientation: no flip (a mirrored 2 is no digit; both flips turn a 6 into a 9) and
# rotations up to ±30°, as AutoAugment's SVHN policy (ltbench.data.geometry).
DIGITS_GEOMETRY = ViewGeometry(hflip=False, vflip=False, rotation=30.0)
SYNTHETIC_PROTOCOL = {"backbone": "small-cnn", "image_size": 16, "epochs": 10, "batch_size": 16, "lr": 0.05,
                      "eval_batch_size": 256}


def register_dataset(name: str, description: str, needs_root: bool = False, default_split: str = "grouped",
                     protocol: Mapping[str, object] | None = None, version: int = 1,
                     geometry: ViewGeometry = DEFAULT_GEOMETRY,
                     option_rules: Mapping[str, Callable[[object], str | None]] | None = None):
    """Register a loader; ``protocol`` = the TrainConfig fields a run on it uses by default;
    ``geometry`` = the flips and rotations its labels survive (default: a horizontal flip only)."""
    if not isinstance(geometry, ViewGeometry):
        raise TypeError(f"dataset {name!r}: geometry must be a ViewGeometry, got {type(geometry).__name__}")

    def decorate(fn: Callable[..., ImageSet]) -> Callable[..., ImageSet]:
        if name in DATASETS:
            raise ValueError(f"dataset {name!r} is already registered")
        DATASETS[name] = DatasetSpec(name, fn, description, needs_root, default_split, dict(protocol or {}), version,
                                     geometry, dict(option_rules or {}))
        return fn

    return decorate


def get_dataset(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise LtbenchError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASETS))}") from None


def load_dataset(name: str, data_root: str | Path | None = None, **options) -> ImageSet:
    """Load a registered dataset; ``options`` are the loader's keyword arguments."""
    spec = get_dataset(name)
    if spec.needs_root:
        if not data_root:
            raise LtbenchError(f"dataset {name!r} needs --data-root (the folder with the official files)")
        root = Path(data_root).expanduser()
        if not root.is_dir():
            raise LtbenchError(f"--data-root {root}: no such folder")
        options["data_root"] = root
    try:
        return spec.load(**options)
    except TypeError as exc:
        raise LtbenchError(f"dataset {name!r}: bad options {options}: {exc}") from None


def _imbalance_rule(value) -> str | None:
    return None if value >= 1 else "must be at least 1 (the largest training class over the smallest)"


_LONG_TAIL_RULES = {"imbalance": _imbalance_rule}


def long_tail_counts(n_max: int, num_classes: int, imbalance: float) -> list[int]:
    """Exponential profile of CIFAR-LT: class c keeps ``int(n_max · imbalance^(-c/(C-1)))``."""
    problem = _imbalance_rule(imbalance)
    if problem:
        raise LtbenchError(f"dataset option imbalance = {imbalance!r}: {problem}")
    return [int(n_max * imbalance ** (-c / (num_classes - 1))) for c in range(num_classes)]


@register_dataset("digits-lt", "scikit-learn's real 8x8 handwritten digits: balanced val/test, long-tailed train "
                  "(offline default)", default_split="official", protocol=DIGITS_PROTOCOL, version=3,
                  geometry=DIGITS_GEOMETRY, option_rules=_LONG_TAIL_RULES)
def load_digits_lt(imbalance: float = 10.0, seed: int = 0, val_per_class: int = 20,
                   test_per_class: int = 30) -> ImageSet:
    """Balanced validation and test sets drawn first, then only the training rest made long-tailed.

    As CIFAR-10-LT (Cui et al., CVPR 2019) keeps CIFAR-10's balanced test set: a test set with the
    training set's profile would be dominated by the head, and its accuracy would say little about
    the tail. Per class (seeded permutation): ``test_per_class`` test images, ``val_per_class``
    validation images, then ``n_c = int(n_max · imbalance^(-c/9))`` training images, n_max = the
    smallest class's remainder (174 - 50 = 124 with the defaults: 124 … 12). The split ships with the
    dataset (split kind ``official``). Version 3 of the dataset: version 2 (issue 12) let the views
    flip and rotate digits by up to ±90°, version 3 declares no flip and ±30° (issue 20,
    ``DIGITS_GEOMETRY``); version 1 made the whole set long-tailed and split it 3:1:1.
    """
    from sklearn.datasets import load_digits

    if val_per_class < 1 or test_per_class < 1:
        raise LtbenchError(f"digits-lt: val_per_class={val_per_class}, test_per_class={test_per_class}: "
                           "each must be at least 1")
    digits = load_digits()
    rng = np.random.default_rng(seed)
    classes = np.unique(digits.target)
    shuffled = [rng.permutation(np.flatnonzero(digits.target == c)) for c in classes]
    held = test_per_class + val_per_class
    n_max = min(len(rows) for rows in shuffled) - held
    if n_max < 1:
        raise LtbenchError(f"digits-lt: val_per_class + test_per_class = {held} leaves no training image "
                           f"(the smallest class has {held + n_max})")
    keep = long_tail_counts(n_max, len(classes), imbalance)
    parts = {"test": [r[:test_per_class] for r in shuffled], "val": [r[test_per_class:held] for r in shuffled],
             "train": [r[held:held + k] for r, k in zip(shuffled, keep)]}
    rows = np.concatenate([np.concatenate(parts[p]) for p in ("train", "val", "test")])
    part_of = np.repeat(np.array(["train", "val", "test"], dtype=object),
                        [sum(len(r) for r in parts[p]) for p in ("train", "val", "test")])
    order = np.argsort(rows, kind="stable")  # rows in sklearn's order, each with its part
    rows, part_of = rows[order], part_of[order]
    # 0..16 grey levels -> uint8, replicated to three channels so every backbone takes it.
    grey = np.round(digits.images[rows] * (255.0 / 16.0)).astype(np.uint8)
    pixels = np.repeat(grey[..., None], 3, axis=3)
    return ImageSet(
        ids=[f"digit_{r:04d}" for r in rows],
        labels=digits.target[rows],
        class_names=[str(c) for c in range(10)],
        pixels=np.ascontiguousarray(pixels),
        official_split=part_of,
        description=(f"sklearn digits: balanced val/test ({val_per_class}/{test_per_class} per class), "
                     f"long-tailed train with imbalance factor {imbalance:g}"),
    )


# Its class is its colour, which no flip or rotation changes: every view as it is.
@register_dataset("synthetic", "seeded coloured squares with a long-tailed profile (unit tests only)",
                  protocol=SYNTHETIC_PROTOCOL, geometry=ANY_GEOMETRY, option_rules=_LONG_TAIL_RULES)
def load_synthetic(num_classes: int = 4, n_max: int = 80, imbalance: float = 5.0, size: int = 16,
                   seed: int = 0) -> ImageSet:
    rng = np.random.default_rng(seed)
    counts = long_tail_counts(n_max, num_classes, imbalance)
    labels = np.repeat(np.arange(num_classes), counts)
    palette = rng.integers(40, 216, size=(num_classes, 3))
    pixels = rng.integers(0, 40, size=(len(labels), size, size, 3)).astype(np.int64)
    for i, c in enumerate(labels):
        # each class: its own colour in a square whose position depends on the class
        o = (c * 3) % (size // 2)
        pixels[i, o:o + size // 2, o:o + size // 2] += palette[c]
    # "lesions": runs of 1-3 consecutive images share a group id, as several photos of one lesion
    groups, g, i = np.empty(len(labels), dtype=object), 0, 0
    while i < len(labels):
        k = int(rng.integers(1, 4))
        groups[i:i + k] = f"lesion_{g}"
        g, i = g + 1, i + k
    return ImageSet(
        ids=[f"synthetic_{i:05d}" for i in range(len(labels))],
        labels=labels,
        class_names=[f"class{c}" for c in range(num_classes)],
        pixels=np.clip(pixels, 0, 255).astype(np.uint8),
        groups=groups,
        description="synthetic long-tailed squares",
    )


# Dermoscopy has no orientation: flips and any rotation, for every split kind of both sets.
@register_dataset("isic2019", "ISIC 2019 training set (official layout under --data-root)", needs_root=True,
                  protocol=ISIC_PROTOCOL, geometry=ANY_GEOMETRY)
def _load_isic2019(data_root: Path) -> ImageSet:
    from ltbench.data.isic import load_isic2019

    return load_isic2019(data_root)


@register_dataset("isic2018", "ISIC 2018 Task 3 (official layout under --data-root)", needs_root=True,
                  protocol=ISIC_PROTOCOL, geometry=ANY_GEOMETRY)
def _load_isic2018(data_root: Path) -> ImageSet:
    from ltbench.data.isic import load_isic2018

    return load_isic2018(data_root)


# MedMNIST v2's DermaMNIST benchmark setting (ResNet-18, 100 epochs, batch 128, at the file's size),
# with ltbench's SGD at lr 0.01 instead of MedMNIST's Adam at 0.001 (the trainer has one optimiser).
DERMAMNIST_PROTOCOL = {"backbone": "resnet18", "image_size": 28, "epochs": 100, "batch_size": 128, "lr": 0.01,
                       "eval_batch_size": 512}


@register_dataset("dermamnist", "MedMNIST's DermaMNIST .npz (28/64/128/224 px; --data-root = its folder; "
                  "MedMNIST's own split)", needs_root=True, default_split="official", protocol=DERMAMNIST_PROTOCOL,
                  geometry=ANY_GEOMETRY)  # dermoscopy, as ISIC
def _load_dermamnist(data_root: Path, size: int = 28, verify: bool = False) -> ImageSet:
    from ltbench.data.dermamnist import load_dermamnist

    return load_dermamnist(data_root, size=size, verify=verify)
