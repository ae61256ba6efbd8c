"""Per-sample random parameters, drawn from the stream's generator on its device, then moved.

Every preset draws through these helpers, in a fixed order, so a generator state reproduces a batch.
A bool mask of drawn decisions lives on the host (a CPU generator), so selecting the chosen samples
costs no device synchronisation (:func:`_host_indices`).
"""
from __future__ import annotations

import torch
from torch import Tensor


def _uniform(n: int, low: float, high: float, generator: torch.Generator | None) -> Tensor:
    """``n`` float64 draws, uniform in [low, high]."""
    device = generator.device if generator is not None else None
    u = torch.rand(n, dtype=torch.float64, generator=generator, device=device)
    return low + (high - low) * u


def _coin(n: int, p: float, generator: torch.Generator | None) -> Tensor:
    """``n`` booleans, each True with probability ``p``."""
    return _uniform(n, 0.0, 1.0, generator) < p


def _as_sides(value: int | Tensor, n: int, device: torch.device | None = None) -> Tensor:
    """An image side (one int for all, or one per sample) as float64 [n] on ``device`` (None: CPU)."""
    t = torch.as_tensor(value, dtype=torch.float64, device=device)
    return t.expand(n) if t.ndim == 0 else t.to(device=device, dtype=torch.float64)


def _host_indices(mask: Tensor, device: torch.device) -> Tensor | None:
    """Indices of the set entries of a bool [N] mask, on ``device``; None if there are none.

    The mask comes from the (CPU) generator, so this costs no device synchronisation, and
    touching only the chosen samples beats a full-batch ``torch.where``.
    """
    idx = mask.cpu().nonzero().flatten()
    return idx.to(device) if idx.numel() else None
