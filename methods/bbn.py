"""BBN: bilateral-branch network with cumulative learning (Zhou et al., CVPR 2020; code Megvii-Nanjing/BBN).

A trunk shared by two branches, each with its own copy of the network's last residual block(s):
the *conventional* branch sees a uniform (instance-sampled) batch, the *re-balancing* branch a
batch from the reversed sampler (class c drawn with probability ∝ n_max / n_c, then an image
uniformly), so each step sees 2B images, one trunk pass per batch. With f_c, f_r the pooled
features of the two branches and α the cumulative-learning weight:

* training logits ``z = W · (2 · [α f_c ; (1 − α) f_r]) + b`` (concatenation, one ``Linear(2d, C)``),
  loss ``α · CE(z, y_c) + (1 − α) · CE(z, y_r)``, both CE terms mean-reduced (:func:`bbn_loss`);
  the logged training accuracy is ``α · acc(z, y_c) + (1 − α) · acc(z, y_r)`` (:func:`bbn_accuracy`);
* ``α = 1 − ((e − 1) / div)²`` with e the 1-indexed epoch and ``div = E``, except
  ``div = 100 · (E // 100 + 1)`` for E ∈ {90, 180} (``ltbench.schedules.bbn_alpha``, ``bbn_div_epoch``);
* inference ``W · [f_c ; f_r] + b`` — the training mix at α = 0.5.

BBN in ltbench vs the official repository
=========================================

Identical to Megvii-Nanjing/BBN (``lib/core/combiner.py`` ``bbn_mix``, ``lib/backbone/``,
``lib/net/network.py``): the batch flow (uniform batch → conventional branch, reversed batch →
re-balancing branch, two trunk passes, so BatchNorm sees each batch on its own), the factor 2 and
the concatenation in the training logits, the loss, the α schedule and its ``div_epoch`` rule,
the accuracy, the inference logits (both branches on the same images, one trunk pass), the
reversed sampler, a classifier with bias.

Deliberate differences and choices:

* **Epochs.** The API's epochs are 0-indexed; α of 0-indexed epoch k uses ``e = k + 1``, so the
  first epoch trains at α = 1 and the last (E = 100) at 0.0199, as in the official loop.
* **What the branches own.** Paper and code share every weight "except for the last residual
  block" (``BBN_ResNet``: ``layer4`` has one block fewer, then ``cb_block`` / ``rb_block``). That
  is the default, ``branch_blocks=1``. ``branch_blocks=None`` gives each branch a copy of the
  whole last stage (``layer4``), the reading of the issue text; ``small-cnn``'s last stage is one
  conv block, so both settings agree there. The split comes from ``Backbone.split_last_stage``.
* **Initial branch weights.** Both branch tails start as copies of the backbone's own last
  block(s): ImageNet weights with ``--pretrained``, otherwise the same random draw for both. The
  official code builds ``cb_block`` and ``rb_block`` as separate modules (independent random
  initialisation; pretrained weights loaded by name).
* **Factor 2.** ``mix_scale=2`` is the official code; the paper's equation has none (``mix_scale=1``).
  Inference is the mix at α = 0.5 with the same scale, which for the default is exactly
  ``W · [f_c ; f_r] + b``.
* **Shared protocol.** ltbench's optimiser and schedule (SGD, per-epoch cosine lr, weight decay),
  its augmentation (the ``standard`` preset on both streams), batch size (per stream) and the
  best-validation checkpoint replace the official configs' (multi-step lr with warm-up).
* **Numerics.** The loss and the accuracy are computed in float32 with autocast disabled (the
  forward passes may run in bf16); the logged accuracy is in percent (official: a fraction).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltbench.method import Batch, Method, StepResult, TrainInfo
from ltbench.models import Backbone
from ltbench.recipes import Recipe
from ltbench.registry import register_method
from ltbench.schedules import bbn_alpha, bbn_div_epoch


# --- pieces ------------------------------------------------------------------------------------
def bbn_mix_features(f_c: Tensor, f_r: Tensor, alpha: float | Tensor, mix_scale: float = 2.0) -> Tensor:
    """The classifier input of BBN's training step: ``mix_scale · [α f_c ; (1 − α) f_r]`` (N×2d)."""
    return mix_scale * torch.cat([alpha * f_c, (1 - alpha) * f_r], dim=1)


def bbn_loss(logits: Tensor, labels_c: Tensor, labels_r: Tensor, alpha: float | Tensor) -> Tensor:
    """``α · CE(z, y_c) + (1 − α) · CE(z, y_r)``, each CE the mean over the N rows.

    ``logits`` z (N×C) are the mixed-feature logits; ``labels_c`` come from the uniform batch,
    ``labels_r`` from the reversed batch (row i of each was mixed into row i of z).
    """
    return alpha * F.cross_entropy(logits, labels_c) + (1 - alpha) * F.cross_entropy(logits, labels_r)


def bbn_accuracy(logits: Tensor, labels_c: Tensor, labels_r: Tensor, alpha: float | Tensor) -> Tensor:
    """``α · acc(z, y_c) + (1 − α) · acc(z, y_r)`` in percent, a scalar tensor (no gradient)."""
    with torch.no_grad():
        predicted = logits.argmax(dim=1)
        acc_c = (predicted == labels_c).float().mean()
        acc_r = (predicted == labels_r).float().mean()
        return 100.0 * (alpha * acc_c + (1 - alpha) * acc_r)


