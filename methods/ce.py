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


@register_method("ce")
class CrossEntropy(LossMethod):
    """Softmax cross-entropy, mean-reduced, on a backbone + linear head."""

    def __init__(self, label_smoothing: float = 0.0, sampler: str = "instance", mixup_alpha: float = 0.0,
                 view: str = "standard") -> None:
        super().__init__(sampler=sampler, mixup_alpha=mixup_alpha)
        check_label_smoothing("ce", label_smoothing)
        self.label_smoothing = label_smoothing
        self.view = view

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        # label_smoothing = 0.0 is F.cross_entropy's default: the same call as plain CE.
        return F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
