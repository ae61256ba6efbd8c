"""Class-balanced loss (Cui, Jia, Lin, Song, Belongie: "Class-Balanced Loss Based on Effective Number
of Samples", CVPR 2019), in the two forms of FlexSampling's repository (PyJulie/FlexSampling).

Weights (both forms; the official numpy float64 arithmetic, stored as float32)::

    w_c = (1 − β) / (1 − β^{n_c}),   w ← w / Σ_k w_k · C,   β = 0.9999

with n_c the training-split counts in class-index order. Each sample i carries ``w_{y_i}``.

``form="2023"`` (default): ``trciks-of-long-tailed-learning/CBLoss.py`` ``CB_loss`` (3f49d4a), the
vandit15/Class-balanced-loss-pytorch port of Cui's TensorFlow code; t = onehot(y), x the logits::

    focal:   Σ_{i,c} w_{y_i} · M_ic · BCEWithLogits(x_ic, t_ic) / Σ_{i,c} t_ic        (÷ B)
             M_ic = exp(−γ·t_ic·x_ic − γ·log(1 + exp(−x_ic)))  (= (1 − p_t)^γ, p_t = σ(x) or 1 − σ(x));
             M = 1 when γ = 0; nothing detached
    sigmoid: mean over B·C of w_{y_i} · BCEWithLogits(x_ic, t_ic)
    softmax: mean over B·C of w_{y_i} · BCE(softmax(x)_ic, t_ic)   (BCE on the softmax probabilities)

``form="v0.2"``: ``flexsampling/losses/cb_loss.py`` ``CBLoss`` (fc610df), softmax forms, plain
means over the B samples (not divided by Σ w_{y_i})::

    focal:   mean_i w_{y_i} · (1 − p_i)^γ · CE_i,  CE_i = −log softmax(x_i)_{y_i},  p_i = exp(−CE_i)
    sigmoid: mean_i w_{y_i} · Σ_c BCEWithLogits(x_ic, t_ic)
    softmax: mean_i w_{y_i} · CE_i

γ = 2.0, the default of both codes. FlexSampling's ``run_baselines.py`` and pipeline use γ = 1 with the
v0.2 form: the named variant ``cb_focal_g1: {method: cb_loss, form: "v0.2", gamma: 1}``; its
"CB_Softmax" row is ``{method: cb_loss, form: "v0.2", loss_type: softmax}``. Trap: "CB focal" is a
different loss in the two forms (a sigmoid one-vs-all focal in 2023, a softmax focal in v0.2).

Where ltbench departs, and why:

* **The 2023 ``sigmoid`` branch crashes** as shipped (``F.binary_cross_entropy_with_logits(...,
  weights=weights)``: no such keyword). It is computed as evidently meant, with ``weight=weights``.
* **Device and dtype.** The 2023 code builds its weights as a CPU float32 tensor on every call; here
  they are a float32 buffer computed once in ``setup``, moved with the method, cast to the logits'
  dtype (the values are the same). The losses run in float32 with autocast disabled
  (``F.binary_cross_entropy`` refuses autocast).
* The 2023 modulator is kept literally, ``log(1 + exp(−x))`` included (it overflows for x < −88 in
  float32, where the official value is then wrong too).
* ``sampler`` and ``mixup_alpha``: ``ltbench.method.LossMethod`` (FlexSampling's baseline
  "CB_Focal + Resampling" is ``sampler: class_balanced``; its ``isic_8class.yaml`` baseline is CB-focal
  γ 1 + ``class_aware`` + mixup 0.2). No ``label_smoothing``: neither code has it, and the one-vs-all
  forms (2023 focal/sigmoid, v0.2 sigmoid) have per-element targets it would have to redefine.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ltbench.method import LossMethod, TrainInfo
from ltbench.recipes import Recipe
from ltbench.registry import register_method

LOSS_TYPES = ("focal", "sigmoid", "softmax")
FORMS = ("2023", "v0.2")


def class_balanced_weights(counts: Sequence[int], beta: float = 0.9999) -> Tensor:
    """``w_c = (1 − β)/(1 − β^{n_c})``, ``w ← w/Σw · C``, in numpy float64 as both official codes,
    returned as float32 (``torch.tensor(weights).float()``). ``counts`` in class-index order, all > 0."""
    effective_num = 1.0 - np.power(beta, np.asarray(counts, dtype=np.float64))
    weights = (1.0 - beta) / np.array(effective_num)
    weights = weights / np.sum(weights) * len(counts)
    return torch.tensor(weights).float()


def sigmoid_focal_2023(logits: Tensor, one_hot: Tensor, sample_weights: Tensor, gamma: float) -> Tensor:
    """2023 ``focal_loss``: ``Σ w·M·BCEWithLogits(x, t) / Σ t``, ``M = exp(−γ·t·x − γ·log(1 + exp(−x)))``.

    ``sample_weights``: B×C (each row ``w_{y_i}``), ``one_hot``: B×C float targets.
    """
    bce = F.binary_cross_entropy_with_logits(input=logits, target=one_hot, reduction="none")
    if gamma == 0.0:
        modulator = 1.0
    else:
        modulator = torch.exp(-gamma * one_hot * logits - gamma * torch.log(1 + torch.exp(-1.0 * logits)))
    weighted = sample_weights * (modulator * bce)
    return torch.sum(weighted) / torch.sum(one_hot)


def cb_loss_2023(logits: Tensor, labels: Tensor, weights: Tensor, loss_type: str = "focal",
                 gamma: float = 2.0) -> Tensor:
    """The 2023 ``CB_loss`` on B×C ``logits``, int ``labels`` [B] and class weights [C]
    (:func:`class_balanced_weights`); see the module docstring for the three formulas. The
    ``sigmoid`` branch with ``weight=`` (the shipped ``weights=`` crashes)."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"cb_loss: loss_type must be one of {', '.join(LOSS_TYPES)}, got {loss_type!r}")
    num_classes = logits.shape[1]
    one_hot = F.one_hot(labels, num_classes).to(logits.dtype)
    sample_weights = weights.to(logits.device, logits.dtype)[labels].unsqueeze(1).expand(-1, num_classes)
    if loss_type == "focal":
        return sigmoid_focal_2023(logits, one_hot, sample_weights, gamma)
    if loss_type == "sigmoid":
        return F.binary_cross_entropy_with_logits(input=logits, target=one_hot, weight=sample_weights)
    pred = logits.softmax(dim=1)
    return F.binary_cross_entropy(input=pred, target=one_hot, weight=sample_weights)


