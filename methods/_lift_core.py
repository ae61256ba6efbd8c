"""LIFT's formulas, as its official code computes them (helpers of ``lift`` and ``zeroshot_clip``; registers nothing).

Shi, Wei, Liang, Li, Han, Wang, Li: "Long-Tail Learning with Foundation Model: Heavy Fine-Tuning Hurts",
ICML 2024. Official code: shijxcs/LIFT @ 661ead9b78368f05ba79abe4672d63154467f823 (read for this module):

* ``utils/losses.py LogitAdjustedLoss``: ``CE(z + τ·log(n_c / Σn), y)``, τ = 1, the prior in float32 and
  **no epsilon** (unlike google-research's ``log(π^τ + 1e-12)`` in ``methods/logit_adjust.py``);
* ``models/classifiers.py CosineClassifier``: ``s · normalize(x) · normalize(W)ᵀ``, no bias, ``s = cfg.scale = 25``
  (``utils/config.py``; the class default 30 is overridden through ``**cfg``); weights drawn
  ``uniform(-1, 1).renorm_(2, 0, 1e-5).mul_(1e5)`` before the text initialisation replaces them;
* ``trainer.py init_head_text_feat``: ``W = normalize(normalize(text) @ projᵀ)`` for a CLIP ViT (the head acts on
  the image tower's features *before* its projection, ``models/peft_vit.py``: ``# x = x @ self.proj``);
* ``models/models.py ZeroShotCLIP``: ``exp(logit_scale) · normalize(image) · textᵀ`` with normalised text features;
* ``models/peft_modules.py AdaptFormer`` and ``models/peft_vit.py``: in every block the MLP gets a parallel
  bottleneck on the block's MLP input *before* ``ln_2``: ``x ← (mlp(ln_2(x)) + s·up(relu(down(LN(x))))) + x``;
  bottleneck ``2^max(0, int(log2(C / (2L))))``;
* ``trainer.py test`` with ``tte True``: logits averaged over the crops of ``Resize(R + 24)`` then ``FiveCrop(R)``
  (``tte_mode`` fivecrop, the default; tencrop adds the five crops of the mirrored image).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltbench.errors import LtbenchError

TTE_MODES = ("none", "fivecrop", "tencrop")
TTE_EXPAND = 24  # utils/config.py: expand (pixels added to the 224 px resolution before the crops)
TTE_RESOLUTION = 224  # the resolution the official expand is given for


def lift_log_prior(class_counts: Sequence[int]) -> Tensor:
    """``log(n_c / Σ n)`` in float32, as ``LogitAdjustedLoss`` computes it from ``torch.Tensor(cls_num_list)``."""
    counts = torch.tensor([float(n) for n in class_counts], dtype=torch.float32)
    return torch.log(counts / torch.sum(counts))


def lift_la_loss(logits: Tensor, labels: Tensor, log_prior: Tensor, tau: float = 1.0) -> Tensor:
    """LIFT's logit-adjusted loss ``mean_i CE(z_i + τ·log π, y_i)`` (``utils/losses.py``)."""
    return F.cross_entropy(logits + tau * log_prior.to(logits.device).unsqueeze(0), labels)


def cosine_logits(features: Tensor, weight: Tensor, scale: float) -> Tensor:
    """``s · normalize(x) · normalize(W)ᵀ`` (``CosineClassifier.forward``)."""
    return F.linear(F.normalize(features, dim=-1), F.normalize(weight, dim=-1)) * scale


class CosineClassifier(nn.Module):
    """LIFT's cosine classifier: no bias, a fixed scale (not learned)."""

    def __init__(self, feat_dim: int, num_classes: int, scale: float = 25.0) -> None:
        super().__init__()
        self.scale = scale
        self.weight = nn.Parameter(torch.empty(num_classes, feat_dim))
        with torch.no_grad():  # _Classifier.__init__; replaced by the text initialisation
            self.weight.uniform_(-1, 1).renorm_(2, 0, 1e-5).mul_(1e5)

    def forward(self, features: Tensor) -> Tensor:
        return cosine_logits(features, self.weight, self.scale)

    @torch.no_grad()
    def apply_weight(self, weight: Tensor) -> None:
        self.weight.copy_(weight.to(self.weight))

    def extra_repr(self) -> str:
        return f"in_features={self.weight.shape[1]}, out_features={self.weight.shape[0]}, scale={self.scale}"


def text_head_weight(text_features: Tensor, proj: Tensor | None) -> Tensor:
    """Head weights from class text features: ``normalize(normalize(t) @ projᵀ)`` (no ``proj``: ``normalize(t)``)."""
    weight = F.normalize(text_features, dim=-1)
    if proj is not None:
        weight = F.normalize(weight @ proj.t(), dim=-1)
    return weight


def zeroshot_logits(image_features: Tensor, text_features: Tensor, logit_scale: Tensor | float) -> Tensor:
    """``exp(logit_scale) · normalize(image) · textᵀ`` (``ZeroShotCLIP.forward``; text features normalised)."""
    scale = torch.as_tensor(logit_scale, dtype=image_features.dtype, device=image_features.device).exp()
    return scale * F.linear(F.normalize(image_features, dim=-1), text_features.to(image_features.dtype))


def adaptformer_dim(num_classes: int, num_layers: int) -> int:
    """The official default bottleneck: ``2 ** max(0, int(log2(C / (2L))))`` (``ViT_Tuner``)."""
    return 2 ** max(0, int(math.log2(num_classes / (num_layers * 2))))