# --- network -----------------------------------------------------------------------------------
class BBNNetwork(nn.Module):
    """Shared trunk, a conventional and a re-balancing tail, one ``Linear(2d, C)``.

    ``model(images)`` returns the inference logits (both tails on one trunk pass, mixed at
    α = 0.5). ``model(uniform_images, reversed_images, alpha)`` returns the training logits:
    the uniform images through the conventional tail, the reversed ones through the
    re-balancing tail, each with its own trunk pass.
    """

    def __init__(self, backbone: Backbone, num_classes: int, branch_blocks: int | None = 1,
                 mix_scale: float = 2.0) -> None:
        super().__init__()
        self.trunk, self.conventional = backbone.split_last_stage(branch_blocks)
        self.rebalancing = copy.deepcopy(self.conventional)  # its own weights, same start
        self.classifier = nn.Linear(2 * backbone.out_dim, num_classes)
        self.mix_scale = mix_scale

    def branch_features(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``(f_c, f_r)`` of the same images (one trunk pass)."""
        shared = self.trunk(images)
        return self.conventional(shared), self.rebalancing(shared)

    def forward(self, images: Tensor, reversed_images: Tensor | None = None,
                alpha: float | Tensor | None = None) -> Tensor:
        if reversed_images is None:
            f_c, f_r = self.branch_features(images)
            return self.classifier(bbn_mix_features(f_c, f_r, 0.5, self.mix_scale))
        if alpha is None:
            raise ValueError("BBNNetwork: the training forward needs alpha")
        f_c = self.conventional(self.trunk(images))
        f_r = self.rebalancing(self.trunk(reversed_images))
        return self.classifier(bbn_mix_features(f_c, f_r, alpha, self.mix_scale))


# --- method ------------------------------------------------------------------------------------
@register_method("bbn")
class BBN(Method):
    """BBN (Zhou et al., CVPR 2020). See the module docstring for the comparison with
    Megvii-Nanjing/BBN. ``div_epoch=None`` applies the official rule to the run's budget."""

    #: One stream per branch: uniform for the conventional, reversed for the re-balancing branch.
    samplers = ("instance", "reversed")

    # Megvii-Nanjing/BBN configs/cifar10.yaml (cifar100.yaml has the same TRAIN block). Its
    # WarmupMultiStepLR (factor 1/3 over 5 epochs), stepped at the start of each 1-indexed epoch e, gives
    # (1 − e/5)/3 + e/5 for e ≤ 4, then ×0.01 from e = 120 and again from 160: in 0-indexed epochs a
    # 4-epoch warm-up from 7/15 and milestones 119/159 give exactly these rates. div_epoch: E = 200.
    recipes = {"paper": Recipe(
        source="Megvii-Nanjing/BBN configs/cifar10.yaml, lib/utils/utils.py, lib/utils/lr_scheduler.py, "
               "main/train.py @ 7992e90 (Zhou et al., CVPR 2020)",
        train={"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 2e-4, "batch_size": 128,
               "epochs": 200, "lr_schedule": "step", "lr_milestones": (119, 159), "lr_gamma": 0.01,
               "warmup_epochs": 4, "warmup_start_factor": 7 / 15},
        note="Nesterov momentum in the code (plain momentum here); CIFAR-10/100-LT: ResNet-32 at 32 px, random crop "
             "+ flip; backbone, size and views stay the benchmark's")}

    def __init__(self, div_epoch: int | None = None, branch_blocks: int | None = 1,
                 mix_scale: float = 2.0) -> None:
        super().__init__()
        if div_epoch is not None and (isinstance(div_epoch, bool) or not isinstance(div_epoch, int) or div_epoch < 1):
            raise ValueError(f"bbn: div_epoch must be None or a positive integer, got {div_epoch!r}")
        if branch_blocks is not None and (isinstance(branch_blocks, bool) or not isinstance(branch_blocks, int)
                                          or branch_blocks < 1):
            raise ValueError(f"bbn: branch_blocks must be None or a positive integer, got {branch_blocks!r}")
        if not mix_scale > 0:
            raise ValueError(f"bbn: mix_scale must be positive, got {mix_scale!r}")
        self.div_epoch = div_epoch
        self.branch_blocks = branch_blocks
        self.mix_scale = mix_scale
        self.divisor = div_epoch
        # α of the current epoch; a tensor so a compiled forward does not recompile per epoch.
        # Not persistent: on_epoch_start recomputes it and predict does not use it.
        self.register_buffer("alpha", torch.ones(()), persistent=False)

    def setup(self, info: TrainInfo) -> None:
        self.divisor = bbn_div_epoch(info.epochs) if self.div_epoch is None else self.div_epoch
        self.alpha.fill_(1.0)

    def build_model(self, backbone: Backbone, info: TrainInfo) -> nn.Module:
        return BBNNetwork(backbone, info.num_classes, self.branch_blocks, self.mix_scale)

    def representations(self, model: nn.Module, images: Tensor) -> dict[str, Tensor]:
        """``feature``: both branches' features ``[f_c; f_r]`` as the classifier sees them at test
        (the α = 0.5 mix only scales them, which cosine retrieval ignores)."""
        return {"feature": torch.cat(model.branch_features(images), dim=1)}

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        if self.divisor is None:
            raise RuntimeError("BBN.on_epoch_start: call setup(info) first")
        self.alpha.fill_(bbn_alpha(epoch + 1, self.divisor))  # API epochs are 0-indexed

    def training_step(self, model: nn.Module, uniform: Batch, reversed_batch: Batch) -> StepResult:
        logits = model(uniform.views[0], reversed_batch.views[0], self.alpha)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            logits = logits.float()
            alpha = self.alpha.float()
            loss = bbn_loss(logits, uniform.labels, reversed_batch.labels, alpha)
            acc = bbn_accuracy(logits, uniform.labels, reversed_batch.labels, alpha)
        return loss, {"alpha": alpha.detach().clone(), "train_acc": acc}
