"""Public loss building blocks shared by methods (the trainer never calls them itself).

:func:`supcon_loss` (SupCon / NT-Xent) and mixup (:func:`mixup_generator`, :func:`draw_mixup`,
:func:`mix_inputs`, :func:`mixup_criterion`; every ``LossMethod`` through ``mixup_alpha``).
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from ltbench.errors import LtbenchError


def supcon_loss(
    features: Tensor,
    labels: Tensor | None = None,
    *,
    temperature: float = 0.1,
    base_temperature: float | None = None,
    contrast_mode: str = "all",
    extra_features: Tensor | None = None,
    extra_labels: Tensor | None = None,
) -> Tensor:
    """Supervised contrastive loss (Khosla et al., NeurIPS 2020), as HobbitLong/SupContrast's
    ``SupConLoss`` computes it (``losses.py``, current version).

    ``features``: ``[B, V, D]``, already L2-normalised (not normalised here). ``labels``: ``[B]``
    class ids, or None for SimCLR's NT-Xent (Chen et al., ICML 2020): the only positives of a view
    are the other views of the same image. ``extra_features`` ``[M, V, D]`` with ``extra_labels``
    ``[M]`` are appended to the batch as ordinary samples (TSC's targets; Li et al., CVPR 2022):
    they are anchors too and count in the mean. With ``labels=None`` extra rows are instances of
their own (no ``extra_labels``).

    With the N = B + M samples flattened view-major (row ``v·N + i`` is view v of sample i),
    anchors are all N·V rows (``contrast_mode="all"``) or only view 0's N rows (``"one"``); every
    anchor a contrasts against all N·V rows except itself::

        log p(a, k) = s_a·s_k / T − log Σ_{k' ≠ a} exp(s_a·s_k' / T)
        ℓ_a = −(T / T_base) · Σ_{k ∈ P(a)} log p(a, k) / max(|P(a)|, 1)
        loss = mean over anchors of ℓ_a

    with P(a) the rows other than a with a's label. An anchor with no positive (possible only with
    V = 1 and a class of one sample) adds 0 but still counts in the mean, as the current official
    code does (``mask_pos_pairs`` set to 1). ``base_temperature=None`` means T_base = T (no
    rescaling); the official default T_base = 0.07 scales the loss by T/0.07. Computed in float32
    with autocast disabled; the denominator is a log-sum-exp (official: subtract the row maximum,
    the same value).
    """
    if features.ndim != 3:
        raise LtbenchError(f"supcon_loss: features must be [B, V, D], got shape {tuple(features.shape)}")
    if contrast_mode not in ("all", "one"):
        raise LtbenchError(f"supcon_loss: contrast_mode must be 'all' or 'one', got {contrast_mode!r}")
    if temperature <= 0 or (base_temperature is not None and base_temperature <= 0):
        raise LtbenchError("supcon_loss: temperature and base_temperature must be positive")
    if extra_labels is not None and (extra_features is None or labels is None):
        raise LtbenchError("supcon_loss: extra_labels need extra_features and labels")
    if extra_features is not None and labels is not None and extra_labels is None:
        raise LtbenchError("supcon_loss: extra_features with labels need extra_labels")
    base_temperature = temperature if base_temperature is None else base_temperature
    with torch.autocast(device_type=features.device.type, enabled=False):
        feats = features.float()
        batch = feats.shape[0]
        if extra_features is not None:
            if extra_features.ndim != 3 or extra_features.shape[1:] != feats.shape[1:]:
                raise LtbenchError(f"supcon_loss: extra_features must be [M, {feats.shape[1]}, {feats.shape[2]}], "
                                   f"got shape {tuple(extra_features.shape)}")
            feats = torch.cat([feats, extra_features.to(feats.device, torch.float32)], dim=0)
        n, views, _ = feats.shape
        if labels is None:
            ids = torch.arange(n, device=feats.device)  # every sample its own class: NT-Xent
        else:
            ids = labels.reshape(-1).to(feats.device)
            if ids.numel() != batch:
                raise LtbenchError(f"supcon_loss: {ids.numel()} labels for {batch} samples")
            if extra_labels is not None:
                extra = extra_labels.reshape(-1).to(feats.device)
                if extra.numel() != n - batch:
                    raise LtbenchError(f"supcon_loss: {extra.numel()} extra_labels for {n - batch} extra rows")
                ids = torch.cat([ids, extra])
        contrast = feats.transpose(0, 1).reshape(n * views, -1)  # view-major rows
        row_ids = ids.repeat(views)
        anchors = contrast if contrast_mode == "all" else feats[:, 0]
        num_anchors = anchors.shape[0]
        logits = anchors @ contrast.T / temperature
        self_pair = torch.zeros_like(logits, dtype=torch.bool)
        self_pair[torch.arange(num_anchors), torch.arange(num_anchors)] = True  # anchor a is row a
        positive = (row_ids[:num_anchors, None] == row_ids[None, :]) & ~self_pair
        log_prob = logits - torch.logsumexp(logits.masked_fill(self_pair, -math.inf), dim=1, keepdim=True)
        num_positive = positive.sum(dim=1).clamp(min=1)
        mean_log_prob_pos = torch.where(positive, log_prob, 0.0).sum(dim=1) / num_positive
        return -(temperature / base_temperature) * mean_log_prob_pos.mean()


def check_label_smoothing(name: str, label_smoothing: float) -> None:
    """A loss method's ``label_smoothing`` must be a number in [0, 1) (PyTorch takes [0, 1]; 1 learns nothing)."""
    if not (isinstance(label_smoothing, (int, float)) and 0.0 <= label_smoothing < 1.0):
        raise ValueError(f"{name}: label_smoothing must be in [0, 1), got {label_smoothing!r}")


# ---------------------------------------------------------------------------------------- mixup
#
# Mixup (Zhang, Cisse, Dauphin, Lopez-Paz, ICLR 2018) as FlexSampling's repository applies it.
#
# PyJulie/FlexSampling ``flexsampling/augmentations/mixup.py`` (v0.2, fc610df; the 2023
# ``trciks-of-long-tailed-learning/mixup.py`` is the same code, missing ``import numpy``)::
#
#     lam = np.random.beta(alpha, alpha) if alpha > 0 else 1.0
#     index = torch.randperm(B)
#     mixed_x = lam * x + (1 - lam) * x[index]
#     loss = lam * criterion(model(mixed_x), y) + (1 - lam) * criterion(model(mixed_x), y[index])
#
# once per batch, on the transformed (normalised) training images, before the forward pass; any
# criterion. ltbench mixes the first view of the batch (``Batch.views[0]``, the one a
# ``LossMethod`` feeds the model) and evaluates the criterion on one forward pass.
#
# Where ltbench departs, and why:
#
# * **Random source.** The official λ comes from numpy's global RNG and the permutation from torch's;
#   here both come from one ``torch.Generator`` of the method, seeded from the run's seed
#   (:func:`mixup_seed`; never the seed of a sampler stream, so drawing λ moves no stream). λ is drawn
#   by inversion, ``λ = I⁻¹_u(α, α)`` (``scipy.special.betaincinv``) of one uniform u from that
#   generator: exactly Beta(α, α)-distributed, but not numpy's draw for the same seed. The
#   generator's state is a buffer of the method, so checkpoints and resumes carry it.
# * **α = 0 draws nothing.** The official code still draws a permutation and computes
#   ``1·L(y) + 0·L(y[perm])``; here α = 0 is the plain loss, bit-identical to a method without mixup.

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
