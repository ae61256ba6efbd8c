"""zeroshot_clip (methods/zeroshot_clip.py) on a tiny random-init open_clip model: its logits against a naive
float64 computation of CLIP's zero-shot classifier, and the run that trains nothing."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ltbench import LtbenchError, create_method
from ltbench.method import TrainInfo
from ltbench.models import build_backbone
from ltbench.trainer import Trainer
from tests.helpers import cpu_config, synthetic_data, tiny_clip

NAMES = ("melanoma", "melanocytic_nevus", "basal cell carcinoma")


def info(names=NAMES):
    return TrainInfo(class_counts=(30, 9, 2)[:len(names)], class_names=tuple(names), epochs=1, steps_per_epoch=1,
                     device=torch.device("cpu"))


def naive_zeroshot(backbone, images, prompts_per_template):
    """exp(t) · <f/|f|, T_c>, T_c the mean over templates of unit text embeddings, renormalised — float64 loops."""
    with torch.no_grad():
        image = backbone(images).double()
        rows = []
        for texts in prompts_per_template:
            t = backbone.clip_model.encode_text(backbone.tokenizer(texts)).double()
            rows.append([t[c] / math.sqrt(float(t[c] @ t[c])) for c in range(len(texts))])
        text = []
        for c in range(len(rows[0])):
            mean = sum(r[c] for r in rows) / len(rows)
            text.append(mean / math.sqrt(float(mean @ mean)))
        scale = math.exp(float(backbone.clip_model.logit_scale))
        out = torch.empty(image.shape[0], len(text), dtype=torch.float64)
        for i in range(image.shape[0]):
            f = image[i] / math.sqrt(float(image[i] @ image[i]))
            for c, t in enumerate(text):
                out[i, c] = scale * float(f @ t)
    return out


@pytest.mark.parametrize("prompt", ["default", "classname", "ensemble"])
def test_zeroshot_logits_match_naive_float64(prompt):
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    torch.manual_seed(0)
    backbone = build_backbone(tiny_clip(), None, 16)
    names = [n.replace("_", " ") for n in NAMES]
    prompts = {"default": [[f"a photo of a {n}." for n in names]], "classname": [names],
               "ensemble": [[t(n) for n in names] for t in OPENAI_IMAGENET_TEMPLATES]}[prompt]
    method = create_method("zeroshot_clip", prompt=prompt)
    model = method.build_model(backbone, info()).eval()
    images = torch.randn(4, 3, 16, 16)
    expected = naive_zeroshot(backbone, images, prompts)
    with torch.no_grad():
        torch.testing.assert_close(method.predict(model, images).double(), expected, rtol=1e-4, atol=1e-4)
    assert math.isclose(float(model.logit_scale.exp()), 1 / 0.07, rel_tol=1e-6)  # CLIP's initial temperature


def test_zeroshot_default_prompt_is_ensemble_and_the_run_trains_nothing():
    assert create_method("zeroshot_clip").get_params() == {"prompt": "ensemble", "tte": "none"}
    data = synthetic_data()
    trainer = Trainer(cpu_config(backbone=tiny_clip(), epochs=3), progress=False)
    run = trainer.fit(create_method("zeroshot_clip"), data.bundle)
    assert run.history == [{"epoch": 0, "lr": 0.0, "train_time_s": 0.0, "stage": "untrained",
                            "val": run.history[0]["val"]}] and run.best_epoch == 0
    assert all(p.grad is None and not p.requires_grad for p in trainer.model.parameters())
    assert run.params["trainable"] == 0 < run.params["total"]
    # the tested probabilities are the softmax of the zero-shot logits of the model as built (no step taken)
    images = torch.as_tensor(data.bundle.pixels[data.split.test[:8]]).permute(0, 3, 1, 2)
    x = trainer.eval_transform()(images)
    with torch.no_grad():
        probs = torch.softmax(create_method("zeroshot_clip").predict(trainer.model.eval(), x), dim=1)
    np.testing.assert_allclose(run.arrays["test_probs"][:8], probs.numpy(), rtol=1e-5, atol=1e-6)


def test_zeroshot_needs_an_open_clip_backbone_and_valid_settings():
    with pytest.raises(LtbenchError, match="needs an open_clip backbone"):
        create_method("zeroshot_clip").build_model(build_backbone("small-cnn"), info())
    for bad in ({"prompt": "descriptor"}, {"tte": "twelvecrop"}):
        with pytest.raises(LtbenchError):
            create_method("zeroshot_clip", **bad)
