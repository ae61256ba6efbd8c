"""GCL: Gaussian clouded logit adjustment, then a class-balanced re-training of the classifier.

Li, Cheung, Lu: "Long-tailed Visual Recognition via Gaussian Clouded Logit Adjustment", CVPR 2022.
Official code: Keke921/GCLLoss @ c2a6233 (``losses.py`` ``GCLLoss``, ``focal_loss``;
``cifar_train_backbone.py`` stage 1, ``cifar_train_classifier.py`` stage 2; ``sampler.py``; ``utils.py``
``mixup_data``; ``models/resnet_cifar.py`` ``NormedLinear``).

**The loss** (``GCLLoss.forward``), on cosine logits z (``NormedLinear``: no bias), n the training-split
counts (float32), ``d_c = log n_max − log n_c`` (float32), ε ~ N(0, 1/3) per entry (B × C, drawn on the
CPU, clamped to [−1, 1])::

    z̃ = z − noise_mul · |ε| / max_k d_k · d          (every entry, the target's too; d = 0 for the head)
    z̃_iy ← z̃_iy − m                                  (the target entry only)
    loss = CE(s · z̃, y)                               (mean over the batch)
    train_cls: mean_i (1 − p_i)^γ · CE_i,  p_i = exp(−CE_i) detached (``focal_loss``)

**The two stages** (the CIFAR scripts' settings):

1. ``cifar_train_backbone.py``: the whole network, instance batches, ``GCLLoss(m=0., s=30, noise_mul=0.5)``,
   mixup (``--mixup`` defaults to True, α = 1); 200 epochs.
2. ``cifar_train_classifier.py``: the backbone frozen in eval mode (``requires_grad = False``,
   ``model.eval()``), only the ``NormedLinear`` classifier trained, starting from the stage-1 classifier;
   ``BalancedRS`` = ``BalancedDatasetSampler`` (weights 1/n_c with replacement: ltbench's
   ``class_balanced``); ``GCLLoss(m=0.1, s=20, train_cls=True, noise_mul=0.5, gamma=1.)``; mixup α = 1;
   30 epochs at lr ``0.1·0.1·(1 + cos(π e/30))·0.1`` = a cosine from 0.002 (0.02 × stage 1's 0.1), 0-indexed
   per epoch as ltbench's cosine.

Here stage 1 takes ``E − k`` epochs and stage 2 ``k = max(1, floor(classifier_fraction · E + 0.5))``
epochs of the same budget E, ``classifier_fraction = 30/230`` (the code's 30 of 200 + 30 epochs: E = 20
→ 17 + 3), so the row costs what a one-stage row costs; ``classifier_epochs = N`` instead runs stage 1
over all of E and stage 2 for N epochs beyond it (the code's 200 + 30; the ``paper`` recipe). Stage 2's
lr is ``classifier_stage_lr`` or, by default, 0.02 × the run's lr (the code's ratio), on its own cosine
without warm-up whatever the run's schedule.
Its epochs are the only selectable ones (the code reports its stage-2 model). ``predict`` returns
``s · z`` with the scale of the stage that trained the classifier (30, then 20): the argmax is the
code's (it validates the bare cosine), and the softmax giving ltbench's AUC probabilities is the one
trained on. ``two_stage=False`` runs stage 1 alone over E (the paper's one-stage GCL rows).

**Why no probe stage.** The official stage 2 is not a linear re-fit: it re-trains a cosine classifier
without bias, under a noisy focal loss with a margin and mixup. ltbench's probe fits an affine
``nn.Linear`` to a deterministic per-sample loss, a different classifier; stage 2 is therefore the
official SGD re-training (the report flags it if it has not converged within its epochs).

Where ltbench departs, and why:

* **Stage 2 starts from the last stage-1 epoch**, not the best one (the code loads
  ``ckpt.best.pth.tar``, chosen on the CIFAR test set): ltbench tests on a separate split and selects on
  validation only within stage 2.
* **Noise generator.** ε is drawn from the method's own CPU generator (seeded from the run's seed; its
  state in the buffer ``noise_generator_state``) with ``torch.normal(0, 1/3)``, as ``Normal(0, 1/3).sample``
  draws it from the global one; with mixup, each of the two loss terms draws its own ε, as the code's
  ``mixup_criterion`` calls the loss twice.
* **All classes equally frequent** (max d = 0): the code divides 0 by 0 (NaN); here the noise term is 0.
* **Mixup** is ltbench's (``ltbench.losses``: λ ~ Beta(α, α) by inversion, its own generator), not
  ``np.random.beta``; ``mixup_alpha = 0`` turns it off in both stages.
* **Protocol.** Within one budget and the shared optimiser, lr and cosine (the ``paper`` recipe: the CIFAR
  script's SGD 0.1, batch 64, wd 2e-4, warm-up and steps at 160/180), not 200 + 30 epochs; the
  re-weighting rules of the scripts (``EffectNumRS``, ``BalancedRW``, ...) and ``GCLAngLoss`` are not offered.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltbench.method import LossMethod, TrainInfo
from ltbench.models import Backbone, Classifier, NormedLinear
from ltbench.recipes import Recipe
from ltbench.registry import register_method
from ltbench.stages import BALANCED_SAMPLERS, Stage, stage_bounds, stage_index

NOISE_STD = 1.0 / 3.0  # normal.Normal(0, 1/3)
CLASSIFIER_LR_RATIO = 0.02  # stage 2's 0.002 over stage 1's 0.1 (cifar_train_classifier.adjust_learning_rate)
_NOISE_TAG = 0x6C63_6E6F_6973_65  # distinct from mixup's stream


def gcl_margins(class_counts: Sequence[int] | Tensor) -> Tensor:
    """``d_c = max_k log n_k − log n_c`` from float32 counts (``GCLLoss.__init__``'s ``m_list``)."""
    m_list = torch.log(torch.as_tensor(class_counts).float())
    return m_list.max() - m_list


def gcl_noise(shape: Sequence[int], generator: torch.Generator | None = None) -> Tensor:
    """ε ~ N(0, 1/3) clamped to [−1, 1], float32 on the CPU (``self.simpler.sample(shape).clamp(-1, 1)``)."""
    loc = torch.zeros(tuple(shape))
    return torch.normal(loc, torch.full_like(loc, NOISE_STD), generator=generator).clamp(-1, 1)


def focal_loss(input_values: Tensor, gamma: float) -> Tensor:
    """``mean((1 − p.detach())^γ · ce)``, p = exp(−ce) (the code's ``focal_loss``)."""
    p = torch.exp(-input_values)
    return ((1 - p.detach()) ** gamma * input_values).mean()


def gcl_loss(cosine: Tensor, labels: Tensor, m_list: Tensor, noise: Tensor, m: float = 0.5, s: float = 30.0,
             noise_mul: float = 1.0, weight: Tensor | None = None, train_cls: bool = False,
             gamma: float = 0.0) -> Tensor:
    """``GCLLoss.forward`` with its noise given: see the module docstring (``noise``: ε, B × C)."""
    index = F.one_hot(labels, cosine.shape[1]).bool()
    m_list = m_list.to(cosine)
    top = m_list.max()
    if float(top) > 0:  # all counts equal: the code's 0/0; no noise term here
        cosine = cosine - noise_mul * noise.to(cosine).abs() / top * m_list
    output = torch.where(index, cosine - m, cosine)
    if weight is not None:
        weight = weight.to(cosine)
    if train_cls:
        return focal_loss(F.cross_entropy(s * output, labels, reduction="none", weight=weight), gamma)
    return F.cross_entropy(s * output, labels, weight=weight)


def noise_generator(seed: int) -> torch.Generator:
    """The noise's CPU generator for a run seed (a 64-bit hash of (seed, tag), apart from mixup's)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, _NOISE_TAG]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


@register_method("gcl")
class GCL(LossMethod):
    """GCL (Li et al., CVPR 2022): Gaussian clouded logits, then classifier re-balancing (module docstring)."""

    # Keke921/GCLLoss README + cifar_train_backbone.py (stage 1): SGD 0.1, momentum 0.9, wd 2e-4, batch 64,
    # 200 epochs, lr·(e+1)/5 for 0-indexed e < 5, ×0.1 after 160, ×0.01 after 180 (a 4-epoch warm-up from 0.2,
    # γ 0.1 at 160/180). Stage 2 (cifar_train_classifier.py): 30 epochs beyond them (classifier_epochs), cosine
    # from 0.002, same batch and wd.
    recipes = {"paper": Recipe(
        source="Keke921/GCLLoss README, cifar_train_backbone.py, cifar_train_classifier.py, losses.py @ c2a6233 "
               "(Li et al., CVPR 2022)",
        train={"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 2e-4, "batch_size": 64,
               "epochs": 200, "lr_schedule": "step", "lr_milestones": (160, 180), "lr_gamma": 0.1,
               "warmup_epochs": 4, "warmup_start_factor": 0.2},
        params={"classifier_epochs": 30, "classifier_stage_lr": 0.002},
        note="stage 2: 30 epochs beyond the 200, class-balanced, cosine from 0.002, no warm-up (the classifier "
             "script); CIFAR-10-LT: ResNet-32 at 32 px, random crop + flip; backbone, size and views stay the "
             "benchmark's")}

    def __init__(self, m: float = 0.0, s: float = 30.0, noise_mul: float = 0.5, two_stage: bool = True,
                 classifier_fraction: float = 30 / 230, classifier_epochs: int | None = None,
                 classifier_stage_lr: float | None = None,
                 classifier_sampler: str = "class_balanced", classifier_m: float = 0.1, classifier_s: float = 20.0,
                 classifier_noise_mul: float = 0.5, classifier_gamma: float = 1.0, sampler: str = "instance",
                 mixup_alpha: float = 1.0) -> None:
        super().__init__(sampler=sampler, mixup_alpha=mixup_alpha)  # the code's mixup is on by default
        for name, value in (("m", m), ("classifier_m", classifier_m), ("noise_mul", noise_mul),
                            ("classifier_noise_mul", classifier_noise_mul), ("classifier_gamma", classifier_gamma)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"gcl: {name} must be a finite number >= 0, got {value!r}")
        for name, value in (("s", s), ("classifier_s", classifier_s)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0 and math.isfinite(value)):
                raise ValueError(f"gcl: {name} must be a finite number > 0, got {value!r}")
        if not (isinstance(classifier_fraction, (int, float)) and 0.0 < classifier_fraction < 1.0):
            raise ValueError(f"gcl: classifier_fraction must be in (0, 1), got {classifier_fraction!r}")
        if classifier_epochs is not None and (isinstance(classifier_epochs, bool) or not isinstance(classifier_epochs, int)
                                              or classifier_epochs < 1):
            raise ValueError(f"gcl: classifier_epochs must be a positive integer or None, got {classifier_epochs!r}")
        if classifier_stage_lr is not None and not (isinstance(classifier_stage_lr, (int, float)) and classifier_stage_lr > 0):
            raise ValueError(f"gcl: classifier_stage_lr must be a positive number or None, got {classifier_stage_lr!r}")
        if classifier_sampler not in ("instance", "reversed") + BALANCED_SAMPLERS:
            raise ValueError(f"gcl: unknown classifier_sampler {classifier_sampler!r}")
        self.m = m
        self.s = s
        self.noise_mul = noise_mul
        self.two_stage = two_stage
        self.classifier_fraction = classifier_fraction
        self.classifier_epochs = classifier_epochs
        self.classifier_stage_lr = classifier_stage_lr
        self.classifier_sampler = classifier_sampler
        self.classifier_m = classifier_m
        self.classifier_s = classifier_s
        self.classifier_noise_mul = classifier_noise_mul
        self.classifier_gamma = classifier_gamma
        self._bounds: list[tuple[int, int]] = []

    def setup(self, info: TrainInfo) -> None:
        super().setup(info)  # mixup's generator
        self.register_buffer("m_list", gcl_margins(info.class_counts).to(info.device))
        self.register_buffer("noise_generator_state", noise_generator(info.seed).get_state())
        # the scale of the stage that trained the classifier (predict); a buffer, so checkpoints carry it
        self.register_buffer("scale", torch.tensor(float(self.s), device=info.device))

    def build_model(self, backbone: Backbone, info: TrainInfo) -> nn.Module:
        return Classifier(backbone, NormedLinear(backbone.out_dim, info.num_classes))

    def classifier_length(self, epochs: int) -> int:
        """Stage 2's length within E: ``max(1, floor(classifier_fraction · E + 0.5))``, at most E."""
        return min(epochs, max(1, math.floor(self.classifier_fraction * epochs + 0.5)))

    def stages(self, info: TrainInfo) -> list[Stage]:
        first = Stage(samplers=(self.sampler,), views=tuple(self.views), name="gcl")
        if not self.two_stage:
            stages = [first]
        else:
            extra = self.classifier_epochs is not None  # the code's 200 + 30: stage 2 beyond the budget
            k = self.classifier_epochs if extra else self.classifier_length(info.epochs)
            lr = self.classifier_stage_lr if self.classifier_stage_lr is not None else CLASSIFIER_LR_RATIO * info.lr
            # stage 2: its own cosine from lr, no warm-up, whatever the run's schedule (the code's)
            stages = [Stage(epochs=info.epochs - (0 if extra else k), samplers=(self.sampler,),
                            views=tuple(self.views), name="gcl", selectable=False),
                      Stage(epochs=k, extra=extra, samplers=(self.classifier_sampler,), views=tuple(self.views),
                            trains=("head",), lr=lr, lr_schedule="cosine", warmup_epochs=0, name="classifier")]
        self._bounds = stage_bounds(stages, info.epochs)
        return stages

    def in_classifier_stage(self) -> bool:
        return self.two_stage and bool(self._bounds) and stage_index(self._bounds, self.epoch) == 1

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        self.scale.fill_(self.classifier_s if self.in_classifier_stage() else self.s)

    def draw_noise(self, shape: Sequence[int]) -> Tensor:
        """ε for one loss call, from the generator whose state is the buffer (resumes carry it)."""
        generator = torch.Generator().set_state(self.noise_generator_state.cpu())
        noise = gcl_noise(shape, generator)
        self.noise_generator_state.copy_(generator.get_state())
        return noise

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        with torch.autocast(device_type=logits.device.type, enabled=False):
            logits = logits.float()
            noise = self.draw_noise(logits.shape).to(logits.device)
            if self.in_classifier_stage():
                return gcl_loss(logits, labels, self.m_list, noise, self.classifier_m, self.classifier_s,
                                self.classifier_noise_mul, train_cls=True, gamma=self.classifier_gamma)
            return gcl_loss(logits, labels, self.m_list, noise, self.m, self.s, self.noise_mul)

    def predict(self, model: nn.Module, images: Tensor) -> Tensor:
        return self.scale * model(images).float()
