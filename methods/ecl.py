"""ECL: class-enhancement contrastive learning (Zhang et al., MICCAI 2023; code zylbuaa/ECL).

A ResNet trunk feeds a linear classifier and a projection head. Two losses are summed,
``ce_weight · BWCE + bhp_weight · BHP`` (2 and 1):

* **BHP**, the balanced-hybrid-proxy loss: a supervised contrastive loss over the two views'
  embeddings *and* a set of learnable class proxies (more proxies for rarer classes), every row an
  anchor, with a class-averaged denominator so that each class counts once.
* **BWCE**, the balanced-weighted cross-entropy, a three-stage curriculum on the classifier view:
  plain CE, then inverse-frequency weights raised to a growing power, then inverse validation-F1
  weights raised to a growing power.

The proxies are the method's own parameter with their own SGD ("cycle update"): their gradient is
summed over all batches of an epoch and applied in one step after the epoch.

ECL in ltbench vs the official repository
=========================================

Identical to zylbuaa/ECL (``models/ecl.py``, ``models/loss.py``, ``train.py``):

* Proxy counts ``1`` for the largest class, else ``floor(n_max / (10 n_c)) + 2``
  (``get_proxies_num``); one ``[ΣP, 128]`` parameter, Xavier-uniform (gain 1), class-major order,
  L2-normalised when used (``balanced_proxies``).
* Proxy optimiser: SGD, lr 0.002, momentum 0.9, coupled weight decay 1e-4, the same per-epoch
  cosine schedule as the network; gradient zeroed at the start of the epoch, summed over all its
  batches (the network's per-batch ``zero_grad`` does not touch it), one step after the epoch.
* BHP (``BHP.forward``): rows ``[view 1; view 2; proxies]``, every row an anchor, self-pairs
  removed, denominator ``Σ_c 1/(count_c − [c = y_i]) Σ_{k∈c, k≠i} exp(s_i·s_k/τ)`` with counts over
  views and proxies, mean over positives of the log-probability, mean over anchors; τ = 0.1.
* BWCE (``CE_weight``): 1-indexed epochs, E1 = 20, E2 = 50; weights
  ``(C · (1/x_c) / Σ_k 1/x_k)^power`` with x = training counts, then the previous epoch's
  validation F1 (starting at 1); ``F.cross_entropy(weight=)``, whose mean divides by the batch's
  target-weight sum.
* Total ``2 · BWCE + 1 · BHP``.
* Network (``ECL_model``): backbone → ``fc`` (logits) and head Linear(d,128) → BN → ReLU →
  Linear(128,128), L2-normalised. **Two** views per image, not three: view 0 (the classifier
  augmentation ``augmentation_rand``) gives the logits *and* the first embedding, view 1 (the
  contrastive augmentation ``augmentation_sim``) gives the second embedding. Each view goes through
  the backbone in its own forward pass (BatchNorm batch statistics per view), in the official
  order.

Deliberate differences (the shared protocol, docs/ecl.md):

* **Checkpoint.** ltbench tests the best-validation-accuracy checkpoint (the paper's rule); the
  released ``train.py`` tests the last epoch's snapshot.
* **Learning-rate schedule.** The official ``train.py`` steps ``CosineAnnealingLR`` at the *start*
  of each epoch, so 0-indexed epoch e trains at ``lr_{e+1}`` (the last epoch at lr 0) and the
  proxy step after epoch e also uses ``lr_{e+1}``. ltbench trains epoch e at
  ``lr_e = 0.001·(1 + cos(π e / E))`` and the proxy step after epoch e uses ``lr_e``.
* **Input normalisation.** ltbench normalises inputs with the ImageNet mean/std expected by the
  pretrained backbone; the official transforms stop at ``ToTensor()``.
* **NaN guards.** (1) BHP: a class with a single proxy (the largest class) and no sample in the
  batch leaves that proxy anchor without a positive, and the official code then returns a NaN loss
  and NaN gradients everywhere. Here anchors without a positive are dropped from the mean (the
  loss is the mean over anchors with ≥ 1 positive); a class with no other row adds 0 to the
  denominator; the dropped proxy still enters the other anchors' denominators. Wherever the
  official loss is finite, both agree. (2) BWCE: a validation F1 of 0 gives the official code
  inf/NaN weights; here ``F1_c ← max(F1_c, f1_floor)`` with ``f1_floor = 1e-4`` before inverting.
* **Temperature.** τ = 0.1 as in the code; the paper prints 0.01 (``temperature=0.01`` gives it).
* **Validation F1.** ltbench's per-class F1 (percent, divided by 100) is the unrounded standard
  F1. The official ``ConfusionMatrix`` rounds precision/sensitivity to 4 decimals and also sets
  F1 to 0 when a class's *specificity* is 0 (it is predicted for every validation image); ltbench
  keeps the standard F1 there.
* **Budgets other than 100 epochs.** E1 and E2 are given for ``reference_epochs = 100`` (the
  paper's budget) and scaled to the run: ``round(E1 · E / 100)``, ``round(E2 · E / 100)``; at 100
  epochs this is exactly 20 / 50. ``reference_epochs=None`` uses E1 and E2 as absolute epochs, as
  the official script does for any ``--epochs``.
* **Numerics.** The denominator is a log-sum-exp (the official code subtracts the row maximum):
  the same value. Both losses run in float32 with autocast disabled; the proxy-gradient sum is
  wrong under fp16 loss scaling, so use bf16 or fp32.
* **Proxy learning rate.** As in the official code the proxies use the run's base learning rate
  (0.002 in the shared protocol) unless ``proxy_lr`` sets another.
"""
from __future__ import annotations

