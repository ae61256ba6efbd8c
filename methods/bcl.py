"""BCL: balanced contrastive learning (Zhu, Wang, Chen, Chen, Jiang, "Balanced Contrastive Learning
for Long-Tailed Visual Recognition", CVPR 2022; code FlamieZhu/Balanced-Contrastive-Learning).

Loss, as ``main.py`` / ``loss/contrastive.py`` / ``loss/logitadjust.py`` compute it::

    L = α · LA-CE(s·cos(f₀, W), y) + β · BalSCL([z₁; z₂], centres, y)

* **Network** (``models/resnext.py``, ``BCLModel``): backbone → cosine classifier (``NormedLinear``,
  s = 30 inside the model, so ``predict`` returns the 30·cos logits the loss was trained on, with no
  adjustment at test time), projection head → L2-normalised embeddings, and ``head_fc`` mapping the
  classifier's weight columns to the class centres ``normalize(head_fc(W.T))`` — learned with the
  rest (not EMA, not detached).
* **Views**: one classifier view (``randaugment``) and two contrastive views (``contrastive``),
  passed through the backbone as ONE 3B batch (``torch.cat([inputs[0], inputs[1], inputs[2]])``),
  so BatchNorm (backbone and head) sees all three; logits of view 0, embeddings of views 1–2.
* **LA-CE** (:func:`logit_adjusted_cross_entropy`): ``CE(z + τ·log(n_j/Σn), y)``, τ = 1, mean over
  the batch, training-split counts, no epsilon (the official ``LogitAdjust``).
* **BalSCL** (:func:`balanced_supcon_loss`): see its docstring (class-averaged denominator over the
  2B views and the C centres; only views are anchors; no T/T_base factor).

Defaults: α = 1, β = 0.35, T = 0.07 — the released ``main.py`` defaults (``--alpha 1.0 --beta 0.35
--temp 0.07``) for ImageNet-LT / iNaturalist, the 224-px ResNet-50 pipeline that the ISIC
protocol matches. The paper's CIFAR values (α = 2, β = 0.6, T = 0.1) have no released script; pass
them as parameters.

Where ltbench deviates from the official code, and why:

* **Heads.** ``head`` and ``head_fc`` are the shared protocol's projection head (Linear(d, 128) →
  BN → ReLU → Linear(128, 128), L2-normalised; ``dim``), not the official Linear(d, d) → BN →
  ReLU → Linear(d, 1024) — every contrastive method here uses the same 128-d head.
* **Augmentation.** The classifier view is the ``randaugment`` preset (``ltbench/data/randaugment.py``):
  the shared protocol's ``standard`` view followed by BCL's rand-n2-m10-mstd0.5 RandAugment with
  its 15 ops, per sample; the official view starts with RandomResizedCrop(0.08–1) and ColorJitter
  (0.4, 0.4, 0.4, 0) with p 1. The contrastive views are the ``contrastive`` preset (ECL's
  contrastive view) instead of BCL's ``augmentation_sim`` (RandomResizedCrop 0.08–1, flip, jitter
  p 0.8, grayscale p 0.2) — the shared protocol's views for every contrastive method.
* **Schedule.** The shared protocol (SGD, lr 0.002 with per-epoch cosine, batch 64, 100 epochs,
  best-validation checkpoint) instead of lr 0.1, wd 5e-4, batch 256, 90 epochs and the official
  cosine shifted by one epoch.
* **Numerics.** The denominator is a log-sum-exp of ``logit − log w`` (official: subtract the
  detached row maximum, then divide ``exp`` by ``w`` — the same value and gradient); both losses
  run in float32 with autocast disabled.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltbench.method import Batch, Method, StepResult, TrainInfo
from ltbench.models import Backbone, NormedLinear, ProjectionHead
from ltbench.recipes import Recipe
from ltbench.registry import register_method


# --- losses ------------------------------------------------------------------------------------
def class_log_prior(class_counts: Sequence[int] | Tensor) -> Tensor:
    """``log(n_j / Σ_k n_k)`` (float32 [C], computed in float64): LA-CE's offsets at τ = 1."""
    counts = torch.as_tensor(class_counts, dtype=torch.float64).flatten()
    if counts.numel() == 0 or (counts <= 0).any():
        raise ValueError(f"class_log_prior: every class needs a positive count, got {counts.tolist()}")
    return torch.log(counts / counts.sum()).to(torch.float32)


