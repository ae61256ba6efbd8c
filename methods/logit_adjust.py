"""Logit adjustment: the logit-adjusted loss or post-hoc adjustment by the log class prior.

Menon, Jayasumana, Rawat, Jain, Veit, Kumar: "Long-tail learning via logit adjustment",
ICLR 2021. Official code: google-research/google-research ``logit_adjustment/`` (``main.py``,
``utils.build_loss_fn``).

With π the training-split class prior (``n_c / Σ_k n_k``) and ``a_c = log(π_c^τ + 1e-12)``
(the official epsilon, in both forms), τ = 1:

* ``mode="loss"``: train with ``CE(z + a, y)`` (mean over the batch), predict with ``z``.
* ``mode="posthoc"``: train with plain ``CE(z, y)``, predict with ``z − a``.

**Default: ``mode="posthoc"``**, the official default (``flags.DEFINE_enum('mode', 'posthoc', ...)``);
the benchmark files list the other form as a named variant (``mode: loss``).

Where ltbench deviates, and why:

* **Which logits are evaluated.** In post-hoc mode the official loop reports both the plain and
  the adjusted test accuracy; ltbench evaluates only the adjusted logits (``predict``), the method's
  point. Their softmax gives the AUC probabilities.
* **Precision of a.** The official code casts ``π^τ + 1e-12`` (numpy float64) to float32 and takes
  the log in float32; here the log is taken in float64 and cast once to float32 (at most one
  float32 ulp apart).
* **Protocol.** The shared protocol's backbone, SGD 0.002 with cosine decay and best-validation
  checkpoint replace the official CIFAR ResNet-32, SGD 0.1 (Nesterov) with warm-up and step decay.

Tricks (issue 15; off by default): ``sampler`` and ``mixup_alpha`` (``ltbench.method.LossMethod``). No
``label_smoothing``: the adjustment's consistency argument is for the hard-label CE; the official
code has none.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltbench.method import LossMethod, TrainInfo
from ltbench.recipes import Recipe
from ltbench.registry import register_method

MODES = ("loss", "posthoc")
EPSILON = 1e-12  # official: log(base_probs**tau + 1e-12)


def class_prior(class_counts: Sequence[int]) -> Tensor:
    """Training-split prior ``π_c = n_c / Σ_k n_k`` (float64)."""
    counts = torch.tensor([float(n) for n in class_counts], dtype=torch.float64)
    return counts / counts.sum()


def log_prior_adjustment(base_probs: Tensor | Sequence[float], tau: float = 1.0) -> Tensor:
    """``log(π^τ + 1e-12)``, computed in float64 (cast it to the logits' dtype to use it)."""
    prior = torch.as_tensor(base_probs, dtype=torch.float64)
    return torch.log(prior**tau + EPSILON)


def logit_adjusted_loss(logits: Tensor, labels: Tensor, base_probs: Tensor | Sequence[float], tau: float = 1.0) -> Tensor:
    """The logit-adjusted loss ``mean_i CE(z_i + log(π^τ + 1e-12), y_i)``."""
    adjustment = log_prior_adjustment(base_probs, tau).to(logits.device, logits.dtype)
    return F.cross_entropy(logits + adjustment, labels)


def posthoc_adjusted_logits(logits: Tensor, base_probs: Tensor | Sequence[float], tau: float = 1.0) -> Tensor:
    """Post-hoc adjusted logits ``z − log(π^τ + 1e-12)`` (their argmax is the prediction)."""
    adjustment = log_prior_adjustment(base_probs, tau).to(logits.device, logits.dtype)
    return logits - adjustment


@register_method("logit_adjust")
class LogitAdjustment(LossMethod):
    """Logit adjustment by τ · log prior, in the loss (``mode="loss"``) or post hoc (``"posthoc"``)."""

    # google-research's logit_adjustment code, CIFAR-10-LT (utils.dataset_mappings): SGD lr 0.1, momentum
    # 0.9, batch 128, 1241 epochs, lr ×0.1 / 0.01 / 0.001 from epochs 604 / 926 / 1128 after a per-step
    # linear warm-up from 0 over 20 epochs; Keras L2 1e-4 adds λ‖w‖² (gradient 2λw): weight decay 2e-4.
    # Per epoch, warm-up 19 from 0.05 trains epoch e < 19 at (e+1)/20 of the lr, the ramp at its end.
    recipes = {"paper": Recipe(
        source="google-research/google-research logit_adjustment/main.py, utils.py @ 1d4d2f1, models.py @ 5b09c22 "
               "(Menon et al., ICLR 2021)",
        train={"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 2e-4, "batch_size": 128,
               "epochs": 1241, "lr_schedule": "step", "lr_milestones": (604, 926, 1128), "lr_gamma": 0.1,
               "warmup_epochs": 19, "warmup_start_factor": 0.05},
        note="Nesterov momentum in the code (plain momentum here); its L2 covers conv/dense weights, not BatchNorm; "
             "CIFAR-100-LT has its own schedule (1419 epochs, steps 691/1059/1290, warm-up 22); ResNet-32 at 32 px, "
             "crop + flip; mode and τ are the code's defaults (posthoc, 1)")}

    def __init__(self, mode: str = "posthoc", tau: float = 1.0, sampler: str = "instance",
                 mixup_alpha: float = 0.0) -> None:
        super().__init__(sampler=sampler, mixup_alpha=mixup_alpha)  # LossMethod's tricks (issue 15)
        if mode not in MODES:
            raise ValueError(f"logit_adjust: mode must be 'loss' or 'posthoc', got {mode!r}")
        self.mode = mode
        self.tau = tau

    def setup(self, info: TrainInfo) -> None:
        super().setup(info)  # mixup's generator (nothing at mixup_alpha = 0)
        adjustment = log_prior_adjustment(class_prior(info.class_counts), self.tau)
        self.register_buffer("adjustment", adjustment.to(torch.float32).to(info.device))

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        with torch.autocast(device_type=logits.device.type, enabled=False):
            if self.mode == "loss":
                logits = logits + self.adjustment.to(logits.dtype)
            return F.cross_entropy(logits, labels)

    def predict(self, model: nn.Module, images: Tensor) -> Tensor:
        logits = model(images)
        if self.mode == "posthoc":
            return logits.float() - self.adjustment
        return logits
