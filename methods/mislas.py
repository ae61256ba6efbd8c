"""MiSLAS: mixup shifted label-aware smoothing (Zhong, Cui, Liu, Jia, CVPR 2021; code dvlab-research/MiSLAS
@ 0fc381e, ``methods.py``, ``train_stage1.py``, ``train_stage2.py``, ``config/*``).

Two stages, as the official scripts run them:

* **Stage 1** (the budget E minus stage 2): backbone + linear classifier trained with mixup and cross-entropy,
  ``λ·CE(z, y_a) + (1 − λ)·CE(z, y_b)``, λ ~ Beta(α, α) once per batch (``methods.py`` ``mixup_data``;
  ltbench's mixup, ``ltbench.losses``). α = 0.2 (ImageNet-LT, iNaturalist, Places configs; 1.0 for CIFAR).
* **Stage 2** (the last ``stage2_epochs`` = 10 epochs of the budget; at most half of it): class-aware
  batches; the backbone runs without gradient; the linear classifier and a learnable per-class logit
  scale (``LearnableWeightScaling``, ones at the start) are trained on the label-aware smoothing loss
  (:func:`label_aware_smoothing_loss`):
  ``mean_i (1 − ε_{y_i})·(−log p_{i,y_i}) + ε_{y_i}·mean_c(−log p_{i,c})`` with
  ``ε_c = ε_K + (ε_1 − ε_K)·f((n_c − n_K)/(n_1 − n_K))`` (:func:`las_smoothing`), f the official
  ``concave`` sin(π x / 2) (the default, as ``train_stage2.py`` builds it), ``linear`` x, ``convex``
  1 + sin(3π/2 + π x/2) written ``ε_1 + (ε_1 − ε_K)·sin(3π/2 + π x/2)``, or ``exp`` x^power.
  **Shift learning on BN** (``shift_bn``): the backbone is in train mode in stage 2, so BatchNorm's running
  mean and variance are re-estimated on the class-aware batches while its affine weights stay fixed (the
  official ``model.train()`` under ``torch.no_grad()``; the paper, Sec. 3.3: "update the running mean μ and
  variance σ and yet fix the learnable linear transformation parameters"). Stage-2 learning rates: cosine
  over the 10 epochs from ``lr`` (the run's) for the scale and ``lr_factor · lr`` for the classifier.
* **Test**: ``lws ⊙ (W f + b)``.

Defaults: the ImageNet-LT ResNet-50 configs (``imagenet_resnet50_stage{1_mixup,2_mislas}.yaml``): α = 0.2,
ε_1 = 0.3, ε_K = 0.0, ``shift_bn`` on, ``lr_factor`` = 0.05, 10 stage-2 epochs. The CIFAR configs use
α = 1.0 and ε_1 0.1-0.4, ε_K 0-0.1, ``lr_factor`` 0.1-0.5, ``shift_bn`` off for CIFAR-10.

Departures, and why:

* **Two learning rates in one SGD.** ltbench gives a stage one lr; the stage runs at ``lr_factor · lr`` (the
  classifier's rate, exactly) and the logit scale is stored as ``s = u / sqrt(lr_factor)``, so plain SGD on
  u moves s at rate ``lr``, as the official second param group. Only the weight decay on s is then
  ``lr_factor`` times the official one (2e-4 to 5e-4 over 10 epochs on values near 1: negligible).
* **Sampler.** ltbench's ``class_aware`` (OLTR's ClassAwareSampler with one image per class visit and N draws
  per epoch); the official sampler takes 4 images per visit and ``n_max · C`` per epoch.
* **Equal class counts** (n_1 = n_K): the official formula divides 0 by 0 (NaN); here every class gets ε_1.
* **Budget.** Both stages share the run's E (every row of a table trains E epochs): stage 2 takes its
  official 10 epochs (at most ``E // 2``, so a short run keeps a mixup stage) and stage 1 the rest; the
  ``paper`` recipe's E = 190 is the official 180 + 10.
* **Protocol.** Stage 1 is the shared protocol (optimizer, schedule, budget, views; the official step or
  cosine schedules are in the ``paper`` recipe); the best-validation checkpoint may fall in either stage.
* **Numerics.** ε is computed in float64 and stored as float32, as the official numpy → ``.float()``; the
  losses run in float32 with autocast off.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltbench.method import Batch, LossMethod, StepResult, TrainInfo
from ltbench.models import Backbone
from ltbench.recipes import Recipe
from ltbench.registry import register_method
from ltbench.stages import Stage, stage_bounds

LAS_SHAPES = ("concave", "linear", "convex", "exp")


def las_smoothing(class_counts: Sequence[int], smooth_head: float, smooth_tail: float, shape: str = "concave",
                  power: float | None = None) -> Tensor:
    """ε_c per class, as ``LabelAwareSmoothing.__init__`` computes it (float64)."""
    n = np.array([float(c) for c in class_counts])
    n_1, n_k = n.max(), n.min()
    if n_1 == n_k:  # the official 0/0; every class is a head class
        return torch.full((len(n),), float(smooth_head), dtype=torch.float64)
    if shape == "concave":
        eps = smooth_tail + (smooth_head - smooth_tail) * np.sin((n - n_k) * np.pi / (2 * (n_1 - n_k)))
    elif shape == "linear":
        eps = smooth_tail + (smooth_head - smooth_tail) * (n - n_k) / (n_1 - n_k)
    elif shape == "convex":
        eps = smooth_head + (smooth_head - smooth_tail) * np.sin(1.5 * np.pi + (n - n_k) * np.pi / (2 * (n_1 - n_k)))
    elif shape == "exp" and power is not None:
        eps = smooth_tail + (smooth_head - smooth_tail) * np.power((n - n_k) / (n_1 - n_k), power)
    else:
        raise ValueError(f"mislas: las_shape must be one of {', '.join(LAS_SHAPES)} (exp needs las_power), "
                         f"got {shape!r}")
    return torch.from_numpy(eps)


def label_aware_smoothing_loss(logits: Tensor, labels: Tensor, smoothing: Tensor) -> Tensor:
    """``LabelAwareSmoothing.forward``: mean over the batch of ``(1 − ε_y)·nll + ε_y·mean_c(−log p_c)``."""
    eps = smoothing.to(logits.dtype)[labels]
    logprobs = F.log_softmax(logits, dim=-1)
    nll = -logprobs.gather(dim=-1, index=labels.unsqueeze(1)).squeeze(1)
    smooth = -logprobs.mean(dim=-1)
    return ((1.0 - eps) * nll + eps * smooth).mean()


class LabelAwareSmoothing(nn.Module):
    """The official criterion's interface (``methods.py``): ``LabelAwareSmoothing(cls_num_list, smooth_head,
    smooth_tail, shape, power)(x, target)``, ε stored as float32 as the official ``.float()``."""

    def __init__(self, cls_num_list: Sequence[int], smooth_head: float, smooth_tail: float, shape: str = "concave",
                 power: float | None = None) -> None:
        super().__init__()
        self.register_buffer("smooth", las_smoothing(cls_num_list, smooth_head, smooth_tail, shape, power).float())

    def forward(self, x: Tensor, target: Tensor) -> Tensor:
        return label_aware_smoothing_loss(x, target, self.smooth)


class ScaledLogits(nn.Module):
    """``LearnableWeightScaling``: per-class scale of the logits, ``s = u · gain`` (s starts at ones)."""

    def __init__(self, num_classes: int, gain: float = 1.0) -> None:
        super().__init__()
        self.gain = gain
        start = torch.tensor(1.0 / gain, dtype=torch.float32)
        for _ in range(4):  # the float32 u whose product with the gain is exactly 1 (stage 1 logits untouched)
            if (start * gain).item() == 1.0:
                break
            start = torch.nextafter(start, torch.tensor(2.0 if (start * gain).item() < 1.0 else 0.0))
        self.learned_norm = nn.Parameter(torch.full((1, num_classes), start.item()))

    def scale(self) -> Tensor:
        return self.learned_norm * self.gain

    def forward(self, logits: Tensor) -> Tensor:
        return self.scale() * logits


class MiSLASNetwork(nn.Module):
    """backbone → ``classifier`` (Linear) → ``lws`` (per-class scale)."""

    def __init__(self, backbone: Backbone, num_classes: int, lws_gain: float) -> None:
        super().__init__()
        self.backbone = backbone
        self.classifier = nn.Linear(backbone.out_dim, num_classes)
        self.lws = ScaledLogits(num_classes, lws_gain)

    def forward(self, images: Tensor) -> Tensor:
        return self.lws(self.classifier(self.backbone(images)))


@register_method("mislas")
class MiSLAS(LossMethod):
    """MiSLAS (Zhong et al., CVPR 2021): mixup stage, then label-aware smoothing with shifted BN statistics."""

    recipes = {"paper": Recipe(
        source="dvlab-research/MiSLAS config/imagenet/imagenet_resnet50_stage1_mixup.yaml, "
               "imagenet_resnet50_stage2_mislas.yaml, train_stage1.py @ 0fc381e (Zhong et al., CVPR 2021)",
        train={"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 256,
               "epochs": 190, "lr_schedule": "cosine"},
        params={"mixup_alpha": 0.2, "smooth_head": 0.3, "smooth_tail": 0.0, "shift_bn": True,
                "lr_factor": 0.05, "stage2_epochs": 10},
        note="E = 180 mixup + 10 stage-2 epochs (stage 1's cosine then spans the 180); ImageNet-LT, ResNet-50 from "
             "scratch at 224 px; backbone, size and views stay the benchmark's")}

    def __init__(self, mixup_alpha: float = 0.2, smooth_head: float = 0.3, smooth_tail: float = 0.0,
                 las_shape: str = "concave", las_power: float | None = None, shift_bn: bool = True,
                 lr_factor: float = 0.05, stage2_epochs: int = 10, stage2_lr: float | None = None) -> None:
        super().__init__(sampler="instance", mixup_alpha=mixup_alpha)
        for name, value in (("smooth_head", smooth_head), ("smooth_tail", smooth_tail)):
            if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                raise ValueError(f"mislas: {name} must be in [0, 1], got {value!r}")
        if las_shape not in LAS_SHAPES or (las_shape == "exp" and las_power is None):
            raise ValueError(f"mislas: las_shape must be one of {', '.join(LAS_SHAPES)} (exp needs las_power), "
                             f"got {las_shape!r}")
        if not (isinstance(lr_factor, (int, float)) and 0 < lr_factor <= 1):
            raise ValueError(f"mislas: lr_factor must be in (0, 1], got {lr_factor!r}")
        if isinstance(stage2_epochs, bool) or not isinstance(stage2_epochs, int) or stage2_epochs < 1:
            raise ValueError(f"mislas: stage2_epochs must be a positive integer, got {stage2_epochs!r}")
        if stage2_lr is not None and not (isinstance(stage2_lr, (int, float)) and stage2_lr > 0):
            raise ValueError(f"mislas: stage2_lr must be None or positive, got {stage2_lr!r}")
        self.smooth_head = smooth_head
        self.smooth_tail = smooth_tail
        self.las_shape = las_shape
        self.las_power = las_power
        self.shift_bn = bool(shift_bn)
        self.lr_factor = lr_factor
        self.stage2_epochs = stage2_epochs
        self.stage2_lr = stage2_lr
        self._bounds: list[tuple[int, int]] = []

    def setup(self, info: TrainInfo) -> None:
        super().setup(info)  # mixup's generator
        eps = las_smoothing(info.class_counts, self.smooth_head, self.smooth_tail, self.las_shape, self.las_power)
        self.register_buffer("smoothing", eps.to(torch.float32).to(info.device))

    def build_model(self, backbone: Backbone, info: TrainInfo) -> nn.Module:
        return MiSLASNetwork(backbone, info.num_classes, 1.0 / math.sqrt(self.lr_factor))

    def stages(self, info: TrainInfo) -> list[Stage]:
        base = self.stage2_lr if self.stage2_lr is not None else info.lr
        stages = [Stage(samplers=("instance",), trains=("backbone", "classifier"), name="mixup"),
                  Stage(epochs=min(self.stage2_epochs, info.epochs // 2), samplers=("class_aware",),
                        trains=("classifier", "lws"), lr=self.lr_factor * base, lr_schedule="cosine",
                        warmup_epochs=0, name="las")]
        self._bounds = stage_bounds(stages, info.epochs)
        return stages

    def in_stage2(self) -> bool:
        return bool(self._bounds) and self.epoch >= self._bounds[1][0]

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:  # stage 1: CE (mixed by LossMethod)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return F.cross_entropy(logits.float(), labels)

    def training_step(self, model: nn.Module, batch: Batch) -> StepResult:
        if not self.in_stage2():
            return super().training_step(model, batch)
        if self.shift_bn:
            model.backbone.train()  # BN statistics follow the class-aware batches; no gradient reaches BN
        with torch.no_grad():
            features = model.backbone(batch.views[0])
        logits = model.lws(model.classifier(features.detach()))
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return label_aware_smoothing_loss(logits.float(), batch.labels, self.smoothing)
