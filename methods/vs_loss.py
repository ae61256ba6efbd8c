"""VS loss: vector-scaling loss, multiplicative and additive logit adjustment.

Kini, Paraskevas, Oymak, Thrampoulidis: "Label-Imbalanced and Group-Sensitive Classification under
Overparameterization", NeurIPS 2021. Official code: orparask/VS-Loss @ 7ade9c9
(``class_imbalance/losses.py`` ``VSLoss``, ``class_imbalance/train.py``)::

    Δ_c = (1/n_c)^γ / min_k (1/n_k)^γ  = (n_max/n_c)^γ   (numpy float64 → float32)
    ι_c = τ · log(π_c),  π_c = n_c / Σ_k n_k              (numpy float64 → float32)
    loss = F.cross_entropy(z / Δ + ι, y, weight=w)

i.e. the paper's ``(n_c/n_max)^γ · z_c + τ log π_c``, computed as the code does, by a division by
``(n_max/n_c)^γ``. With weights the mean divides by ``Σ_i w_{y_i}`` (``F.cross_entropy``). γ = 0.3, τ = 1.0:
the ``train.py`` defaults (``--gamma 0.3 --tau 1.0``; the code has no per-dataset table: the README's
CIFAR-10-LT (ratio 100) command uses γ 0.2, τ 1.2, which the ``paper`` recipe sets). γ = 0 is the code's
"LA" loss, τ = 0 its "CDT". Test time: plain logits (the code validates ``model(input)`` unchanged).

**Weights** (``train_rule``, the code's ``--train_rule``; the loss's ``weight=``):

* ``"none"`` (default, the code's ``None``): no weights;
* ``"reweight"`` (``Reweight``): class-balanced ``(1 − β)/(1 − β^n_c)``, β = 0.9999, rescaled to sum C,
  from the first epoch;
* ``"drw"`` (``DRW``): ones before the switch, those weights from it (the code: ``idx = epoch // 160`` of
  200 epochs; here ``floor(drw_fraction · E)`` with 0.8, or the absolute 0-indexed ``drw_epoch``, as
  ``ldam_drw``).

Where ltbench departs, and why:

* **No ``Resample`` rule.** The code's ``Resample`` draws with replacement by effective-number weights;
  ltbench's resampling is ``sampler: class_balanced`` (1/n_c), a different distribution, so the rule is not
  offered under the code's name.
* **Protocol.** The shared protocol's backbone, optimiser (SGD, cosine) and best-validation checkpoint
  replace ResNet-32 and the LDAM-DRW schedule (the ``paper`` recipe gives it).
* The loss runs in float32 with autocast off. ``sampler`` and ``mixup_alpha``: ``ltbench.method.LossMethod``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ltbench.method import LossMethod, TrainInfo
from ltbench.methods.ce import LDAM_DRW_CIFAR_TRAIN
from ltbench.methods.cb_loss import class_balanced_weights
from ltbench.recipes import Recipe
from ltbench.registry import register_method
from ltbench.schedules import check_drw, drw_switch_epoch

TRAIN_RULES = ("none", "reweight", "drw")


def vs_parameters(cls_num_list: Sequence[int], gamma: float = 0.3, tau: float = 1.0) -> tuple[Tensor, Tensor]:
    """``(Δ, ι)`` as ``VSLoss.__init__`` computes them (numpy float64, stored as float32)."""
    cls_probs = [cls_num / sum(cls_num_list) for cls_num in cls_num_list]
    temp = (1.0 / np.array(cls_num_list)) ** gamma
    temp = temp / np.min(temp)
    iota_list = tau * np.log(cls_probs)
    return torch.tensor(temp, dtype=torch.float32), torch.tensor(iota_list, dtype=torch.float32)


def vs_loss(logits: Tensor, labels: Tensor, delta: Tensor, iota: Tensor, weight: Tensor | None = None) -> Tensor:
    """``F.cross_entropy(z / Δ + ι, y, weight=w)`` (``VSLoss.forward``)."""
    output = logits / delta.to(logits) + iota.to(logits)
    return F.cross_entropy(output, labels, weight=None if weight is None else weight.to(logits))


@register_method("vs_loss")
class VSLoss(LossMethod):
    """VS loss (Kini et al., NeurIPS 2021): CE on ``z · (n_c/n_max)^γ + τ log π_c`` (module docstring)."""

    # orparask/VS-Loss README: `train.py --dataset cifar10 --loss_type VS --imb_type exp --imb_factor 0.01
    # --gamma 0.2 --tau 1.2`, with train.py's defaults: SGD 0.1, momentum 0.9, wd 2e-4, batch 128, 200 epochs
    # and LDAM-DRW's adjust_learning_rate (lr·(e+1)/5 for 0-indexed e < 5, ×0.01 after 160, ×0.0001 after
    # 180): the schedule of methods/ce.py.
    recipes = {"paper": Recipe(
        source="orparask/VS-Loss README, class_imbalance/train.py, losses.py @ 7ade9c9 (Kini et al., NeurIPS 2021)",
        train=LDAM_DRW_CIFAR_TRAIN,
        params={"gamma": 0.2, "tau": 1.2},
        note="the README's CIFAR-10-LT (ratio 100) command; ResNet-32 at 32 px, random crop + flip; backbone, size "
             "and views stay the benchmark's")}

    def __init__(self, gamma: float = 0.3, tau: float = 1.0, train_rule: str = "none", beta: float = 0.9999,
                 drw_fraction: float = 0.8, drw_epoch: int | None = None, sampler: str = "instance",
                 mixup_alpha: float = 0.0) -> None:
        super().__init__(sampler=sampler, mixup_alpha=mixup_alpha)  # LossMethod's tricks (issue 15)
        if not (isinstance(gamma, (int, float)) and gamma >= 0):
            raise ValueError(f"vs_loss: gamma must be a number >= 0, got {gamma!r}")
        if not isinstance(tau, (int, float)):
            raise ValueError(f"vs_loss: tau must be a number, got {tau!r}")
        if train_rule not in TRAIN_RULES:
            raise ValueError(f"vs_loss: train_rule must be one of {', '.join(TRAIN_RULES)}, got {train_rule!r}")
        check_drw("vs_loss", beta, drw_fraction, drw_epoch)
        self.gamma = gamma
        self.tau = tau
        self.train_rule = train_rule
        self.beta = beta
        self.drw_fraction = drw_fraction
        self.drw_epoch = drw_epoch
        self.switch_epoch = 0

    def setup(self, info: TrainInfo) -> None:
        super().setup(info)  # mixup's generator (nothing at mixup_alpha = 0)
        delta, iota = vs_parameters(info.class_counts, self.gamma, self.tau)
        self.register_buffer("delta", delta.to(info.device))
        self.register_buffer("iota", iota.to(info.device))
        # the code's per_cls_weights: numpy float64 -> torch.FloatTensor (cb_loss computes them so)
        weights = class_balanced_weights(info.class_counts, self.beta)
        self.register_buffer("cb_weights", weights.to(info.device))
        self.register_buffer("weight", torch.ones(info.num_classes, device=info.device))
        self.switch_epoch = drw_switch_epoch(info.epochs, self.drw_fraction, self.drw_epoch)

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        if self.train_rule == "reweight" or (self.train_rule == "drw" and epoch >= self.switch_epoch):
            self.weight.copy_(self.cb_weights)
        else:
            self.weight.fill_(1.0)

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        with torch.autocast(device_type=logits.device.type, enabled=False):
            weight = None if self.train_rule == "none" else self.weight
            return vs_loss(logits.float(), labels, self.delta, self.iota, weight)
