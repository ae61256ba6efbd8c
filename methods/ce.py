"""Cross-entropy: plain softmax CE, mean over the batch — the baseline every table starts with.

Tricks (FlexSampling's baseline rows, issue 15; each off by default, so the plain CE is unchanged):
``label_smoothing`` ε (PyTorch's ``F.cross_entropy(label_smoothing=ε)``: target ``(1 − ε)·onehot + ε/C``;
in no FlexSampling code, offered as the common trick), ``mixup_alpha`` and ``sampler``
(``ltbench.method.LossMethod``); e.g. ``ce_mixup: {method: ce, mixup_alpha: 0.2}``. ``view``: the
training view preset (``plain_half``: no augmentation, Normalize(0.5, 0.5), the retrieval paper's
pipeline, benchmarks/isic2019-retrieval.yaml).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ltbench import LossMethod, register_method
from ltbench.losses import check_label_smoothing
from ltbench.recipes import Recipe


#: The training settings of kaidic/LDAM-DRW's CIFAR script (cifar_train.py @ 2536330), shared by the
#: recipes of the rows it runs: CE, focal and LDAM-DRW. Its lr is 0.1·(e+1)/5 in 0-indexed epochs 0–4,
#: then 0.1, ×0.01 from epoch 160 and ×0.0001 from 180: a 4-epoch warm-up from 0.2 and γ = 0.01 at
#: 160/180 give exactly these per-epoch rates.
LDAM_DRW_CIFAR_TRAIN = {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 2e-4, "batch_size": 128,
                        "epochs": 200, "lr_schedule": "step", "lr_milestones": (160, 180), "lr_gamma": 0.01,
                        "warmup_epochs": 4, "warmup_start_factor": 0.2}


@register_method("ce")
class CrossEntropy(LossMethod):
    """Softmax cross-entropy, mean-reduced, on a backbone + linear head."""

    # The CE baseline of kaidic/LDAM-DRW's CIFAR script, where this suite's CE and focal rows come from.
    recipes = {"paper": Recipe(
        source="kaidic/LDAM-DRW cifar_train.py @ 2536330, --loss_type CE --train_rule None "
               "(Cao et al., NeurIPS 2019)",
        train=LDAM_DRW_CIFAR_TRAIN,
        note="CIFAR-10/100-LT: ResNet-32 at 32 px, random crop + flip; backbone, size and views stay the benchmark's")}

    def __init__(self, label_smoothing: float = 0.0, sampler: str = "instance", mixup_alpha: float = 0.0,
                 view: str = "standard") -> None:
        super().__init__(sampler=sampler, mixup_alpha=mixup_alpha)
        check_label_smoothing("ce", label_smoothing)
        self.label_smoothing = label_smoothing
        self.view = view

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        # label_smoothing = 0.0 is F.cross_entropy's default: the same call as plain CE.
        return F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)

    def sample_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        # Per sample for ImbSAM (optimizer: imbsam), as its code's CrossEntropyLoss(reduction="none").
        return F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing, reduction="none")
