"""τ-normalised classifier (Kang et al., "Decoupling Representation and Classifier for Long-Tailed
Recognition", ICLR 2020; code facebookresearch/classifier-balancing @ 22370c6, ``tau_norm.py``).

Stage 1 is the joint instance-sampled cross-entropy training of encoder and linear classifier over
the budget E (``feat_uniform.yaml``); its best-validation epoch is the checkpoint, as the official
script loads ``state_dict_best``. Then, post hoc (``Method.calibrate``), each class's weight vector is
rescaled by a power of its norm and the bias dropped::

    ŵ_c = w_c / ‖w_c‖₂^τ,      logits = x · ŵ_cᵀ            (``pnorm`` and ``dotproduct_similarity``)

τ is chosen on the **validation** rows from the official grid ``np.linspace(0, 2, 21)``
(``tau_grid``), by the score ``tau_norm.py`` prints for each τ: the mean over classes of the
per-class accuracy; ties keep the smaller τ. ``tau`` set to a number skips the choice.
The validation features are computed once; each τ is one matrix product.

Departures from the official code, and why:

* τ on validation. The released ``tau_norm.py`` prints the accuracies of every τ on the set given by
  ``--type`` (``test`` by default) and leaves the choice to the reader: choosing on the test set
  would leak it. The paper tunes τ on validation.
* The run's validation metrics are those of the τ-normalised classifier (the trainer validates again
  after ``calibrate``); the best-validation checkpoint was chosen with the plain classifier, as the
  official script chose stage 1's. The selection-sensitivity test passes of the report are of the plain
  classifier (they are taken during training).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltbench.method import RunAccess, TrainInfo
from ltbench.recipes import Recipe
from ltbench.registry import register_method
from ltbench.stages import Stage

from ._decoupling import OFFICIAL_TAU_GRID, DecoupledMethod, choose_tau, tau_normalised
from .crt import DECOUPLING_IMAGENET_LT_TRAIN, DECOUPLING_SOURCE


@register_method("tau_norm")
class TauNorm(DecoupledMethod):
    """Joint CE training, then the τ-normalised bias-free classifier with τ chosen on validation."""

    recipes = {"paper": Recipe(
        source=DECOUPLING_SOURCE + "feat_uniform.yaml + tau_norm.py (Kang et al., ICLR 2020)",
        train=DECOUPLING_IMAGENET_LT_TRAIN,
        params={"tau_grid": OFFICIAL_TAU_GRID},
        note="ImageNet-LT, ResNeXt-50 from scratch at 224 px; τ chosen on validation (the script prints every τ "
             "on the test set)")}

    def __init__(self, tau: float | None = None, tau_grid: tuple[float, ...] = OFFICIAL_TAU_GRID) -> None:
        super().__init__()
        grid = tuple(tau_grid)
        if not grid or any(not isinstance(t, (int, float)) or not 0 <= t <= 10 for t in grid):
            raise ValueError(f"tau_norm: tau_grid must be a non-empty list of numbers in [0, 10], got {tau_grid!r}")
        if tau is not None and not (isinstance(tau, (int, float)) and 0 <= tau <= 10):
            raise ValueError(f"tau_norm: tau must be a number in [0, 10] or null (chosen on validation), got {tau!r}")
        self.tau = tau
        self.tau_grid = grid

    def setup(self, info: TrainInfo) -> None:
        # predict reads these after calibrate; before it (stage 1's validation) the plain classifier.
        self.register_buffer("chosen_tau", torch.zeros((), dtype=torch.float64, device=info.device))
        self.register_buffer("calibrated", torch.zeros((), dtype=torch.bool, device=info.device))

    def stages(self, info: TrainInfo) -> list[Stage]:
        return self.set_bounds([self.stage1(selectable=True)], info)

    def calibrate(self, run: RunAccess) -> dict:
        features = run.infer(lambda model, x: model.backbone(x), split="val")
        weight = run.model.classifier.weight.detach().cpu()
        labels = run.val_labels
        if self.tau is None:
            tau, scores = choose_tau(features, labels, weight, self.tau_grid)
        else:
            tau, scores = float(self.tau), []
        self.chosen_tau.fill_(tau)
        self.calibrated.fill_(True)
        logits = features.double() @ tau_normalised(weight.double(), tau).T
        return {"loss": float(F.cross_entropy(logits, labels)), "tau": tau, "grid": list(self.tau_grid),
                "val_class_mean_acc": scores}

    def predict(self, model: nn.Module, images: Tensor) -> Tensor:
        if not bool(self.calibrated):
            return model(images)
        features = model.backbone(images)
        with torch.autocast(features.device.type, enabled=False):
            weight = tau_normalised(model.classifier.weight.float(), float(self.chosen_tau))
            return features.float() @ weight.T
