"""Cross-entropy: plain softmax CE, mean over the batch — the baseline every table starts with."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ltbench import LossMethod, register_method


@register_method("ce")
class CrossEntropy(LossMethod):
    """Softmax cross-entropy, mean-reduced, on a backbone + linear head."""

    def __init__(self) -> None:
        super().__init__()

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        return F.cross_entropy(logits, labels)
