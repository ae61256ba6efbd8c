"""LDAM-DRW: label-distribution-aware margin loss with deferred re-weighting.

Cao, Wei, Gaidon, Arechiga, Ma: "Learning Imbalanced Datasets with Label-Distribution-Aware
Margin Loss", NeurIPS 2019. Official code: kaidic/LDAM-DRW (``losses.py`` ``LDAMLoss``,
``cifar_train.py`` ``train_rule == 'DRW'``, ``models/resnet_cifar.py`` ``NormedLinear``).

What is computed (as the official code does):

* **Cosine logits.** The classifier is ``NormedLinear``: L2-normalised features × L2-normalised
  weight columns, no bias, so ``z_ic = cos(f_i, w_c)`` ∈ [−1, 1].
* **Margins** ``m_c = max_margin · n_c^(−1/4) / max_k n_k^(−1/4)`` (max_margin 0.5), n_c the
  training-split counts; ``m_{y_i}`` is subtracted from the target logit only.
* **Loss** ``F.cross_entropy(s · z_m, y, weight=w)`` with s = 30: with class weights the mean
  divides by ``Σ_i w_{y_i}``, not by B (as official).
* **DRW.** ``w = 1`` for 0-indexed epochs before the switch; from the switch on, class-balanced
  weights ``(1 − β)/(1 − β^n_c)``, β = 0.9999, rescaled to sum to C (official: ``idx = epoch // 160``,
  ``betas = [0, 0.9999]``; β = 0 gives the all-ones weights). Weights and margins are computed in
  float64 and stored as float32 buffers (official: numpy float64 → ``FloatTensor``).

Where ltbench deviates, and why:

* **Switch epoch for other budgets.** The official script switches at 0-indexed epoch 160 of 200;
  here at ``floor(drw_fraction · E)`` (0.8: E = 200 → 160, E = 100 → 80, E = 7 → 5), or at an
  absolute 0-indexed ``drw_epoch`` when given (``ltbench.schedules.drw_switch_epoch``).
* **Prediction.** ``predict`` returns ``s · z`` instead of the bare cosine logits the official
  validation uses: the argmax (Acc, F1, ...) is unchanged, and the softmax that gives ltbench's
  AUC probabilities is the one the loss was trained on (softmax of cosines in [−1, 1] would be
  nearly uniform).
* **Protocol.** The shared protocol's backbone, optimiser (SGD 0.002, cosine decay) and
  best-validation checkpoint replace the official ResNet-32, SGD 0.1 with warm-up and step decay.

FlexSampling's baseline rows (issue 15): ``beta: 0`` keeps the weights at 1 throughout (LDAM
without DRW, the row "LDAM"); ``sampler: class_balanced`` adds its inverse-frequency resampling (the
row its ``run_baselines.py`` calls "LDAM_DRW": no deferral). Its v0.2 ``LDAMLoss`` (margin scaled, logits
not) is a different loss and not reproduced. ``sampler`` and ``mixup_alpha``: ``ltbench.method.LossMethod``.
No ``label_smoothing``: the margin is defined on the hard target logit, and kaidic's code has none.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltbench.method import LossMethod, TrainInfo
from ltbench.methods.ce import LDAM_DRW_CIFAR_TRAIN
from ltbench.models import Backbone, Classifier, NormedLinear
from ltbench.recipes import Recipe
from ltbench.registry import register_method
from ltbench.schedules import check_drw, drw_switch_epoch


def ldam_margins(class_counts: Sequence[int], max_margin: float = 0.5) -> Tensor:
    """``m_c = max_margin · n_c^(−1/4) / max_k n_k^(−1/4)`` (float64; stored as float32, as official)."""
    counts = torch.tensor([float(n) for n in class_counts], dtype=torch.float64)
    inv_quarter = 1.0 / torch.sqrt(torch.sqrt(counts))
    return inv_quarter * (max_margin / inv_quarter.max())


def class_balanced_weights(class_counts: Sequence[int], beta: float = 0.9999) -> Tensor:
    """``(1 − β)/(1 − β^n_c)`` rescaled so the C weights sum to C (float64; stored as float32).

    β = 0 gives all ones (the official pre-switch weights).
    """
    counts = torch.tensor([float(n) for n in class_counts], dtype=torch.float64)
    weights = (1.0 - beta) / (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), counts))
    return weights / weights.sum() * len(counts)


def ldam_loss(
    cosine_logits: Tensor, labels: Tensor, margins: Tensor, s: float = 30.0, weight: Tensor | None = None
) -> Tensor:
    """LDAM loss: ``CE(s · z_m, y, weight)``, ``z_m = z − m_y`` on the target logit only.

    ``cosine_logits`` B×C (cosine similarities), ``margins`` length C, ``weight`` optional length C.
    Mean reduction of ``F.cross_entropy``: ``Σ_i w_{y_i} ℓ_i / Σ_i w_{y_i}`` (B without weights).
    """
    target = F.one_hot(labels, cosine_logits.shape[1]).bool()
    batch_margin = margins.to(cosine_logits.dtype)[labels].unsqueeze(1)
    output = torch.where(target, cosine_logits - batch_margin, cosine_logits)
    if weight is not None:
        weight = weight.to(cosine_logits.dtype)
    return F.cross_entropy(s * output, labels, weight=weight)


@register_method("ldam_drw")
class LDAMDRW(LossMethod):
    """LDAM with deferred re-weighting on a cosine classifier (see the module docstring)."""

    # kaidic/LDAM-DRW's CIFAR script, README command: the schedule of methods/ce.py (a 4-epoch warm-up
    # from 0.2 and γ = 0.01 at 160/180 give its per-epoch rates); the method's defaults are the script's
    # (max_m 0.5, s 30, β 0.9999, DRW from 0-indexed epoch 160 = floor(0.8 · 200)).
    recipes = {"paper": Recipe(
        source="kaidic/LDAM-DRW cifar_train.py @ 2536330, --loss_type LDAM --train_rule DRW "
               "(Cao et al., NeurIPS 2019)",
        train=LDAM_DRW_CIFAR_TRAIN,
        note="CIFAR-10/100-LT: ResNet-32 at 32 px, random crop + flip; backbone, size and views stay the benchmark's"),
        # MONICA's `SAM` row is this loss (LDAMLoss with its DRW epoch) trained with SAM's two steps
        # (main.py, losses/get_loss.py): the benchmark's settings with `optimizer: sam` (ltbench/trainer/sam.py).
        "monica_sam": Recipe(
            source="PyJulie/MONICA main.py, losses/get_loss.py ('SAM': LDAMLoss + first_step/second_step); "
                   "SAM: Foret et al., ICLR 2021 (davda54/sam)",
            train={"optimizer": "sam"},
            note="ρ stays sam_rho (0.05); MONICA steps it per epoch (utils.adjust_rho: 0.05, 0.1 from epoch 6, 0.5 "
                 "from 61) and updates BatchNorm statistics in both passes; its base optimiser and lr are its "
                 "config's, here the benchmark's SGD")}

    def __init__(
        self,
        max_margin: float = 0.5,
        scale: float = 30.0,
        beta: float = 0.9999,
        drw_fraction: float = 0.8,
        drw_epoch: int | None = None,
        sampler: str = "instance",
        mixup_alpha: float = 0.0,
    ) -> None:
        super().__init__(sampler=sampler, mixup_alpha=mixup_alpha)  # LossMethod's tricks (issue 15)
        if max_margin < 0:
            raise ValueError(f"ldam_drw: max_margin must be >= 0, got {max_margin}")
        if scale <= 0:
            raise ValueError(f"ldam_drw: scale must be > 0, got {scale}")
        check_drw("ldam_drw", beta, drw_fraction, drw_epoch)
        self.max_margin = max_margin
        self.scale = scale
        self.beta = beta
        self.drw_fraction = drw_fraction
        self.drw_epoch = drw_epoch
        self.switch_epoch = 0

    def setup(self, info: TrainInfo) -> None:
        super().setup(info)  # mixup's generator (nothing at mixup_alpha = 0)
        self.switch_epoch = drw_switch_epoch(info.epochs, self.drw_fraction, self.drw_epoch)
        # float64 -> float32 buffers, as the official numpy -> FloatTensor
        margins = ldam_margins(info.class_counts, self.max_margin).to(torch.float32)
        drw_weights = class_balanced_weights(info.class_counts, self.beta).to(torch.float32)
        self.register_buffer("margins", margins.to(info.device))
        self.register_buffer("drw_weights", drw_weights.to(info.device))
        # The weights of the current epoch (ones before the switch), set in on_epoch_start.
        self.register_buffer("weight", torch.ones(info.num_classes, device=info.device))

    def build_model(self, backbone: Backbone, info: TrainInfo) -> nn.Module:
        return Classifier(backbone, NormedLinear(backbone.out_dim, info.num_classes))

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        if epoch >= self.switch_epoch:
            self.weight.copy_(self.drw_weights)
        else:
            self.weight.fill_(1.0)

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        # training_step passes float32 logits; the loss itself runs outside autocast.
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return ldam_loss(logits, labels, self.margins, self.scale, self.weight)

    def predict(self, model: nn.Module, images: Tensor) -> Tensor:
        # s · cosine: the logits the loss was trained on; argmax unchanged.
        return self.scale * model(images)
