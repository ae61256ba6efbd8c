"""SADE: self-supervised aggregation of diverse experts (Zhang, Hooi, Hong, Feng, NeurIPS 2022; code
Vanint/SADE-AgnosticLT @ cba11b8: ``model/loss.py`` ``DiverseExpertLoss``, ``model/fb_resnets/Expert_ResNet.py``,
``model/ldam_drw_resnets/expert_resnet_cifar.py``, ``test_training_imagenet.py``, ``configs/*.json``).

What is computed (as the official code does):

* **Network.** A shared trunk and three experts, each with its own copy of the backbone's last stage
  (``Backbone.split_last_stage``; the official ResNets give each expert its own last two stages, the CIFAR
  ResNet-32 its layer2 and layer3) and its own cosine classifier ``NormedLinear`` scaled by s = 30
  (``use_norm: true`` in every config): ``z_k = s · cos(f_k, w_{k,c})``.
* **Loss** (:func:`diverse_expert_loss`, ``DiverseExpertLoss``), each term a mean cross-entropy, summed:
  forward expert ``CE(z_1, y)``; uniform expert ``CE(z_2 + log(π + 1e-9), y)`` (balanced softmax);
  backward expert ``CE(z_3 + log(π + 1e-9) − τ·log(π̃ + 1e-9), y)``, π the training prior n_c / Σn,
  π̃ the *inverted* prior (:func:`inverse_prior`: the class of rank r gets the prior of rank C−1−r), τ = 2.
* **Test:** the mean of the three experts' logits (``final_out``).
* **Test-time self-supervised aggregation** (``test_time_epochs > 0``; off by default, 5 in the official
  ``test_time_*.json``): aggregation weights a = softmax(ω), ω = 1/3 each, learned on the unlabelled images
  being predicted by maximising the cosine similarity of the softmax of ``Σ_k a_k z_k`` between two
  augmented views of each image (:func:`aggregation_loss`); SGD (momentum 0.9, Nesterov, weight decay 5e-4,
  the run's lr as the official configs reuse the training lr), batches of 128, up to ``test_time_epochs``
  passes, stopping after a pass where a weight rounded to 2 decimals is below 0.05; then the logits are
  ``Σ_k a_k z_k``. No label is ever read: ``predict`` receives images only.

Defaults: τ = 2, s = 30 (every config). ``paper`` recipe: the ImageNet-LT config.

Departures, and why:

* **Initial expert weights.** The three tails start as copies of the backbone's last stage (ImageNet
  weights with ``--pretrained``, else one random draw); the official code draws each expert separately.
  The three classifiers are drawn separately, as official. The experts diverge through their losses.
* **Which layers are expert-specific.** The last stage only (the split ltbench's backbones offer, as BBN);
  the official ResNet-50/ResNeXt-50 experts own layer3 and layer4, and are narrower (``reduce_dimension``:
  e.g. 48 instead of 64 channels in ResNet-32) so that three experts cost about one network; here each
  expert is a full-width copy.
* **Inverted prior ties.** Classes of equal count are ranked in index order (a stable sort); the official
  ``torch.sort`` leaves their order to the device's sort.
* **Test-time aggregation.** It runs inside ``predict``, so it learns its weights on each evaluation batch
  (``eval_batch_size`` images; the whole test set when it fits), for validation and test alike, and starts
  again from 1/3 for every batch; the official script learns once per test set. The two views are a random
  crop after zero padding by 1/8 of the side and a random horizontal flip of the normalised image, from a
  generator seeded from the run's seed (the official views add colour jitter, grayscale and blur, or a
  random resized crop for ImageNet: colour operations do not apply to normalised tensors).
* **Protocol.** The shared protocol's optimiser (plain momentum; official Nesterov), schedule and views.
* **Numerics.** The losses run in float32 with autocast off; the prior is computed in float64 and stored as
  float32, as the official numpy → ``.float()``.
"""
from __future__ import annotations

import copy
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltbench.method import Batch, Method, StepResult, TrainInfo
from ltbench.models import Backbone, NormedLinear
from ltbench.recipes import Recipe
from ltbench.registry import register_method

NUM_EXPERTS = 3
_TTA_TAG = 0x53414445  # "SADE": the test-time generator's seed never equals a stream's


def training_prior(class_counts: Sequence[int]) -> Tensor:
    """π_c = n_c / Σ n (float64 → float32, as ``np.array(cls_num_list) / np.sum(...)`` then ``.float()``)."""
    counts = np.array([float(n) for n in class_counts])
    return torch.tensor(counts / np.sum(counts)).float()


