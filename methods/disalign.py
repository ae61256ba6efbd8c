"""DisAlign, distribution alignment (Zhang, Li, Yan, He, Sun: "Distribution Alignment: A Unified Framework
for Long-tail Visual Recognition", CVPR 2021; code Megvii-BaseDetection/DisAlign @ ead1da2,
``classification/imagenetlt/resnext50/resx50.scratch.imagenet_lt.224size.90e.disalign.10e/{config,net}.py``,
with cvpods' ``DisAlignLinear`` and ``GRWCrossEntropyLoss``).

Stage 1 (the budget E): encoder and linear classifier trained with plain cross-entropy on instance
batches (``...224size.90e``). Stage 2 over the frozen model: the **adaptive calibration function**
(``DisAlignLinear.forward``), learned with **generalised re-weighting** (``GRWCrossEntropyLoss``)::

    z = W x + b                                     (stage 1's classifier, frozen)
    σ(x) = sigmoid(v·x + c)                         (``confidence_layer = Linear(d, 1)``, v initialised to 0.1)
    ŝ = (1 + σ(x)·α) ⊙ z + σ(x)·β                   (``logit_scale`` α = 1, ``logit_bias`` β = 0 at the start)
    w_c = (1 / r_c^ρ) rescaled to sum C, r_c = n_c / Σ n     (ρ = ``exp_scale`` = 1.2: ``GRW_SCALE``)
    loss = F.cross_entropy(ŝ, y, weight=w) = Σ_i w_{y_i} CE_i / Σ_i w_{y_i}

Only α, β, v and c are trained (``net.py`` sets ``requires_grad`` on them alone); prediction is ŝ.
The weights are ``methods/grw.py``'s ``grw_weights(reference="sum")``, DisAlign's own formula.

* ``probe="lbfgs"`` (default), post hoc (``Method.calibrate``) on stage 1's best-validation
  checkpoint: the eval view's features of every training row once, then the stage-2 objective over
  the whole training set plus the official weight decay as L2, ``λ/2 (‖α‖² + ‖β‖² + ‖v‖² + c²)`` with
  λ = ``calibration_weight_decay`` = 5e-4, by L-BFGS in float64 from the official initialisation to
  ``probe_tolerance`` (not convex in v: a stationary point; the record in the history says whether the
  tolerance was reached).
* ``probe="sgd"``: the official stage 2: ``probe_epochs = 10`` beyond E on instance batches of
  ``standard`` views, SGD at ``classifier_lr = 0.1``, weight decay 5e-4, cosine (epoch-wise, no
  warm-up); stage 1 is then not selectable and stage 2's best validation epoch is tested.

Departures, and why: the default fit is converged on the eval view, not 10 SGD epochs on augmented
views (docs/protocol.md, issue 20); stage 2 starts from stage 1's best-validation checkpoint
(``probe="lbfgs"``) or last epoch (``"sgd"``), where the code loads ``model_final.pth`` (the last).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ltbench.method import RunAccess, TrainInfo
from ltbench.models import Backbone
from ltbench.recipes import Recipe
from ltbench.registry import register_method
from ltbench.stages import Stage

from ._decoupling import DecoupledMethod, DecoupledNetwork, check_probe, lbfgs_fit
from .grw import grw_loss, grw_weights


class DisAlignCalibration(nn.Module):
    """``DisAlignLinear``'s added parameters: ``confidence_layer`` (weight 0.1, bias nn.Linear's), α, β;
    ``active`` (a buffer) switches the calibration on for stage 2 and after."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.confidence_layer = nn.Linear(in_features, 1)
        nn.init.constant_(self.confidence_layer.weight, 0.1)
        self.logit_scale = nn.Parameter(torch.ones(num_classes))
        self.logit_bias = nn.Parameter(torch.zeros(num_classes))
        self.register_buffer("active", torch.zeros((), dtype=torch.bool))

    def forward(self, features: Tensor, logits: Tensor) -> Tensor:
        return disalign_logits(features, logits, self.confidence_layer.weight[0], self.confidence_layer.bias[0],
                               self.logit_scale, self.logit_bias)


