"""The augmentation presets: a registry of named views, and the built-in ones.

A preset is a factory ``factory(image_size) -> Augmentation`` registered under a name
(:func:`register_augmentation`, like methods); ``Method.views`` and ``TrainConfig.eval_view`` name
presets, and :func:`get_augmentation` builds one for a dataset's geometry. Built in: ``eval``,
``standard`` and ``contrastive`` (the ECL code, zylbuaa/ECL ``utils/dataset/isic.py``), ``plain_half``
(below) and BCL's ``randaugment`` (``ltbench.data.augment.randaugment``). Methods and plug-ins
register their own when they are imported (FlexSampling's SSL view).

``plain_half`` draws nothing, for papers that train on the resized image alone: resize to S×S, then ``ToTensor() + Normalize(0.5, 0.5)`` — the input pipeline of the
rotation-invariance hashing code (Zhang et al., Medical Image Analysis 2022,
zylbuaa/dermoscopic_img_retrieval ``train.py``; spec retrieval.md §4), used there for training and
testing alike. A run evaluates with it through ``TrainConfig.eval_view`` and trains on it through a
method's view keyword (``rotation_hashing: {view: plain_half}``).
"""
from __future__ import annotations

from typing import Callable, Protocol, TypeVar

import torch
from torch import Tensor

from ltbench.data.augment.batch import BatchAugment
from ltbench.data.augment.colour import ColorJitter
from ltbench.data.geometry import ViewGeometry
from ltbench.errors import LtbenchError

HALF = (0.5, 0.5, 0.5)  # plain_half's mean and std
_ECL_JITTER = ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8)


class Augmentation(Protocol):
    """What a registered factory returns: ``augment(images, generator, sizes=None) -> views``.

    ``images``: uint8 (or float in [0, 1]) N×3×H×W on the compute device; ``generator``: the
    stream's ``torch.Generator`` (draw every random parameter from it, so a seed reproduces the
    batch); ``sizes``: each image's original (height, width), int [N, 2], or None when the cached
    pixels are the images' own size. Returns float32 N×3×S×S, normalised.
    """

    def __call__(self, images: Tensor, generator: torch.Generator | None = None,
                 sizes: Tensor | None = None) -> Tensor: ...


#: The registry: preset name → factory ``factory(image_size) -> Augmentation``. Add entries with
#: :func:`register_augmentation`, not by writing to the dict.
PRESETS: dict[str, Callable[[int], Augmentation]] = {}
#: Called in order when a preset name is not registered, before the lookup fails: whatever can make
#: more presets known. ``ltbench.registry`` adds its loader of the methods and method plug-ins (which
#: register their presets when imported), so the data layer never imports the method registry.
PRESET_SOURCES: list[Callable[[], object]] = []

F_ = TypeVar("F_", bound=Callable[[int], Augmentation])


def register_augmentation(name: str, factory: F_ | None = None):
    """Make ``factory(image_size) -> Augmentation`` available as the preset ``name``.

    Same shape as :func:`ltbench.registry.register_method`: registering a *different* factory under
    a taken name raises ``ValueError`` (the same one again is a no-op), so a plug-in cannot
    silently replace a built-in preset. Use it directly, ``register_augmentation("mine", make)``,
    or as a decorator, ``@register_augmentation("mine")``; a method's module (or plug-in) that
    registers its preset at import time can then name it in ``Method.views``. A preset with random
    flips or rotations gives its augmentation a ``restricted(geometry)`` method returning the view
    without what a dataset forbids (``ltbench.data.geometry``; see :meth:`BatchAugment.restricted`),
    else it cannot train on such a dataset.
    """
    if factory is None:
        return lambda f: register_augmentation(name, f)
    if not isinstance(name, str) or not name:
        raise ValueError(f"augmentation name must be a non-empty string, got {name!r}")
    if not callable(factory):
        raise TypeError(f"augmentation {name!r}: factory must be callable, got {type(factory).__name__}")
    known = PRESETS.get(name)
    if known is not None and known is not factory:
        raise ValueError(f"augmentation name {name!r} is already registered by "
                         f"{getattr(known, '__module__', '?')}.{getattr(known, '__qualname__', known)}")
    PRESETS[name] = factory
    return factory


def unregister_augmentation(name: str) -> None:
    """Remove a registration (for tests and interactive work)."""
    PRESETS.pop(name, None)


def list_augmentations() -> list[str]:
    """The registered preset names, sorted."""
    return sorted(PRESETS)


@register_augmentation("eval")
def eval_augment(size: int) -> BatchAugment:
    """Deterministic: resize to S×S, normalise."""
    return BatchAugment(size)


@register_augmentation("standard")
def standard_augment(size: int) -> BatchAugment:
    """ECL's classifier view (``augmentation_rand``): resize S×S, h-flip, colour jitter p 0.8."""
    return BatchAugment(size, hflip_p=0.5, jitter=_ECL_JITTER)


@register_augmentation("contrastive")
def contrastive_augment(size: int) -> BatchAugment:
    """ECL's contrastive view (``augmentation_sim``).

    RandomResizedCrop(S, scale 0.8–1) drawn on the original geometry, h- and v-flip, rotation
    uniform in ±90° of the resized crop (black corners), colour jitter p 0.8, grayscale p 0.2.
    """
    return BatchAugment(size, crop_scale=(0.8, 1.0), hflip_p=0.5, vflip_p=0.5, rotation_deg=90.0,
                        jitter=_ECL_JITTER, grayscale_p=0.2)



@register_augmentation("plain_half")
def plain_half(size: int) -> BatchAugment:
    """Deterministic: resize to S×S, normalise with mean 0.5 and std 0.5 per channel."""
    return BatchAugment(size, mean=HALF, std=HALF)


def get_augmentation(name: str, image_size: int, geometry: ViewGeometry | None = None) -> Augmentation:
    """The preset ``name`` at ``image_size``; an unknown name raises :class:`LtbenchError`.

    ``geometry``: the flips and rotations the dataset's labels survive (``ltbench.data.geometry``);
    the preset drops the others through its ``restricted(geometry)``. None, or a geometry that
    allows everything, gives the preset exactly as registered.
    """
    if name not in PRESETS:
        for load in PRESET_SOURCES:  # e.g. the method registry: methods register presets on import
            load()
    if name not in PRESETS:
        raise LtbenchError(
            f"unknown augmentation {name!r}; known presets: {', '.join(sorted(PRESETS))}")
    augment = PRESETS[name](image_size)
    if geometry is None or geometry.is_any:
        return augment
    restrict = getattr(augment, "restricted", None)
    if restrict is None:
        raise LtbenchError(f"augmentation {name!r} has no restricted(geometry) method, so it cannot drop what this "
                           f"dataset's labels do not survive (it allows {geometry.describe()})")
    return restrict(geometry)


def renormalised(augment: Augmentation, mean: tuple[float, ...], std: tuple[float, ...]) -> Augmentation:
    """``augment`` normalising with ``mean``/``std`` (a backbone's own, issue 23) wherever it used ImageNet's.

    Changed in place and returned; parts with other constants (``plain_half``'s 0.5, RandAugment's
    inner unnormalised pass) keep theirs, so a view that departs on purpose stays as registered.
    """
    from ltbench.data.augment.batch import IMAGENET_MEAN, IMAGENET_STD

    parts = augment.modules() if isinstance(augment, torch.nn.Module) else [augment]
    for part in parts:
        if tuple(getattr(part, "mean", ())) == IMAGENET_MEAN and tuple(getattr(part, "std", ())) == IMAGENET_STD:
            part.mean, part.std = tuple(mean), tuple(std)
    return augment
