"""Nearest class mean (NCM) on the jointly trained encoder (Kang et al., "Decoupling Representation and
Classifier for Long-Tailed Recognition", ICLR 2020; code facebookresearch/classifier-balancing @ 22370c6,
``models/KNNClassifier.py`` and ``run_networks.py`` ``get_knncentroids``).

Stage 1 is the joint instance-sampled cross-entropy training of encoder and linear classifier over
the budget E (``feat_uniform.yaml``); its best-validation epoch is the checkpoint (the official test
mode loads ``state_dict_best``). Then, post hoc (``Method.calibrate``), from the eval view's features
of every training row, as ``get_knncentroids`` computes them::

    μ = mean of the training features
    cl2n:  z = (x − μ) / ‖x − μ‖₂        (l2n: x / ‖x‖₂; un: x)
    c_k = mean of z over the training rows of class k        (not re-normalised, as the code)
    cos:   logit_k = z · c_k / d           (KNNClassifier.cos_similarity: divided by the feature dim d)
    l2:    logit_k = −‖z − c_k‖²           (KNNClassifier.l2_similarity)

Defaults ``feat_type="cl2n"`` (``create_model``'s) and ``dist_type="cos"`` (the paper's NCM with
cosine similarity; ``create_model``'s default is ``l2``). The linear classifier of stage 1 is not used
after the means are computed. Computed in float64.

Departures from the official code, and why:

* "cos" is the code's, not a true cosine: the centroid is a mean of unit vectors, not renormalised
  (its norm shrinks with the spread of the class), and the logits are divided by d. Argmax and the
  ranking are the code's; the softmax probabilities (AUC, calibration) are those of these small logits.
* A class without training rows has no centroid in the code (``np.unique`` of the labels); here its
  logit is −inf (ltbench never trains with an empty class).
* The run's validation metrics are the NCM's (validated again after ``calibrate``); the checkpoint was
  chosen with the linear classifier, as the official stage 1's. The report's selection-sensitivity test
  passes are of the linear classifier (taken during training).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltbench.method import RunAccess, TrainInfo
from ltbench.models import Backbone
from ltbench.recipes import Recipe
from ltbench.registry import register_method
from ltbench.stages import Stage

from ._decoupling import DIST_TYPES, FEAT_TYPES, DecoupledMethod, DecoupledNetwork, ncm_centroids, ncm_logits
from .crt import DECOUPLING_IMAGENET_LT_TRAIN, DECOUPLING_SOURCE


class NCMNetwork(DecoupledNetwork):
    """The decoupled network plus the NCM state in buffers (so checkpoints carry it)."""

    def __init__(self, backbone: Backbone, num_classes: int) -> None:
        super().__init__(backbone, num_classes)
        d = backbone.out_dim
        self.register_buffer("feat_mean", torch.zeros(d, dtype=torch.float64))
        self.register_buffer("centroids", torch.zeros(num_classes, d, dtype=torch.float64))
        self.register_buffer("present", torch.zeros(num_classes, dtype=torch.bool))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))


@register_method("knn")
class NearestClassMean(DecoupledMethod):
    """Joint CE training, then the nearest-class-mean classifier on the frozen features."""

    recipes = {"paper": Recipe(
        source=DECOUPLING_SOURCE + "feat_uniform.yaml; models/KNNClassifier.py (Kang et al., ICLR 2020)",
        train=DECOUPLING_IMAGENET_LT_TRAIN,
        params={"feat_type": "cl2n", "dist_type": "cos"},
        note="ImageNet-LT, ResNeXt-50 from scratch at 224 px")}

    def __init__(self, feat_type: str = "cl2n", dist_type: str = "cos") -> None:
        super().__init__()
        if feat_type not in FEAT_TYPES:
            raise ValueError(f"knn: feat_type must be one of {', '.join(FEAT_TYPES)}, got {feat_type!r}")
        if dist_type not in DIST_TYPES:
            raise ValueError(f"knn: dist_type must be one of {', '.join(DIST_TYPES)}, got {dist_type!r}")
        self.feat_type = feat_type
        self.dist_type = dist_type

    def build_model(self, backbone: Backbone, info: TrainInfo) -> nn.Module:
        return NCMNetwork(backbone, info.num_classes)

    def stages(self, info: TrainInfo) -> list[Stage]:
        return self.set_bounds([self.stage1(selectable=True)], info)

    def calibrate(self, run: RunAccess) -> dict:
        features = run.infer(lambda model, x: model.backbone(x))
        labels = run.train_labels
        mean, centroids, present = ncm_centroids(features, labels, run.info.num_classes, self.feat_type)
        model = run.model
        with torch.no_grad():
            model.feat_mean.copy_(mean)
            model.centroids.copy_(centroids)
            model.present.copy_(present)
            model.fitted.fill_(True)
        logits = ncm_logits(features.double(), mean, centroids, present, self.feat_type, self.dist_type)
        return {"loss": float(F.cross_entropy(logits, labels)), "feat_type": self.feat_type,
                "dist_type": self.dist_type, "train_acc": float((logits.argmax(1) == labels).double().mean() * 100)}

    def predict(self, model: nn.Module, images: Tensor) -> Tensor:
        if not bool(model.fitted):
            return model(images)
        features = model.backbone(images)
        with torch.autocast(features.device.type, enabled=False):
            logits = ncm_logits(features.double(), model.feat_mean, model.centroids, model.present,
                                self.feat_type, self.dist_type)
        return logits.float()
