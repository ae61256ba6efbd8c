"""The heads methods put on a backbone: a linear classifier, a cosine classifier, a projection head."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltbench.models.backbone import Backbone


class Classifier(nn.Module):
    """Backbone followed by a classification head; ``forward`` returns logits."""

    def __init__(self, backbone: Backbone, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.backbone(images))


class NormedLinear(nn.Module):
    """Cosine classifier: normalised features × normalised weights, no bias (LDAM, BCL).

    Initialised as in kaidic/LDAM-DRW: uniform(-1, 1), then renormalised columns.
    """

    def __init__(self, in_dim: int, num_classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_dim, num_classes))
        self.weight.data.uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)

    def forward(self, features: Tensor) -> Tensor:
        return F.normalize(features, dim=1) @ F.normalize(self.weight, dim=0)


class ProjectionHead(nn.Module):
    """Linear(in, dim) -> BN -> ReLU -> Linear(dim, dim), L2-normalised output (ECL, SCL, BCL)."""

    def __init__(self, in_dim: int, dim: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, dim), nn.BatchNorm1d(dim), nn.ReLU(inplace=True), nn.Linear(dim, dim)
        )

    def forward(self, features: Tensor) -> Tensor:
        return F.normalize(self.net(features), dim=1)
