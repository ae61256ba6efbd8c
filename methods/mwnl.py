"""MWNL: the multi-weighted new loss (one-vs-all sigmoid, clipped, focal, class-weighted).

Yao, Shen, Xu, Liu, Zhang, Xing, Shao, Kaffenberger, Xu: "Single Model Deep Learning on
Imbalanced Small Datasets for Skin Lesion Classification", IEEE Transactions on Medical Imaging,
2021 (arXiv:2102.01284). Official code: yaopengUSTC/mbit-skin-cancer (``lib/loss/loss.py``
``MWNLoss`` and ``BaseLoss.reset_epoch``; ``configs/isic_2019.yaml`` and ``isic_2018.yaml``).

What is computed. Defaults are those of the ISIC configs: ``MWNL.BETA 0.1``, ``MWNL.TYPE "fix"``,
``MWNL.SIGMOID "enlarge"`` (``lib/config/default.py`` has ``"normal"``), ``MWNL.GAMMA 2.0``
(default.py), ``SCHEDULER "cls"``, ``WEIGHT_POWER 1.2`` (default.py: 1.1),
``CLS_EPOCH_MIN 20`` / ``CLS_EPOCH_MAX 60`` of ``MAX_EPOCH 70``.

* ``l_ij = BCEWithLogits(z_ij, t_ij)``, ``t = onehot(y)``, for every one of the B×C elements.
* Clipping at ``th = −ln β`` (β = 0.1 → 2.3026; β = 0: none). ``clip="fix"`` (official default):
  ``l ← l if l <= th else th`` — a constant, so the BCE term of a clipped element has no
  gradient. The other official types: ``"zero"`` (``0``) and ``"decrease"`` (``e^{−l} · th / β``).
* Focal factor ``(1 − p_t)^γ``, ``p_t = σ(z)`` if t = 1 else ``1 − σ(z)``, from the raw logits
  (official: ``exp(−γ t z − γ log(1 + e^{−z}))``), not detached — a clipped element still passes
  ``th · ∂(1 − p_t)^γ/∂z``.
* Every element of row i is multiplied by ``w_{y_i}``, ``w_c = (1/n_c)^p`` over the training-split
  counts, rescaled to sum to C (float64, then float32 as official). ``p`` follows the cumulative
  schedule on 1-indexed epochs (``ltbench.schedules.mwnl_power``): 0 for ``e <= E_min``,
  ``1.2 · ((e − E_min)/(E_max − E_min))²`` in between, 1.2 from ``E_max`` on.
* Reduction ``"enlarge"`` (ISIC): ``30 · mean over the B×C elements``; ``"normal"``:
  ``Σ_ij w_{y_i} l_ij / Σ_ij w_{y_i}`` = ``Σ_ij w_{y_i} l_ij / (C · Σ_i w_{y_i})``.

Where ltbench deviates, and why:

* **Budgets other than 70 epochs.** E_min / E_max are given for ``reference_epochs = 70`` and
  scaled to the run: ``round(E_min · E / 70)``, ``round(E_max · E / 70)`` with Python's ``round``
  (half to even; with 20 and 60 no tie can occur); at 70 epochs exactly 20 / 60.
  ``reference_epochs=None`` uses them as absolute 1-indexed epochs, as the official code does.
* **Numerics of the focal factor.** Computed as ``exp(−γ · softplus(±z))`` (``+z`` for t = 1, ``−z``
  for t = 0), equal to the official expression, which in float32 overflows for ``z < −88``
  (``log(1 + e^{−z}) = inf``): a wrong factor 0 for a target element and NaN gradients there.
* **Optimiser and protocol.** The official ISIC training uses Adam (lr 2e-4 for ISIC 2019, 5e-4
  for 2018) with multistep decay, RegNetY-DropBlock backbones, RandAugment-style augmentation and
  multi-crop testing; here the shared protocol (SGD 0.002 with cosine decay, the run's backbone and
  augmentation, single-view test) is used, so that methods differ only in their method.
* ``EXTRA_WEIGHT`` (a per-class multiplier, all ones in every official config) is not exposed.

Tricks (issue 15; off by default): ``sampler`` and ``mixup_alpha`` (``ltbench.method.LossMethod``). No
``label_smoothing``: the loss is one-vs-all with per-element hard targets and a clip threshold
derived for them; the official code has none.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ltbench.method import LossMethod, TrainInfo
from ltbench.recipes import Recipe
from ltbench.registry import register_method
from ltbench.schedules import mwnl_power, mwnl_stage_epochs

CLIP_TYPES = ("fix", "zero", "decrease")
REDUCTIONS = ("enlarge", "normal")
ENLARGE = 30.0  # official: torch.mean(weighted_loss) * 30


def mwnl_class_weights(class_counts: Sequence[int], power: float) -> Tensor:
    """``w_c = (1/n_c)^power`` rescaled so the C weights sum to C (float64; stored as float32)."""
    inverse = 1.0 / torch.tensor([float(n) for n in class_counts], dtype=torch.float64)
    weights = inverse.pow(power)
    return weights / weights.sum() * len(inverse)


def mwnl_loss(
    logits: Tensor,
    labels: Tensor,
    class_weights: Tensor,
    gamma: float = 2.0,
    beta: float = 0.1,
    reduction: str = "enlarge",
    clip: str = "fix",
) -> Tensor:
    """MWNL on B×C one-vs-all logits.

    ``l_ij = BCEWithLogits(z_ij, onehot(y)_ij)``; if β > 0, ``th = −ln β`` and ``l_ij ← th`` where
    ``l_ij > th`` (``clip="fix"``; ``"zero"``: 0; ``"decrease"``: ``e^{−l_ij} th/β``); then
    ``L_ij = w_{y_i} · (1 − p_t,ij)^γ · l_ij`` and ``30 · mean_ij L_ij`` (``"enlarge"``) or
    ``Σ_ij L_ij / (C · Σ_i w_{y_i})`` (``"normal"``).
    """
    num_classes = logits.shape[1]
    target = F.one_hot(labels, num_classes).to(logits.dtype)
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    if beta > 0.0:
        th = -math.log(beta)
        if clip == "fix":
            loss = torch.where(loss <= th, loss, torch.full_like(loss, th))
        elif clip == "zero":
            loss = torch.where(loss <= th, loss, torch.zeros_like(loss))
        elif clip == "decrease":
            loss = torch.where(loss <= th, loss, torch.exp(-loss) * th / beta)
        else:
            raise ValueError(f"mwnl_loss: clip must be one of {CLIP_TYPES}, got {clip!r}")
    if gamma != 0.0:
        # (1 − p_t)^γ = σ(−z)^γ for t = 1, σ(z)^γ for t = 0, i.e. exp(−γ softplus(±z)).
        signed = torch.where(target.bool(), logits, -logits)
        loss = torch.exp(-gamma * F.softplus(signed)) * loss
    row_weight = class_weights.to(logits.dtype)[labels].unsqueeze(1).expand(-1, num_classes)
    weighted = row_weight * loss
    if reduction == "enlarge":
        return weighted.mean() * ENLARGE
    if reduction == "normal":
        return weighted.sum() / row_weight.sum()
    raise ValueError(f"mwnl_loss: reduction must be one of {REDUCTIONS}, got {reduction!r}")


@register_method("mwnl")
class MWNL(LossMethod):
    """Multi-weighted new loss on a backbone + linear head (see the module docstring)."""

    # The ISIC 2019 config of yaopengUSTC/mbit-skin-cancer. get_optimizer multiplies BASE_LR 2e-4 and
    # train.py the batch (32 per GPU) by len(GPUS) = 2; MultiStepLR, stepped at the start of each
    # 1-indexed epoch, decays from epochs 30/40/50/60, i.e. 0-indexed 29/39/49/59. The method's
    # defaults are already this config's (β 0.1, "fix", "enlarge", γ 2, power 1.2, epochs 20/60 of 70).
    recipes = {"paper": Recipe(
        source="yaopengUSTC/mbit-skin-cancer configs/isic_2019.yaml, lib/utils/utils.py, main/train.py @ a82a87b "
               "(Yao et al., IEEE TMI 2021)",
        train={"optimizer": "adam", "lr": 4e-4, "betas": (0.9, 0.999), "weight_decay": 1e-4, "batch_size": 64,
               "epochs": 70, "lr_schedule": "step", "lr_milestones": (29, 39, 49, 59), "lr_gamma": 0.1},
        note="left out: RegNetY-8.0GF with DropBlock, the 'v1_1' RandAugment-style views (p 0.7, magnitude 10, "
             "2 ops) after resizing the short side to 450, 16-crop test; the ISIC 2018 config has BASE_LR 5e-4 "
             "and batch 64 per GPU")}

    def __init__(
        self,
        gamma: float = 2.0,
        beta: float = 0.1,
        clip: str = "fix",
        reduction: str = "enlarge",
        weight_power: float = 1.2,
        E_min: int = 20,
        E_max: int = 60,
        reference_epochs: int | None = 70,
        sampler: str = "instance",
        mixup_alpha: float = 0.0,
    ) -> None:
        super().__init__(sampler=sampler, mixup_alpha=mixup_alpha)  # LossMethod's tricks (issue 15)
        if not 0.0 <= beta <= 0.4:  # the official range check
            raise ValueError(f"mwnl: beta must be in [0, 0.4], got {beta}")
        if gamma < 0:
            raise ValueError(f"mwnl: gamma must be >= 0, got {gamma}")
        if clip not in CLIP_TYPES:
            raise ValueError(f"mwnl: clip must be one of {', '.join(CLIP_TYPES)}, got {clip!r}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"mwnl: reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
        if not 0 <= E_min <= E_max:
            raise ValueError(f"mwnl: need 0 <= E_min <= E_max, got E_min={E_min}, E_max={E_max}")
        if reference_epochs is not None and reference_epochs <= 0:
            raise ValueError(f"mwnl: reference_epochs must be > 0 or None, got {reference_epochs}")
        self.gamma = gamma
        self.beta = beta
        self.clip = clip
        self.reduction = reduction
        self.weight_power = weight_power
        self.E_min = E_min
        self.E_max = E_max
        self.reference_epochs = reference_epochs
        self.stage_epochs = (E_min, E_max)
        self.class_counts: tuple[int, ...] = ()

    def setup(self, info: TrainInfo) -> None:
        super().setup(info)  # mixup's generator (nothing at mixup_alpha = 0)
        self.class_counts = tuple(int(n) for n in info.class_counts)
        self.stage_epochs = mwnl_stage_epochs(info.epochs, self.E_min, self.E_max, self.reference_epochs)
        # Weights of the current epoch; set in on_epoch_start (p = 0, all ones, until then).
        self.register_buffer("class_weights", torch.ones(info.num_classes, device=info.device))

    def power(self, epoch: int) -> float:
        """The weight power p for 0-indexed ``epoch`` (the official schedule counts from 1)."""
        return mwnl_power(epoch + 1, *self.stage_epochs, self.weight_power)

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        weights = mwnl_class_weights(self.class_counts, self.power(epoch))
        self.class_weights.copy_(weights)  # float64 -> the buffer's float32, as official

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        # training_step passes float32 logits; the loss itself runs outside autocast.
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return mwnl_loss(logits, labels, self.class_weights, self.gamma, self.beta,
                             self.reduction, self.clip)