import copy
import math
import warnings
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltbench.method import Batch, Method, StepResult, TrainInfo
from ltbench.models import Backbone, ProjectionHead
from ltbench.recipes import Recipe
from ltbench.registry import register_method
from ltbench.schedules import bwce_curriculum, cosine_lr, scale_epoch


# --- pieces ------------------------------------------------------------------------------------
def proxy_counts(class_counts: Sequence[int]) -> list[int]:
    """Proxies per class: 1 for the largest class, else ``floor(n_max / (10 n_c)) + 2``.

    Integer form of the official ``int((n_max / n_c) // 10) + 2``.
    """
    counts = [int(n) for n in class_counts]
    if not counts or min(counts) <= 0:
        raise ValueError(f"proxy_counts: every class needs at least one training image, got {counts}")
    n_max = max(counts)
    return [1 if n == n_max else n_max // (10 * n) + 2 for n in counts]


def proxy_labels_for(counts: Sequence[int]) -> Tensor:
    """The class of each proxy row, class-major: ``[0]*P_0 + [1]*P_1 + ...``."""
    return torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(list(counts)))


def bhp_loss(
    features_v1: Tensor,
    features_v2: Tensor,
    labels: Tensor,
    proxies_raw: Tensor,
    proxy_labels: Tensor,
    temperature: float = 0.1,
) -> Tensor:
    """Balanced-hybrid-proxy loss (ECL's ``BHP``), with the no-positive guard.

    ``features_v1``/``features_v2``: the two views' embeddings, B×D, already L2-normalised (not
    normalised again here). ``proxies_raw``: the proxy parameter P×D, normalised here.
    Rows ``[v1; v2; proxies]`` with labels ``[y; y; proxy_labels]`` are all anchors. For anchor i:
    ``E_i = Σ_c 1/(count_c − [c = y_i]) Σ_{k∈c, k≠i} exp(s_i·s_k/τ)`` and
    ``ℓ_i = −mean_{j≠i, y_j=y_i} log(exp(s_i·s_j/τ) / E_i)``; the loss is the mean of ℓ_i over the
    anchors that have at least one positive.
    """
    rows = torch.cat([features_v1, features_v2, F.normalize(proxies_raw, dim=1)], dim=0)
    row_labels = torch.cat([labels, labels, proxy_labels.to(labels.device)], dim=0)
    n = rows.shape[0]
    num_classes = int(row_labels.max()) + 1
    counts = torch.bincount(row_labels, minlength=num_classes).to(rows.dtype)

    self_pair = torch.eye(n, dtype=torch.bool, device=rows.device)
    same_class = row_labels[:, None] == row_labels[None, :]
    positive = same_class & ~self_pair

    logits = rows @ rows.T / temperature
    # Term (i, k) of E_i is divided by the size of k's class among the rows other than i. It is
    # >= 1 for every k != i; only the (masked) self-pair of a one-row class would give 0.
    class_size = counts[row_labels][None, :] - same_class.to(rows.dtype)
    log_terms = (logits - torch.log(class_size.clamp(min=1.0))).masked_fill(self_pair, -math.inf)
    log_prob = logits - torch.logsumexp(log_terms, dim=1, keepdim=True)

    num_positive = positive.sum(dim=1)
    has_positive = num_positive > 0
    mean_log_prob_pos = torch.where(positive, log_prob, 0.0).sum(dim=1)[has_positive] / num_positive[has_positive]
    return -mean_log_prob_pos.mean()


