"""TSC: targeted supervised contrastive learning (Li et al., "Targeted Supervised Contrastive
Learning for Long-Tailed Recognition", CVPR 2022; code LTH14/targeted-supcon).

C targets spread uniformly on the unit hypersphere of the 128-d embedding space pull each class
towards its own point, so that tail classes keep a region of the sphere as large as head classes.
Targets (:func:`uniform_targets`): the exact regular simplex (pairwise cosine −1/(C−1)) when
D ≥ C − 1; otherwise the official objective ``mean_i log Σ_j exp(t_i·t_j / 0.07)``
(``target_generation.py``) minimised with Adam in **float64** (the official float32 run stalls at
this temperature) from a seeded start.

Two stages, as SCL (``methods/scl.py``): representation over the whole budget E (not selectable;
instance batches, two ``contrastive`` views), then a linear classifier on the frozen encoder with its
own budget. Default: the L-BFGS probe (``ltbench.stages.Probe``) with cross-entropy and
``probe_sampler = "class_aware"`` as class weights — every class weighs alike, as the class-aware
sampler of the official ``main_lincls_imba.py`` (4 images per class) makes the expected batch.
``probe="sgd"``: that script's augmented linear evaluation — 40 epochs beyond E of class-aware
batches, SGD lr 10 (``classifier_lr``), ×0.1 at epochs 20 and 30, weight decay 0.

Variant ``"supcon"`` (default; the repository's CIFAR code ``cifar_dirty/main_supcon_imba.py``)
------------------------------------------------------------------------------------------------
Target c has the fixed class c (identity order, as the official CIFAR-100 setting; no matching).
The C targets, each repeated ``target_repeat = 25`` times, join the batch as extra samples whose two
views both equal the target, labelled by their class; the loss is SupCon (``supcon_loss``) over the
B + 25·C samples, every one of the 2(B + 25·C) rows an anchor, times T/T_base with the official
T = T_base = 0.07 (``--temp 0.07``; ``SupConLoss(base_temperature=0.07)``). Identical to the
official loss with its defaults (``K = 0``, ``weight`` = 1, no ``only_t``).

Variant ``"moco"`` (the repository's ImageNet code ``moco/builder.py``, class ``KCL`` with ``targeted``)
------------------------------------------------------------------------------------------------
A momentum key encoder (a copy of backbone + head, ``requires_grad=False``, EMA m = 0.999, updated
at the start of every step before the keys are computed, as MoCo's ``forward``), a queue of
``queue_size`` keys with their labels, and class centroids (buffers of the method). Each step, in
this order: (1) every class present in the batch updates its centroid,
``c ← normalize(0.9·c + 0.1·normalize(mean of the detached queries of the class))``; (2) classes are
matched to targets with ``scipy.optimize.linear_sum_assignment`` maximising Σ centroid·target
(:func:`assign_targets`); (3) logits ``[q·k, q·queue, q·targets (each repeated tr times)] / T``,
T = 0.07, log-softmax over all; positives P(i) = {k} ∪ {queue entries labelled y_i},
``m_i = |P(i)| + tr``; ``loss_class = mean_i −Σ_{p∈P(i)} log p / m_i``, ``loss_target =
λ · mean_i −Σ_{the tr copies of the target assigned to y_i} log p / m_i`` with λ = ``target_weight``
= 0.2; (4) the keys and labels enter the queue.

Deviations from the official code
---------------------------------
* E epochs for the representation at the run's lr / weight decay / cosine (official CIFAR: lr 0.05
  with step decay at 700/800/900 of 1000 epochs; ImageNet: 0.03, 200 epochs); the default
  classifier is the converged probe, not 40 SGD epochs (``probe="sgd"`` runs those).
* Augmentations: the ``contrastive`` preset (the skin-lesion pipeline), not the official CIFAR or
  ImageNet pipelines; the classifier stage uses ``standard``.
* Targets: the simplex is exact and deterministic (the official script optimises even when
  D ≥ C − 1, reaching it only approximately); CIFAR-10's hand-picked target order
  ``[4, 8, 3, 1, 9, 5, 2, 7, 0, 6]`` is not used (identity, as CIFAR-100).
* ``"moco"``: every queue entry of the anchor's class is a positive (the spec's form), whereas
  ``KCL`` samples ``K = 6`` of them; no shuffle-BN (one device: shuffling cannot change batch
  statistics); no KCL warm-up half before the targeted loss (the ImageNet script trains
  ``epochs // 2`` without targets first); queue size 4096 instead of 65536 (ISIC has 10–25 k
  training images: a 65 k queue would hold several stale keys of every image); the queue accepts
  partial batches (a circular write) instead of asserting ``K % B == 0``.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from ltbench.losses import supcon_loss
from ltbench.method import Batch, StepResult, TrainInfo
from ltbench.models import Backbone
from ltbench.recipes import Recipe
from ltbench.registry import register_method
from ltbench.methods.scl import SupConNetwork, TwoStageContrastive

VARIANTS = ("supcon", "moco")


# --- targets -----------------------------------------------------------------------------------
def simplex_targets(num_classes: int, dim: int) -> Tensor:
    """The C vertices of a regular simplex centred at 0 on the unit sphere of R^dim (float64).

    Needs ``dim >= C − 1``; every pairwise cosine is exactly ``−1/(C−1)``. Built from the centred
    standard basis of R^C, written in an orthonormal basis of its (C−1)-dimensional span, then
    zero-padded to ``dim``.
    """
    if num_classes < 2 or dim < num_classes - 1:
        raise ValueError(f"simplex_targets: need C >= 2 and dim >= C - 1, got C={num_classes}, dim={dim}")
    centred = torch.eye(num_classes, dtype=torch.float64) - 1.0 / num_classes
    basis, _ = torch.linalg.qr(centred[:, : num_classes - 1])  # orthonormal basis of the span (C × (C−1))
    coords = centred @ basis  # C × (C−1), the same Gram matrix as `centred`
    out = torch.zeros(num_classes, dim, dtype=torch.float64)
    out[:, : num_classes - 1] = coords
    return F.normalize(out, dim=1)


def uniformity_loss(points: Tensor, temperature: float = 0.07) -> Tensor:
    """The official target objective: ``mean_i log Σ_j exp(t_i·t_j / T)`` (``target_generation.py``)."""
    return torch.logsumexp(points @ points.T / temperature, dim=1).mean()


def optimised_targets(num_classes: int, dim: int, *, temperature: float = 0.07, steps: int = 400,
                      lr: float = 0.1, seed: int = 0) -> Tensor:
    """C unit vectors in R^dim minimising :func:`uniformity_loss`, by Adam in float64 (official
    script: Adam lr 1e-3, 10 000 steps, float32; in float64 lr 0.1 reaches the same optimum in a few
    hundred steps — e.g. the regular hexagon for C = 6, D = 2); the best iterate is kept.
    Deterministic (seeded start)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(num_classes, dim, dtype=torch.float64, generator=generator).requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=lr)
    best, best_loss = None, math.inf
    for _ in range(steps):
        points = F.normalize(x, dim=1)
        loss = uniformity_loss(points, temperature)
        if loss.item() < best_loss:
            best_loss, best = loss.item(), points.detach().clone()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return best


