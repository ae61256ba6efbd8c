"""MoCo v2: momentum contrast with the v2 recipe (He et al., CVPR 2020; Chen et al., "Improved Baselines with
Momentum Contrastive Learning", arXiv 2003.04297, 2020), then the converging linear probe — self-supervised
pre-training followed by a linear classifier, as MONICA runs its SSL rows.

Followed: facebookresearch/moco (``moco/builder.py`` class ``MoCo``; ``main_moco.py`` with the README's
v2 flags ``--mlp --moco-t 0.2 --aug-plus --cos``; ``main_lincls.py``).

Two stages (``ltbench.stages``, the shape of SimCLR's ``methods/simclr.py``):

1. **Representation** (the whole budget E, not selectable; instance batches, two ``moco_v2`` views, no
   labels). Query encoder: backbone → ``head`` = ``Linear(d, d) → ReLU → Linear(d, 128)`` (the ``--mlp``
   head, no BatchNorm); key encoder: ``key_backbone`` → ``key_head``, a copy with ``requires_grad=False``,
   in train mode (BatchNorm on the key batch, as the code's ``model.train()``). Each step, as ``forward``:
   ``q = normalize(head(backbone(x_q)))``; the key encoder moves, ``θ_k ← m·θ_k + (1 − m)·θ_q``
   (parameters only, m = 0.999; the code's ``param_k.mul_(m).add_(param_q.mul(1 − m))``); ``k =
   normalize(key encoder(x_k))`` without gradient; logits ``[q·k, q·queue] / T`` (T = 0.2), loss
   ``CE(logits, 0)``; then the keys enter the queue of K = 65,536 (``_dequeue_and_enqueue``). The queue
   (initialised with normalised Gaussian vectors, as the code) and its pointer are buffers of the method,
   the key encoder is part of the model: checkpoints and resumes carry them.
2. **Linear probe** on the frozen backbone: cross-entropy, L-BFGS to convergence on the eval view's
   features (``ltbench.stages.Probe``), or ``probe="sgd"``: ``main_lincls.py``'s 100 epochs at lr 30,
   ×0.1 at epochs 60 and 80, weight decay 0.

Departures: no shuffle-BN (one device: shuffling the batch cannot change its statistics); the queue takes
any batch size by a circular write (the code asserts K % B = 0; equal whenever that holds); the run's
SGD / momentum / weight decay / cosine (the v2 recipe's are SGD lr 0.03 at batch 256, momentum 0.9, wd
1e-4, cosine: the paper recipe); the ``moco_v2`` view is ``--aug-plus`` without its Gaussian blur
(p 0.5, σ 0.1–2): random resized crop 0.2–1, colour jitter 0.4/0.4/0.4/0.1 p 0.8, grayscale p 0.2,
h-flip — ltbench's ``contrastive`` preset (crop 0.8–1, v-flip, ±90° rotation) differs materially, so
the official view is registered; the dataset's geometry still drops flips its labels do not survive.
Under ``optimizer: sam`` the second pass repeats the key-encoder update from the perturbed query weights
and enqueues nothing that lasts (the state of the step is the first pass's).
"""
from __future__ import annotations

import copy
import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltbench.data.augment import BatchAugment, ColorJitter, register_augmentation
from ltbench.method import Batch, StepResult, TrainInfo
from ltbench.methods.scl import TwoStageContrastive
from ltbench.models import Backbone
from ltbench.recipes import Recipe
from ltbench.registry import register_method
from ltbench.stages import Stage

MOCO_VIEW = "moco_v2"


def moco_v2_view(size: int) -> BatchAugment:
    """``main_moco.py --aug-plus`` without the blur: crop 0.2–1, jitter p 0.8, grayscale p 0.2, h-flip."""
    return BatchAugment(size, crop_scale=(0.2, 1.0), hflip_p=0.5, jitter=ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8),
                        grayscale_p=0.2)


register_augmentation(MOCO_VIEW, moco_v2_view)


def moco_loss(q: Tensor, k: Tensor, queue: Tensor, temperature: float) -> Tensor:
    """InfoNCE of ``MoCo.forward``: ``CE([q·k, q·queue] / T, 0)``; q, k [B, D] normalised, queue [K, D]."""
    l_pos = (q * k).sum(dim=1, keepdim=True)
    l_neg = q @ queue.T
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


def enqueue(queue: Tensor, ptr: Tensor, keys: Tensor) -> None:
    """Write ``keys`` at the pointer, circularly, and move it (``_dequeue_and_enqueue``; the last K keys
    are kept when a batch is larger than the queue)."""
    n, size = keys.shape[0], queue.shape[0]
    slots = (int(ptr) + torch.arange(n, device=keys.device)) % size
    if n > size:
        keys, slots = keys[-size:], slots[-size:]
    queue[slots] = keys.to(queue.dtype)
    ptr.fill_((int(ptr) + n) % size)


class MoCoHead(nn.Module):
    """The ``--mlp`` head: Linear(d, d) → ReLU → Linear(d, dim), L2-normalised output (as ``forward``)."""

    def __init__(self, in_dim: int, dim: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, in_dim), nn.ReLU(), nn.Linear(in_dim, dim))

    def forward(self, features: Tensor) -> Tensor:
        return F.normalize(self.net(features), dim=1)


