"""Generalized re-weighting (GRW) of DisAlign (Zhang, Li, Yan, He, Sun: "Distribution Alignment: A
Unified Framework for Long-tail Visual Recognition", CVPR 2021), as FlexSampling's repository codes it.

PyJulie/FlexSampling ``flexsampling/losses/grw.py`` ``GRWLoss(cls_num_list, exp_scale=1.2)`` (v0.2,
fc610df) and ``trciks-of-long-tailed-learning/GRWLoss.py`` ``GRWCrossEntropyLoss(num_samples_list,
num_classes, exp_scale=1.0)`` (2023, 3f49d4a)::

    r_c = n_c / max_k n_k   (v0.2, reference="max")   or   n_c / Σ_k n_k   (2023, reference="sum")
    w_c = 1 / r_c^ρ,   w ← w / Σ_k w_k · C          (numpy float64, stored as float32)
    loss = F.cross_entropy(z, y, weight=w) = Σ_i w_{y_i} CE_i / Σ_i w_{y_i}

The two references give the same weights up to rounding (the scale cancels in the normalisation).
ρ = ``exp_scale`` = 1.2, the v0.2 default and the value of FlexSampling's ``run_baselines.py`` (the
2023 default is 1.0); n_c are the training-split counts in class-index order.

Not in the repository, hence not here: DisAlign's second stage, the adaptive calibration function
(a learned per-class logit scale and offset mixed in by a learned confidence, trained with GRW on
a frozen backbone). Only its generalized re-weighting is; ``grw`` is that loss, trained end to end.

Where ltbench departs: the 2023 forward's ``self.weight.to(input.device)`` is a no-op (not
assigned); here the weights are a buffer that moves with the method. Tricks: ``label_smoothing`` ε
(``F.cross_entropy(weight=w, label_smoothing=ε)``; in neither code), ``mixup_alpha`` and ``sampler``
(``ltbench.method.LossMethod``).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ltbench.losses import check_label_smoothing
from ltbench.method import LossMethod, TrainInfo
from ltbench.recipes import Recipe
from ltbench.registry import register_method

REFERENCES = ("max", "sum")


def grw_weights(counts: Sequence[int], exp_scale: float = 1.2, reference: str = "max") -> Tensor:
    """``w_c = 1 / (n_c / ref)^ρ`` rescaled to sum to C; ``ref`` = max n (v0.2) or Σ n (2023).

    numpy float64 as the official codes, returned as float32 (C,).
    """
    counts = np.array(counts, dtype=np.float64)
    if reference == "max":  # v0.2: ratios = counts / counts.max(); 1.0 / np.power(ratios, exp_scale)
        weights = 1.0 / np.power(counts / counts.max(), exp_scale)
    elif reference == "sum":  # 2023: ratio_list = num_shots / np.sum(num_shots); 1 / (ratio_list ** exp_scale)
        weights = 1 / ((counts / np.sum(counts)) ** exp_scale)
    else:
        raise ValueError(f"grw: reference must be 'max' (v0.2) or 'sum' (2023), got {reference!r}")
    weights = weights / weights.sum() * len(counts)
    return torch.tensor(weights, dtype=torch.float32)


def grw_loss(logits: Tensor, labels: Tensor, weights: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """``F.cross_entropy(z, y, weight=w)``: ``Σ_i w_{y_i} CE_i / Σ_i w_{y_i}`` (with ε > 0 PyTorch's
    smoothed CE, ``(1 − ε)·w_y·CE_i + (ε/C)·Σ_c w_c·(−log p_ic)``, over the same denominator)."""
    return F.cross_entropy(logits, labels, weight=weights.to(logits.device, logits.dtype),
                           label_smoothing=label_smoothing)


@register_method("grw")
class GRW(LossMethod):
    """Generalized re-weighting cross-entropy on a backbone + linear head (module docstring)."""

    # Where this loss enters the suite: FlexSampling's ISIC 2019 baseline script, row "GRW" (exp_scale
    # 1.2, the v0.2 GRWLoss): SGD lr 0.01, momentum 0.9, wd 1e-4, batch 32, 50 epochs, cosine.
    recipes = {"paper": Recipe(
        source="PyJulie/FlexSampling examples/run_baselines.py @ c74aa95, row GRW "
               "(loss: DisAlign's re-weighting, Zhang et al., CVPR 2021)",
        train={"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4, "batch_size": 32,
               "epochs": 50, "lr_schedule": "cosine"},
        params={"exp_scale": 1.2, "reference": "max"},
        note="ISIC 2019 8-class r = 100 split, timm ResNet-50 (ImageNet) at 224 px; the script's cosine is stepped "
             "per batch (here per epoch); it selects on validation balanced accuracy")}

    def __init__(self, exp_scale: float = 1.2, reference: str = "max", label_smoothing: float = 0.0,
                 sampler: str = "instance", mixup_alpha: float = 0.0) -> None:
        super().__init__(sampler=sampler, mixup_alpha=mixup_alpha)
        if reference not in REFERENCES:
            raise ValueError(f"grw: reference must be 'max' (v0.2) or 'sum' (2023), got {reference!r}")
        if not exp_scale >= 0:
            raise ValueError(f"grw: exp_scale must be >= 0, got {exp_scale}")
        check_label_smoothing("grw", label_smoothing)
        self.exp_scale = exp_scale
        self.reference = reference
        self.label_smoothing = label_smoothing

    def setup(self, info: TrainInfo) -> None:
        super().setup(info)  # mixup's generator (nothing at mixup_alpha = 0)
        weights = grw_weights(info.class_counts, self.exp_scale, self.reference)
        self.register_buffer("class_weights", weights.to(info.device))

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return grw_loss(logits, labels, self.class_weights, self.label_smoothing)