def bwce_weights(
    epoch_1indexed: int,
    class_counts: Sequence[int],
    val_f1_fraction: Sequence[float] | Tensor,
    E1: int = 20,
    E2: int = 50,
    E: int = 100,
    f1_floor: float = 1e-4,
) -> Tensor:
    """Per-class weights of ECL's balanced-weighted cross-entropy (float32, length C).

    e <= E1: all 1 (plain CE). E1 < e <= E2: ``(C · (1/n_c) / Σ_k 1/n_k)^((e−E1)/(E2−E1))``.
    e > E2: the same with the previous epoch's validation F1 (a fraction, floored at ``f1_floor``)
    instead of n_c and power ``(e−E2)/(E−E2)``.
    """
    stage, power = bwce_curriculum(epoch_1indexed, E1, E2, E)
    num_classes = len(class_counts)
    if stage == "plain":
        return torch.ones(num_classes, dtype=torch.float32)
    if stage == "frequency":
        x = torch.tensor([float(n) for n in class_counts], dtype=torch.float64)
    else:
        x = torch.as_tensor(val_f1_fraction, dtype=torch.float64).detach().cpu().clamp(min=f1_floor)
        if x.numel() != num_classes:
            raise ValueError(f"bwce_weights: {x.numel()} F1 values for {num_classes} classes")
    inverse = 1.0 / x
    weights = num_classes * inverse / inverse.sum()
    return weights.pow(power).to(torch.float32)


# --- network -----------------------------------------------------------------------------------
class ECLNetwork(nn.Module):
    """Backbone → linear classifier ``fc`` and projection ``head`` (ECL's ``ECL_model``).

    ``model(images)`` returns logits. ``model(classifier_view, contrastive_view)`` returns
    ``(logits of the classifier view, embedding of the classifier view, embedding of the
    contrastive view)``, each view in its own backbone pass, as the official forward does.
    """

    def __init__(self, backbone: Backbone, num_classes: int, dim: int = 128) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = ProjectionHead(backbone.out_dim, dim)
        self.fc = nn.Linear(backbone.out_dim, num_classes)

    def forward(self, images: Tensor, contrastive_view: Tensor | None = None):
        features = self.backbone(images)
        if contrastive_view is None:
            return self.fc(features)
        embedding_1 = self.head(features)
        logits = self.fc(features)
        embedding_2 = self.head(self.backbone(contrastive_view))
        return logits, embedding_1, embedding_2


