"""BYOL: Bootstrap Your Own Latent (Grill et al., NeurIPS 2020), then the converging linear probe —
self-supervised pre-training followed by a linear classifier, as MONICA runs its SSL rows.

Followed: the official JAX code, google-deepmind/deepmind-research ``byol/`` (``byol_experiment.py``,
``utils/helpers.py``, ``utils/networks.py``, ``utils/schedules.py``); lucidrains/byol-pytorch, the
common PyTorch port, where the JAX code says nothing about PyTorch (the target as a deep copy).

Two stages (``ltbench.stages``, the shape of SimCLR's ``methods/simclr.py``):

1. **Representation** (the whole budget E, not selectable; instance batches, two ``byol`` views, no labels).
   Online network: backbone → ``projector`` → ``predictor``, each an MLP ``Linear(4096) → BN → ReLU →
   Linear(256)`` (``networks.MLP``; hidden 4096, output 256). Target network: ``target_backbone`` →
   ``target_projector``, parameters ``requires_grad=False``, run in train mode (BatchNorm on the batch,
   its own running statistics, as the code's ``is_training=True`` target pass). Each view goes through
   each network on its own (BatchNorm statistics per view, as ``apply_once_fn``). Loss, float32::

       ℓ(x, y) = ‖x̂ − ŷ‖²,  x̂ = x · rsqrt(max(Σx², 1e-12))   (helpers.regression_loss, = 2 − 2 cos)
       loss = mean_i [ℓ(q₁ᵢ, z′₂ᵢ) + ℓ(q₂ᵢ, z′₁ᵢ)]            (q: predictions, z′: target projections)

   After the online update of step k (0-indexed, K = E · steps per epoch) the target moves as the code's
   ``x + (1 − τ_k)(y − x)`` with ``τ_k = 1 − (1 − τ_base)(cos(π·min(k, K)/K) + 1)/2`` (``target_ema``;
   τ_base = 0.996, the paper's). The update after step k runs at the start of step k + 1 (the trainer
   calls no hook between an optimiser step and the next ``training_step``): the same arithmetic, and the
   step counter ``ema_step`` is a buffer, so checkpoints and resumes carry it. The update after the last
   step is skipped — nothing reads the target afterwards.
2. **Linear probe** on the frozen online backbone: cross-entropy, L-BFGS to convergence on the eval
   view's features (``ltbench.stages.Probe``), or ``probe="sgd"``.

Departures: target initialised as a copy of the online network (lucidrains; the JAX code draws it with
another seed and notes no significant difference); the run's SGD / momentum / weight decay / cosine
instead of LARS at batch 4096 with 10 warm-up epochs (the JAX code excludes biases and norms from
weight decay and LARS; here the shared protocol's SGD treats all alike); no online classifier trained
beside the representation (the probe replaces it); the ``byol`` view lacks the code's Gaussian blur
(p 1.0 / 0.1) and solarisation (p 0 / 0.2), so both views use one preset: random resized crop 0.08–1,
h-flip, colour jitter 0.4/0.4/0.2/0.1 p 0.8, grayscale p 0.2 (``augmentations.py``); the dataset's
geometry still drops flips its labels do not survive. Under ``optimizer: sam`` the second pass repeats
the step's target update from the perturbed online weights (its result is rolled back after the pass).
"""
from __future__ import annotations

import copy
import dataclasses
import math

import torch
from torch import Tensor, nn

from ltbench.data.augment import BatchAugment, ColorJitter, register_augmentation
from ltbench.method import Batch, StepResult, TrainInfo
from ltbench.methods.scl import TwoStageContrastive
from ltbench.models import Backbone
from ltbench.recipes import Recipe
from ltbench.registry import register_method
from ltbench.stages import Stage

BYOL_VIEW = "byol"


def byol_view(size: int) -> BatchAugment:
    """BYOL's view without blur and solarisation (module docstring): crop 0.08–1, h-flip, jitter, grayscale."""
    return BatchAugment(size, crop_scale=(0.08, 1.0), hflip_p=0.5, jitter=ColorJitter(0.4, 0.4, 0.2, 0.1, p=0.8),
                        grayscale_p=0.2)


register_augmentation(BYOL_VIEW, byol_view)


def l2_normalize(x: Tensor, eps: float = 1e-12) -> Tensor:
    """The JAX code's ``l2_normalize``: ``x · rsqrt(max(Σx², eps))`` over the last axis."""
    return x * torch.rsqrt(torch.clamp((x * x).sum(-1, keepdim=True), min=eps))


def regression_loss(x: Tensor, y: Tensor) -> Tensor:
    """Per-sample ``‖x̂ − ŷ‖²`` (``helpers.regression_loss``), [B]."""
    return ((l2_normalize(x) - l2_normalize(y)) ** 2).sum(-1)


