"""Balanced Softmax: cross-entropy on the logits shifted by the log class counts.

Ren, Yu, Sheng, Ma, Zhao, Yi, Li: "Balanced Meta-Softmax for Long-Tailed Visual Recognition",
NeurIPS 2020. Official code: jiawei-ren/BalancedMetaSoftmax-Classification @ 34a61e4
(``loss/BalancedSoftmaxLoss.py`` ``balanced_softmax_loss``; ``run_networks.py``)::

    loss = F.cross_entropy(z + log(n), y)        (mean over the batch)

with n the training-split counts per class, cast to the logits' dtype before the log
(``sample_per_class.type_as(logits)``, then ``.log()``), so the shift is ``log`` of float32 counts in
float32. ``log n_c`` and ``log π_c`` differ by one constant per row, so the loss equals the logit-adjusted
loss at τ = 1 up to rounding; the counts are what the code adds. No epsilon: every class has a count.
Test time: the plain logits ``z`` (the code evaluates ``self.logits`` unchanged).

Where ltbench departs, and why:

* **No Meta Sampler.** BALMS (``config/*/balms_*.yaml``) adds a meta-learned sampler in a
  decoupled second stage; it is not reproduced (the issue asks for the loss; the end-to-end
  "Balanced Softmax" rows of the paper's tables are this loss alone, ``sampler: null``).
* **Protocol.** The shared protocol's backbone, optimiser and best-validation checkpoint replace the
  official ResNet-10/32, SGD and schedule (the ``paper`` recipe gives the ImageNet-LT settings).
* The loss runs in float32 with autocast off (the counts' log in float32, as the code computes it for
  float32 logits). ``sampler`` and ``mixup_alpha``: ``ltbench.method.LossMethod``.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ltbench.method import LossMethod, TrainInfo
from ltbench.recipes import Recipe
from ltbench.registry import register_method


def balanced_softmax_loss(logits: Tensor, labels: Tensor, sample_per_class: Tensor | Sequence[int],
                          reduction: str = "mean") -> Tensor:
    """``F.cross_entropy(z + log(n), y)``: the counts cast to the logits' dtype, then their log."""
    spc = torch.as_tensor(sample_per_class).to(logits.device).type_as(logits)
    spc = spc.unsqueeze(0).expand(logits.shape[0], -1)
    return F.cross_entropy(input=logits + spc.log(), target=labels, reduction=reduction)


@register_method("balanced_softmax")
class BalancedSoftmax(LossMethod):
    """Balanced Softmax (Ren et al., NeurIPS 2020): CE on ``z + log n_c``, plain ``z`` at test."""

    # config/ImageNet_LT/balanced_softmax_resnet10.yaml: SGD lr 0.2, momentum 0.9, wd 5e-4, batch 512,
    # 90 epochs, CosineAnnealingLR(T_max=90, eta_min=0). The CIFAR configs count iterations (13000, warm-up
    # 800 from 0.05 up to 0.1), which turn into epochs only for one dataset size.
    recipes = {"paper": Recipe(
        source="jiawei-ren/BalancedMetaSoftmax-Classification config/ImageNet_LT/balanced_softmax_resnet10.yaml, "
               "run_networks.py @ 34a61e4 (Ren et al., NeurIPS 2020)",
        train={"optimizer": "sgd", "lr": 0.2, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 512,
               "epochs": 90, "lr_schedule": "cosine"},
        note="the code steps its cosine at the start of each 1-indexed epoch (0-indexed epoch e trains at "
             "cos(π(e+1)/90), here cos(πe/90)); ImageNet-LT with ResNet-10 from scratch at 224 px; the CIFAR "
             "configs (ResNet-32, batch 512, 13000 iterations, warm-up to 0.1) are not translated")}

    def __init__(self, sampler: str = "instance", mixup_alpha: float = 0.0) -> None:
        super().__init__(sampler=sampler, mixup_alpha=mixup_alpha)  # LossMethod's tricks (issue 15)

    def setup(self, info: TrainInfo) -> None:
        super().setup(info)  # mixup's generator (nothing at mixup_alpha = 0)
        counts = torch.tensor([float(n) for n in info.class_counts], dtype=torch.float32)
        self.register_buffer("sample_per_class", counts.to(info.device))

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return balanced_softmax_loss(logits.float(), labels, self.sample_per_class)
