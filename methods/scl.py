"""SCL: supervised contrastive learning, then a linear classifier (Khosla et al., NeurIPS 2020;
code HobbitLong/SupContrast; on skin lesions with class-balanced batches: Marrakchi et al., MICCAI 2021).

Two stages (``ltbench.stages``; issue 20):

1. **Representation** (the whole budget E, as a single-stage method has): SupCon
   (``ltbench.losses.supcon_loss``) on the two ``contrastive`` views of class-balanced batches,
   through backbone + projection head (Linear → BN → ReLU → Linear, 128-d, L2-normalised); the
   classifier is frozen. These epochs are not selectable as the best-validation checkpoint (the
   classifier is untrained).
2. **Linear classifier on the frozen encoder**, with its own budget after E (BatchNorm in eval mode,
   as ``main_linear.py`` runs ``model.eval()``):

   * ``probe="lbfgs"`` (default): the eval view's backbone features computed once, then
     cross-entropy (the method's ``probe_loss``) fitted full batch with L-BFGS to a gradient
     tolerance (``ltbench.stages.Probe``: ``probe_l2``, ``probe_tolerance``, ``probe_max_iter``;
     ``probe_sampler`` becomes sample weights). It converges in seconds, so the table ranks the
     representation and not a classifier stopped early; the fit's loss, iterations and convergence
     are in the run's history (the report flags a probe that did not converge).
   * ``probe="sgd"``: ``main_linear.py``'s augmented linear evaluation as its code runs it:
     ``probe_epochs = 100`` epochs beyond E on ``standard`` views of ``probe_sampler`` batches, SGD
     at ``classifier_lr = 0.1`` (the script's default; its README uses 5 for SupCon), weight decay
     ``classifier_weight_decay = 0``, momentum of the run, lr ×``probe_gamma = 0.2`` (its
     ``--lr_decay_rate``) at ``probe_milestones = (60, 75, 90)``, no warm-up (the script warms up only
     for batches above 256).

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
* **Budget.** E epochs for the representation (the shared budget), not 1000; stage 1 runs at the
  run's base lr, weight decay and cosine (the shared protocol), not the official lr 0.5 at batch 1024
  with warm-up. The default classifier stage is the converged L-BFGS probe (above), not 100 SGD
  epochs; ``probe="sgd"`` runs those. (Before issue 20 the classifier had the last 20 % of E by SGD:
  4 epochs at E = 20, which left it far from converged.)
* **Augmentations.** Stage 1 uses the ``contrastive`` preset (ECL's contrastive view, the skin-lesion
  pipeline), not SupContrast's CIFAR crop/jitter; stage 2 uses ``standard`` (resize, h-flip, jitter)
  instead of random-resized-crop + flip.
* **Sampling.** Class-balanced batches for the representation (the skin-lesion version), instance
  batches for the classifier; SupContrast samples instances in both stages.
* **Checkpoint.** The probe is the one candidate (``lbfgs``), or the best validation epoch of the
  classifier stage (``sgd``; the official scripts report the best validation accuracy of the linear
  stage, the same rule).
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltbench.losses import supcon_loss
from ltbench.method import Batch, Method, StepResult, TrainInfo
from ltbench.models import Backbone, ProjectionHead
from ltbench.recipes import Recipe
from ltbench.registry import register_method
from ltbench.stages import Probe, Stage, stage_bounds, stage_index

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


PROBES = ("lbfgs", "sgd")


class TwoStageContrastive(Method):
    """Shared shape of SCL, TSC and SimCLR: a representation stage then a linear probe.

    Subclasses give the stage-1 loss (:meth:`representation_loss`) and sampler; the classifier
    stage and the joint variant are common.
    """

    representation_sampler = "class_balanced"
    #: Model parts trained in the representation stage (the classifier stays frozen).
    representation_parts: tuple[str, ...] = ("backbone", "head")

    def _init_stage_params(self, dim: int, joint: bool, probe: str, probe_l2: float, probe_tolerance: float,
                           probe_max_iter: int, probe_sampler: str, probe_epochs: int, classifier_lr: float | None,
                           classifier_weight_decay: float | None, probe_milestones, probe_gamma: float) -> None:
        cls = type(self).__name__
        if dim < 1:
            raise ValueError(f"{cls}: dim must be positive, got {dim}")
        if probe not in PROBES:
            raise ValueError(f"{cls}: probe must be one of {', '.join(PROBES)}, got {probe!r}")
        if not (isinstance(probe_epochs, int) and probe_epochs >= 1):
            raise ValueError(f"{cls}: probe_epochs must be a positive integer, got {probe_epochs!r}")
        milestones = tuple(probe_milestones)
        if any(not isinstance(m, int) or m < 0 for m in milestones):
            raise ValueError(f"{cls}: probe_milestones must be non-negative integers, got {probe_milestones!r}")
        try:  # the probe's own checks, as one ValueError line
            Probe(l2=probe_l2, tolerance=probe_tolerance, max_iter=probe_max_iter, sampler=probe_sampler)
        except Exception as err:
            raise ValueError(f"{cls}: {err}") from None
        self.dim = dim
        self.joint = joint
        self.probe = probe
        self.probe_l2 = probe_l2
        self.probe_tolerance = probe_tolerance
        self.probe_max_iter = probe_max_iter
        self.probe_sampler = probe_sampler
        self.probe_epochs = probe_epochs
        self.classifier_lr = classifier_lr
        self.classifier_weight_decay = classifier_weight_decay
        self.probe_milestones = milestones
        if not (isinstance(probe_gamma, (int, float)) and 0 < probe_gamma <= 1):
            raise ValueError(f"{cls}: probe_gamma must be in (0, 1], got {probe_gamma!r}")
        self.probe_gamma = probe_gamma
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
            representation = Stage(samplers=stream, trains=self.representation_parts, selectable=False,
                                   name="representation")
            if self.probe == "lbfgs":
                classifier = Stage(trains=("classifier",), name="probe",
                                   probe=Probe(l2=self.probe_l2, tolerance=self.probe_tolerance,
                                               max_iter=self.probe_max_iter, sampler=self.probe_sampler))
            else:
                classifier = Stage(epochs=self.probe_epochs, extra=True,
                                   samplers=((self.probe_sampler, ("standard",)),), trains=("classifier",),
                                   lr=self.classifier_lr, weight_decay=self.classifier_weight_decay,
                                   lr_schedule="step", lr_milestones=self.probe_milestones,
                                   lr_gamma=self.probe_gamma, warmup_epochs=0, name="classifier")
            stages = [representation, classifier]
        self._bounds = stage_bounds(stages, info.epochs)
        return stages

    def in_classifier_stage(self) -> bool:
        """Is the current epoch one of the SGD classifier stage's (``probe="sgd"``)?"""
        return not self.joint and self.probe == "sgd" and stage_index(self._bounds, self.epoch) == len(self._bounds) - 1

    def representation_loss(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        raise NotImplementedError

    def classifier_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        return F.cross_entropy(logits.float(), labels)

    def probe_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """The classifier loss per sample (the probe stage's objective)."""
        return F.cross_entropy(logits, labels, reduction="none")

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

    # SupContrast's README commands. Pre-training: batch 1024, lr 0.5, --temp 0.1 (SupConLoss keeps
    # base_temperature 0.07), --cosine, and main_supcon.py's defaults: 1000 epochs, wd 1e-4, momentum 0.9,
    # for batches > 256 a 10-epoch warm-up from lr 0.01 (0.02 × 0.5). Linear stage (main_linear.py): batch
    # 512, lr 5, 100 epochs, lr × 0.2 (its lr_decay_rate: probe_gamma) at 60/75/90, wd 0; the probe stage has
    # no warm-up (main_linear.py would warm up 10 epochs at batch 512).
    recipes = {"paper": Recipe(
        source="HobbitLong/SupContrast README + main_supcon.py, main_linear.py, util.py @ 66a8fe5 "
               "(Khosla et al., NeurIPS 2020)",
        train={"optimizer": "sgd", "lr": 0.5, "momentum": 0.9, "weight_decay": 1e-4, "batch_size": 1024,
               "epochs": 1000, "lr_schedule": "cosine", "warmup_epochs": 10, "warmup_start_factor": 0.02},
        params={"temperature": 0.1, "base_temperature": 0.07, "probe": "sgd", "probe_epochs": 100,
                "classifier_lr": 5.0, "classifier_weight_decay": 0.0, "probe_milestones": (60, 75, 90),
                "probe_sampler": "instance"},
        note="one batch size for both stages: the linear stage runs at 1024 (main_linear.py: 512, with a "
             "10-epoch warm-up the probe stage does not have); per-batch warm-up and cosine to lr·1e-3 in the code; class-balanced "
             "pre-training batches (the skin-lesion version; SupContrast samples instances); head "
             "Linear(d,d)→ReLU→Linear(d,128) in the code; CIFAR at 32 px with its crop/jitter/grayscale views")}

    representation_sampler = "class_balanced"

    def __init__(
        self,
        dim: int = 128,
        temperature: float = 0.1,
        base_temperature: float | None = None,
        contrast_mode: str = "all",
        joint: bool = False,
        probe: str = "lbfgs",
        probe_l2: float = 1e-3,
        probe_tolerance: float = 1e-5,
        probe_max_iter: int = 1000,
        probe_sampler: str = "instance",  # main_linear.py samples instances
        probe_epochs: int = 100,  # probe="sgd": main_linear.py's --epochs
        classifier_lr: float | None = 0.1,  # probe="sgd": main_linear.py's --learning_rate
        classifier_weight_decay: float | None = 0.0,
        probe_milestones: tuple[int, ...] = (60, 75, 90),  # probe="sgd": --lr_decay_epochs
        probe_gamma: float = 0.2,  # probe="sgd": --lr_decay_rate
    ) -> None:
        super().__init__()
        if temperature <= 0 or (base_temperature is not None and base_temperature <= 0):
            raise ValueError("SCL: temperature and base_temperature must be positive")
        if contrast_mode not in ("all", "one"):
            raise ValueError(f"SCL: contrast_mode must be 'all' or 'one', got {contrast_mode!r}")
        self.temperature = temperature
        self.base_temperature = base_temperature
        self.contrast_mode = contrast_mode
        self._init_stage_params(dim, joint, probe, probe_l2, probe_tolerance, probe_max_iter, probe_sampler,
                                probe_epochs, classifier_lr, classifier_weight_decay, probe_milestones, probe_gamma)

    def representation_loss(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        return supcon_loss(embeddings, labels, temperature=self.temperature,
                           base_temperature=self.base_temperature, contrast_mode=self.contrast_mode)
