"""Small builders shared by tests: a prepared synthetic dataset and a CPU training config."""
from __future__ import annotations

import torch

from ltbench.runs import DataSpec, PreparedData, prepare_data
from ltbench.trainer import TrainConfig

SYNTHETIC = DataSpec(dataset="synthetic", options={"num_classes": 4, "n_max": 80, "imbalance": 5.0},
                     split="grouped", split_seed=0)


def synthetic_data(image_size: int = 16) -> PreparedData:
    return prepare_data(SYNTHETIC, image_size)


def cpu_config(**overrides) -> TrainConfig:
    base = dict(backbone="small-cnn", image_size=16, epochs=2, batch_size=16, eval_batch_size=64,
                lr=0.05, device="cpu", seed=0)
    return TrainConfig(**{**base, **overrides})


def float64_logits(seed: int = 0, b: int = 6, c: int = 4, absent: int | None = None) -> tuple:
    """Seeded float64 logits B×C (requiring grad) and labels; ``absent``: a class no label has."""
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(b, c, generator=g, dtype=torch.float64) * 2).requires_grad_()
    y = torch.randint(0, c, (b,), generator=g)
    if absent is not None:
        y[y == absent] = (absent + 1) % c
    return z, y