def uniform_targets(num_classes: int, dim: int) -> Tensor:
    """Targets for C classes in R^dim: the regular simplex if ``dim >= C − 1``, else optimised."""
    if dim >= num_classes - 1:
        return simplex_targets(num_classes, dim)
    return optimised_targets(num_classes, dim)


def assign_targets(centroids: Tensor, targets: Tensor) -> Tensor:
    """Hungarian matching of classes to targets maximising Σ_c centroid_c · target_{σ(c)}.

    Returns σ as a LongTensor of length C (``σ[c]`` = the target of class c), a permutation.
    """
    score = (centroids.detach().double() @ targets.detach().double().T).cpu().numpy()
    rows, cols = linear_sum_assignment(-score)
    perm = np.empty(len(rows), dtype=np.int64)
    perm[rows] = cols
    return torch.from_numpy(perm)


# --- network (variant moco) --------------------------------------------------------------------
class MomentumSupConNetwork(SupConNetwork):
    """:class:`SupConNetwork` plus a momentum key encoder (``key_backbone``, ``key_head``)."""

    def __init__(self, backbone: Backbone, num_classes: int, dim: int = 128) -> None:
        super().__init__(backbone, num_classes, dim)
        self.key_backbone = copy.deepcopy(self.backbone)
        self.key_head = copy.deepcopy(self.head)
        for param in [*self.key_backbone.parameters(), *self.key_head.parameters()]:
            param.requires_grad_(False)

    @torch.no_grad()
    def momentum_update(self, m: float) -> None:
        query = [*self.backbone.parameters(), *self.head.parameters()]
        key = [*self.key_backbone.parameters(), *self.key_head.parameters()]
        for q, k in zip(query, key):
            k.mul_(m).add_(q.detach(), alpha=1.0 - m)