def logit_adjusted_cross_entropy(logits: Tensor, labels: Tensor, log_prior: Tensor, tau: float = 1.0) -> Tensor:
    """BCL's ``LogitAdjust``: ``mean_i CE(z_i + τ·log π, y_i)`` with ``log_prior`` = log π ([C]).

    ``logits`` [B, C] are the scaled cosine logits (30·cos); π are the training-split priors.
    """
    offset = (tau * log_prior).to(device=logits.device, dtype=logits.dtype)
    return F.cross_entropy(logits + offset, labels)


def bcl_class_weights(labels: Tensor, num_classes: int) -> Tensor:
    """The class-averaging divisors ``w[i, k]`` of BalSCL, [2B, 2B + C] (float).

    Rows: the 2B view anchors (view-major: view 1 of every sample, then view 2). Columns: the 2B
    views, then the C centres. With ``n_j`` = (class-j views among the 2B) + 1 (its centre),
    ``w[i, k] = n_{y_k} − [y_k = y_i]`` for ``k ≠ i`` — the anchor does not count in its own class.
    (The anchor's own column is ``n_{y_i}``; its term is excluded from the sum anyway.)
    """
    labels = labels.reshape(-1)
    row_labels = torch.cat([labels, labels, torch.arange(num_classes, device=labels.device)])
    counts = torch.bincount(row_labels, minlength=num_classes)
    anchors = row_labels[: 2 * labels.numel()]
    same = anchors[:, None] == row_labels[None, :]
    self_pair = torch.zeros_like(same)
    self_pair[:, : anchors.numel()] = torch.eye(anchors.numel(), dtype=torch.bool, device=labels.device)
    return (counts[row_labels][None, :] - (same & ~self_pair).long()).to(torch.float32)


def balanced_supcon_loss(features: Tensor, labels: Tensor, centers: Tensor, temperature: float = 0.07) -> Tensor:
    """BCL's balanced supervised contrastive loss (``BalSCL``), float32 with autocast off.

    ``features`` [B, 2, D]: the two contrastive views' embeddings, L2-normalised (not normalised
    here); ``labels`` [B]; ``centers`` [C, D]: the class centres, L2-normalised, row c = class c.
    Contrast set: the 2B views (view-major) and the C centres; anchors: the 2B views only. For
    anchor i, with ``w[i, k]`` from :func:`bcl_class_weights` and ``s`` the rows::

        E_i = Σ_{k ≠ i} exp(s_i·s_k / T) / w[i, k]
        ℓ_i = −mean_{k ≠ i, y_k = y_i} (s_i·s_k / T − log E_i)     (positives include i's centre)
        loss = mean over the 2B anchors of ℓ_i

    Every anchor has a positive (its class centre), so no anchor is dropped; no T/T_base factor.
    """
    if features.ndim != 3 or features.shape[1] != 2:
        raise ValueError(f"balanced_supcon_loss: features must be [B, 2, D], got {tuple(features.shape)}")
    if temperature <= 0:
        raise ValueError(f"balanced_supcon_loss: temperature must be positive, got {temperature}")
    num_classes = centers.shape[0]
    labels = labels.reshape(-1).to(features.device)
    if labels.numel() != features.shape[0]:
        raise ValueError(f"balanced_supcon_loss: {labels.numel()} labels for {features.shape[0]} samples")
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"balanced_supcon_loss: labels must lie in [0, {num_classes})")
    with torch.autocast(device_type=features.device.type, enabled=False):
        views = features.float().unbind(dim=1)
        rows = torch.cat([*views, centers.float().to(features.device)], dim=0)
        n_anchor = 2 * labels.numel()
        row_labels = torch.cat([labels, labels, torch.arange(num_classes, device=labels.device)])
        logits = rows[:n_anchor] @ rows.T / temperature
        self_pair = torch.zeros_like(logits, dtype=torch.bool)
        self_pair[:, :n_anchor] = torch.eye(n_anchor, dtype=torch.bool, device=logits.device)
        positive = (row_labels[:n_anchor, None] == row_labels[None, :]) & ~self_pair
        log_w = torch.log(bcl_class_weights(labels, num_classes).to(logits.device))
        log_denominator = torch.logsumexp((logits - log_w).masked_fill(self_pair, -math.inf), dim=1, keepdim=True)
        log_prob = logits - log_denominator
        mean_log_prob_pos = torch.where(positive, log_prob, 0.0).sum(dim=1) / positive.sum(dim=1)
        return -mean_log_prob_pos.mean()


