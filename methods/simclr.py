"""SimCLR representation + focal-loss linear probe: the self-supervised contrastive workflow run on
ISIC (SimCLR: Chen et al., ICML 2020, google-research/simclr; NT-Xent as HobbitLong/SupContrast's
``SupConLoss(features)`` computes it with no labels; focal loss: Lin et al., ICCV 2017).

Two stages (``ltbench.stages``), the shape of SCL (``methods/scl.py``):

1. **Representation** (the whole budget E, not selectable): NT-Xent (``supcon_loss(z, labels=None)``)
   on the two ``contrastive`` views of **instance** batches — no labels are used; the only positive
   of a view is the other view of the same image; the other 2B − 2 views are negatives.
2. **Linear probe** on the frozen backbone (BatchNorm in eval mode), trained with the softmax focal
   loss (``ltbench.methods.focal.focal_loss``, γ = 2), with its own budget after E: by default the
   L-BFGS fit to convergence on the eval view's features (``ltbench.stages.Probe``; SimCLR's own
   appendix B.6 fits its linear evaluation with L-BFGS on frozen features); ``probe="sgd"``: SupContrast's
   ``main_linear.py`` (100 epochs of ``standard`` views of instance batches, lr 0.1 — its README uses 1
   for SimCLR — ×0.2 at 60/75/90, weight decay 0).

Deviations: T = 0.1 (google-research/simclr's default ``--temperature``; SupContrast's scripts use
0.5 for SimCLR on CIFAR; ``temperature`` sets it), no T/T_base rescaling; one budget E split by
E epochs of pre-training (SimCLR pre-trains for hundreds of epochs, then probes for 90–100); the run's
SGD lr/momentum/weight decay in stage 1 instead of LARS at batch 4096; ECL's ``contrastive``
augmentation preset instead of SimCLR's crop + strong jitter + blur; the probe trains on augmented
(``standard``) views instead of SimCLR's centre crops; the probe's loss is focal, not CE, as in the
ISIC workflow this row reproduces. ``joint=True`` trains NT-Xent + focal probe on detached
features together in one stage.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ltbench.losses import supcon_loss
from ltbench.methods.focal import focal_loss
from ltbench.methods.scl import TwoStageContrastive
from ltbench.recipes import Recipe
from ltbench.registry import register_method


@register_method("simclr")
class SimCLR(TwoStageContrastive):
    """SimCLR + focal linear probe. See the module docstring."""

    # SupContrast's README SimCLR commands (SGD; SimCLR's own LARS at batch 4096 is not in the suite):
    # pre-training batch 1024, lr 0.5, --temp 0.5, --cosine, and main_supcon.py's defaults (1000 epochs,
    # wd 1e-4, momentum 0.9, 10-epoch warm-up from lr 0.01 for batches > 256); linear stage
    # (main_linear.py): batch 512, lr 1, 100 epochs, lr × 0.2 (probe_gamma) at 60/75/90, wd 0.
    recipes = {"paper": Recipe(
        source="HobbitLong/SupContrast README (SimCLR) + main_supcon.py, main_linear.py, util.py @ 66a8fe5 "
               "(Chen et al., ICML 2020)",
        train={"optimizer": "sgd", "lr": 0.5, "momentum": 0.9, "weight_decay": 1e-4, "batch_size": 1024,
               "epochs": 1000, "lr_schedule": "cosine", "warmup_epochs": 10, "warmup_start_factor": 0.02},
        params={"temperature": 0.5, "probe": "sgd", "probe_epochs": 100, "classifier_lr": 1.0,
                "classifier_weight_decay": 0.0, "probe_milestones": (60, 75, 90), "probe_sampler": "instance"},
        note="SupConLoss(temperature=0.5) keeps base_temperature 0.07, a ×7.14 loss factor this method has no "
             "parameter for; the probe stays focal (γ 2, this row's ISIC workflow; SupContrast's is CE: gamma=0); "
             "one batch size for both stages (main_linear.py: 512); per-batch warm-up and cosine "
             "to lr·1e-3 in the code; CIFAR at 32 px with its crop/jitter/grayscale views")}

    representation_sampler = "instance"

    def __init__(
        self,
        dim: int = 128,
        temperature: float = 0.1,
        gamma: float = 2.0,
        joint: bool = False,
        probe: str = "lbfgs",
        probe_l2: float = 1e-3,
        probe_tolerance: float = 1e-5,
        probe_max_iter: int = 1000,
        probe_sampler: str = "instance",
        probe_epochs: int = 100,  # probe="sgd": main_linear.py
        classifier_lr: float | None = 0.1,
        classifier_weight_decay: float | None = 0.0,
        probe_milestones: tuple[int, ...] = (60, 75, 90),
        probe_gamma: float = 0.2,  # main_linear.py's --lr_decay_rate
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"SimCLR: temperature must be positive, got {temperature}")
        if gamma < 0:
            raise ValueError(f"SimCLR: gamma must be >= 0, got {gamma}")
        self.temperature = temperature
        self.gamma = gamma
        self._init_stage_params(dim, joint, probe, probe_l2, probe_tolerance, probe_max_iter, probe_sampler,
                                probe_epochs, classifier_lr, classifier_weight_decay, probe_milestones, probe_gamma)

    def representation_loss(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        return supcon_loss(embeddings, None, temperature=self.temperature)

    def classifier_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        return focal_loss(logits.float(), labels, self.gamma)

    def probe_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Per-sample focal loss ``(1 − p)^γ · ce`` (``focal_loss`` before its mean)."""
        ce = F.cross_entropy(logits, labels, reduction="none")
        return (1 - torch.exp(-ce)) ** self.gamma * ce
