"""Which geometric transforms keep a dataset's labels: a property of the dataset, not of training.

Augmentation is only sound when a view keeps its image's label. Dermoscopy has no orientation, so
ISIC 2018/2019 (every split kind) and DermaMNIST allow flips and any rotation. A handwritten digit
has one: a 6 turned by 180° (both flips) is a 9, a mirrored 2, 3 or 7 is no digit. digits-lt
therefore allows no flip and rotations up to ±30° only — the largest rotation of AutoAugment's
SVHN policy, which has no flips (Cubuk et al., CVPR 2019). A dataset registered without a
declaration (a user's, through ``register_dataset``) gets a horizontal flip only (chest X-rays or
fundus photographs have a top and, for some labels, a side); a benchmark file may set any
dataset's geometry (``dataset: {geometry: {hflip: ..., vflip: ..., rotation: ...}}``).

Presets keep every random draw and drop what the dataset forbids (``get_augmentation(name, size,
geometry)`` calls the preset's ``restricted(geometry)``): a forbidden flip is drawn and never
applied, a rotation range is capped at the dataset's limit. So a dataset that allows everything
gets the presets' exact bits, and one that allows less gets the same colour draws per image.
Crops, shears and translations are not orientation changes and are kept.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ViewGeometry:
    """The geometric transforms a dataset's labels survive.

    ``hflip`` / ``vflip``: mirroring left-right / top-bottom keeps the label; ``rotation``: the
    largest rotation (degrees, either direction) that keeps it; 180 = any.
    """

    hflip: bool = True
    vflip: bool = True
    rotation: float = 180.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "rotation", float(self.rotation))
        if not 0.0 <= self.rotation <= 180.0:
            raise ValueError(f"rotation {self.rotation:g}: expected degrees in [0, 180] (180: any rotation)")
        if self.rotation == 180.0 and self.hflip != self.vflip:
            # A flip followed by a half turn is the other flip: a label that survives both survives it.
            raise ValueError("with any rotation (180) one flip and a half turn make the other: allow both flips "
                             "or neither")

    @property
    def is_any(self) -> bool:
        """True when every transform is allowed (the presets are used unchanged)."""
        return self == ANY_GEOMETRY

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """E.g. ``no flip, rotation up to ±30°`` or ``h- and v-flip, any rotation``."""
        flips = {(True, True): "h- and v-flip", (True, False): "h-flip", (False, True): "v-flip",
                 (False, False): "no flip"}[(self.hflip, self.vflip)]
        if self.rotation >= 180.0:
            return f"{flips}, any rotation"
        return f"{flips}, rotation up to ±{self.rotation:g}°" if self.rotation > 0 else f"{flips}, no rotation"


#: Flips and any rotation: every preset as it is (ISIC, DermaMNIST).
ANY_GEOMETRY = ViewGeometry()
#: A dataset that declares nothing: a horizontal flip only.
DEFAULT_GEOMETRY = ViewGeometry(hflip=True, vflip=False, rotation=0.0)


def read_geometry(raw: object, base: ViewGeometry, path: str) -> ViewGeometry:
    """A benchmark file's ``dataset.geometry`` (``{hflip: bool, vflip: bool, rotation: degrees}``).

    Keys left out keep ``base``, the dataset's declaration. Every problem is one
    :class:`~ltbench.errors.LtbenchError` line naming ``path`` and the key.
    """
    from dataclasses import replace

    from ltbench import typed
    from ltbench.errors import LtbenchError

    if not isinstance(raw, dict):
        raise LtbenchError(f"{path}: dataset.geometry = {raw!r}: expected a mapping of hflip, vflip, rotation "
                           "(e.g. {hflip: true, vflip: false, rotation: 15})")
    settings = {"hflip": typed.Setting("hflip", bool), "vflip": typed.Setting("vflip", bool),
                "rotation": typed.Setting("rotation", float, rule=lambda v: None if 0 <= v <= 180 else
                                          "expected degrees in [0, 180] (180: any rotation)")}
    values = typed.read(settings, raw, typed.in_file(path, "dataset.geometry"), unknown="not a geometry key")
    try:
        return replace(base, **values)
    except ValueError as exc:
        raise LtbenchError(f"{path}: dataset.geometry: {exc}") from None