def disalign_logits(features: Tensor, logits: Tensor, v: Tensor, c: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
    """``(1 + σ·α) ⊙ z + σ·β`` with ``σ = sigmoid(x·v + c)`` per sample."""
    confidence = torch.sigmoid(features @ v + c)[:, None]
    return (1 + confidence * alpha) * logits + confidence * beta


class DisAlignNetwork(DecoupledNetwork):
    def __init__(self, backbone: Backbone, num_classes: int) -> None:
        super().__init__(backbone, num_classes)
        self.calibration = DisAlignCalibration(backbone.out_dim, num_classes)

    def forward(self, images: Tensor) -> Tensor:
        features = self.backbone(images)
        logits = self.classifier(features)
        return self.calibration(features, logits) if bool(self.calibration.active) else logits


@register_method("disalign")
class DisAlign(DecoupledMethod):
    """Joint CE training, then the adaptive calibration function learned with GRW (module docstring)."""

    recipes = {"paper": Recipe(
        source="Megvii-BaseDetection/DisAlign @ ead1da2, classification/imagenetlt/resnext50/"
               "resx50.scratch.imagenet_lt.224size.90e{,.disalign.10e}/config.py (Zhang et al., CVPR 2021)",
        train={"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 256,
               "epochs": 90, "lr_schedule": "cosine"},
        params={"probe": "sgd", "probe_epochs": 10, "classifier_lr": 0.1, "classifier_weight_decay": 5e-4,
                "exp_scale": 1.2},
        note="ImageNet-LT, ResNeXt-50 from scratch at 224 px, both stages batch 256; cvpods' SGD momentum 0.9")}

    stage1_parts = ("backbone", "classifier")

    def __init__(self, exp_scale: float = 1.2, probe: str = "lbfgs", calibration_weight_decay: float = 5e-4,
                 probe_tolerance: float = 1e-5, probe_max_iter: int = 1000, probe_epochs: int = 10,
                 classifier_lr: float | None = 0.1, classifier_weight_decay: float | None = 5e-4) -> None:
        super().__init__()
        check_probe("disalign", probe, probe_epochs, classifier_lr, classifier_weight_decay, probe_tolerance,
                    probe_max_iter)
        if not (isinstance(exp_scale, (int, float)) and exp_scale >= 0):
            raise ValueError(f"disalign: exp_scale must be a number >= 0, got {exp_scale!r}")
        if not (isinstance(calibration_weight_decay, (int, float)) and calibration_weight_decay >= 0):
            raise ValueError(f"disalign: calibration_weight_decay must be >= 0, got {calibration_weight_decay!r}")
        self.exp_scale = exp_scale
        self.probe = probe
        self.calibration_weight_decay = calibration_weight_decay
        self.probe_tolerance = probe_tolerance
        self.probe_max_iter = probe_max_iter
        self.probe_epochs = probe_epochs
        self.classifier_lr = classifier_lr
        self.classifier_weight_decay = classifier_weight_decay

    def setup(self, info: TrainInfo) -> None:
        self.register_buffer("class_weights", grw_weights(info.class_counts, self.exp_scale, "sum").to(info.device))

    def build_model(self, backbone: Backbone, info: TrainInfo) -> nn.Module:
        return DisAlignNetwork(backbone, info.num_classes)

    def stages(self, info: TrainInfo) -> list[Stage]:
        if self.probe == "lbfgs":
            return self.set_bounds([self.stage1(selectable=True)], info)
        return self.set_bounds([self.stage1(selectable=False), self.sgd_stage("instance", ("calibration",))], info)

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        if self.probe == "sgd" and epoch == self.stage2_start():
            self._run.model.calibration.active.fill_(True)

    def stage2_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        with torch.autocast(logits.device.type, enabled=False):
            return grw_loss(logits.float(), labels, self.class_weights)

    def calibrate(self, run: RunAccess) -> dict | None:
        if self.probe != "lbfgs":
            return None
        model = run.model
        features = run.infer(lambda m, x: m.backbone(x))
        labels = run.train_labels
        calibration = model.calibration
        with torch.autocast(features.device.type, enabled=False):
            x = features.double()
            z = x @ model.classifier.weight.detach().cpu().double().T + model.classifier.bias.detach().cpu().double()
            weights = self.class_weights.detach().cpu().double()
            params = [p.detach().cpu().double().clone().requires_grad_(True) for p in
                      (calibration.confidence_layer.weight[0], calibration.confidence_layer.bias[0],
                       calibration.logit_scale, calibration.logit_bias)]

            def data_loss() -> Tensor:
                return grw_loss(disalign_logits(x, z, *params), labels, weights)

            def objective() -> Tensor:
                return data_loss() + 0.5 * self.calibration_weight_decay * sum((p * p).sum() for p in params)

            fit = lbfgs_fit(params, objective, self.probe_tolerance, self.probe_max_iter)
            with torch.no_grad():
                data = float(data_loss())
                v, c, alpha, beta = (p.detach() for p in params)
                calibration.confidence_layer.weight[0].copy_(v)
                calibration.confidence_layer.bias[0].copy_(c)
                calibration.logit_scale.copy_(alpha)
                calibration.logit_bias.copy_(beta)
                calibration.active.fill_(True)
        fit["loss"] = data
        return {"loss": data, "probe": fit}
