"""Flexible Sampling (Ju et al., MICCAI 2022, LNCS 13433 pp. 462–471; arXiv 2204.03161), as the
official repository PyJulie/FlexSampling computes it at commit ``17745eb`` (spec
``flexsampling.md`` §2), with the behaviours of the later commit ``8f31c0c`` as parameters.

The method is a training-loop structure, not a loss: a growing **active subset** of the training
split (``Method.training_rows``), never a per-sample weight. The official ``flexsampling/core``
functions it runs (anchors, quotas, BALD, the query trigger) are ``ltbench.methods._flexsampling_core``,
re-exported here.

1. **Anchors** (``flexsampling/core/anchor.py``, ``AnchorSelector.select``): pooled features of every
   training image from the run's initial backbone (:meth:`Method.on_train_start`: the model as
   built — ImageNet weights when the benchmark gives ``pretrained: imagenet``, which is the official
   separate ImageNet encoder; on ``digits-lt`` a randomly initialised small CNN, so the anchors are
   the images nearest their class mean in a random-convolution feature space); per class the
   ``n_anchor_c`` (:func:`anchor_counts`, cap ≈ s·n_max, s = 0.1) samples nearest the class
   prototype in Euclidean distance (:func:`select_anchors`).
2. **Training on the active set** with CE; the plateau counter runs from the first epoch (as the
   code: no separate warm-up stage). From main epoch ``warmup_epochs`` (30 of 100) a query fires when
   validation accuracy has not improved (strictly, best starting at 0) for ``patience`` (10) epochs
   (:func:`query_trigger`); ``8f31c0c``: also every ``query_interval`` (5) epochs.
3. **Query** (``flexsampling/core/curriculum.py``, ``CurriculumSampler.query``): class weights
   ``p_c = (1 − a_c)·C / Σ_k (1 − a_k)`` from the epoch's per-class validation accuracy
   (:func:`class_probabilities`), quotas ``n_c = min(|pool_c|, max(1, int(|pool_c|·q·p_c/C)))``
   (:func:`class_quotas`, q = 0.1; ``8f31c0c`` drops ``/C``), the ``n_c`` pool samples of class c
   with the highest BALD score over T = 10 Monte-Carlo dropout passes (:func:`bald_scores`,
   ``flexsampling/core/bald.py``, ``BALDUncertainty.score``); then the shared optimiser's state is
   reset (``17745eb`` creates a new Adam; ``8f31c0c`` keeps it).

Departures (docs/flexsampling.md):

* **Monte-Carlo dropout is real**: ``Dropout(p = dropout = 0.1)`` between the pooled features and
  the linear classifier, active in training and in the T passes, off in evaluation. The official
  ResNet has no dropout module, so its ten passes are identical and its BALD ranking is float
  noise (spec §2.4); ``dropout=0`` reproduces that. The T passes reuse one backbone pass per batch
  (the backbone is deterministic in eval mode, so this equals T full passes).
* Anchors and BALD use the evaluation transform (the code uses the random training transform).
* Warm-up, patience and query interval are given for the official 100-epoch budget and scaled to the
  run's main-stage epochs with :func:`ltbench.schedules.scale_epoch` (Python ``round``, half to
  even; patience and interval at least 1): 30 epochs → warm-up 9, patience 3, interval 2.
* BALD is computed for the pool only (the code scores the whole training set and uses the pool).
* The optimiser, lr and schedule are the run's (a reset clears momentum / Adam moments; the lr keeps
  following the schedule — the code's new Adam restarts at its constant lr 3e-4).
* Anchor counts follow the code's float truncation (``int(n_min · n_c/n_min)`` can give n_c − 1:
  376 → 375); ``anchor_rounding="exact"`` fixes it.
* Per-class validation accuracy is read from the confusion matrix (correct/total, 0 for a class
  without validation images, as the code).
* The best-validation checkpoint is tested (the shared protocol; ``8f31c0c`` restores it too,
  ``17745eb`` keeps the last epoch); no query after the last epoch (nothing trains on it); the
  streams drop only a last batch of one image (the code: ``drop_last=True``).
* ``8f31c0c``'s SSL stage (``ssl_epochs``) runs inside the run's epoch budget, scaled with the rest,
  without gradient accumulation and with a per-epoch cosine.

``8f31c0c`` parameters: ``ssl_epochs``/``ssl_lr``/``ssl_weight_decay``/``ssl_temperature``,
``query_interval``, ``loss="cb_focal"`` (``cb_beta``, ``cb_gamma``), ``sampler="class_aware"``,
``reset_optimizer=False``, ``divide_quota_by_classes=False``, ``plateau_metric="sen"``, ``mixup_alpha``,
``label_smoothing``.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltbench.data.augment import BatchAugment, ColorJitter, register_augmentation
from ltbench.data.samplers import SAMPLERS
from ltbench.errors import LtbenchError
from ltbench.losses import draw_mixup, mix_inputs, mixup_criterion, mixup_generator, supcon_loss
from ltbench.methods._flexsampling_core import (  # noqa: F401  (re-exported: the official functions)
    active_class_counts, anchor_counts, bald_scores, class_probabilities, class_prototypes, class_quotas,
    curriculum_query, query_trigger, select_anchors)
from ltbench.methods.cb_loss import cb_loss_v02, class_balanced_weights  # noqa: F401  (re-exported)
from ltbench.method import Batch, Method, RunAccess, StepResult, TrainInfo
from ltbench.models import Backbone
from ltbench.recipes import Recipe
from ltbench.registry import register_method
from ltbench.schedules import scale_epoch
from ltbench.stages import Stage, stage_bounds

SSL_VIEW = "flexsampling_ssl"
LOSSES = ("ce", "cb_focal")
PLATEAU_METRICS = ("acc", "sen")


def cb_focal_loss(logits: Tensor, labels: Tensor, weights: Tensor, gamma: float = 1.0) -> Tensor:
    """v0.2 softmax class-balanced focal loss (``flexsampling/losses/cb_loss.py``, ``CBLoss``, "focal"),
    as ``ltbench.methods.cb_loss.cb_loss_v02`` computes it, in float32 with autocast off.

    ``mean_i w_{y_i} (1 − p_i)^γ CE_i`` with ``CE_i = −log softmax(x_i)_{y_i}``, ``p_i = exp(−CE_i)``;
    a plain mean over the batch (not divided by Σ w_{y_i}). 8f31c0c's pipeline uses γ = 1, β = 0.9999,
    weights :func:`class_balanced_weights` of :func:`active_class_counts`.
    """
    with torch.autocast(device_type=logits.device.type, enabled=False):
        return cb_loss_v02(logits.float(), labels, weights.to(logits.device, torch.float32), "focal", gamma)


def nt_xent_loss(z1: Tensor, z2: Tensor, temperature: float = 0.5) -> Tensor:
    """NT-Xent of ``flexsampling/core/ssl_pretrain.py`` (``nt_xent_loss``, 8f31c0c).

    ``z = [z1; z2]`` (2N×d, L2-normalised), ``sim = z zᵀ / T`` with the diagonal excluded, targets
    i ↔ i+N, cross-entropy averaged over the 2N rows — ``ltbench.losses.supcon_loss`` with no labels
    and two views computes exactly this (tested against a naive float64 copy of the official formula).
    """
    return supcon_loss(torch.stack([z1, z2], dim=1), None, temperature=temperature)


# ------------------------------------------------------------------------------------------------
# The SSL stage's view (8f31c0c ``ContrastiveAugmentation``)
# ------------------------------------------------------------------------------------------------
class SSLView(nn.Module):
    """8f31c0c's SSL view: RandomResizedCrop(S, scale 0.2–1), h- and v-flip, ColorJitter(0.4, 0.4,
    0.4, 0.1) p 0.8, grayscale p 0.2, GaussianBlur always, ImageNet normalisation.

    The blur (``GaussianBlur(23, σ ∈ [0.1, 2])`` at 224 px) scales with the image: kernel
    ``2·floor(0.05·S) + 1`` (23 at 224), σ uniform in ``[0.1, 2]·S/224`` per sample; it is applied
    after the normalisation, which commutes with it (a per-channel affine map and a normalised kernel
    with reflect padding).
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self.base = BatchAugment(size, crop_scale=(0.2, 1.0), hflip_p=0.5, vflip_p=0.5,
                                 jitter=ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8), grayscale_p=0.2)
        self.kernel = 2 * math.floor(0.05 * size) + 1
        self.sigma_range = (0.1 * size / 224, 2.0 * size / 224)

    def forward(self, images: Tensor, generator: torch.Generator | None = None, sizes: Tensor | None = None) -> Tensor:
        x = self.base(images, generator, sizes=sizes)
        if self.kernel < 3:
            return x
        n = x.shape[0]
        low, high = self.sigma_range
        sigma = low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)
        half = self.kernel // 2
        offsets = torch.arange(-half, half + 1, dtype=torch.float64)
        kernel = torch.exp(-0.5 * (offsets[None, :] / sigma[:, None]) ** 2)
        kernel = (kernel / kernel.sum(dim=1, keepdim=True)).to(x.device, x.dtype)  # [n, k]
        c = x.shape[1]
        weight = kernel.repeat_interleave(c, dim=0)  # one kernel per image and channel
        flat = x.reshape(1, n * c, *x.shape[2:])
        flat = F.conv2d(F.pad(flat, (half, half, 0, 0), mode="reflect"), weight[:, None, None, :], groups=n * c)
        flat = F.conv2d(F.pad(flat, (0, 0, half, half), mode="reflect"), weight[:, None, :, None], groups=n * c)
        return flat.reshape_as(x)

    def restricted(self, geometry) -> "SSLView":
        """This view without the flips the dataset forbids (``ltbench.data.geometry``; same draws)."""
        base = self.base.restricted(geometry)
        if base is self.base:
            return self
        view = copy.deepcopy(self)
        view.base = base
        return view