class AdaptFormer(nn.Module):
    """``s · up(relu(down(LN(x))))`` with a learnable scalar s = 1 (``peft_modules.AdaptFormer``).

    Init as official: ``down`` Kaiming-normal with a = √5, ``up`` and both biases zero, so the adapter
    starts as the zero function and the model as the pretrained one.
    """

    def __init__(self, in_dim: int, bottle_dim: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(in_dim)
        self.down_proj = nn.Linear(in_dim, bottle_dim)
        self.relu = nn.ReLU(inplace=True)
        self.up_proj = nn.Linear(bottle_dim, in_dim)
        self.scale = nn.Parameter(torch.ones(1))
        nn.init.kaiming_normal_(self.down_proj.weight, a=math.sqrt(5))
        nn.init.zeros_(self.up_proj.weight)
        nn.init.zeros_(self.down_proj.bias)
        nn.init.zeros_(self.up_proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.up_proj(self.relu(self.down_proj(self.ln(x)))) * self.scale


class ParallelAdapterMLP(nn.Module):
    """A block's ``ln_2 → mlp`` with AdaptFormer beside it: ``mlp(ln_2(x)) + adapter(x)``.

    Put in a pre-norm block as its ``mlp``, with the block's ``ln_2`` replaced by ``nn.Identity``, the block
    computes ``x + ls_2(mlp(ln_2(x)) + adapter(x))`` — with CLIP's identity layer scale exactly
    ``models/peft_vit.py``: ``x = mlp_out; x = x + adaptformer(identity); x = x + identity``.
    """

    def __init__(self, ln_2: nn.Module, mlp: nn.Module, adapter: AdaptFormer) -> None:
        super().__init__()
        self.ln_2, self.mlp, self.adapter = ln_2, mlp, adapter

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(self.ln_2(x)) + self.adapter(x)


def tte_crops(images: Tensor, mode: str) -> Tensor:
    """The test-time views of ``images`` (N×3×S×S), stacked crop-major: K·N×3×S×S.

    ``fivecrop``: resized to ``S + round(24·S/224)`` (the official 224 + 24, scaled to S) then torchvision's
    ``five_crop`` (top-left, top-right, bottom-left, bottom-right, centre); ``tencrop``: the same five and those
    of the h-flipped image (``ten_crop``); ``none``: the images.
    """
    if mode == "none":
        return images
    from torchvision.transforms.v2 import functional as TF  # torchvision ships with torch here

    size = images.shape[-1]
    grown = TF.resize(images, [size + round(TTE_EXPAND * size / TTE_RESOLUTION)] * 2,
                      interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    crops = TF.five_crop(grown, [size, size]) if mode == "fivecrop" else TF.ten_crop(grown, [size, size])
    return torch.cat(list(crops))


def tte_mean(logits: Tensor, num_views: int) -> Tensor:
    """Mean logits over the K views of :func:`tte_crops` (``output.view(B, K, -1).mean(1)`` in the official order)."""
    return logits.reshape(num_views, -1, logits.shape[-1]).mean(dim=0)


def tte_predict(model: nn.Module, images: Tensor, mode: str) -> Tensor:
    """``model``'s logits averaged over the test-time crops (``trainer.py test``), one crop position at a time."""
    if mode == "none":
        return model(images)
    crops = tte_crops(images, mode)
    logits = torch.cat([model(part).float() for part in crops.split(images.shape[0])])
    return tte_mean(logits, crops.shape[0] // images.shape[0])


# --- class-name prompts (trainer.py get_tokenized_prompts / init_head_text_feat) ---------------------------------
PROMPTS = ("default", "classname", "ensemble")  # the official `prompt` choices but "descriptor" (ImageNet's own)


def prompt_texts(class_names: Sequence[str], prompt: str) -> list[list[str]]:
    """One list of C texts per template: ``default`` "a photo of a {}.", ``classname`` "{}", ``ensemble`` CLIP's
    80 ImageNet templates (``utils/templates.py ZEROSHOT_TEMPLATES['imagenet']`` = open_clip's
    ``OPENAI_IMAGENET_TEMPLATES``); underscores in class names become spaces, as official."""
    names = [str(c).replace("_", " ") for c in class_names]
    if prompt == "default":
        return [[f"a photo of a {c}." for c in names]]
    if prompt == "classname":
        return [names]
    if prompt == "ensemble":
        from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES  # only with an open_clip backbone

        return [[template(c) for c in names] for template in OPENAI_IMAGENET_TEMPLATES]
    raise ValueError(f"prompt must be one of {', '.join(PROMPTS)}, got {prompt!r}")


def class_text_features(encode_text, class_names: Sequence[str], prompt: str) -> Tensor:
    """C×D unit text features: per template ``normalize(encode_text(texts))``, averaged over the templates and
    normalised again (CLIP's prompt ensembling; one template: the template's features)."""
    groups = prompt_texts(class_names, prompt)
    texts = [text for group in groups for text in group]
    encoded = torch.cat([encode_text(texts[i:i + 256]).float() for i in range(0, len(texts), 256)])  # bounded memory
    per_template = F.normalize(encoded, dim=-1).reshape(len(groups), len(class_names), -1)
    return F.normalize(per_template.mean(dim=0), dim=-1)


def require_clip(backbone: nn.Module, method: str, vit: bool = False) -> nn.Module:
    """The open_clip image tower of ``backbone`` (``ltbench.models.clip.ClipBackbone``), or one LtbenchError line."""
    visual = getattr(getattr(backbone, "clip_model", None), "visual", None)
    arch = getattr(backbone, "arch", type(backbone).__name__)
    if visual is None:
        raise LtbenchError(f"{method} needs an open_clip backbone (--backbone open_clip:<arch>), got {arch}")
    if vit and not hasattr(getattr(visual, "transformer", None), "resblocks"):
        raise LtbenchError(f"{method} needs an open_clip ViT (its adapters go into transformer blocks), got {arch}")
    return visual