def inverse_prior(prior: Tensor) -> Tensor:
    """``DiverseExpertLoss.inverse_prior``: the prior of the mirrored rank (stable order for ties)."""
    value, idx0 = torch.sort(prior, stable=True)
    _, idx1 = torch.sort(idx0, stable=True)
    idx2 = prior.shape[0] - 1 - idx1
    return value.index_select(0, idx2)


def diverse_expert_loss(expert_logits: Tensor, labels: Tensor, prior: Tensor, tau: float = 2.0) -> Tensor:
    """``CE(z1) + CE(z2 + log π) + CE(z3 + log π − τ log π̃)``, ``expert_logits`` B×3×C."""
    prior = prior.to(expert_logits.dtype)
    log_prior = torch.log(prior + 1e-9)
    loss = F.cross_entropy(expert_logits[:, 0], labels)
    loss = loss + F.cross_entropy(expert_logits[:, 1] + log_prior, labels)
    backward = expert_logits[:, 2] + log_prior - tau * torch.log(inverse_prior(prior) + 1e-9)
    return loss + F.cross_entropy(backward, labels)


class DiverseExpertLoss(nn.Module):
    """The official interface (``model/loss.py``): ``DiverseExpertLoss(cls_num_list, tau=2)(output_logits, target,
    extra_info)`` with ``extra_info["logits"]`` the three experts' logits, expert first (3×B×C, as the trainer's
    ``logits.transpose(0, 1)``); without ``extra_info`` the plain CE of ``output_logits``."""

    def __init__(self, cls_num_list: Sequence[int], tau: float = 2.0) -> None:
        super().__init__()
        self.tau = tau
        self.register_buffer("prior", training_prior(cls_num_list))

    def forward(self, output_logits: Tensor, target: Tensor, extra_info: dict | None = None) -> Tensor:
        if extra_info is None:
            return F.cross_entropy(output_logits, target)
        logits = torch.stack([extra_info["logits"][k] for k in range(NUM_EXPERTS)], dim=1)
        return diverse_expert_loss(logits, target, self.prior.to(logits.device), self.tau)


def aggregation_loss(weight: Tensor, logits0: Tensor, logits1: Tensor) -> Tensor:
    """``test_training``'s loss: −mean_i cos(softmax(Σ_k a_k z_k^(0)), softmax(Σ_k a_k z_k^(1))), a = softmax(ω)."""
    a = F.softmax(weight, dim=0)
    out0 = a[0] * logits0[:, 0] + a[1] * logits0[:, 1] + a[2] * logits0[:, 2]
    out1 = a[0] * logits1[:, 0] + a[1] * logits1[:, 1] + a[2] * logits1[:, 2]
    return -F.cosine_similarity(F.softmax(out0, dim=1), F.softmax(out1, dim=1), dim=1, eps=1e-6).mean()


def _crop_flip(images: Tensor, generator: torch.Generator) -> Tensor:
    """Random crop after zero padding by side // 8 and a random horizontal flip, per image."""
    n, _, h, w = images.shape
    pad = max(1, h // 8)
    padded = F.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).tolist()
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).tolist()
    flip = (torch.rand(n, generator=generator) < 0.5).tolist()
    out = [padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)]
    return torch.stack([o.flip(-1) if f else o for o, f in zip(out, flip)])


class SADENetwork(nn.Module):
    """Shared trunk, three expert tails and cosine classifiers; ``forward`` gives the mean expert logits."""

    def __init__(self, backbone: Backbone, num_classes: int, scale: float = 30.0) -> None:
        super().__init__()
        self.trunk, tail = backbone.split_last_stage()
        self.experts = nn.ModuleList([tail] + [copy.deepcopy(tail) for _ in range(NUM_EXPERTS - 1)])
        self.linears = nn.ModuleList([NormedLinear(backbone.out_dim, num_classes) for _ in range(NUM_EXPERTS)])
        self.scale = scale

    def expert_features(self, images: Tensor) -> list[Tensor]:
        shared = self.trunk(images)
        return [expert(shared) for expert in self.experts]

    def expert_logits(self, images: Tensor) -> Tensor:
        """B×3×C: ``s · NormedLinear_k(f_k)``."""
        feats = self.expert_features(images)
        return torch.stack([self.scale * linear(f) for linear, f in zip(self.linears, feats)], dim=1)

    def forward(self, images: Tensor) -> Tensor:
        return self.expert_logits(images).mean(dim=1)