# --- method ------------------------------------------------------------------------------------
@register_method("ecl")
class ECL(Method):
    """ECL (Zhang et al., MICCAI 2023). See the module docstring for the comparison with
    zylbuaa/ECL. The proxies and their optimiser belong to the method, not to the model."""

    # ECL's own protocol (paper Table 1, train.py's defaults), which the shared protocol already is:
    # written out so that ``recipe: paper`` keeps it wherever the protocol moves.
    recipes = {"paper": Recipe(
        source="zylbuaa/ECL train.py @ 3fb6668 (Zhang et al., MICCAI 2023, Table 1)",
        train={"optimizer": "sgd", "lr": 0.002, "momentum": 0.9, "weight_decay": 1e-4, "batch_size": 64,
               "epochs": 100, "lr_schedule": "cosine"},
        note="the code steps CosineAnnealingLR before each epoch (epoch e at lr_{e+1}; here at lr_e), feeds the "
             "pretrained ResNet unnormalised inputs and tests the last epoch (module docstring)")}

    #: The classifier view (its features also give the first embedding) and one contrastive view.
    views = ("standard", "contrastive")

    def __init__(
        self,
        dim: int = 128,
        temperature: float = 0.1,
        ce_weight: float = 2.0,
        bhp_weight: float = 1.0,
        proxy_lr: float | None = None,
        proxy_momentum: float = 0.9,
        proxy_weight_decay: float = 1e-4,
        E1: int = 20,
        E2: int = 50,
        reference_epochs: int | None = 100,
        f1_floor: float = 1e-4,
    ) -> None:
        super().__init__()
        if not 0 <= E1 <= E2:
            raise ValueError(f"ECL: need 0 <= E1 <= E2, got E1={E1}, E2={E2}")
        if temperature <= 0 or f1_floor <= 0:
            raise ValueError("ECL: temperature and f1_floor must be positive")
        self.dim = dim
        self.temperature = temperature
        self.ce_weight = ce_weight
        self.bhp_weight = bhp_weight
        self.proxy_lr = proxy_lr
        self.proxy_momentum = proxy_momentum
        self.proxy_weight_decay = proxy_weight_decay
        self.E1 = E1
        self.E2 = E2
        self.reference_epochs = reference_epochs
        self.f1_floor = f1_floor
        self.proxy_optimizer: torch.optim.SGD | None = None
        self._weights_cache: tuple[int, Tensor] | None = None
        self._warned_no_f1 = False

    # --- state ---------------------------------------------------------------------------------
    def setup(self, info: TrainInfo) -> None:
        self.class_counts = tuple(int(n) for n in info.class_counts)
        self.epochs = info.epochs
        self.proxy_base_lr = self._proxy_base_lr(info)
        self.stage_epochs = (
            scale_epoch(self.E1, info.epochs, self.reference_epochs),
            scale_epoch(self.E2, info.epochs, self.reference_epochs),
        )
        self.proxy_counts = proxy_counts(self.class_counts)
        proxies = torch.empty(sum(self.proxy_counts), self.dim, device=info.device)
        self.proxies = nn.Parameter(nn.init.xavier_uniform_(proxies, gain=1.0))
        self.register_buffer("proxy_labels", proxy_labels_for(self.proxy_counts).to(info.device))
        # Last validation F1 per class, as a fraction; 1 until the first validation (official).
        self.register_buffer("val_f1", torch.ones(info.num_classes, device=info.device))
        self.proxy_optimizer = torch.optim.SGD(
            [self.proxies], lr=self._proxy_base_lr(info), momentum=self.proxy_momentum,
            weight_decay=self.proxy_weight_decay,
        )
        self._weights_cache = None

    def _proxy_base_lr(self, info: TrainInfo) -> float:
        return info.lr if self.proxy_lr is None else self.proxy_lr

    def get_extra_state(self) -> dict:
        # A copy: the optimiser's state_dict aliases its live momentum buffer.
        if self.proxy_optimizer is None:
            return {}
        return {"proxy_optimizer": copy.deepcopy(self.proxy_optimizer.state_dict())}

    def set_extra_state(self, state: dict) -> None:
        self._weights_cache = None
        if not state:
            return
        if self.proxy_optimizer is None:
            raise RuntimeError("ECL.load_state_dict: call setup(info) before loading a state dict")
        self.proxy_optimizer.load_state_dict(state["proxy_optimizer"])

    # --- hooks ---------------------------------------------------------------------------------
    def build_model(self, backbone: Backbone, info: TrainInfo) -> nn.Module:
        return ECLNetwork(backbone, info.num_classes, self.dim)

    def representations(self, model: nn.Module, images: Tensor) -> dict[str, Tensor]:
        """``feature`` (backbone) and ``embedding`` (the L2-normalised projection head), for retrieval."""
        features = model.backbone(images)
        return {"feature": features, "embedding": model.head(features)}

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        # Cycle update: the proxy gradient sums over this epoch's batches from zero.
        self.proxy_optimizer.zero_grad(set_to_none=True)

    def class_weights(self) -> Tensor:
        """The BWCE weights of the current epoch (on the proxies' device)."""
        epoch = self.epoch + 1
        if self._weights_cache is None or self._weights_cache[0] != epoch:
            E1, E2 = self.stage_epochs
            weights = bwce_weights(epoch, self.class_counts, self.val_f1, E1, E2, self.epochs, self.f1_floor)
            self._weights_cache = (epoch, weights.to(self.val_f1.device))
        return self._weights_cache[1]

    def training_step(self, model: nn.Module, batch: Batch) -> StepResult:
        classifier_view, contrastive_view = batch.views
        logits, embedding_1, embedding_2 = model(classifier_view, contrastive_view)
        labels = batch.labels
        with torch.autocast(device_type=logits.device.type, enabled=False):
            bwce = F.cross_entropy(logits.float(), labels, weight=self.class_weights().to(logits.device))
            bhp = bhp_loss(embedding_1.float(), embedding_2.float(), labels, self.proxies.float(),
                           self.proxy_labels, self.temperature)
        loss = self.ce_weight * bwce + self.bhp_weight * bhp
        return loss, {"bwce": bwce.detach(), "bhp": bhp.detach()}

    def on_epoch_end(self, epoch: int, val_metrics: dict) -> None:
        # One proxy step with the summed gradient, at the lr this epoch trained with.
        for group in self.proxy_optimizer.param_groups:
            group["lr"] = cosine_lr(self.proxy_base_lr, epoch, self.epochs)
        self.proxy_optimizer.step()

        f1 = (val_metrics or {}).get("per_class", {}).get("f1")
        if f1 is None:
            if not self._warned_no_f1:
                warnings.warn("ECL: no per-class validation F1; BWCE keeps the previous F1 weights")
                self._warned_no_f1 = True
        else:
            f1 = torch.as_tensor(f1, dtype=torch.float32).flatten()
            if f1.numel() != self.val_f1.numel():
                raise ValueError(f"ECL: {f1.numel()} per-class F1 values for {self.val_f1.numel()} classes")
            self.val_f1.copy_(f1 / 100.0)  # percent -> fraction; floored in bwce_weights
        self._weights_cache = None