class MoCoNetwork(nn.Module):
    """Query backbone + head, the key copies, and the probe's ``classifier``; ``model(x)`` gives logits."""

    def __init__(self, backbone: Backbone, num_classes: int, dim: int = 128) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = MoCoHead(backbone.out_dim, dim)
        self.classifier = nn.Linear(backbone.out_dim, num_classes)
        self.key_backbone = copy.deepcopy(backbone)
        self.key_head = copy.deepcopy(self.head)
        for param in [*self.key_backbone.parameters(), *self.key_head.parameters()]:
            param.requires_grad_(False)

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier(self.backbone(images))

    @torch.no_grad()
    def momentum_update(self, m: float) -> None:
        query = [*self.backbone.parameters(), *self.head.parameters()]
        key = [*self.key_backbone.parameters(), *self.key_head.parameters()]
        for q, k in zip(query, key):
            k.mul_(m).add_(q.detach().mul(1.0 - m))


@register_method("moco_v2")
class MoCoV2(TwoStageContrastive):
    """MoCo v2 + linear probe (facebookresearch/moco). See the module docstring."""

    # The README's MoCo v2 command: main_moco.py -a resnet50 --lr 0.03 --batch-size 256 --mlp --moco-t 0.2
    # --aug-plus --cos, and its defaults (200 epochs, momentum 0.9, wd 1e-4, K 65536, m 0.999); linear
    # classification: main_lincls.py --lr 30.0 --batch-size 256 (100 epochs, ×0.1 at 60 and 80, wd 0).
    recipes = {"paper": Recipe(
        source="facebookresearch/moco README (MoCo v2) + main_moco.py, main_lincls.py @ 3631be0 "
               "(Chen et al., arXiv 2003.04297)",
        train={"optimizer": "sgd", "lr": 0.03, "momentum": 0.9, "weight_decay": 1e-4, "batch_size": 256,
               "epochs": 200, "lr_schedule": "cosine"},
        params={"temperature": 0.2, "queue_size": 65536, "key_momentum": 0.999, "probe": "sgd",
                "probe_epochs": 100, "classifier_lr": 30.0, "classifier_weight_decay": 0.0,
                "probe_milestones": (60, 80), "probe_gamma": 0.1, "probe_sampler": "instance"},
        note="8 GPUs with shuffle-BN in the code (one device here); the cosine is per epoch in both; the view "
             "lacks --aug-plus's Gaussian blur; ImageNet at 224 px")}

    representation_sampler = "instance"
    # The key encoder is listed so that it runs in train mode; its parameters keep requires_grad=False.
    representation_parts = ("backbone", "head", "key_backbone", "key_head")

    def __init__(
        self,
        dim: int = 128,
        temperature: float = 0.2,
        queue_size: int = 65536,
        key_momentum: float = 0.999,
        probe: str = "lbfgs",
        probe_l2: float = 1e-3,
        probe_tolerance: float = 1e-5,
        probe_max_iter: int = 1000,
        probe_sampler: str = "instance",
        probe_epochs: int = 100,  # probe="sgd": main_lincls.py
        classifier_lr: float | None = 30.0,
        classifier_weight_decay: float | None = 0.0,
        probe_milestones: tuple[int, ...] = (60, 80),
        probe_gamma: float = 0.1,
    ) -> None:
        super().__init__()
        if not (isinstance(temperature, (int, float)) and temperature > 0):
            raise ValueError(f"MoCo v2: temperature must be positive, got {temperature!r}")
        if not (isinstance(queue_size, int) and queue_size >= 1):
            raise ValueError(f"MoCo v2: queue_size must be a positive integer, got {queue_size!r}")
        if not (isinstance(key_momentum, (int, float)) and 0.0 <= key_momentum <= 1.0):
            raise ValueError(f"MoCo v2: key_momentum must be in [0, 1], got {key_momentum!r}")
        self.temperature = temperature
        self.queue_size = queue_size
        self.key_momentum = key_momentum
        self._init_stage_params(dim, False, probe, probe_l2, probe_tolerance, probe_max_iter, probe_sampler,
                                probe_epochs, classifier_lr, classifier_weight_decay, probe_milestones, probe_gamma)

    def setup(self, info: TrainInfo) -> None:
        queue = F.normalize(torch.randn(self.queue_size, self.dim), dim=1)  # the run's seeded global RNG
        self.register_buffer("queue", queue.to(info.device))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long, device=info.device))

    def build_model(self, backbone: Backbone, info: TrainInfo) -> nn.Module:
        return MoCoNetwork(backbone, info.num_classes, self.dim)

    def stages(self, info: TrainInfo) -> list[Stage]:
        stages = super().stages(info)
        stream = ((self.representation_sampler, (MOCO_VIEW, MOCO_VIEW)),)
        return [dataclasses.replace(stages[0], samplers=stream), *stages[1:]]

    def representations(self, model: nn.Module, images: Tensor) -> dict[str, Tensor]:
        """``feature`` (query backbone) and ``embedding`` (its normalised head output), for retrieval."""
        features = model.backbone(images)
        return {"feature": features, "embedding": model.head(features)}

    def training_step(self, model: nn.Module, batch: Batch) -> StepResult:
        if self.in_classifier_stage():
            return self.classifier_loss(model(batch.views[0]), batch.labels)
        view_q, view_k = batch.views
        q = model.head(model.backbone(view_q))
        with torch.no_grad():
            model.momentum_update(self.key_momentum)
            k = model.key_head(model.key_backbone(view_k))
        with torch.autocast(device_type=q.device.type, enabled=False):
            q, k = q.float(), k.float()
            loss = moco_loss(q, k, self.queue.clone(), self.temperature)  # the enqueue below writes in place
        enqueue(self.queue, self.queue_ptr, k.detach())
        return loss