register_augmentation(SSL_VIEW, SSLView)


# ------------------------------------------------------------------------------------------------
# The network and the method
# ------------------------------------------------------------------------------------------------
class SSLProjector(nn.Module):
    """8f31c0c ``ProjectionHead``: Linear(D, 256) → ReLU → Linear(256, 128) (no BatchNorm)."""

    def __init__(self, in_dim: int, hidden_dim: int = 256, out_dim: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features)


class FlexSamplingNetwork(nn.Module):
    """Backbone → Dropout(p) → Linear; ``projector`` (SSL stage only) on the backbone features."""

    def __init__(self, backbone: Backbone, num_classes: int, dropout: float, projector: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(backbone.out_dim, num_classes)
        self.projector = SSLProjector(backbone.out_dim) if projector else None

    def forward(self, images: Tensor) -> Tensor:
        return self.fc(self.dropout(self.backbone(images)))


def _mc_dropout_probs(passes: int):
    """``fn(model, images)`` for ``RunAccess.infer``: softmax of ``passes`` dropout passes, [N, T, C]."""

    def fn(model: nn.Module, images: Tensor) -> Tensor:
        features = model.backbone(images)  # eval mode: deterministic, computed once
        was_training = model.dropout.training
        model.dropout.train()
        try:
            out = [torch.softmax(model.fc(model.dropout(features)).float(), dim=1) for _ in range(passes)]
        finally:
            model.dropout.train(was_training)
        return torch.stack(out, dim=1)

    return fn


def _backbone_features(model: nn.Module, images: Tensor) -> Tensor:
    return model.backbone(images)


@register_method("flexsampling")
class FlexSampling(Method):
    """Flexible Sampling (Ju et al., MICCAI 2022; PyJulie/FlexSampling 17745eb). See the module docstring.

    8f31c0c as parameters: ``ssl_epochs=100``, ``query_interval=5``, ``loss="cb_focal"``,
    ``sampler="class_aware"``, ``reset_optimizer=False``, ``divide_quota_by_classes=False``,
    ``plateau_metric="sen"`` (balanced accuracy); its ``examples/train.py`` adds ``mixup_alpha=0.2``.
    """

    views = ("standard",)
    samplers = ("instance",)

    # The 17745eb pipeline (FlexSamplingTrainer; isic_8class.yaml's flexsampling block): torch Adam at
    # lr 3e-4 with its defaults (betas (0.9, 0.999), no weight decay), constant lr, batch 64, 100 epochs.
    # The method's defaults are already 17745eb's (s 0.1, warm-up 30, patience 10, q 0.1, 10 MC passes,
    # a fresh Adam at each query).
    recipes = {"paper": Recipe(
        source="PyJulie/FlexSampling flexsampling/core/pipeline.py, examples/train.py, "
               "examples/configs/isic_8class.yaml @ 17745eb (Ju et al., MICCAI 2022)",
        train={"optimizer": "adam", "lr": 3e-4, "betas": (0.9, 0.999), "weight_decay": 0.0, "batch_size": 64,
               "epochs": 100, "lr_schedule": "constant"},
        note="ISIC 2019 8-class r = 100 split, timm ResNet-50 (ImageNet) at 224 px; the code tests the last epoch; "
             "only the paper's abstract could be read, so these are the repository's settings (docs/flexsampling.md)")}

    def __init__(
        self,
        anchor_scaling: float = 0.1,
        min_per_class: int = 2,
        anchor_rounding: str = "float",
        warmup_epochs: int = 30,
        patience: int = 10,
        query_interval: int = 0,
        reference_epochs: int | None = 100,
        query_ratio: float = 0.1,
        divide_quota_by_classes: bool = True,
        mc_passes: int = 10,
        dropout: float = 0.1,
        reset_optimizer: bool = True,
        plateau_metric: str = "acc",
        loss: str = "ce",
        cb_beta: float = 0.9999,
        cb_gamma: float = 1.0,
        sampler: str = "instance",
        ssl_epochs: int = 0,
        ssl_lr: float = 1e-3,
        ssl_weight_decay: float = 1e-4,
        ssl_temperature: float = 0.5,
        mixup_alpha: float = 0.0,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0.0 < anchor_scaling <= 1.0:
            raise ValueError(f"flexsampling: anchor_scaling must be in (0, 1], got {anchor_scaling}")
        if min_per_class < 1:
            raise ValueError(f"flexsampling: min_per_class must be >= 1, got {min_per_class}")
        if anchor_rounding not in ("float", "exact"):
            raise ValueError(f"flexsampling: anchor_rounding must be 'float' (the code) or 'exact', got {anchor_rounding!r}")
        if warmup_epochs < 0 or patience < 1 or query_interval < 0:
            raise ValueError("flexsampling: warmup_epochs >= 0, patience >= 1 and query_interval >= 0 (0: none)")
        if reference_epochs is not None and reference_epochs < 1:
            raise ValueError(f"flexsampling: reference_epochs must be >= 1 or None, got {reference_epochs}")
        if not 0.0 < query_ratio <= 1.0:
            raise ValueError(f"flexsampling: query_ratio must be in (0, 1], got {query_ratio}")
        if mc_passes < 1:
            raise ValueError(f"flexsampling: mc_passes must be >= 1, got {mc_passes}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"flexsampling: dropout must be in [0, 1), got {dropout}")
        if plateau_metric not in PLATEAU_METRICS:
            raise ValueError(f"flexsampling: plateau_metric must be one of {PLATEAU_METRICS}, got {plateau_metric!r}")
        if loss not in LOSSES:
            raise ValueError(f"flexsampling: loss must be one of {LOSSES}, got {loss!r}")
        if not 0.0 <= cb_beta < 1.0 or cb_gamma < 0:
            raise ValueError("flexsampling: cb_beta must be in [0, 1) and cb_gamma >= 0")
        if sampler != "instance" and sampler not in SAMPLERS:
            if sampler == "class_aware":
                raise LtbenchError("flexsampling: sampler='class_aware' needs the 'class_aware' sampler of "
                                   "ltbench/data/loader.py, which this version does not have (samplers: "
                                   f"{', '.join(SAMPLERS)})")
            raise ValueError(f"flexsampling: unknown sampler {sampler!r} (choose from {', '.join(SAMPLERS)})")
        if ssl_epochs < 0 or ssl_lr <= 0 or ssl_weight_decay < 0 or ssl_temperature <= 0:
            raise ValueError("flexsampling: ssl_epochs >= 0, ssl_lr > 0, ssl_weight_decay >= 0, ssl_temperature > 0")
        if not 0.0 <= label_smoothing < 1.0 or (label_smoothing > 0 and loss != "ce"):
            raise ValueError(f"flexsampling: label_smoothing must be in [0, 1) and only with loss='ce', got "
                             f"{label_smoothing}")
        if not (isinstance(mixup_alpha, (int, float)) and 0.0 <= mixup_alpha < float("inf")):
            raise ValueError(f"flexsampling: mixup_alpha must be a number >= 0, got {mixup_alpha!r}")
        self.anchor_scaling = anchor_scaling
        self.min_per_class = min_per_class
        self.anchor_rounding = anchor_rounding
        self.warmup_epochs = warmup_epochs
        self.patience = patience
        self.query_interval = query_interval
        self.reference_epochs = reference_epochs
        self.query_ratio = query_ratio
        self.divide_quota_by_classes = divide_quota_by_classes
        self.mc_passes = mc_passes
        self.dropout = dropout
        self.reset_optimizer = reset_optimizer
        self.plateau_metric = plateau_metric
        self.loss = loss
        self.cb_beta = cb_beta
        self.cb_gamma = cb_gamma
        self.sampler = sampler
        self.ssl_epochs = ssl_epochs
        self.ssl_lr = ssl_lr
        self.ssl_weight_decay = ssl_weight_decay
        self.ssl_temperature = ssl_temperature
        self.mixup_alpha = mixup_alpha
        self.label_smoothing = label_smoothing
        # Plain attributes, rebuilt by stages()/on_train_start() on every (resumed) run.
        self._access: RunAccess | None = None
        self._main_start = 0
        self._last_epoch = -1
        self.schedule = {"warmup": warmup_epochs, "patience": patience, "interval": query_interval}

    # --- state --------------------------------------------------------------------------------
    def setup(self, info: TrainInfo) -> None:
        num_train = int(sum(info.class_counts))
        self.num_classes = info.num_classes
        # Method state in buffers: checkpoints and the best-validation restore carry it.
        self.register_buffer("active", torch.zeros(num_train, dtype=torch.bool, device=info.device))
        self.register_buffer("best_score", torch.zeros((), dtype=torch.float64, device=info.device))
        self.register_buffer("epochs_without_improvement", torch.zeros((), dtype=torch.int64, device=info.device))
        self.register_buffer("epochs_since_last_query", torch.zeros((), dtype=torch.int64, device=info.device))
        self.register_buffer("queries", torch.zeros((), dtype=torch.int64, device=info.device))
        if self.loss == "cb_focal":
            self.register_buffer("class_weights", class_balanced_weights(info.class_counts, self.cb_beta).to(info.device))
        if self.mixup_alpha > 0:  # its own generator, apart from the streams' (ltbench.losses); α = 0 draws nothing
            self.register_buffer("mixup_generator_state", mixup_generator(info.seed).get_state())

    def build_model(self, backbone: Backbone, info: TrainInfo) -> nn.Module:
        return FlexSamplingNetwork(backbone, info.num_classes, self.dropout, projector=self.ssl_epochs > 0)

    def stages(self, info: TrainInfo) -> list[Stage]:
        main_stream = ((self.sampler, ("standard",)),)
        if self.ssl_epochs == 0:
            stages = [Stage(samplers=main_stream, name="")]
            main_epochs = info.epochs
        else:
            # The official SSL and main budgets (ssl_epochs + reference_epochs) share the run's E.
            if self.reference_epochs is None:
                ssl = self.ssl_epochs
            else:
                ssl = scale_epoch(self.ssl_epochs, info.epochs, self.ssl_epochs + self.reference_epochs)
            main_epochs = info.epochs - ssl
            if ssl < 1 or main_epochs < 1:
                raise LtbenchError(f"flexsampling: ssl_epochs={self.ssl_epochs} leaves {ssl} SSL and {main_epochs} "
                                   f"main epochs of the run's {info.epochs}; both need at least 1")
            stages = [
                Stage(epochs=ssl, samplers=(("instance", (SSL_VIEW, SSL_VIEW)),), trains=("backbone", "projector"),
                      lr=self.ssl_lr, weight_decay=self.ssl_weight_decay, optimizer="adam", selectable=False,
                      name="ssl"),
                Stage(epochs=main_epochs, samplers=main_stream, trains=("backbone", "dropout", "fc"), name="main"),
            ]
        self._main_start = stage_bounds(stages, info.epochs)[-1][0]
        self._last_epoch = info.epochs - 1
        ref = self.reference_epochs
        self.schedule = {
            "warmup": scale_epoch(self.warmup_epochs, main_epochs, ref),
            "patience": max(1, scale_epoch(self.patience, main_epochs, ref)),
            "interval": 0 if self.query_interval == 0 else max(1, scale_epoch(self.query_interval, main_epochs, ref)),
        }
        return stages

    def on_train_start(self, run: RunAccess) -> None:
        self._access = run
        self._labels = run.train_labels.numpy()
        if self.ssl_epochs == 0:  # anchors from the model as built; with SSL, after the SSL stage
            self._select_anchors()

    def training_rows(self) -> Tensor | None:
        return self.active if bool(self.active.any()) else None  # None: the SSL stage, on every row

    # --- anchors and queries ------------------------------------------------------------------
    def _select_anchors(self) -> None:
        features = self._access.infer(_backbone_features).numpy()
        anchors = select_anchors(features, self._labels, self.anchor_scaling, self.min_per_class,
                                 rounding=self.anchor_rounding)
        self.active.zero_()
        self.active[torch.as_tensor(anchors, dtype=torch.long)] = True
        self._rebuild_loss()

    def _rebuild_loss(self) -> None:
        if self.loss == "cb_focal":
            counts = active_class_counts(self._labels, self.active, self.num_classes)
            self.class_weights.copy_(class_balanced_weights(counts, self.cb_beta))

    def _query(self, val_accuracy: dict[int, float]) -> int:
        active = self.active.cpu().numpy()
        pool = np.flatnonzero(~active)
        probs = self._access.infer(_mc_dropout_probs(self.mc_passes), positions=pool)  # [P, T, C]
        scores = np.zeros(len(active), dtype=np.float32)
        scores[pool] = bald_scores(probs.transpose(0, 1)).numpy()
        new = curriculum_query(self._labels, np.flatnonzero(active).tolist(), scores, val_accuracy, self.num_classes,
                               self.query_ratio, self.divide_quota_by_classes)
        if new:
            self.active[torch.as_tensor(new, dtype=torch.long)] = True
            self._rebuild_loss()
        return len(new)

    def on_epoch_end(self, epoch: int, val_metrics: dict) -> None:
        if epoch < self._main_start:
            if epoch == self._main_start - 1:  # the SSL stage is over: its encoder picks the anchors
                self._select_anchors()
            return
        main_epoch = epoch - self._main_start
        cm = np.asarray(val_metrics["confusion_matrix"], dtype=np.int64)
        totals = cm.sum(axis=1)
        # correct/total as the code's _evaluate (0 for a class without validation images)
        per_class = {c: (cm[c, c] / totals[c] if totals[c] > 0 else 0.0) for c in range(len(cm))}
        if self.plateau_metric == "acc":
            score = float(np.trace(cm) / max(1, cm.sum()))
        else:
            score = float(np.mean(list(per_class.values())))
        if score > float(self.best_score):
            self.best_score.fill_(score)
            self.epochs_without_improvement.zero_()
        else:
            self.epochs_without_improvement += 1
        if main_epoch >= self.schedule["warmup"]:
            self.epochs_since_last_query += 1
        trigger = query_trigger(main_epoch, self.schedule["warmup"], int(self.epochs_without_improvement),
                                self.schedule["patience"], int(self.epochs_since_last_query),
                                self.schedule["interval"])
        # No epoch follows the last one: a query there would change nothing the run uses.
        if trigger is None or epoch == self._last_epoch or bool(self.active.all()):
            return
        if self._query(per_class) > 0:
            self.queries += 1
            self.epochs_since_last_query.zero_()
            if trigger == "plateau":
                self.epochs_without_improvement.zero_()
            if self.reset_optimizer:
                self._access.reset_optimizer()

    # --- training -----------------------------------------------------------------------------
    def _criterion(self, logits: Tensor, labels: Tensor) -> Tensor:
        if self.loss == "cb_focal":
            return cb_focal_loss(logits, labels, self.class_weights, self.cb_gamma)
        if self.label_smoothing > 0:  # 8f31c0c with `loss: ce`: CE with optional label smoothing
            return F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        return F.cross_entropy(logits, labels)

    def training_step(self, model: nn.Module, batch: Batch) -> StepResult:
        if self.epoch < self._main_start:
            h1, h2 = model.backbone(batch.views[0]), model.backbone(batch.views[1])  # two passes, as the code
            z1 = F.normalize(model.projector(h1).float(), dim=1)
            z2 = F.normalize(model.projector(h2).float(), dim=1)
            return nt_xent_loss(z1, z2, self.ssl_temperature)
        if self.mixup_alpha > 0:  # 8f31c0c's examples/train.py: mixup 0.2 on the active batches
            generator = torch.Generator().set_state(self.mixup_generator_state.cpu())
            lam, perm = draw_mixup(self.mixup_alpha, batch.labels.shape[0], generator)
            self.mixup_generator_state.copy_(generator.get_state())
            logits = model(mix_inputs(batch.views[0], lam, perm)).float()
            loss = mixup_criterion(self._criterion, logits, batch.labels, batch.labels[perm.to(batch.labels.device)],
                                   lam)
        else:
            loss = self._criterion(model(batch.views[0]).float(), batch.labels)
        active = self.active.sum().to(torch.float32)
        return loss, {"active_size": active, "queries": self.queries.to(torch.float32)}
