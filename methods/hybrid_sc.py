"""Hybrid-SC: a supervised-contrastive branch and a classifier branch on one backbone (Wang, Zhang,
Hou, Tao, Wang, Shen, "Contrastive Learning based Hybrid Networks for Long-Tailed Image
Classification", CVPR 2021). No official code exists; the paper is the reference.

Every step: ``L = α · L_SC + (1 − α) · L_CE`` with

* ``L_SC``: SupCon (``ltbench.losses.supcon_loss``, all 2B views are anchors, τ = 0.1, **no**
  T/T_base factor) on the two ``contrastive`` views of an **instance-sampled** batch, through
  backbone + projection head (the shared protocol's Linear → BN → ReLU → Linear, 128-d, L2-normalised);
* ``L_CE``: mean softmax cross-entropy of a linear classifier on the backbone features of a
  separate **class-balanced** batch (one ``standard`` view; the trainer computes only the views
  each stream declares);
* ``α = 1 − (e / E)²`` (:func:`hybrid_alpha`) with ``e`` the **0-indexed** epoch: α = 1 in the
  first epoch (pure SC; the classifier gets a zero gradient), decreasing to ``1 − ((E−1)/E)²``
  in the last (α(E) = 0 is never reached).

Prediction: the linear classifier on the backbone features.

Ambiguities of the paper and how they are resolved:

* **Epoch index.** The paper writes α = 1 − (T/T_max)² without saying whether T starts at 0 or 1;
  ltbench uses the 0-indexed epoch (spec), so training starts as pure SC. Pass ``alpha_offset=1``
  for the 1-indexed reading (``1 − ((e+1)/E)²``: the last epoch is pure CE).
* **Forward passes.** The two SC views go through the backbone as one 2B batch (SupContrast's
  practice) and the class-balanced batch as a separate pass, so BatchNorm sees each sampler's batch
  on its own; the paper's figure feeds the two samplers to the shared backbone separately.
* **Gradient paths.** Both losses train the backbone (no detach); the classifier sits on the
  backbone features, not on the projection.
* **Batch sizes.** The class-balanced batch has the instance batch's size B (the streams step together).
* **Augmentation.** The shared protocol's presets: ``contrastive`` (ECL's contrastive view) for the
  SC views and ``standard`` for the classifier branch; the paper uses CIFAR/ImageNet crops and flips.
* **Hybrid-PSC** (the prototype variant) is not implemented.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltbench.losses import supcon_loss
from ltbench.method import Batch, Method, StepResult, TrainInfo
from ltbench.models import Backbone, ProjectionHead
from ltbench.registry import register_method


def hybrid_alpha(epoch: int, epochs: int, offset: int = 0) -> float:
    """``1 − ((epoch + offset) / epochs)²`` — Hybrid-SC's SC weight (epoch 0-indexed; offset 0)."""
    if epochs <= 0:
        raise ValueError(f"hybrid_alpha: epochs must be positive, got {epochs}")
    return 1.0 - ((epoch + offset) / epochs) ** 2


def hybrid_sc_loss(
    embeddings: Tensor, labels: Tensor, logits: Tensor, balanced_labels: Tensor, alpha: float,
    temperature: float = 0.1,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(α · SupCon(embeddings, labels) + (1 − α) · CE(logits, balanced_labels), SupCon, CE)``.

    ``embeddings`` [B, 2, D] L2-normalised (the instance batch's two views); ``logits`` [B', C] of
    the class-balanced batch. SupCon at ``temperature`` with T_base = T (no rescaling); CE mean-reduced.
    Float32, autocast off.
    """
    with torch.autocast(device_type=logits.device.type, enabled=False):
        sc = supcon_loss(embeddings.float(), labels, temperature=temperature, base_temperature=None)
        ce = F.cross_entropy(logits.float(), balanced_labels)
    return alpha * sc + (1.0 - alpha) * ce, sc, ce


class HybridNetwork(nn.Module):
    """Backbone → linear ``classifier`` and projection ``head``.

    ``model(images)`` returns logits; :meth:`embed` runs two views as one 2B batch → [B, 2, dim].
    """

    def __init__(self, backbone: Backbone, num_classes: int, dim: int = 128) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = ProjectionHead(backbone.out_dim, dim)
        self.classifier = nn.Linear(backbone.out_dim, num_classes)

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier(self.backbone(images))

    def embed(self, view_1: Tensor, view_2: Tensor) -> Tensor:
        batch = view_1.shape[0]
        embedding = self.head(self.backbone(torch.cat([view_1, view_2], dim=0)))
        return embedding.view(2, batch, -1).transpose(0, 1)


@register_method("hybrid_sc")
class HybridSC(Method):
    """Hybrid-SC (Wang et al., CVPR 2021; no official code). See the module docstring."""

    samplers = (("instance", ("contrastive", "contrastive")), ("class_balanced", ("standard",)))

    def __init__(self, temperature: float = 0.1, dim: int = 128, alpha_offset: int = 0) -> None:
        super().__init__()
        if temperature <= 0 or dim < 1:
            raise ValueError("Hybrid-SC: temperature and dim must be positive")
        if alpha_offset not in (0, 1):
            raise ValueError(f"Hybrid-SC: alpha_offset must be 0 or 1, got {alpha_offset}")
        self.temperature = temperature
        self.dim = dim
        self.alpha_offset = alpha_offset
        self.epochs = 1

    def setup(self, info: TrainInfo) -> None:
        self.epochs = info.epochs

    def build_model(self, backbone: Backbone, info: TrainInfo) -> nn.Module:
        return HybridNetwork(backbone, info.num_classes, self.dim)

    def representations(self, model: nn.Module, images: Tensor) -> dict[str, Tensor]:
        """``feature`` (backbone) and ``embedding`` (the L2-normalised projection head), for retrieval."""
        features = model.backbone(images)
        return {"feature": features, "embedding": model.head(features)}

    def alpha(self) -> float:
        """The SC weight of the current epoch."""
        return hybrid_alpha(self.epoch, self.epochs, self.alpha_offset)

    def training_step(self, model: nn.Module, instance: Batch, balanced: Batch) -> StepResult:
        embeddings = model.embed(*instance.views)
        logits = model(balanced.views[0])
        alpha = self.alpha()
        loss, sc, ce = hybrid_sc_loss(embeddings, instance.labels, logits, balanced.labels, alpha, self.temperature)
        return loss, {"alpha": torch.tensor(alpha, device=loss.device), "supcon": sc.detach(), "ce": ce.detach()}
