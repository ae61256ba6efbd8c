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


def torchvision_resizes_uint8_natively() -> bool:
    """Whether torchvision resizes a uint8 image with torch's uint8 kernel, as ltbench's CPU presets do:
    on AVX2/AVX-512 x86 and on ARM. On other x86 CPUs (and under ATEN_CPU_CAPABILITY=default) it
    resizes in float32 and rounds back: up to one uint8 level apart (its _do_native_uint8_resize_on_cpu)."""
    import platform

    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") or platform.machine() in ("aarch64", "arm64")


def float64_logits(seed: int = 0, b: int = 6, c: int = 4, absent: int | None = None) -> tuple:
    """Seeded float64 logits B×C (requiring grad) and labels; ``absent``: a class no label has."""
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(b, c, generator=g, dtype=torch.float64) * 2).requires_grad_()
    y = torch.randint(0, c, (b,), generator=g)
    if absent is not None:
        y[y == absent] = (absent + 1) % c
    return z, y


def tiny_clip() -> str:
    """The backbone name of ltbench's random-init tiny CLIP (``ltbench.models.clip.TINY_CLIP``; no download)."""
    from ltbench.models.clip import TINY_CLIP_ARCH

    return f"open_clip:{TINY_CLIP_ARCH}"
