"""Presets without any random operation, for papers that train on the resized image alone.

``plain_half``: resize to S×S, then ``ToTensor() + Normalize(0.5, 0.5)`` — the input pipeline of the
rotation-invariance hashing code (Zhang et al., Medical Image Analysis 2022,
zylbuaa/dermoscopic_img_retrieval ``train.py``; spec retrieval.md §4), used there for training and
testing alike. A run evaluates with it through ``TrainConfig.eval_view`` and trains on it through a
method's view keyword (``rotation_hashing: {view: plain_half}``).
"""
from __future__ import annotations

from ltbench.data.augment import BatchAugment, register_augmentation

HALF = (0.5, 0.5, 0.5)


@register_augmentation("plain_half")
def plain_half(size: int) -> BatchAugment:
    """Deterministic: resize to S×S, normalise with mean 0.5 and std 0.5 per channel."""
    return BatchAugment(size, mean=HALF, std=HALF)