# --- network -----------------------------------------------------------------------------------
class BCLNetwork(nn.Module):
    """Backbone → cosine ``classifier`` (× ``scale``), projection ``head``, centre head ``head_fc``.

    ``model(images)`` returns ``scale · cos`` logits. ``model(v0, v1, v2)`` runs the three views as
    one 3B batch and returns ``(logits of v0 [B, C], embeddings of v1, v2 [B, 2, dim], centres
    [C, dim])``.
    """

    def __init__(self, backbone: Backbone, num_classes: int, dim: int = 128, scale: float = 30.0) -> None:
        super().__init__()
        self.backbone = backbone
        self.classifier = NormedLinear(backbone.out_dim, num_classes)
        self.head = ProjectionHead(backbone.out_dim, dim)
        self.head_fc = ProjectionHead(backbone.out_dim, dim)
        self.scale = scale

    def centers(self) -> Tensor:
        # NormedLinear.weight is [d, C]: one column per class, as the official ``fc.weight.T`` rows.
        return self.head_fc(self.classifier.weight.T)

    def forward(self, images: Tensor, *contrastive_views: Tensor):
        if not contrastive_views:
            return self.scale * self.classifier(self.backbone(images))
        batch = images.shape[0]
        features = self.backbone(torch.cat([images, *contrastive_views], dim=0))
        embeddings = self.head(features)  # all 3B rows, as the official head (BatchNorm over 3B)
        logits = self.scale * self.classifier(features[:batch])
        contrastive = embeddings[batch:].view(len(contrastive_views), batch, -1).transpose(0, 1)
        return logits, contrastive, self.centers()


# --- method ------------------------------------------------------------------------------------
@register_method("bcl")
class BCL(Method):
    """BCL (Zhu et al., CVPR 2022; FlamieZhu/Balanced-Contrastive-Learning). See the module docstring."""

    views = ("randaugment", "contrastive", "contrastive")
    samplers = ("instance",)

    # The README's ImageNet-LT command (ResNet-50 at 224 px, the pipeline the ISIC protocol matches):
    # SGD lr 0.1, wd 5e-4, cosine, 90 epochs; main.py defaults: batch 256, momentum 0.9, no warm-up,
    # α 1, β 0.35, T 0.07, --feat_dim 1024 (the contrastive embedding: ``dim``).
    recipes = {"paper": Recipe(
        source="FlamieZhu/Balanced-Contrastive-Learning README (ImageNet-LT) + main.py @ f72d070 "
               "(Zhu et al., CVPR 2022)",
        train={"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 256,
               "epochs": 90, "lr_schedule": "cosine"},
        params={"alpha": 1.0, "beta": 0.35, "temperature": 0.07, "dim": 1024},
        note="the code's cosine runs one epoch ahead (epoch e at cos(π(e+1)/(E+1))); its head is Linear(d,d)→BN→"
             "ReLU→Linear(d,1024), here Linear(d,1024)→BN→ReLU→Linear(1024,1024); sim-sim views as this suite's "
             "contrastive preset; 4 GPUs; the paper's CIFAR values (α 2, β 0.6, T 0.1) have no released script")}

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 0.35,
        temperature: float = 0.07,
        tau: float = 1.0,
        scale: float = 30.0,
        dim: int = 128,
    ) -> None:
        super().__init__()
        if temperature <= 0 or scale <= 0 or dim < 1:
            raise ValueError("BCL: temperature, scale and dim must be positive")
        self.alpha = alpha
        self.beta = beta
        self.temperature = temperature
        self.tau = tau
        self.scale = scale
        self.dim = dim

    def setup(self, info: TrainInfo) -> None:
        self.register_buffer("log_prior", class_log_prior(info.class_counts).to(info.device))

    def build_model(self, backbone: Backbone, info: TrainInfo) -> nn.Module:
        return BCLNetwork(backbone, info.num_classes, self.dim, self.scale)

    def representations(self, model: nn.Module, images: Tensor) -> dict[str, Tensor]:
        """``feature`` (backbone) and ``embedding`` (the L2-normalised projection head), for retrieval."""
        features = model.backbone(images)
        return {"feature": features, "embedding": model.head(features)}

    def training_step(self, model: nn.Module, batch: Batch) -> StepResult:
        logits, embeddings, centers = model(*batch.views)
        labels = batch.labels
        with torch.autocast(device_type=logits.device.type, enabled=False):
            ce = logit_adjusted_cross_entropy(logits.float(), labels, self.log_prior, self.tau)
            scl = balanced_supcon_loss(embeddings.float(), labels, centers.float(), self.temperature)
        loss = self.alpha * ce + self.beta * scl
        return loss, {"la_ce": ce.detach(), "bal_scl": scl.detach()}
