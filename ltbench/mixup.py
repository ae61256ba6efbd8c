"""Mixup (Zhang, Cisse, Dauphin, Lopez-Paz, ICLR 2018) as FlexSampling's repository applies it.

PyJulie/FlexSampling ``flexsampling/augmentations/mixup.py`` (v0.2, fc610df; the 2023
``trciks-of-long-tailed-learning/mixup.py`` is the same code, missing ``import numpy``)::

    lam = np.random.beta(alpha, alpha) if alpha > 0 else 1.0
    index = torch.randperm(B)
    mixed_x = lam * x + (1 - lam) * x[index]
    loss = lam * criterion(model(mixed_x), y) + (1 - lam) * criterion(model(mixed_x), y[index])

once per batch, on the transformed (normalised) training images, before the forward pass; any
criterion. ltbench mixes the first view of the batch (``Batch.views[0]``, the one a
``LossMethod`` feeds the model) and evaluates the criterion on one forward pass.

Where ltbench departs, and why:

* **Random source.** The official λ comes from numpy's global RNG and the permutation from torch's;
  here both come from one ``torch.Generator`` of the method, seeded from the run's seed
  (:func:`mixup_seed`; never the seed of a sampler stream, so drawing λ moves no stream). λ is drawn
  by inversion, ``λ = I⁻¹_u(α, α)`` (``scipy.special.betaincinv``) of one uniform u from that
  generator: exactly Beta(α, α)-distributed, but not numpy's draw for the same seed. The
  generator's state is a buffer of the method, so checkpoints and resumes carry it.
* **α = 0 draws nothing.** The official code still draws a permutation and computes
  ``1·L(y) + 0·L(y[perm])``; here α = 0 is the plain loss, bit-identical to a method without mixup.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import Tensor

# Tag mixed into the run's seed so the mixup generator never shares a seed with a sampler stream
# (stream j of stage k uses seed*1000 + 100k + j).
_MIXUP_TAG = 0x6D69787570  # "mixup"


def mixup_seed(seed: int) -> int:
    """The mixup generator's seed for a run seed: a 64-bit hash of (seed, tag) (numpy SeedSequence)."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, _MIXUP_TAG]).generate_state(1, np.uint64)[0])


def mixup_generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with :func:`mixup_seed` of the run's seed."""
    return torch.Generator().manual_seed(mixup_seed(seed))


def draw_mixup(alpha: float, batch_size: int, generator: torch.Generator) -> tuple[float, Tensor]:
    """``(λ, perm)``: λ ~ Beta(α, α) by inversion of one float64 uniform, then ``randperm(B)``.

    Both from ``generator``, in this order (the official order: λ, then the permutation). α must be > 0.
    """
    if not alpha > 0:
        raise ValueError(f"draw_mixup: alpha must be > 0, got {alpha}")
    from scipy.special import betaincinv  # only mixup runs need scipy

    u = torch.rand((), generator=generator, dtype=torch.float64).item()
    lam = float(betaincinv(alpha, alpha, u))
    perm = torch.randperm(batch_size, generator=generator)
    return lam, perm


def mix_inputs(x: Tensor, lam: float, perm: Tensor) -> Tensor:
    """``λ·x + (1 − λ)·x[perm]`` (the official expression, in the official order of operations)."""
    return lam * x + (1.0 - lam) * x[perm.to(x.device)]


def mixup_criterion(criterion: Callable[[Tensor, Tensor], Tensor], logits: Tensor, y_a: Tensor, y_b: Tensor,
                    lam: float) -> Tensor:
    """``λ·criterion(logits, y_a) + (1 − λ)·criterion(logits, y_b)`` (the official mixup loss)."""
    return lam * criterion(logits, y_a) + (1.0 - lam) * criterion(logits, y_b)