# --- method ------------------------------------------------------------------------------------
@register_method("tsc")
class TSC(TwoStageContrastive):
    """TSC (Li et al., CVPR 2022; LTH14/targeted-supcon). See the module docstring."""

    # The README's ImageNet-LT commands, the repository's only command lines (settings as the paper's
    # supplementary Appendix A): MoCo-based pre-training (variant "moco") at lr 0.1, batch 256, cosine,
    # 400 epochs, --tr 1 --tw 0.2, and main_moco_supcon_imba.py's defaults (wd 1e-4, momentum 0.9, queue
    # 65536, m 0.999, T 0.07); then main_lincls_imba.py: 40 epochs of class-aware batches, lr 10 (its
    # default), ×0.1 at 20 and 30, wd 0.
    recipes = {"paper": Recipe(
        source="LTH14/targeted-supcon README + main_moco_supcon_imba.py, main_lincls_imba.py @ c4f15eb; "
               "supp. Appendix A (Li et al., CVPR 2022)",
        train={"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "batch_size": 256,
               "epochs": 400, "lr_schedule": "cosine", "lr_gamma": 0.1},
        params={"variant": "moco", "temperature": 0.07, "target_repeat": 1, "target_weight": 0.2,
                "queue_size": 65536, "key_momentum": 0.999, "probe": "sgd", "probe_epochs": 40,
                "classifier_lr": 10.0, "classifier_weight_decay": 0.0, "probe_milestones": (20, 30),
                "probe_sampler": "class_aware"},
        note="the code trains KCL (no targets) for the first 200 epochs, each half with its own cosine; KCL keeps "
             "K = 6 sampled queue positives (here all); linear stage at batch 2048 with 4 images per class visit "
             "in the code (one batch size here, class_aware draws 1); no shuffle-BN, shared head instead of MoCo "
             "v2's; the CIFAR recipe (SupCon-based, 1000 epochs, batch 1024, lr 0.5, cosine) trains its classifier "
             "with LDAM loss and re-weighting (200 epochs, batch 128, lr 0.1, ×0.1 at 140/180/190), which this "
             "classifier stage does not have")}

    representation_sampler = "instance"

    def __init__(
        self,
        variant: str = "supcon",
        dim: int = 128,
        temperature: float = 0.07,
        base_temperature: float | None = 0.07,
        target_repeat: int = 25,
        target_weight: float = 0.2,
        queue_size: int = 4096,
        key_momentum: float = 0.999,
        joint: bool = False,
        probe: str = "lbfgs",
        probe_l2: float = 1e-3,
        probe_tolerance: float = 1e-5,
        probe_max_iter: int = 1000,
        probe_sampler: str = "class_aware",  # main_lincls_imba.py's class-aware sampler
        probe_epochs: int = 40,  # probe="sgd": main_lincls_imba.py
        classifier_lr: float | None = 10.0,  # probe="sgd": main_lincls_imba.py
        classifier_weight_decay: float | None = 0.0,
        probe_milestones: tuple[int, ...] = (20, 30),  # probe="sgd": lr ×probe_gamma at these epochs
        probe_gamma: float = 0.1,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"TSC: variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        if temperature <= 0 or (base_temperature is not None and base_temperature <= 0):
            raise ValueError("TSC: temperature and base_temperature must be positive")
        if target_repeat < 1 or queue_size < 1:
            raise ValueError("TSC: target_repeat and queue_size must be positive")
        if not 0.0 <= key_momentum < 1.0:
            raise ValueError(f"TSC: key_momentum must be in [0, 1), got {key_momentum}")
        if variant == "moco" and joint:
            raise ValueError("TSC: the joint variant is available for variant='supcon' only")
        self.variant = variant
        self.temperature = temperature
        self.base_temperature = base_temperature
        self.target_repeat = target_repeat
        self.target_weight = target_weight
        self.queue_size = queue_size
        self.key_momentum = key_momentum
        self._init_stage_params(dim, joint, probe, probe_l2, probe_tolerance, probe_max_iter, probe_sampler,
                                probe_epochs, classifier_lr, classifier_weight_decay, probe_milestones, probe_gamma)
        # The key encoder is listed so that it runs in train mode (MoCo's key BatchNorm uses batch
        # statistics); its parameters keep requires_grad=False, so the optimiser never moves them.
        self.representation_parts = (("backbone", "head", "key_backbone", "key_head") if variant == "moco"
                                     else ("backbone", "head"))

    def setup(self, info: TrainInfo) -> None:
        self.num_classes = info.num_classes
        self.register_buffer("targets", uniform_targets(info.num_classes, self.dim).float().to(info.device))
        if self.variant == "moco":
            self.register_buffer("queue", F.normalize(torch.randn(self.queue_size, self.dim), dim=1).to(info.device))
            self.register_buffer("queue_labels", torch.full((self.queue_size,), -1, dtype=torch.long,
                                                            device=info.device))
            self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long, device=info.device))
            centroids = F.normalize(torch.randn(info.num_classes, self.dim), dim=1)
            self.register_buffer("centroids", centroids.to(info.device))

    def build_model(self, backbone: Backbone, info: TrainInfo) -> nn.Module:
        if self.variant == "moco":
            return MomentumSupConNetwork(backbone, info.num_classes, self.dim)
        return SupConNetwork(backbone, info.num_classes, self.dim)

    # --- variant supcon --------------------------------------------------------------------------
    def representation_loss(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        target_labels = torch.arange(self.num_classes, device=labels.device).repeat_interleave(self.target_repeat)
        extra = self.targets[target_labels][:, None, :].expand(-1, embeddings.shape[1], -1)
        return supcon_loss(embeddings, labels, temperature=self.temperature, base_temperature=self.base_temperature,
                           extra_features=extra, extra_labels=target_labels)

    # --- variant moco ----------------------------------------------------------------------------
    def training_step(self, model: nn.Module, batch: Batch) -> StepResult:
        if self.variant == "supcon" or self.in_classifier_stage():
            return super().training_step(model, batch)
        view_q, view_k = batch.views
        labels = batch.labels
        model.momentum_update(self.key_momentum)  # first, as MoCo's forward
        q = model.head(model.backbone(view_q))
        with torch.no_grad():
            k = model.key_head(model.key_backbone(view_k))
        with torch.autocast(device_type=q.device.type, enabled=False):
            q, k = q.float(), k.float()
            assignment = self._update_centroids_and_assign(q.detach(), labels)
            loss_class, loss_target = self.moco_loss(q, k, labels, assignment)
            self._enqueue(k.detach(), labels)
        loss = loss_class + loss_target
        return loss, {"loss_class": loss_class.detach(), "loss_target": loss_target.detach()}

    @torch.no_grad()
    def _update_centroids_and_assign(self, q: Tensor, labels: Tensor) -> Tensor:
        for c in torch.unique(labels).tolist():
            batch_centroid = F.normalize(q[labels == c].mean(dim=0), dim=0)
            self.centroids[c] = F.normalize(0.9 * self.centroids[c] + 0.1 * batch_centroid, dim=0)
        return assign_targets(self.centroids, self.targets).to(labels.device)

    def moco_loss(self, q: Tensor, k: Tensor, labels: Tensor, assignment: Tensor) -> tuple[Tensor, Tensor]:
        """KCL's targeted loss (module docstring); returns ``(loss_class, λ·loss_target)``."""
        tr = self.target_repeat
        target_of_column = torch.arange(self.num_classes, device=q.device).repeat_interleave(tr)
        queue = self.queue.clone()  # the enqueue after this step writes the buffer in place
        logits = torch.cat([(q * k).sum(dim=1, keepdim=True), q @ queue.T,
                            q @ self.targets[target_of_column].T], dim=1) / self.temperature
        log_prob = torch.log_softmax(logits, dim=1)
        queue_positive = labels[:, None] == self.queue_labels[None, :]
        target_positive = target_of_column[None, :] == assignment[labels][:, None]
        m = 1.0 + queue_positive.sum(dim=1) + tr
        n_queue = queue.shape[0]
        class_sum = log_prob[:, 0] + torch.where(queue_positive, log_prob[:, 1:1 + n_queue], 0.0).sum(dim=1)
        target_sum = torch.where(target_positive, log_prob[:, 1 + n_queue:], 0.0).sum(dim=1)
        return -(class_sum / m).mean(), self.target_weight * -(target_sum / m).mean()

    @torch.no_grad()
    def _enqueue(self, keys: Tensor, labels: Tensor) -> None:
        n = keys.shape[0]
        slots = (int(self.queue_ptr) + torch.arange(n, device=keys.device)) % self.queue_size
        if n > self.queue_size:  # keep the last queue_size keys
            keys, labels, slots = keys[-self.queue_size:], labels[-self.queue_size:], slots[-self.queue_size:]
        self.queue[slots] = keys.to(self.queue.dtype)
        self.queue_labels[slots] = labels
        self.queue_ptr.fill_((int(self.queue_ptr) + n) % self.queue_size)
