"""Public loss building blocks shared by methods (the trainer never calls them itself)."""
from __future__ import annotations

import math

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
