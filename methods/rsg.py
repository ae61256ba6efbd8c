"""RSG: the rare-class sample generator (Wang, Lukasiewicz, Hu, Cai, Xu, CVPR 2021; code Jianf-Wang/RSG
@ 3c50745: ``Imbalanced_Classification/models/RSG.py``, ``models/resnet_cifar.py``, ``models/resnet.py``,
``cifar_train.py``, ``imagenet_lt_train.py``). The module is in ``methods/_rsg.py``.

Where it sits: on the trunk's feature map *before the last stage* (``Backbone.split_last_stage``): the
official CIFAR ResNet-32 applies it after layer2 (its last stage is layer3), the ImageNet ResNets after
layer3. Training only: ``predict`` is ``classifier(tail(trunk(x)))`` (the official deletes the module from
the saved weights).

What the module computes (per batch of maps f, labels y; all of it from the detached maps, so the RSG
losses train the RSG module, never the backbone):

* **Centre estimation**: ``γ_i = softmax_k(pool(f_i)·A_{y_i} + b_{y_i})`` over ``n_center = 15`` centres per
  class; ``L_cesc = Σ_i Σ_k γ_ik ‖f_i − c_{y_i,k}‖² / B``.
* **Contrastive module** (epochs up to the threshold): pairs (i, B/2 + i) through conv1×1 → ReLU → conv3×3
  (256 channels) → global pool → Linear(256, 2), CE against "same class"; added to L_cesc.
* **Vector transfer** (epochs after the threshold, when the batch has head and tail samples): the variation
  ``f_h − c_h`` of a head sample about its nearest centre, transformed by a 3×3 conv T, is added to a tail
  map: ``f_t + T(f_h − c_h)``; the generated maps join the batch with the tail labels. The batch is split
  in ``int(n_head · strength / n_tail)`` segments (or the tail in ``int(n_tail · strength / n_head)``).
* **MV loss** per segment: CE of the (frozen) contrastive module against "different" on
  ``[f_h, T(f_h − c_h)]`` + ``(Σ |‖T(v)‖ − ‖v‖| + Σ |n̂(f_t − c_t) ⊙ n̂(T(v)) − 1|) / n`` over the official
  ``view(-1, C)`` rows; averaged over the segments.
* **Loss**: ``CE(logits of [f; generated], [y; y_tail]) + 0.1·L_cesc + 0.01·L_mv`` (``cifar_train.py``).

**The ImageNet-LT script** (``imagenet_lt_train.py``, the reading MONICA's "RSG" row runs): ``loss: ldam`` — LDAM
(``ldam_margins`` with ``ldam_max_margin = 0.3``, s = 30, unit weights) on a cosine classifier
(``NormedLinear``, ``predict`` gives s·cos) — and ``resample: true``: from the first generating epoch the
batches come from the ``class_balanced`` sampler (its ``ImbalancedDatasetSampler``: weights 1/n_c, with
replacement). ltbench runs the re-sampled epochs as a second stage, so SGD momentum restarts there (the
official keeps its optimiser).

Defaults (official): n_center 15, contrastive dim 256, transfer strength 1.0, head classes the
``int(0.2·C)`` most frequent (``--head_tail_ratio 0.2``; ties to the lower index, as ``list.index(max)``),
generation from 0-indexed epoch ``floor(0.8·E)`` (``--epoch_thresh 159`` of 200, 79 of 100), loss weights
0.1 and 0.01, cross-entropy (the CIFAR script's default ``--loss_type CE``).

Departures, and why:

* **Pooling.** The official ``AvgPool2d(H)`` built for a fixed map size; here the global mean over the map
  (the same for the square maps it was built for; ltbench's map size follows the image size).
* **Odd batches.** The official pairs the two halves of the batch and fails on an odd size; here the odd
  last sample is left out of the pairs.
* **Frozen contrastive module in the MV loss.** The official sets ``requires_grad = False`` on it for good
  at the first generating step; here its weights are detached in that loss, which gives the same gradients
  (after the threshold nothing else uses it) without touching the flags the trainer restores.
* **Head classes by count** on ltbench's class order (the CIFAR script takes classes 0..k−1, the most
  frequent there).
* **Protocol.** The shared protocol's optimiser, schedule and views replace the official SGD 0.1 with
  warm-up and steps (the ``paper`` recipe).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltbench.errors import LtbenchError
from ltbench.method import Batch, Method, StepResult, TrainInfo
from ltbench.methods._rsg import RareSampleGenerator
from ltbench.models import Backbone
from ltbench.recipes import Recipe
from ltbench.registry import register_method
from ltbench.methods.ldam_drw import ldam_loss, ldam_margins
from ltbench.models import NormedLinear
from ltbench.schedules import drw_switch_epoch
from ltbench.stages import Stage


def head_class_mask(class_counts, head_tail_ratio: float = 0.2) -> Tensor:
    """The ``int(C · ratio)`` most frequent classes (``imagenet_lt_train.py``: repeated ``index(max)``)."""
    counts = list(class_counts)
    mask = torch.zeros(len(counts), dtype=torch.bool)
    for _ in range(int(len(counts) * head_tail_ratio)):
        top = counts.index(max(counts))
        mask[top] = True
        counts[top] = -1
    return mask


def _channels(trunk: nn.Module, arch: str) -> int:
    """Channels of the trunk's output map: its last BatchNorm2d (a CNN's; a transformer has none)."""
    norms = [m for m in trunk.modules() if isinstance(m, nn.BatchNorm2d)]
    if not norms:
        raise LtbenchError(f"rsg: needs a convolutional backbone (small-cnn or a ResNet: RSG works on the feature "
                           f"map before the last stage), got {arch}")
    return norms[-1].num_features


class RSGNetwork(nn.Module):
    """trunk → (RSG in training) → tail → Linear."""

    def __init__(self, backbone: Backbone, num_classes: int, head_classes: Tensor, n_center: int,
                 contrastive_dim: int, transfer_strength: float, epoch_thresh: int, cosine: bool = False) -> None:
        super().__init__()
        self.trunk, self.tail = backbone.split_last_stage()
        self.classifier = NormedLinear(backbone.out_dim, num_classes) if cosine else nn.Linear(backbone.out_dim,
                                                                                                num_classes)
        channels = _channels(self.trunk, getattr(backbone, "arch", "?"))
        self.rsg = RareSampleGenerator(channels, num_classes, head_classes, n_center, contrastive_dim,
                                       transfer_strength, epoch_thresh)

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier(self.tail(self.trunk(images)))


@register_method("rsg")
class RSG(Method):
    """RSG (Wang et al., CVPR 2021) with cross-entropy. See the module docstring."""

    recipes = {"paper": Recipe(
        source="Jianf-Wang/RSG Imbalanced_Classification/cifar_train.py @ 3c50745 (Wang et al., CVPR 2021)",
        train={"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 2e-4, "batch_size": 128,
               "epochs": 200, "lr_schedule": "step", "lr_milestones": (159, 179), "lr_gamma": 0.01,
               "warmup_epochs": 4, "warmup_start_factor": 0.2},
        note="its adjust_learning_rate: ×0.01 from 0-indexed epoch 159 and 179 (LDAM-DRW's from 160 and 180); "
             "CIFAR-10/100-LT, ResNet-32 at 32 px; backbone, size and views stay the benchmark's")}

    def __init__(self, n_center: int = 15, contrastive_dim: int = 256, head_tail_ratio: float = 0.2,
                 transfer_strength: float = 1.0, generation_fraction: float = 0.8, generation_epoch: int | None = None,
                 cesc_weight: float = 0.1, mv_weight: float = 0.01, loss: str = "ce", ldam_max_margin: float = 0.3,
                 resample: bool = False) -> None:
        super().__init__()
        if loss not in ("ce", "ldam"):
            raise ValueError(f"rsg: loss must be 'ce' or 'ldam', got {loss!r}")
        if not (isinstance(ldam_max_margin, (int, float)) and ldam_max_margin >= 0):
            raise ValueError(f"rsg: ldam_max_margin must be a number >= 0, got {ldam_max_margin!r}")
        for name, value in (("n_center", n_center), ("contrastive_dim", contrastive_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"rsg: {name} must be a positive integer, got {value!r}")
        if not (isinstance(head_tail_ratio, (int, float)) and 0 <= head_tail_ratio < 1):
            raise ValueError(f"rsg: head_tail_ratio must be in [0, 1), got {head_tail_ratio!r}")
        if not (isinstance(transfer_strength, (int, float)) and 0 < transfer_strength <= 1):
            raise ValueError(f"rsg: transfer_strength must be in (0, 1], got {transfer_strength!r}")
        if not (isinstance(generation_fraction, (int, float)) and 0 <= generation_fraction <= 1):
            raise ValueError(f"rsg: generation_fraction must be in [0, 1], got {generation_fraction!r}")
        if generation_epoch is not None and (isinstance(generation_epoch, bool) or not isinstance(generation_epoch, int)
                                             or generation_epoch < 0):
            raise ValueError(f"rsg: generation_epoch must be None or a 0-indexed epoch, got {generation_epoch!r}")
        for name, value in (("cesc_weight", cesc_weight), ("mv_weight", mv_weight)):
            if not (isinstance(value, (int, float)) and value >= 0):
                raise ValueError(f"rsg: {name} must be a number >= 0, got {value!r}")
        self.n_center, self.contrastive_dim = n_center, contrastive_dim
        self.head_tail_ratio, self.transfer_strength = head_tail_ratio, transfer_strength
        self.generation_fraction, self.generation_epoch = generation_fraction, generation_epoch
        self.cesc_weight, self.mv_weight = cesc_weight, mv_weight
        self.loss, self.ldam_max_margin, self.resample = loss, ldam_max_margin, bool(resample)
        self.first_generation_epoch = 0

    def setup(self, info: TrainInfo) -> None:
        # official epoch_thresh = first generating epoch − 1 (159 of 200: generation from epoch 160)
        self.first_generation_epoch = drw_switch_epoch(info.epochs, self.generation_fraction, self.generation_epoch)
        margins = ldam_margins(info.class_counts, self.ldam_max_margin).to(torch.float32)  # float64 -> float32
        self.register_buffer("margins", margins.to(info.device))

    def stages(self, info: TrainInfo) -> list[Stage]:
        if not self.resample:
            return super().stages(info)
        first = min(self.first_generation_epoch, info.epochs)
        return [Stage(epochs=first, samplers=("instance",), name="instance"),
                Stage(samplers=("class_balanced",), name="resampled")]

    def build_model(self, backbone: Backbone, info: TrainInfo) -> nn.Module:
        return RSGNetwork(backbone, info.num_classes, head_class_mask(info.class_counts, self.head_tail_ratio),
                          self.n_center, self.contrastive_dim, self.transfer_strength, self.first_generation_epoch - 1,
                          cosine=self.loss == "ldam")

    def training_step(self, model: nn.Module, batch: Batch) -> StepResult:
        maps = model.trunk(batch.views[0])
        with torch.autocast(device_type=maps.device.type, enabled=False):
            maps, cesc, mv, target = model.rsg(maps.float(), batch.labels, self.epoch)
        logits = model.classifier(model.tail(maps))
        with torch.autocast(device_type=logits.device.type, enabled=False):
            if self.loss == "ldam":
                ce = ldam_loss(logits.float(), target, self.margins, 30.0)
            else:
                ce = F.cross_entropy(logits.float(), target)
            loss = ce + self.cesc_weight * cesc.mean() + self.mv_weight * mv.mean()
        generated = torch.tensor(float(len(target) - len(batch.labels)))
        return loss, {"cesc": cesc.detach(), "mv": mv.detach(), "generated": generated}

    def predict(self, model: nn.Module, images: Tensor) -> Tensor:
        logits = model(images)
        return 30.0 * logits if self.loss == "ldam" else logits  # s · cosine: the logits LDAM trains

    def representations(self, model: nn.Module, images: Tensor) -> dict[str, Tensor]:
        return {"feature": model.tail(model.trunk(images))}
