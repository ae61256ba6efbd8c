"""SCL: supervised contrastive learning, then a linear classifier (Khosla et al., NeurIPS 2020;
code HobbitLong/SupContrast; on skin lesions with class-balanced batches: Marrakchi et al., MICCAI 2021).

Two stages in one epoch budget E (``ltbench.stages``):

1. **Representation** (``E − E₂`` epochs): SupCon (``ltbench.losses.supcon_loss``) on the two
   ``contrastive`` views of class-balanced batches, through backbone + projection head
   (Linear → BN → ReLU → Linear, 128-d, L2-normalised); the classifier is frozen. These epochs are
   not selectable as the best-validation checkpoint (the classifier is untrained).
2. **Linear classifier** (``E₂ = max(1, floor(classifier_fraction · E + 0.5))`` epochs, the last
   ones; ``classifier_fraction = 0.2`` → 6 of 30, 20 of 100): cross-entropy of a Linear layer on the
   frozen backbone's features (no gradient, BatchNorm in eval mode, as ``main_linear.py`` runs
   ``model.eval()``), on ``standard`` views of instance batches, with its own SGD: lr
   ``classifier_lr = 0.1``, weight decay ``classifier_weight_decay = 0``, momentum of the run
   (``main_linear.py``'s defaults), cosine over the stage's own epochs.

``joint=True`` is the one-stage variant: every epoch, SupCon on the two views plus CE of the
classifier on the **detached** backbone features of view 0 (same class-balanced batches), the whole
model trained at the run's lr, every epoch selectable.

SCL in ltbench vs the official repository
=========================================

Identical to SupContrast: the loss (``SupConLoss``: view-major anchors, ``contrast_mode="all"``,
anchors without positive add 0 and count in the mean); the two views go through the encoder as one
2B batch (``torch.cat([images[0], images[1]])``, BatchNorm statistics over both views); the linear
stage's lr 0.1, weight decay 0, momentum 0.9, encoder frozen in eval mode, CE on ``features.detach()``.

Deliberate differences:

* **Temperature.** T = T_base = 0.1 by default (no rescaling). ``main_supcon.py`` uses ``--temp
  0.07`` with T_base = 0.07; setting ``temperature=0.1`` with the official T_base = 0.07 would scale
  the loss by 1.43 — pass ``base_temperature=0.07`` to get the official factor.
* **Budget.** One budget E split between the stages (``classifier_fraction``), not 1000 + 100 epochs.
  Stage 1 runs at the run's base lr, weight decay and cosine (the shared protocol), not the official
  lr 0.5 at batch 1024 with warm-up; stage 2 uses a cosine (``main_linear.py --cosine``) instead of
  the default step decay at 60/75/90.
* **Augmentations.** Stage 1 uses the ``contrastive`` preset (ECL's contrastive view, the skin-lesion
  pipeline), not SupContrast's CIFAR crop/jitter; stage 2 uses ``standard`` (resize, h-flip, jitter)
  instead of random-resized-crop + flip.
* **Sampling.** Class-balanced batches for the representation (the skin-lesion version), instance
  batches for the classifier; SupContrast samples instances in both stages.
* **Checkpoint.** Best-validation accuracy over the classifier stage (the shared protocol); the
  official scripts report the best validation accuracy of the linear stage, the same rule.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltbench.losses import supcon_loss
from ltbench.method import Batch, Method, StepResult, TrainInfo
from ltbench.models import Backbone, ProjectionHead
from ltbench.registry import register_method
from ltbench.stages import Stage, stage_bounds, stage_index

CONTRASTIVE = ("contrastive", "contrastive")


class SupConNetwork(nn.Module):
    """Backbone → ``head`` (projection, L2-normalised) and ``classifier`` (Linear).

    ``model(images)`` returns the classifier's logits; ``model(v1, v2)`` runs both views as one
    2B batch and returns ``(backbone features [2B, d], embeddings [B, 2, dim])``.
    """

    def __init__(self, backbone: Backbone, num_classes: int, dim: int = 128) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = ProjectionHead(backbone.out_dim, dim)
        self.classifier = nn.Linear(backbone.out_dim, num_classes)

    def forward(self, images: Tensor, second_view: Tensor | None = None):
        if second_view is None:
            return self.classifier(self.backbone(images))
        batch = images.shape[0]
        features = self.backbone(torch.cat([images, second_view], dim=0))
        embedding = self.head(features)
        return features, embedding.view(2, batch, -1).transpose(0, 1)


def classifier_stage_epochs(epochs: int, fraction: float) -> int:
    """Epochs of the linear-classifier stage: ``max(1, floor(fraction · E + 0.5))``."""
    return max(1, math.floor(fraction * epochs + 0.5))


class TwoStageContrastive(Method):
    """Shared shape of SCL, TSC and SimCLR: a representation stage then a linear probe.

    Subclasses give the stage-1 loss (:meth:`representation_loss`) and sampler; the classifier
    stage and the joint variant are common.
    """

    representation_sampler = "class_balanced"
    #: Model parts trained in the representation stage (the classifier stays frozen).
    representation_parts: tuple[str, ...] = ("backbone", "head")

    def _init_stage_params(self, dim: int, classifier_fraction: float, classifier_lr: float | None,
                           classifier_weight_decay: float | None, joint: bool) -> None:
        if not 0.0 < classifier_fraction < 1.0:
            raise ValueError(f"{type(self).__name__}: classifier_fraction must be in (0, 1), got {classifier_fraction}")
        if dim < 1:
            raise ValueError(f"{type(self).__name__}: dim must be positive, got {dim}")
        self.dim = dim
        self.classifier_fraction = classifier_fraction
        self.classifier_lr = classifier_lr
        self.classifier_weight_decay = classifier_weight_decay
        self.joint = joint
        self._bounds: list[tuple[int, int]] = []

    def build_model(self, backbone: Backbone, info: TrainInfo) -> nn.Module:
        return SupConNetwork(backbone, info.num_classes, self.dim)

    def representations(self, model: nn.Module, images: Tensor) -> dict[str, Tensor]:
        """``feature`` (backbone) and ``embedding`` (the L2-normalised projection head), for retrieval."""
        features = model.backbone(images)
        return {"feature": features, "embedding": model.head(features)}

    def stages(self, info: TrainInfo) -> list[Stage]:
        stream = ((self.representation_sampler, CONTRASTIVE),)
        if self.joint:
            stages = [Stage(samplers=stream, name="joint")]
        else:
            e2 = classifier_stage_epochs(info.epochs, self.classifier_fraction)
            stages = [
                Stage(epochs=info.epochs - e2, samplers=stream, trains=self.representation_parts, selectable=False,
                      name="representation"),
                Stage(epochs=e2, samplers=(("instance", ("standard",)),), trains=("classifier",),
                      lr=self.classifier_lr, weight_decay=self.classifier_weight_decay, name="classifier"),
            ]
        self._bounds = stage_bounds(stages, info.epochs)
        return stages

    def in_classifier_stage(self) -> bool:
        return not self.joint and stage_index(self._bounds, self.epoch) == len(self._bounds) - 1

    def representation_loss(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        raise NotImplementedError

    def classifier_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        return F.cross_entropy(logits.float(), labels)

    def training_step(self, model: nn.Module, batch: Batch) -> StepResult:
        if self.in_classifier_stage():
            # The backbone is frozen by the stage (requires_grad False, eval mode): features carry no graph.
            return self.classifier_loss(model(batch.views[0]), batch.labels)
        features, embeddings = model(*batch.views)
        contrastive = self.representation_loss(embeddings.float(), batch.labels)
        if not self.joint:
            return contrastive
        logits = model.classifier(features[: batch.labels.shape[0]].detach())
        ce = self.classifier_loss(logits, batch.labels)
        return contrastive + ce, {"contrastive": contrastive.detach(), "ce": ce.detach()}


@register_method("scl")
class SCL(TwoStageContrastive):
    """SCL (Khosla et al., NeurIPS 2020; HobbitLong/SupContrast). See the module docstring."""

    representation_sampler = "class_balanced"

    def __init__(
        self,
        dim: int = 128,
        temperature: float = 0.1,
        base_temperature: float | None = None,
        contrast_mode: str = "all",
        classifier_fraction: float = 0.2,
        classifier_lr: float | None = 0.1,
        classifier_weight_decay: float | None = 0.0,
        joint: bool = False,
    ) -> None:
        super().__init__()
        if temperature <= 0 or (base_temperature is not None and base_temperature <= 0):
            raise ValueError("SCL: temperature and base_temperature must be positive")
        if contrast_mode not in ("all", "one"):
            raise ValueError(f"SCL: contrast_mode must be 'all' or 'one', got {contrast_mode!r}")
        self.temperature = temperature
        self.base_temperature = base_temperature
        self.contrast_mode = contrast_mode
        self._init_stage_params(dim, classifier_fraction, classifier_lr, classifier_weight_decay, joint)

    def representation_loss(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        return supcon_loss(embeddings, labels, temperature=self.temperature,
                           base_temperature=self.base_temperature, contrast_mode=self.contrast_mode)
