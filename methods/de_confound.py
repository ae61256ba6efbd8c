"""De-confound-TDE (Tang, Huang, Zhang, NeurIPS 2020; code KaihuaTang/Long-Tailed-Recognition.pytorch
@ 5c916d0, ``classification/models/CausalNormClassifier.py``, ``classification/run_networks.py``,
``classification/config/*/causal_norm.yaml``).

What is computed (as the official code does), with the d-dimensional feature x split into ``num_head``
consecutive heads of d / K dimensions (K = ``num_head``):

* **Multi-head normalised classifier** (training and the "de-confounded" training logits):
  ``z_c = Σ_k (τ / K) · (x_k / ‖x_k‖) · (w_{c,k} / (‖w_{c,k}‖ + γ))`` (``causal_norm`` of the weight,
  ``l2_norm`` of the feature, ``scale = tau / num_head``); W is C×d, no bias, drawn uniform(±1/sqrt(d)).
  Loss: softmax cross-entropy (``SoftmaxLoss``), mean over the batch.
* **Moving-average feature** (the confounder's direction): after every training batch
  ``m ← μ·m + mean_i x_i`` (μ = 0.9; the features of the training forward, detached; a decayed *sum*, not
  an average — only its per-head direction is used). Kept in the buffer ``embed_mean``.
* **TDE at test** (``predict``, validation and test): with ``x̂_k = x_k/‖x_k‖`` and ``ĉ_k = m_k/‖m_k‖``,
  ``z_c = Σ_k (τ/K) · (x̂_k − α·cos(x̂_k, ĉ_k)·ĉ_k) · ŵ_{c,k}``, the counterfactual removal of the
  head-wise projection on the moving average, ``cos`` recomputed as ``(x̂·ĉ)/‖x̂‖/‖ĉ‖`` as the code does.

Defaults: the classifier's own defaults and the ImageNet-LT config: K = 2, τ = 16, γ = 1/32, α = 3.0
(the CIFAR-10-LT config uses α = 1.0, CIFAR-100-LT 1.5; the paper's Table 5 ablates α on ImageNet-LT).
``use_effect=False`` gives the de-confounded training logits without TDE at test.

Departures, and why:

* **Which moving average is used at test.** The official final checkpoint stores the best epoch's weights
  with the moving average of the *last* epoch; here the buffer is restored with the weights of the
  best-validation epoch (one consistent state; a resumed run carries it too).
* **Feature dimension.** d must be divisible by K (the official code asserts it); small-cnn has d = 128,
  the ResNets 512 or 2048.
* **Protocol.** The shared protocol's backbone, optimiser, schedule and views replace the official
  ResNeXt-50 with warm-up and step (CIFAR) or cosine (ImageNet-LT) schedules (the ``paper`` recipe).
* **Numerics.** The classifier and the moving average run in float32 with autocast off (the backbone may
  run in bf16); the official code runs them in float32 too.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltbench.errors import LtbenchError
from ltbench.method import Batch, Method, StepResult, TrainInfo
from ltbench.models import Backbone, Classifier
from ltbench.recipes import Recipe
from ltbench.registry import register_method


def _heads(x: Tensor, num_head: int) -> tuple[Tensor, ...]:
    head_dim = x.shape[1] // num_head
    parts = torch.split(x, head_dim, dim=1)
    if len(parts) != num_head:
        raise ValueError(f"de_confound: feature dimension {x.shape[1]} is not divisible by num_head {num_head}")
    return parts


def causal_norm_weight(weight: Tensor, num_head: int, gamma: float) -> Tensor:
    """``w_k / (‖w_k‖ + γ)`` per head (``causal_norm``); γ = 0 is the plain l2 norm, as the official ``if weight``."""
    if gamma:
        return torch.cat([w / (torch.norm(w, 2, 1, keepdim=True) + gamma) for w in _heads(weight, num_head)], dim=1)
    return l2_norm_heads(weight, num_head)


def l2_norm_heads(x: Tensor, num_head: int) -> Tensor:
    """``x_k / ‖x_k‖`` per head (``l2_norm``; no epsilon, as official)."""
    return torch.cat([h / torch.norm(h, 2, 1, keepdim=True) for h in _heads(x, num_head)], dim=1)


def causal_logits(features: Tensor, weight: Tensor, num_head: int = 2, tau: float = 16.0,
                  gamma: float = 0.03125) -> Tensor:
    """The training logits ``(x̂ · τ/K) @ ŵᵀ`` (``Causal_Norm_Classifier.forward`` in train mode)."""
    normed_w = causal_norm_weight(weight, num_head, gamma)
    normed_x = l2_norm_heads(features, num_head)
    return torch.mm(normed_x * (tau / num_head), normed_w.t())


def tde_logits(features: Tensor, weight: Tensor, embed: Tensor, num_head: int = 2, tau: float = 16.0,
               gamma: float = 0.03125, alpha: float = 3.0) -> Tensor:
    """The TDE logits of the eval-mode forward: per head ``(x̂_k − α cos(x̂_k, ĉ_k) ĉ_k)·τ/K @ ŵ_kᵀ``, summed."""
    scale = tau / num_head
    normed_w = causal_norm_weight(weight, num_head, gamma)
    normed_x = l2_norm_heads(features, num_head)
    normed_c = l2_norm_heads(embed.reshape(1, -1).to(features.dtype), num_head)
    output = []
    for nx, nc, nw in zip(_heads(normed_x, num_head), _heads(normed_c, num_head), _heads(normed_w, num_head)):
        cos_val = ((nx * nc).sum(-1, keepdim=True) / torch.norm(nx, 2, 1, keepdim=True)
                   / torch.norm(nc, 2, 1, keepdim=True))
        output.append(torch.mm((nx - cos_val * alpha * nc) * scale, nw.t()))
    return sum(output)


class CausalNormClassifier(nn.Module):
    """The C×d weight of ``Causal_Norm_Classifier`` (uniform ±1/sqrt(d)). ``forward(x)`` gives the training
    logits; ``forward(x, label, embed)`` in eval mode the TDE logits, as the official forward (which returns
    ``(y, None)``; here ``y``)."""

    def __init__(self, in_dim: int, num_classes: int, num_head: int, tau: float, gamma: float,
                 alpha: float = 3.0, use_effect: bool = True) -> None:
        super().__init__()
        if in_dim % num_head:
            raise LtbenchError(f"de_confound: feature dimension {in_dim} is not divisible by num_head {num_head}")
        self.weight = nn.Parameter(torch.empty(num_classes, in_dim))
        stdv = 1.0 / math.sqrt(in_dim)
        self.weight.data.uniform_(-stdv, stdv)
        self.num_head, self.tau, self.gamma = num_head, tau, gamma
        self.alpha, self.use_effect = alpha, use_effect

    def forward(self, features: Tensor, label: Tensor | None = None, embed: Tensor | None = None) -> Tensor:
        with torch.autocast(device_type=features.device.type, enabled=False):
            features = features.float() if features.dtype in (torch.float16, torch.bfloat16) else features
            if embed is not None and not self.training and self.use_effect:
                embed = torch.as_tensor(embed, device=features.device)
                return tde_logits(features, self.weight, embed, self.num_head, self.tau, self.gamma, self.alpha)
            return causal_logits(features, self.weight, self.num_head, self.tau, self.gamma)


@register_method("de_confound")
class DeConfound(Method):
    """De-confound-TDE (Tang et al., NeurIPS 2020). See the module docstring."""

    recipes = {"paper": Recipe(
        source="KaihuaTang/Long-Tailed-Recognition.pytorch classification/config/ImageNet_LT/causal_norm.yaml "
               "@ 5c916d0 (Tang et al., NeurIPS 2020)",
        train={"optimizer": "sgd", "lr": 0.2, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 512,
               "epochs": 90, "lr_schedule": "cosine"},
        params={"num_head": 2, "tau": 16.0, "gamma": 0.03125, "alpha": 3.0, "mu": 0.9},
        note="ImageNet-LT, ResNeXt-50 from scratch at 224 px; backbone, size and views stay the benchmark's")}

    def __init__(self, num_head: int = 2, tau: float = 16.0, gamma: float = 0.03125, alpha: float = 3.0,
                 mu: float = 0.9, use_effect: bool = True) -> None:
        super().__init__()
        if isinstance(num_head, bool) or not isinstance(num_head, int) or num_head < 1:
            raise ValueError(f"de_confound: num_head must be a positive integer, got {num_head!r}")
        if not (isinstance(tau, (int, float)) and tau > 0):
            raise ValueError(f"de_confound: tau must be positive, got {tau!r}")
        if not (isinstance(gamma, (int, float)) and gamma >= 0):
            raise ValueError(f"de_confound: gamma must be >= 0, got {gamma!r}")
        if not (isinstance(alpha, (int, float)) and math.isfinite(alpha)):
            raise ValueError(f"de_confound: alpha must be a finite number, got {alpha!r}")
        if not (isinstance(mu, (int, float)) and 0 <= mu < 1):
            raise ValueError(f"de_confound: mu must be in [0, 1), got {mu!r}")
        self.num_head, self.tau, self.gamma, self.alpha, self.mu = num_head, tau, gamma, alpha, mu
        self.use_effect = bool(use_effect)

    def setup(self, info: TrainInfo) -> None:
        # Sized in build_model, once the feature dimension is known (a loaded state brings its own size).
        self.register_buffer("embed_mean", torch.zeros(0, device=info.device))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        saved = state_dict.get(prefix + "embed_mean")
        if saved is not None and getattr(self, "embed_mean", None) is not None and saved.shape != self.embed_mean.shape:
            self.embed_mean = torch.zeros_like(saved, device=self.embed_mean.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def build_model(self, backbone: Backbone, info: TrainInfo) -> nn.Module:
        self.embed_mean = torch.zeros(backbone.out_dim, device=info.device)  # the moving average starts at 0
        return Classifier(backbone, CausalNormClassifier(backbone.out_dim, info.num_classes, self.num_head,
                                                          self.tau, self.gamma, self.alpha, self.use_effect))

    def training_step(self, model: nn.Module, batch: Batch) -> StepResult:
        features = model.backbone(batch.views[0])
        with torch.autocast(device_type=features.device.type, enabled=False):
            features = features.float()
            with torch.no_grad():  # the official moving average: numpy, after the forward
                self.embed_mean.mul_(self.mu).add_(features.detach().mean(0))
            logits = model.head(features)
            return F.cross_entropy(logits, batch.labels)

    def predict(self, model: nn.Module, images: Tensor) -> Tensor:
        features = model.backbone(images)
        with torch.autocast(device_type=features.device.type, enabled=False):
            features = features.float()
            # Before the first training step the moving average is zero and the official cosine is 0/0
            # (NaN logits): with no known bias direction the counterfactual term is 0.
            if not self.use_effect or not bool(self.embed_mean.any()):
                return causal_logits(features, model.head.weight, self.num_head, self.tau, self.gamma)
            return tde_logits(features, model.head.weight, self.embed_mean, self.num_head, self.tau, self.gamma,
                              self.alpha)