@register_method("sade")
class SADE(Method):
    """SADE (Zhang et al., NeurIPS 2022). See the module docstring."""

    recipes = {"paper": Recipe(
        source="Vanint/SADE-AgnosticLT configs/config_imagenet_lt_resnext50_sade.json @ cba11b8 "
               "(Zhang et al., NeurIPS 2022)",
        train={"optimizer": "sgd", "lr": 0.025, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 64,
               "epochs": 180, "lr_schedule": "cosine"},
        params={"tau": 2.0, "scale": 30.0},
        note="Nesterov momentum in the code (plain momentum here); ImageNet-LT, ResNeXt-50 from scratch at 224 px; "
             "backbone, size and views stay the benchmark's")}

    def __init__(self, tau: float = 2.0, scale: float = 30.0, test_time_epochs: int = 0,
                 test_time_lr: float | None = None, test_time_batch_size: int = 128) -> None:
        super().__init__()
        if not (isinstance(tau, (int, float)) and tau >= 0):
            raise ValueError(f"sade: tau must be a number >= 0, got {tau!r}")
        if not (isinstance(scale, (int, float)) and scale > 0):
            raise ValueError(f"sade: scale must be positive, got {scale!r}")
        if isinstance(test_time_epochs, bool) or not isinstance(test_time_epochs, int) or test_time_epochs < 0:
            raise ValueError(f"sade: test_time_epochs must be an integer >= 0, got {test_time_epochs!r}")
        if test_time_lr is not None and not (isinstance(test_time_lr, (int, float)) and test_time_lr > 0):
            raise ValueError(f"sade: test_time_lr must be None or positive, got {test_time_lr!r}")
        if isinstance(test_time_batch_size, bool) or not isinstance(test_time_batch_size, int) \
                or test_time_batch_size < 2:
            raise ValueError(f"sade: test_time_batch_size must be an integer >= 2, got {test_time_batch_size!r}")
        self.tau = tau
        self.scale = scale
        self.test_time_epochs = test_time_epochs
        self.test_time_lr = test_time_lr
        self.test_time_batch_size = test_time_batch_size
        self._seed, self._lr = 0, 0.0

    def setup(self, info: TrainInfo) -> None:
        self.register_buffer("prior", training_prior(info.class_counts).to(info.device))
        self._seed = info.seed
        self._lr = self.test_time_lr if self.test_time_lr is not None else info.lr

    def build_model(self, backbone: Backbone, info: TrainInfo) -> nn.Module:
        return SADENetwork(backbone, info.num_classes, self.scale)

    def training_step(self, model: nn.Module, batch: Batch) -> StepResult:
        logits = model.expert_logits(batch.views[0])
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return diverse_expert_loss(logits.float(), batch.labels, self.prior, self.tau)

    def predict(self, model: nn.Module, images: Tensor) -> Tensor:
        logits = model.expert_logits(images).float()
        if self.test_time_epochs == 0:
            return logits.mean(dim=1)
        weights = self.test_time_weights(model, images)
        return (weights.to(logits.device)[None, :, None] * logits).sum(dim=1)

    def test_time_weights(self, model: nn.Module, images: Tensor) -> Tensor:
        """softmax(ω) learned on ``images`` (unlabelled) as ``test_training`` does (module docstring)."""
        with torch.inference_mode(False), torch.autocast(device_type=images.device.type, enabled=False):
            x = images.clone()
            generator = torch.Generator().manual_seed(int(np.random.SeedSequence([self._seed & 0xFFFFFFFF, _TTA_TAG])
                                                          .generate_state(1, np.uint64)[0]))
            omega = torch.full((NUM_EXPERTS,), 1.0 / NUM_EXPERTS, requires_grad=True)
            optimizer = torch.optim.SGD([omega], lr=self._lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
            for _ in range(self.test_time_epochs):
                for chunk in torch.randperm(len(x), generator=generator).split(self.test_time_batch_size):
                    with torch.no_grad():
                        z0 = model.expert_logits(_crop_flip(x[chunk.to(x.device)].cpu(), generator).to(x.device))
                        z1 = model.expert_logits(_crop_flip(x[chunk.to(x.device)].cpu(), generator).to(x.device))
                    with torch.enable_grad():
                        loss = aggregation_loss(omega, z0.float().cpu(), z1.float().cpu())
                        optimizer.zero_grad()
                        loss.backward()
                    optimizer.step()
                rounded = np.round(F.softmax(omega.detach(), dim=0).numpy(), decimals=2)
                if (rounded < 0.05).any():
                    break
            return F.softmax(omega.detach(), dim=0)

    def representations(self, model: nn.Module, images: Tensor) -> dict[str, Tensor]:
        """``feature``: the three experts' pooled features side by side."""
        return {"feature": torch.cat(model.expert_features(images), dim=1)}
