"""LWS, learnable weight scaling (Kang et al., "Decoupling Representation and Classifier for Long-Tailed
Recognition", ICLR 2020; code facebookresearch/classifier-balancing @ 22370c6,
``models/TauNormClassifier.py`` and ``config/ImageNet_LT/cls_lws.yaml``).

Stage 1 is the joint instance-sampled cross-entropy training of encoder and linear classifier over
the budget E (``feat_uniform.yaml``). Then only a per-class scale ``f_c`` is learned, everything else
frozen (the encoder by ``fix: true``, the classifier's ``fc`` by ``requires_grad = False``), on
class-balanced data (``ClassAwareSampler``), with cross-entropy::

    logits = f ⊙ (W x + b)         (``x = self.fc(x); x *= self.scales``: the bias is scaled too)
    f initialised to ones; SGD weight decay 5e-4 on f (towards 0)

* ``probe="lbfgs"`` (default), post hoc (``Method.calibrate``) on stage 1's best-validation
  checkpoint (the official stage 2 loads ``state_dict_best``): the logits ``a = W x + b`` of every
  training row's eval view once, then the objective the official SGD minimises, ``Σ_i w_i CE(f ⊙ a_i,
  y_i) + λ/2 ‖f‖²`` with class-balanced weights w (every class alike, the sampler's expectation) and
  λ = ``scale_weight_decay`` = 5e-4, solved in float64 by L-BFGS from f = 1 to ``probe_tolerance``.
  The problem is convex in f (the logits are linear in f), so the fit is its optimum; the fit's record
  is in the history (``probe``: iterations, gradient, ``converged``).
* ``probe="sgd"``: the official stage: ``probe_epochs = 5`` beyond E on ``standard`` views of
  ``class_aware`` batches, SGD at ``classifier_lr = 0.2``, weight decay ``classifier_weight_decay =
  5e-4``, cosine to 0, only ``scales`` trained; stage 1 is then not selectable and stage 2's best
  validation epoch is tested, as the official ``train``.

Departures, and why: the default fit is converged on the eval view rather than 5 SGD epochs on
augmented views (docs/protocol.md, issue 20); ``ClassAwareSampler`` visits a class for 4 images, ltbench's
``class_aware`` for one; with ``probe="sgd"`` stage 2 starts from stage 1's last epoch, not its best.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltbench.method import RunAccess, TrainInfo
from ltbench.models import Backbone
from ltbench.registry import register_method
from ltbench.stages import BALANCED_SAMPLERS, Stage

from ._decoupling import DecoupledMethod, DecoupledNetwork, balanced_sample_weights, check_probe, lbfgs_fit
from .crt import classifier_stage_recipe


class ClassScales(nn.Module):
    """One learnable scale per class (``TauNormClassifier``'s ``scales``), initialised to 1."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_classes))


class LWSNetwork(DecoupledNetwork):
    """Backbone → ``classifier`` (Linear) → × ``scales``."""

    def __init__(self, backbone: Backbone, num_classes: int) -> None:
        super().__init__(backbone, num_classes)
        self.scales = ClassScales(num_classes)

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier(self.backbone(images)) * self.scales.weight


def lws_objective(scales: Tensor, logits: Tensor, labels: Tensor, weights: Tensor, weight_decay: float) -> Tensor:
    """``Σ_i w_i CE(f ⊙ a_i, y_i) + λ/2 ‖f‖²`` (weights summing to 1)."""
    per_sample = F.cross_entropy(logits * scales, labels, reduction="none")
    return (weights * per_sample).sum() + 0.5 * weight_decay * (scales * scales).sum()


@register_method("lws")
class LWS(DecoupledMethod):
    """Joint CE training, then per-class classifier scales learned on class-balanced data (module docstring)."""

    recipes = {"paper": classifier_stage_recipe("cls_lws.yaml", probe_epochs=5)}

    stage1_parts = ("backbone", "classifier")

    def __init__(self, probe: str = "lbfgs", scale_weight_decay: float = 5e-4, probe_tolerance: float = 1e-5,
                 probe_max_iter: int = 1000, probe_sampler: str = "class_aware", probe_epochs: int = 5,
                 classifier_lr: float | None = 0.2, classifier_weight_decay: float | None = 5e-4) -> None:
        super().__init__()
        check_probe("lws", probe, probe_epochs, classifier_lr, classifier_weight_decay, probe_tolerance, probe_max_iter)
        if probe_sampler not in BALANCED_SAMPLERS:
            raise ValueError(f"lws: probe_sampler must be one of {', '.join(BALANCED_SAMPLERS)}, got {probe_sampler!r}")
        if not (isinstance(scale_weight_decay, (int, float)) and scale_weight_decay >= 0):
            raise ValueError(f"lws: scale_weight_decay must be a number >= 0, got {scale_weight_decay!r}")
        self.probe = probe
        self.scale_weight_decay = scale_weight_decay
        self.probe_tolerance = probe_tolerance
        self.probe_max_iter = probe_max_iter
        self.probe_sampler = probe_sampler
        self.probe_epochs = probe_epochs
        self.classifier_lr = classifier_lr
        self.classifier_weight_decay = classifier_weight_decay

    def build_model(self, backbone: Backbone, info: TrainInfo) -> nn.Module:
        return LWSNetwork(backbone, info.num_classes)

    def stages(self, info: TrainInfo) -> list[Stage]:
        if self.probe == "lbfgs":
            return self.set_bounds([self.stage1(selectable=True)], info)
        return self.set_bounds([self.stage1(selectable=False), self.sgd_stage(self.probe_sampler, ("scales",))], info)

    def calibrate(self, run: RunAccess) -> dict | None:
        if self.probe != "lbfgs":
            return None
        logits = run.infer(lambda model, x: model.classifier(model.backbone(x)))
        labels = run.train_labels
        with torch.autocast(logits.device.type, enabled=False):
            a = logits.double()
            weights = balanced_sample_weights(labels, run.info.num_classes)
            scales = torch.ones(a.shape[1], dtype=torch.float64, requires_grad=True)
            fit = lbfgs_fit([scales], lambda: lws_objective(scales, a, labels, weights, self.scale_weight_decay),
                            self.probe_tolerance, self.probe_max_iter)
            with torch.no_grad():
                data = float(lws_objective(scales, a, labels, weights, 0.0))
                run.model.scales.weight.copy_(scales.detach().to(run.model.scales.weight))
        fit["loss"] = data
        return {"loss": data, "probe": fit, "scales": [float(s) for s in scales.detach()]}
