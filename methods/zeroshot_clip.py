"""Zero-shot CLIP: classify by the cosine between the image embedding and the class-name prompts' text embeddings.

Radford et al.: "Learning Transferable Visual Models From Natural Language Supervision", ICML 2021 (prompt
ensembling over 80 ImageNet templates, Section 3.1.4; openai/CLIP ``notebooks/Prompt_Engineering_for_ImageNet``).
As the zero-shot baseline of LIFT computes it (shijxcs/LIFT @ 661ead9b78368f05ba79abe4672d63154467f823,
``models/models.py ZeroShotCLIP``, ``trainer.py build_model`` with ``zero_shot True``):
``logits = exp(logit_scale) · normalize(f_img) · Tᵀ``, T the unit text features of the class prompts, f_img the
projected image embedding, ``exp(logit_scale)`` CLIP's learned temperature (100 for the OpenAI weights).

**Nothing is trained**: ``stages`` is empty, so the trainer validates the model as built once, keeps it as the
checkpoint and tests it (``ltbench/trainer/loop.py``); the run's ``epochs`` are not used and the report shows the
run as a row like any other.

``prompt``: ``ensemble`` (default) — CLIP's 80 ImageNet templates, each template's features normalised,
averaged, normalised again (CLIP's notebook); ``default`` — "a photo of a {}." alone, the LIFT code's zero-shot
prompt; ``classname`` — the bare name. Class names are the dataset's (``TrainInfo.class_names``) with
underscores as spaces: ISIC's are abbreviations ("MEL", "NV"), which the text tower reads as such.
``tte``: LIFT's test-time crops (``methods/_lift_core.py``), off by default as in the official zero-shot config.

Where ltbench departs: the evaluation view is the image resized to S×S (CLIP's preprocessing resizes the
shorter side and centre-crops); mean/std are the backbone's (CLIP's) as its ``input_config`` says.
"""
from __future__ import annotations

from torch import Tensor, nn

from ltbench.method import Batch, Method, StepResult, TrainInfo
from ltbench.methods._lift_core import (PROMPTS, TTE_MODES, class_text_features, require_clip, tte_predict,
                                        zeroshot_logits)
from ltbench.models import Backbone
from ltbench.registry import register_method
from ltbench.stages import Stage


class ZeroShotNetwork(nn.Module):
    """The CLIP image tower and fixed class text features: ``exp(logit_scale) · cos(image, text)``."""

    def __init__(self, backbone: Backbone, text_features: Tensor, logit_scale: Tensor) -> None:
        super().__init__()
        self.backbone = backbone
        self.register_buffer("text_features", text_features)
        self.register_buffer("logit_scale", logit_scale)  # log of the temperature, as CLIP stores it

    def forward(self, images: Tensor) -> Tensor:
        return zeroshot_logits(self.backbone(images).float(), self.text_features, self.logit_scale)


@register_method("zeroshot_clip")
class ZeroShotCLIP(Method):
    """CLIP's zero-shot classifier from class-name prompts; trains nothing."""

    requires = ("open_clip",)

    def __init__(self, prompt: str = "ensemble", tte: str = "none") -> None:
        super().__init__()
        if prompt not in PROMPTS:
            raise ValueError(f"zeroshot_clip: prompt must be one of {', '.join(PROMPTS)}, got {prompt!r}")
        if tte not in TTE_MODES:
            raise ValueError(f"zeroshot_clip: tte must be one of {', '.join(TTE_MODES)}, got {tte!r}")
        self.prompt = prompt
        self.tte = tte

    def build_model(self, backbone: Backbone, info: TrainInfo) -> nn.Module:
        require_clip(backbone, self.name or "zeroshot_clip")
        text = class_text_features(backbone.encode_text, info.class_names, self.prompt)
        logit_scale = backbone.clip_model.logit_scale.detach().float().cpu().reshape(())
        for param in backbone.parameters():  # nothing is trained: the run's trainable-parameter count is 0
            param.requires_grad_(False)
        return ZeroShotNetwork(backbone, text.cpu(), logit_scale)

    def stages(self, info: TrainInfo) -> list[Stage]:
        return []  # zero-shot: the trainer tests the model as built

    def training_step(self, model: nn.Module, *batches: Batch) -> StepResult:
        raise RuntimeError("zeroshot_clip trains nothing: its stages() is empty")

    def predict(self, model: nn.Module, images: Tensor) -> Tensor:
        return tte_predict(model, images, self.tte)
