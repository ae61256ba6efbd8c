"""Small builders shared by tests: a prepared synthetic dataset and a CPU training config."""
from __future__ import annotations

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
