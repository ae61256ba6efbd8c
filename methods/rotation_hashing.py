"""Rotation-invariance deep hashing (Zhang, Xie, Song, Zheng, Liu, Wang; Medical Image Analysis 77,
102301, 2022; code github.com/zylbuaa/dermoscopic_img_retrieval @ ea87272).

A classification-based hashing network: a backbone with HDCSA spatial attention in every block
(``ltbench.models.add_spatial_attention``), global pooling, a ``bits``-unit **sigmoid** hash layer
``u ∈ (0, 1)^bits`` that feeds the classifier. Loss, as ``train.py`` computes it::

    loss = batch_frequency_ce(logits(x), y) + cri_weight · cauchy_rotation_invariance_loss(u(x), u(rot90 x),
                                                                                         u(rot180 x), u(rot270 x))

Binary codes ``sign(u − 0.5)``. Retrieval: the paper's own score is
:func:`ltbench.retrieval.metrics.p10_r4_macro` (a class-macro precision@10 after a Hamming-radius-4 lookup
and a cosine re-rank — what the code calls "mAP", and is not); the generic retrieval metrics are
in :func:`ltbench.retrieval.metrics.retrieval_metrics`.

Identical to the official code (spec ``retrieval.md`` §1–§3):

* HDCSA after ``bn2`` of every BasicBlock, before the residual addition; reduction 16, dilations
  (1, 2, 5), 7×7 spatial conv; its convs drawn ``normal(0, sqrt(2/(k·k·C_out)))`` (torchvision's
  ResNet init of the backbone convs is that same distribution).
* Hash head ``Linear(d, 16) → sigmoid → Linear(16, C)``, PyTorch default Linear init.
* Batch-frequency CE: ``w_c = n_c / B`` from the *current batch*, ``F.cross_entropy(weight=w)``.
  It **up-weights frequent classes** (the opposite of re-balancing, despite appearances).
* CRI: ``ū = mean_k u_k`` (not detached), ``Σ_k mean_{i,b} log(1 + |u_k − ū| / ε)``, ε = 0.5; weight 0.5.
* Views ``torch.rot90(x, k, (2, 3))``, k = 0..3, of the same (already normalised) batch — equal to the
  code's ``transpose(index_select(x, 3, reversed), 2, 3)`` construction; **five forward passes per
  step in train mode** (the CE pass on x and the four views, each with its own BatchNorm batch
  statistics; running statistics are updated five times per step). Only x feeds the classifier.

Departures (documented):

* The released ``train.py`` does not run (it calls the loss *class* with tensors; 8 vs 4 classes);
  here the evident intent ``rotation_invariance_loss()(u1, u2, u3, u4)`` is computed.
* Checkpoint selection on the run's validation split (the code selects on the test set).
* Any backbone: ResNet-50's Bottleneck gets HDCSA after ``bn3`` (the code has none there);
  ``small-cnn`` after each conv–BN, before the ReLU. The code's ``AvgPool2d(7)`` is the backbone's
  adaptive pooling, so any input size works.
* ``p10_r4_macro`` breaks cosine ties by database index (the code: by file path string).
* The losses run in float32 with autocast disabled (the code runs fp32 throughout).

**A retrieval method, not a classifier** (:attr:`RotationHashing.retrieval_method`; issue 20). Its
classifier exists to shape the code, and the official batch-frequency CE gives sample i the weight
``n_{y_i}`` of its class in the batch, so class c weighs ~``n_c²``: on long-tailed data the head classes
dominate the loss by the imbalance *squared*. Measured on digits-lt (small CNN, 20 epochs, seeds 0–2):
test Acc 25.6 ± 5.0, only classes 0–2 predicted, on the training set too; ``cri_weight=0`` 36.3 ± 7.4;
the paper's recipe (``recipe: paper``, 120 epochs) 26.8 ± 5.9; ``ce`` 94.6 ± 1.2. A logistic-regression
probe on its backbone features reaches 71–90; its hash codes' class-macro mAP@all is 40.2 ± 11.7
(``ce``'s features: 93.2 ± 1.5), so it is no good retriever here either. Seed-0 ablations: plain CE for
the batch-frequency CE, no CRI and no HDCSA give 72 — the 16-bit sigmoid code alone still never predicts
the two smallest classes, after 120 epochs too — and the batch-frequency CE takes that to 48–49; a
ResNet-18 with the code's HDCSA placement gives 39. So its accuracy row is reported as a retrieval
method's. The rotations are not the cause: 6 and 9 are never the confusion, the tail is never predicted.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltbench.errors import LtbenchError
from ltbench.method import Batch, Method, StepResult, TrainInfo
from ltbench.models import Backbone, add_spatial_attention
from ltbench.recipes import Recipe
from ltbench.registry import register_method


# --- losses and pieces -------------------------------------------------------------------------
def batch_frequency_ce(logits: Tensor, labels: Tensor, num_classes: int | None = None) -> Tensor:
    """Cross-entropy weighted by each class's frequency in this batch (``train.py`` lines 224–232).

    ``w_c = n_c / B`` with n_c the count of class c among ``labels`` (absent classes: 0);
    ``loss = Σ_i w_{y_i} · ce_i / Σ_i w_{y_i} = Σ_i n_{y_i} ce_i / Σ_i n_{y_i}``, i.e.
    ``F.cross_entropy(logits, labels, weight=w)``. A single-class batch gives plain CE.
    """
    num_classes = logits.shape[1] if num_classes is None else num_classes
    counts = torch.bincount(labels, minlength=num_classes).to(logits.dtype)
    return F.cross_entropy(logits, labels, weight=counts / labels.numel())


def cauchy_rotation_invariance_loss(*codes: Tensor, epsilon: float = 0.5) -> Tensor:
    """CRI term of ``network/LossFunction.py`` (``rotation_invariance_loss(epsilon).forward(u1, u2, u3, u4)``).

    ``ū = (1/K) Σ_k u_k`` (not detached); ``L = Σ_{k=1..K} mean_{i,b} log(1 + |u_k[i,b] − ū[i,b]| / ε)``:
    absolute per-element deviation, mean over batch and bits per view, summed over the K views.
    """
    if len(codes) < 2:
        raise ValueError("cauchy_rotation_invariance_loss: needs at least two views' codes")
    # The official op order: (u1 + u2 + u3 + u4) / 4 and log(1 + ·), not log1p.
    mean = sum(codes[1:], codes[0]) / len(codes)
    return sum((torch.log(1 + (u - mean).abs() / epsilon).mean() for u in codes[1:]),
               torch.log(1 + (codes[0] - mean).abs() / epsilon).mean())


def rotated_views(images: Tensor) -> list[Tensor]:
    """``[x, rot90(x), rot180(x), rot270(x)]`` in the (H, W) plane, as ``train.py`` builds them."""
    if images.shape[-1] != images.shape[-2]:
        raise LtbenchError(f"rotation_hashing: rotated views need square images, got {tuple(images.shape[-2:])}")
    return [torch.rot90(images, k, dims=(2, 3)) if k else images for k in range(4)]


def binary_codes(codes: Tensor) -> Tensor:
    """``sign(u − 0.5)``: ±1, and 0 for a component exactly 0.5 (as the code)."""
    return torch.sign(codes - 0.5)


class HashNetwork(nn.Module):
    """Backbone → ``hash_layer`` Linear(d, bits) → sigmoid → ``fc`` Linear(bits, C).

    ``model(images)`` returns logits; ``model.encode(images)`` returns ``(logits, u)``.
    """

    def __init__(self, backbone: Backbone, num_classes: int, bits: int = 16) -> None:
        super().__init__()
        self.backbone = backbone
        self.hash_layer = nn.Linear(backbone.out_dim, bits)
        self.fc = nn.Linear(bits, num_classes)

    def encode(self, images: Tensor) -> tuple[Tensor, Tensor]:
        codes = torch.sigmoid(self.hash_layer(self.backbone(images)))
        return self.fc(codes), codes

    def forward(self, images: Tensor) -> Tensor:
        return self.encode(images)[0]


# --- method ------------------------------------------------------------------------------------
@register_method("rotation_hashing")
class RotationHashing(Method):
    """Rotation-invariance deep hashing (Zhang et al., MedIA 2022). See the module docstring."""

    # train.py of the official code: SGD lr 0.01, momentum 0.9, wd 5e-4, batch 64, 120 epochs, lr ×0.1 at the
    # start of 0-indexed epochs 40/60/80/100, and no augmentation: ToTensor + Normalize(0.5, 0.5) for training
    # and test alike — the plain_half preset as the training view and the eval view.
    recipes = {"paper": Recipe(
        source="zylbuaa/dermoscopic_img_retrieval train.py @ c296fde (Zhang et al., MedIA 2022)",
        train={"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 64,
               "epochs": 120, "lr_schedule": "step", "lr_milestones": (40, 60, 80, 100), "lr_gamma": 0.1,
               "eval_view": "plain_half"},
        params={"view": "plain_half"},
        note="HDCSA ResNet-18 from scratch on images pre-resized to 224 px (backbone and size stay the benchmark's); "
             "the code selects its checkpoint on the test set (here: validation)")}

    views = ("standard",)
    #: A retrieval method: its classifier only shapes the hash code, through a CE that weighs class c by
    #: ~n_c² per batch (module docstring), so its accuracy row is not a classifier's. The report marks it.
    retrieval_method = True

    def __init__(self, bits: int = 16, epsilon: float = 0.5, cri_weight: float = 0.5, attention: bool = True,
                 reduction_ratio: int = 16, dilations: tuple[int, ...] = (1, 2, 5), attention_kernel: int = 7,
                 radius: int = 4, top_k: int = 10, view: str = "standard") -> None:
        super().__init__()
        if bits < 1 or epsilon <= 0 or cri_weight < 0 or radius < 0 or top_k < 1:
            raise ValueError("rotation_hashing: need bits >= 1, epsilon > 0, cri_weight >= 0, radius >= 0, top_k >= 1")
        self.bits = bits
        self.epsilon = epsilon
        self.cri_weight = cri_weight
        self.attention = attention  # False: the code's DH_ResNet18 ablation (no HDCSA)
        self.reduction_ratio = reduction_ratio
        self.dilations = tuple(dilations)
        self.attention_kernel = attention_kernel
        self.radius = radius  # for p10_r4_macro (ltbench.retrieval.metrics)
        self.top_k = top_k
        self.view = view  # the training view: "plain_half" is the code's pipeline (no augmentation, 0.5/0.5)

    def build_model(self, backbone: Backbone, info: TrainInfo) -> nn.Module:
        if self.attention:
            backbone = add_spatial_attention(backbone, self.reduction_ratio, self.dilations, self.attention_kernel)
        return HashNetwork(backbone, info.num_classes, self.bits)

    def representations(self, model: nn.Module, images: Tensor) -> dict[str, Tensor]:
        """``feature`` (backbone), ``hash`` (the sigmoid codes u) and ``hash_binary`` (``sign(u − 0.5)``)."""
        features = model.backbone(images)
        codes = torch.sigmoid(model.hash_layer(features))
        return {"feature": features, "hash": codes, "hash_binary": binary_codes(codes)}

    def training_step(self, model: nn.Module, batch: Batch) -> StepResult:
        images, labels = batch.views[0], batch.labels
        logits = model(images)  # the CE pass; then one pass per rotated view, as train.py
        codes = [model.encode(view)[1] for view in rotated_views(images)]
        with torch.autocast(device_type=logits.device.type, enabled=False):
            ce = batch_frequency_ce(logits.float(), labels, logits.shape[1])
            cri = cauchy_rotation_invariance_loss(*(u.float() for u in codes), epsilon=self.epsilon)
        return ce + self.cri_weight * cri, {"ce": ce.detach(), "cri": cri.detach()}
