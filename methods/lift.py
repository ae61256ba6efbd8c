"""LIFT: lightweight fine-tuning of CLIP for long-tailed recognition.

Shi, Wei, Liang, Li, Han, Wang, Li: "Long-Tail Learning with Foundation Model: Heavy Fine-Tuning Hurts",
ICML 2024. Official code: shijxcs/LIFT @ 661ead9b78368f05ba79abe4672d63154467f823 (``trainer.py``,
``models/peft_modules.py``, ``models/peft_vit.py``, ``models/classifiers.py``, ``utils/losses.py``,
``utils/config.py``, ``configs/model/clip_vit_b16.yaml``, ``scripts/run_tab1to4_main_results.sh``).

What is computed (the formulas in ``methods/_lift_core.py``, each tested against a naive float64 version):

* **Model.** The open_clip image tower, frozen, with an **AdaptFormer** beside the MLP of every block:
  ``x ← (mlp(ln_2(x)) + s·up(relu(down(LN(x))))) + x`` (``peft_vit.py``), bottleneck
  ``2^max(0, int(log2(C / 2L)))`` unless ``bottleneck`` is set; the features are the class token after
  ``ln_post``, **before** the image projection (the official ``# x = x @ self.proj``).
* **Classifier.** Cosine, ``25 · normalize(x) · normalize(W)ᵀ`` (``scale``; ``cfg.scale = 25``), initialised
  from the class-name prompts' text features mapped back through the projection,
  ``W = normalize(normalize(t) @ projᵀ)`` (``init_head_text_feat``; ``prompt`` "a photo of a {}." by default).
* **Loss.** Logit-adjusted cross-entropy ``CE(z + τ·log(n_c/Σn), y)``, τ = 1, the prior in float32 without an
  epsilon (``LogitAdjustedLoss``).
* **Trained.** Only the adapters and the classifier: the image tower's own parameters are frozen in
  ``build_model`` (so the run's trainable-parameter count is LIFT's) and the stage ``trains`` only these; SGD on
  both, weight decay on every trained tensor, as ``build_optimizer``.
* **Test-time ensembling** (``tte``, in ``predict``, so validation and test alike): logits averaged over the
  five crops of the image enlarged by 24/224 (``tte_mode fivecrop``, the official default; ``tencrop`` adds
  the mirrored image's five). ``tte: none`` evaluates the plain view.
* **Training view** ``lift``: ``RandomResizedCrop(S)`` (scale 0.08–1) and a horizontal flip, as
  ``transform_train``.

Where ltbench departs, and why:

* **Input pipeline.** ltbench resizes every cached image to S×S (no aspect-preserving resize); the official
  test view is ``Resize(8/7·R) + CenterCrop(R)`` and the TTE crops come from ``Resize(R + 24)`` of the
  original image. Here the crops come from the evaluation view enlarged to ``S + round(24·S/224)``.
* **Precision.** The official ``prec: amp`` trains under fp16 autocast with a GradScaler; ltbench's CUDA path
  is bf16 autocast (no loss scaling). The loss is computed in float32 in both.
* **Schedule, budget, checkpoint.** The shared protocol's (a benchmark opts into ``recipe: paper``: SGD 0.01,
  batch 128, weight decay 5e-4, 10 epochs, per-epoch cosine); the official code tests the last epoch, the
  protocol the best-validation one (``select_metric: last`` gives the official rule).
* **Prompts.** ``default``, ``classname`` and ``ensemble`` (CLIP's 80 ImageNet templates) as official;
  ``descriptor`` is ImageNet's own descriptions and is not offered. Other PEFT modules, partial depth and the
  class-mean / linear-probe head initialisations of the code are not offered: LIFT is AdaptFormer with a
  text-initialised head.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ltbench.data.augment import BatchAugment, register_augmentation
from ltbench.errors import LtbenchError
from ltbench.method import Batch, Method, StepResult, TrainInfo
from ltbench.methods._lift_core import (PROMPTS, TTE_MODES, AdaptFormer, CosineClassifier, ParallelAdapterMLP,
                                        adaptformer_dim, class_text_features, lift_la_loss, lift_log_prior,
                                        require_clip, text_head_weight, tte_predict)
from ltbench.models import Backbone
from ltbench.recipes import Recipe
from ltbench.registry import register_method
from ltbench.stages import Stage

INIT_HEADS = ("text_feat", "none")


@register_augmentation("lift")
def lift_view(size: int) -> BatchAugment:
    """LIFT's ``transform_train``: RandomResizedCrop(S) (scale 0.08–1, ratio 3/4–4/3), horizontal flip."""
    return BatchAugment(size, crop_scale=(0.08, 1.0), hflip_p=0.5)


class LiftNetwork(nn.Module):
    """The open_clip image tower (adapters inside its blocks) → pre-projection features → cosine classifier."""

    def __init__(self, backbone: Backbone, head: CosineClassifier) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def features(self, images: Tensor) -> Tensor:
        """The class token after ``ln_post``, before ``proj`` (``Peft_ViT.forward``)."""
        return self.backbone.unprojected(images)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images))