def cb_loss_v02(logits: Tensor, labels: Tensor, weights: Tensor, loss_type: str = "focal",
                gamma: float = 2.0) -> Tensor:
    """The v0.2 ``CBLoss.forward`` on B×C ``logits``, int ``labels`` [B] and class weights [C]:
    ``mean_i w_{y_i}·ℓ_i`` with ℓ the softmax focal, the summed one-vs-all BCE or the softmax CE."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"cb_loss: loss_type must be one of {', '.join(LOSS_TYPES)}, got {loss_type!r}")
    per_cls_weights = weights.to(logits.device, logits.dtype)[labels]
    if loss_type == "focal":
        ce = F.nll_loss(F.log_softmax(logits, dim=1), labels, reduction="none")
        p_t = torch.exp(-ce)
        loss = per_cls_weights * ((1.0 - p_t) ** gamma * ce)
    elif loss_type == "sigmoid":
        one_hot = F.one_hot(labels, logits.size(1)).to(logits.dtype)
        bce = F.binary_cross_entropy_with_logits(logits, one_hot, reduction="none")
        loss = (per_cls_weights.unsqueeze(1) * bce).sum(dim=1)
    else:
        loss = per_cls_weights * F.cross_entropy(logits, labels, reduction="none")
    return loss.mean()


def cb_loss(logits: Tensor, labels: Tensor, weights: Tensor, loss_type: str = "focal", gamma: float = 2.0,
            form: str = "2023") -> Tensor:
    """:func:`cb_loss_2023` or :func:`cb_loss_v02` by ``form``."""
    if form == "2023":
        return cb_loss_2023(logits, labels, weights, loss_type, gamma)
    if form == "v0.2":
        return cb_loss_v02(logits, labels, weights, loss_type, gamma)
    raise ValueError(f"cb_loss: form must be '2023' or 'v0.2', got {form!r}")


@register_method("cb_loss")
class ClassBalancedLoss(LossMethod):
    """Class-balanced focal / sigmoid / softmax loss on a backbone + linear head (module docstring)."""

    # Where this loss enters the suite: FlexSampling's ISIC 2019 baseline script, row "CB_Focal" (the
    # v0.2 softmax CB-focal, γ 1, β 0.9999): SGD lr 0.01, momentum 0.9, wd 1e-4, batch 32, 50 epochs, cosine.
    recipes = {"paper": Recipe(
        source="PyJulie/FlexSampling examples/run_baselines.py @ c74aa95, row CB_Focal (loss: Cui et al., CVPR 2019)",
        train={"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4, "batch_size": 32,
               "epochs": 50, "lr_schedule": "cosine"},
        params={"form": "v0.2", "loss_type": "focal", "gamma": 1.0, "beta": 0.9999},
        note="ISIC 2019 8-class r = 100 split, timm ResNet-50 (ImageNet) at 224 px; the script's cosine is stepped "
             "per batch (here per epoch); it selects on validation balanced accuracy")}

    def __init__(self, loss_type: str = "focal", form: str = "2023", beta: float = 0.9999, gamma: float = 2.0,
                 sampler: str = "instance", mixup_alpha: float = 0.0) -> None:
        super().__init__(sampler=sampler, mixup_alpha=mixup_alpha)
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"cb_loss: loss_type must be one of {', '.join(LOSS_TYPES)}, got {loss_type!r}")
        if form not in FORMS:
            raise ValueError(f"cb_loss: form must be '2023' or 'v0.2', got {form!r}")
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"cb_loss: beta must be in [0, 1), got {beta}")
        if gamma < 0:
            raise ValueError(f"cb_loss: gamma must be >= 0, got {gamma}")
        self.loss_type = loss_type
        self.form = form
        self.beta = beta
        self.gamma = gamma

    def setup(self, info: TrainInfo) -> None:
        super().setup(info)  # mixup's generator (nothing at mixup_alpha = 0)
        weights = class_balanced_weights(info.class_counts, self.beta)
        self.register_buffer("class_weights", weights.to(info.device))

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return cb_loss(logits, labels, self.class_weights, self.loss_type, self.gamma, self.form)
