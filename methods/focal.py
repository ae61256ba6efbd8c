"""Focal loss, softmax form (Lin et al., ICCV 2017), as kaidic/LDAM-DRW codes it for long tails.

Per sample ``ce = CE(z, y; w)``, ``p = exp(-ce)``, loss = plain mean over the B samples of
``(1 - p)^γ · ce``. With class weights the weight sits inside ``ce`` (so ``p`` is then not a
probability) and the mean divides by B, not by Σ w_y as ``F.cross_entropy(weight=)`` would.
The modulating factor is not detached. γ = 2 as in Lin et al. and MWNL's configs
(LDAM-DRW's scripts use γ = 1; so does FlexSampling's ``run_baselines.py``: the row ``focal_g1``).

Tricks (issue 15; off by default, the loss above unchanged): ``mixup_alpha`` and ``sampler``
(``ltbench.method.LossMethod``), and ``label_smoothing`` ε, which is not in any official focal code:
the smoothed CE of PyTorch, ``ce = (1 − ε)·w_y·(−log p_y) + (ε/C)·Σ_c w_c·(−log p_c)``, takes the
place of ``ce`` in the formula above, modulator included (``p = exp(−ce)``).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ltbench import LossMethod, TrainInfo, register_method
from ltbench.losses import check_label_smoothing
from ltbench.methods.ce import LDAM_DRW_CIFAR_TRAIN
from ltbench.recipes import Recipe


def focal_loss(logits: Tensor, labels: Tensor, gamma: float, weight: Tensor | None = None,
               label_smoothing: float = 0.0) -> Tensor:
    """``mean_i (1 − p_i)^γ · ce_i``, ``ce_i = CE(z_i, y_i; w, ε)``, ``p_i = exp(−ce_i)`` (plain mean over B)."""
    ce = F.cross_entropy(logits, labels, weight=weight, reduction="none", label_smoothing=label_smoothing)
    p = torch.exp(-ce)
    return ((1 - p) ** gamma * ce).mean()


@register_method("focal")
class Focal(LossMethod):
    """Softmax focal loss; ``class_weights`` (optional, one per class) enter inside the CE term."""

    # The focal baseline of kaidic/LDAM-DRW's CIFAR script (FocalLoss(gamma=1)), with the schedule of
    # its CE run (methods/ce.py: a 4-epoch warm-up from 0.2 and γ = 0.01 at 160/180 give its rates).
    recipes = {"paper": Recipe(
        source="kaidic/LDAM-DRW cifar_train.py @ 2536330, --loss_type Focal --train_rule None "
               "(Cao et al., NeurIPS 2019)",
        train=LDAM_DRW_CIFAR_TRAIN,
        params={"gamma": 1.0},
        note="γ = 1 as that script (Lin et al. and this suite's default: 2); CIFAR-10/100-LT: ResNet-32 at 32 px, "
             "random crop + flip; backbone, size and views stay the benchmark's")}

    def __init__(self, gamma: float = 2.0, class_weights: Sequence[float] | None = None,
                 label_smoothing: float = 0.0, sampler: str = "instance", mixup_alpha: float = 0.0) -> None:
        super().__init__(sampler=sampler, mixup_alpha=mixup_alpha)
        check_label_smoothing("focal", label_smoothing)
        if not (isinstance(gamma, (int, float)) and math.isfinite(gamma) and gamma >= 0):
            # γ < 0 turns the modulator (1 − p)^γ into a reward for easy samples (and +inf as p → 1)
            raise ValueError(f"focal: gamma must be a finite number of at least 0, got {gamma!r}")
        self.label_smoothing = label_smoothing
        self.gamma = gamma
        self.class_weights = class_weights
        weight = torch.as_tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
        self.register_buffer("weight", weight)

    def setup(self, info: TrainInfo) -> None:
        super().setup(info)  # mixup's generator (nothing at mixup_alpha = 0)
        if self.weight is not None and self.weight.numel() != info.num_classes:
            raise ValueError(f"class_weights has {self.weight.numel()} values for "
                             f"{info.num_classes} classes")

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        return focal_loss(logits, labels, self.gamma, self.weight, self.label_smoothing)