def add_adaptformers(visual: nn.Module, bottleneck: int) -> list[str]:
    """An AdaptFormer beside the MLP of every block of an open_clip ViT; returns the adapters' paths in ``visual``."""
    width = visual.ln_post.normalized_shape[0]
    paths = []
    for i, block in enumerate(visual.transformer.resblocks):
        block.mlp = ParallelAdapterMLP(block.ln_2, block.mlp, AdaptFormer(width, bottleneck))
        block.ln_2 = nn.Identity()  # now inside the wrapped MLP, so the adapter sees the block's MLP input
        paths.append(f"transformer.resblocks.{i}.mlp.adapter")
    return paths


@register_method("lift")
class LIFT(Method):
    """AdaptFormer + text-initialised cosine classifier + LA loss + test-time ensembling (Shi et al., ICML 2024)."""

    requires = ("open_clip",)
    views = ("lift",)
    # configs/model/clip_vit_b16.yaml + utils/config.py (ImageNet-LT, Places-LT, CIFAR-100-LT; iNat 20 epochs)
    recipes = {"paper": Recipe(
        source="shijxcs/LIFT configs/model/clip_vit_b16.yaml, utils/config.py @ 661ead9 (Shi et al., ICML 2024)",
        train={"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 128,
               "epochs": 10, "lr_schedule": "cosine", "finetune": "full"},  # full: LIFT adds its own adapters
        params={"scale": 25.0, "bottleneck": None, "prompt": "default", "tte": "fivecrop"},
        note="backbone CLIP ViT-B/16 (OpenAI weights: --backbone open_clip:ViT-B-16 --pretrained hub:openai) at "
             "224 px with CLIP's mean/std; fp16 amp with a GradScaler; the last epoch is tested (select_metric: "
             "last); iNaturalist 2018 trains 20 epochs; bottleneck None = 2^max(0, int(log2(C/2L))); TTE run "
             "as a separate test pass (test_only True tte True)")}

    def __init__(self, bottleneck: int | None = None, scale: float = 25.0, tau: float = 1.0,
                 prompt: str = "default", init_head: str = "text_feat", tte: str = "fivecrop",
                 view: str = "lift") -> None:
        super().__init__()
        if bottleneck is not None and (isinstance(bottleneck, bool) or not isinstance(bottleneck, int)
                                       or bottleneck < 1):
            raise ValueError(f"lift: bottleneck must be a positive integer or None, got {bottleneck!r}")
        if not scale > 0:
            raise ValueError(f"lift: scale must be positive, got {scale!r}")
        if prompt not in PROMPTS:
            raise ValueError(f"lift: prompt must be one of {', '.join(PROMPTS)}, got {prompt!r}")
        if init_head not in INIT_HEADS:
            raise ValueError(f"lift: init_head must be one of {', '.join(INIT_HEADS)}, got {init_head!r}")
        if tte not in TTE_MODES:
            raise ValueError(f"lift: tte must be one of {', '.join(TTE_MODES)}, got {tte!r}")
        self.bottleneck = bottleneck
        self.scale = scale
        self.tau = tau
        self.prompt = prompt
        self.init_head = init_head
        self.tte = tte
        self.view = view
        self._trains: tuple[str, ...] = ("head",)

    def setup(self, info: TrainInfo) -> None:
        self.register_buffer("log_prior", lift_log_prior(info.class_counts).to(info.device))

    def build_model(self, backbone: Backbone, info: TrainInfo) -> nn.Module:
        visual = require_clip(backbone, self.name or "lift", vit=True)
        if not all(p.requires_grad for p in backbone.parameters()):
            raise LtbenchError("lift fine-tunes with its own AdaptFormer: leave finetune at full (the run's "
                               "finetune mode has already changed the backbone)")
        dim = self.bottleneck or adaptformer_dim(info.num_classes, len(visual.transformer.resblocks))
        for param in backbone.parameters():  # the pretrained tower stays as it is (build_optimizer's freeze)
            param.requires_grad_(False)
        adapters = add_adaptformers(visual, dim)
        head = CosineClassifier(visual.ln_post.normalized_shape[0], info.num_classes, self.scale)
        if self.init_head == "text_feat":
            text = class_text_features(backbone.encode_text, info.class_names, self.prompt)
            head.apply_weight(text_head_weight(text, visual.proj.detach().float().cpu()
                                               if visual.proj is not None else None))
        self._trains = tuple(f"backbone.body.{path}" for path in adapters) + ("head",)
        return LiftNetwork(backbone, head)

    def stages(self, info: TrainInfo) -> list[Stage]:
        return [Stage(samplers=("instance",), views=(self.view,), trains=self._trains)]

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """``CE(z + τ·log π, y)``: half-precision logits in float32, float32/float64 ones as given (the prior is
        float32 and promotes, as ``LogitAdjustedLoss`` adds it)."""
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return lift_la_loss(logits, labels, self.log_prior, self.tau)

    def training_step(self, model: nn.Module, batch: Batch) -> StepResult:
        return self.loss(model(batch.views[0]), batch.labels)

    def predict(self, model: nn.Module, images: Tensor) -> Tensor:
        return tte_predict(model, images, self.tte)

    def representations(self, model: nn.Module, images: Tensor) -> dict[str, Tensor]:
        return {"feature": model.features(images)}  # what the classifier sees (before the projection)

