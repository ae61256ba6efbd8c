"""The two data structures every dataset and split produces: an image set and a split of it."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ltbench.errors import LtbenchError


@dataclass
class ImageSet:
    """A labelled image collection, before it is split.

    Exactly one of ``pixels`` (uint8 array N×H×W×3, already in memory) or ``paths`` (one image
    file per row, decoded later into the pixel cache) is set.
    """

    ids: list[str]
    labels: np.ndarray  # int64 [N], values in range(len(class_names))
    class_names: list[str]
    pixels: np.ndarray | None = None
    paths: list[Path] | None = None
    # Lesion (or patient) id per image for grouped splits; None means every image is its own group.
    groups: np.ndarray | None = None
    # A fixed split shipped with the dataset (e.g. ISIC 2018's official validation/test sets):
    # "train" / "val" / "test" per row, or None.
    official_split: np.ndarray | None = None
    description: str = ""

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if (self.pixels is None) == (self.paths is None):
            raise ValueError("ImageSet needs exactly one of pixels or paths")
        n = len(self.ids)
        if len(self.labels) != n or len(self.source) != n:
            raise ValueError("ImageSet: ids, labels and images differ in length")

    @property
    def source(self):
        return self.pixels if self.pixels is not None else self.paths

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class Split:
    """Row indices of an :class:`ImageSet` for train / val / test, and how they were made."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    kind: str = ""
    details: dict = field(default_factory=dict)

    def parts(self) -> dict[str, np.ndarray]:
        return {"train": self.train, "val": self.val, "test": self.test}

    def check(self, image_set: ImageSet) -> None:
        """Every class must appear in every part, and no row in two parts."""
        seen = np.concatenate([self.train, self.val, self.test])
        if len(np.unique(seen)) != len(seen):
            raise LtbenchError(f"split '{self.kind}': an image is in two parts of the split")
        for part, rows in self.parts().items():
            counts = np.bincount(image_set.labels[rows], minlength=image_set.num_classes)
            empty = [image_set.class_names[c] for c in np.flatnonzero(counts == 0)]
            if empty:
                raise LtbenchError(
                    f"split '{self.kind}': class {', '.join(empty)} has no image in the {part} set"
                )

    def hash(self, image_set: ImageSet) -> str:
        """A short digest of which image ids (and labels) are in which part."""
        h = hashlib.sha256()
        for part, rows in self.parts().items():
            h.update(part.encode())
            for r in rows:
                h.update(f"{image_set.ids[r]}:{image_set.labels[r]};".encode())
        return h.hexdigest()[:16]

    def class_counts(self, image_set: ImageSet, part: str = "train") -> list[int]:
        rows = self.parts()[part]
        return np.bincount(image_set.labels[rows], minlength=image_set.num_classes).tolist()