def byol_loss(q1: Tensor, q2: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
    """The symmetrised loss ``mean(ℓ(q₁, z₂) + ℓ(q₂, z₁))``; z are target projections (no gradient)."""
    return (regression_loss(q1, z2.detach()) + regression_loss(q2, z1.detach())).mean()


def target_tau(step: int, max_steps: int, base: float) -> float:
    """``schedules.target_ema``: ``1 − (1 − base)·(cos(π·min(step, K)/K) + 1)/2`` (τ_0 = base, τ_K = 1)."""
    step = min(step, max_steps)
    return 1.0 - (1.0 - base) * 0.5 * (1.0 + math.cos(math.pi * step / max_steps))


class MLP(nn.Module):
    """``networks.MLP``: Linear(hidden) → BatchNorm → ReLU → Linear(out)."""

    def __init__(self, in_dim: int, hidden: int, out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, out))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class BYOLNetwork(nn.Module):
    """Online backbone + projector + predictor, the target copies, and the probe's ``classifier``.

    ``model(images)`` gives the classifier's logits (the probe stage and ``predict``)."""

    def __init__(self, backbone: Backbone, num_classes: int, hidden: int = 4096, dim: int = 256) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = MLP(backbone.out_dim, hidden, dim)
        self.predictor = MLP(dim, hidden, dim)
        self.classifier = nn.Linear(backbone.out_dim, num_classes)
        self.target_backbone = copy.deepcopy(backbone)
        self.target_projector = copy.deepcopy(self.projector)
        for param in self.target_parameters():
            param.requires_grad_(False)

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier(self.backbone(images))

    def online_parameters(self) -> list[nn.Parameter]:
        return [*self.backbone.parameters(), *self.projector.parameters()]

    def target_parameters(self) -> list[nn.Parameter]:
        return [*self.target_backbone.parameters(), *self.target_projector.parameters()]

    @torch.no_grad()
    def ema_update(self, tau: float) -> None:
        """target ← target + (1 − τ)(online − target), parameters only (BatchNorm statistics are each network's)."""
        for online, target in zip(self.online_parameters(), self.target_parameters()):
            target.add_(online.detach() - target, alpha=1.0 - tau)


@register_method("byol")
class BYOL(TwoStageContrastive):
    """BYOL + linear probe (Grill et al., NeurIPS 2020; deepmind-research byol). See the module docstring."""

    # The paper / JAX code's ImageNet pre-training (configs/byol.py, 1000 epochs): batch 4096, base lr 0.2
    # scaled by batch/256 → 3.2, LARS (momentum 0.9, wd 1.5e-6), 10 warm-up epochs then cosine, τ_base 0.996.
    recipes = {"paper": Recipe(
        source="google-deepmind/deepmind-research byol/configs/byol.py, byol_experiment.py, utils/schedules.py "
               "(Grill et al., NeurIPS 2020, §3.3 and App. C)",
        train={"optimizer": "sgd", "lr": 3.2, "momentum": 0.9, "weight_decay": 1.5e-6, "batch_size": 4096,
               "epochs": 1000, "lr_schedule": "cosine", "warmup_epochs": 10, "warmup_start_factor": 0.1},
        params={"tau_base": 0.996, "hidden": 4096, "dim": 256},
        note="LARS (trust ratio, no weight decay or adaptation on biases and norms) replaced by the suite's SGD; "
             "per-step warm-up from 0 in the code (here per epoch from lr/10); blur and solarisation absent "
             "from the views; linear evaluation converged by L-BFGS instead of the paper's 80 SGD epochs")}

    representation_sampler = "instance"
    representation_parts = ("backbone", "projector", "predictor", "target_backbone", "target_projector")

    def __init__(
        self,
        tau_base: float = 0.996,
        hidden: int = 4096,
        dim: int = 256,
        probe: str = "lbfgs",
        probe_l2: float = 1e-3,
        probe_tolerance: float = 1e-5,
        probe_max_iter: int = 1000,
        probe_sampler: str = "instance",
        probe_epochs: int = 80,  # probe="sgd": the paper's linear evaluation (App. C.1)
        classifier_lr: float | None = 0.2,
        classifier_weight_decay: float | None = 0.0,
        probe_milestones: tuple[int, ...] = (),
        probe_gamma: float = 0.1,
    ) -> None:
        super().__init__()
        if not (isinstance(tau_base, (int, float)) and 0.0 <= tau_base <= 1.0):
            raise ValueError(f"BYOL: tau_base must be in [0, 1], got {tau_base!r}")
        if hidden < 1:
            raise ValueError(f"BYOL: hidden must be positive, got {hidden}")
        self.tau_base = tau_base
        self.hidden = hidden
        self._init_stage_params(dim, False, probe, probe_l2, probe_tolerance, probe_max_iter, probe_sampler,
                                probe_epochs, classifier_lr, classifier_weight_decay, probe_milestones, probe_gamma)

    def setup(self, info: TrainInfo) -> None:
        self.register_buffer("ema_step", torch.zeros((), dtype=torch.long, device=info.device))
        self._max_steps = max(1, info.epochs * info.steps_per_epoch)  # the representation stage's steps (K)

    def build_model(self, backbone: Backbone, info: TrainInfo) -> nn.Module:
        return BYOLNetwork(backbone, info.num_classes, self.hidden, self.dim)

    def stages(self, info: TrainInfo) -> list[Stage]:
        stages = super().stages(info)
        stream = ((self.representation_sampler, (BYOL_VIEW, BYOL_VIEW)),)
        return [dataclasses.replace(stages[0], samplers=stream), *stages[1:]]

    def representations(self, model: nn.Module, images: Tensor) -> dict[str, Tensor]:
        """``feature`` (online backbone) and ``embedding`` (its L2-normalised projection), for retrieval."""
        features = model.backbone(images)
        return {"feature": features, "embedding": l2_normalize(model.projector(features))}

    def training_step(self, model: nn.Module, batch: Batch) -> StepResult:
        if self.in_classifier_stage():
            return self.classifier_loss(model(batch.views[0]), batch.labels)
        step = int(self.ema_step)
        if step > 0:  # the target update after the previous step's online update
            model.ema_update(target_tau(step - 1, self._max_steps, self.tau_base))
        self.ema_step += 1
        q1, q2 = (model.predictor(model.projector(model.backbone(v))) for v in batch.views)
        with torch.no_grad():
            z1, z2 = (model.target_projector(model.target_backbone(v)) for v in batch.views)
        with torch.autocast(device_type=q1.device.type, enabled=False):
            return byol_loss(q1.float(), q2.float(), z1.float(), z2.float())
