"""lift and zeroshot_clip against the official LIFT modules on one tiny random-init CLIP (issue 23; docs/lift.md).

Needs a checkout of shijxcs/LIFT (``--lift-repo``; read at 661ead9b78368f05ba79abe4672d63154467f823): its
``clip/model.py`` (OpenAI's CLIP), ``models/peft_vit.py`` (``ViT_Tuner`` + ``Peft_ViT`` with AdaptFormer),
``models/classifiers.py``, ``models/clip_text.py``, ``models/models.py`` (``ZeroShotCLIP``), ``utils/losses.py``,
and the head initialisation of ``trainer.py init_head_text_feat`` written out below. The same weights go into both
(open_clip's keys are OpenAI CLIP's; QuickGELU as OpenAI's model), the adapters get non-zero weights, and the
script prints the largest differences of: the text-initialised head, the logits, the LA loss, the zero-shot
logits, and the five TTE crops against the official ``Resize(R + 24)`` + ``FiveCrop(R)`` on a 224 px PIL image.
Not a test: CI has no LIFT checkout. About 10 s.

    .venv/bin/python benchmarks/lift_official.py --lift-repo /path/to/LIFT
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.helpers


def load(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lift-repo", type=Path, required=True, help="a checkout of shijxcs/LIFT")
    repo = parser.parse_args().lift_repo.resolve()
    sys.path.insert(0, str(repo))  # its `clip` package
    import open_clip
    from clip import clip as oclip
    from clip import model as oclip_model

    package = types.ModuleType("models")  # its models/__init__ imports every PEFT file: load the ones used
    package.__path__ = [str(repo / "models")]
    sys.modules["models"] = package
    peft_vit = load("models.peft_vit", repo / "models" / "peft_vit.py")
    classifiers = load("models.classifiers", repo / "models" / "classifiers.py")
    clip_text = load("models.clip_text", repo / "models" / "clip_text.py")
    losses = load("lift_losses", repo / "utils" / "losses.py")
    source = (repo / "models" / "models.py").read_text().split("class PeftModelFromCLIP")[0]
    namespace: dict = {}
    exec(source.replace("from .clip_text import CLIP_Text", "from models.clip_text import CLIP_Text")
         .replace("from .peft_vit import Peft_ViT, ViT_Tuner", "").replace("from .peft_rn import Peft_RN, RN_Tuner", "")
         .replace("from .classifiers import *", ""), namespace)

    from ltbench import create_method
    from ltbench.method import TrainInfo
    from ltbench.methods._lift_core import tte_crops
    from ltbench.models.backbone import InputConfig
    from ltbench.models.clip import ClipBackbone
    from ltbench.models.clip import TINY_CLIP, TINY_CLIP_ARCH, register_tiny_clip

    torch.manual_seed(0)
    register_tiny_clip()
    ours_clip = open_clip.create_model(TINY_CLIP_ARCH, force_quick_gelu=True).eval()
    pristine = copy.deepcopy(ours_clip)  # lift changes the tower in place
    tokenizer = open_clip.get_tokenizer(TINY_CLIP_ARCH)
    half = InputConfig(16, (0.5,) * 3, (0.5,) * 3)
    names = ("melanoma", "melanocytic_nevus", "basal cell carcinoma", "dermatofibroma")
    counts = (40, 12, 5, 2)
    info = TrainInfo(class_counts=counts, class_names=names, epochs=1, steps_per_epoch=1, device=torch.device("cpu"))
    V, T, D = TINY_CLIP["vision_cfg"], TINY_CLIP["text_cfg"], TINY_CLIP["embed_dim"]

    class OfficialCLIP(torch.nn.Module):  # clip.model.CLIP's parts: its __init__ sets heads = width // 64 (0 here)
        def __init__(self) -> None:
            super().__init__()
            self.visual = oclip_model.VisionTransformer(V["image_size"], V["patch_size"], V["width"], V["layers"],
                                                        V["width"] // V["head_width"], D)
            self.transformer = oclip_model.Transformer(T["width"], T["layers"], T["heads"])
            self.token_embedding = torch.nn.Embedding(T["vocab_size"], T["width"])
            self.positional_embedding = torch.nn.Parameter(torch.empty(T["context_length"], T["width"]))
            self.ln_final = oclip_model.LayerNorm(T["width"])
            self.text_projection = torch.nn.Parameter(torch.empty(T["width"], D))
            self.logit_scale = torch.nn.Parameter(torch.ones([]))
            mask = torch.empty(T["context_length"], T["context_length"]).fill_(float("-inf")).triu_(1)
            for block in self.transformer.resblocks:
                block.attn_mask = mask

        dtype = property(lambda self: self.visual.conv1.weight.dtype)

    official = OfficialCLIP()
    official.load_state_dict(ours_clip.state_dict(), strict=True)
    official.eval()

    method = create_method("lift")
    method.setup(info)
    ours = method.build_model(ClipBackbone(ours_clip, tokenizer, "open_clip:tiny", half), info).eval()
    cfg = types.SimpleNamespace(full_tuning=False, bias_tuning=False, ln_tuning=False, vpt_shallow=False,
                                vpt_deep=False, adapter=False, adaptformer=True, lora=False, lora_mlp=False,
                                ssf_attn=False, ssf_mlp=False, ssf_ln=False, mask=False, partial=None, vpt_len=None,
                                adapter_dim=None, mask_ratio=None, mask_seed=None)
    tuner = peft_vit.ViT_Tuner(cfg, official.visual, len(names))
    with torch.no_grad():
        for block, theirs in zip(ours.backbone.body.transformer.resblocks, tuner.adaptformer_list):
            adapter = block.mlp.adapter  # non-zero adapters, so their placement matters
            adapter.up_proj.weight.normal_(0, 0.3)
            adapter.up_proj.bias.normal_(0, 0.1)
            adapter.down_proj.bias.normal_(0, 0.5)
            adapter.scale.fill_(0.7)
            adapter.ln.weight.normal_(1, 0.2)
            theirs.load_state_dict(adapter.state_dict())
    image_encoder = peft_vit.Peft_ViT(official.visual)
    head = classifiers.CosineClassifier(image_encoder.out_dim, len(names), scale=25)  # cfg.scale = 25
    with torch.no_grad():  # trainer.py init_head_text_feat, prompt "default", a CLIP ViT
        prompts = torch.cat([oclip.tokenize("a photo of a {}.".format(c.replace("_", " "))) for c in names])
        text = F.normalize(clip_text.CLIP_Text(official)(prompts), dim=-1)
        head.apply_weight(F.normalize(text @ image_encoder.proj.t(), dim=-1))
        x = torch.randn(6, 3, V["image_size"], V["image_size"])
        theirs_logits, ours_logits = image_encoder(x, tuner, head), ours(x)
    print(f"head initialisation  max |diff| {float((head.weight - ours.head.weight).detach().abs().max()):.2e}")
    print(f"lift logits          max |diff| {float((theirs_logits - ours_logits).abs().max()):.2e} "
          f"(largest |logit| {float(theirs_logits.abs().max()):.2f})")

    logits, labels = torch.randn(6, 4) * 5, torch.tensor([0, 0, 1, 0, 1, 1])  # classes 2 and 3 absent
    official_la = losses.LogitAdjustedLoss(cls_num_list=torch.Tensor(list(counts)))(logits, labels)
    print(f"LA loss              official {official_la.item():.7f} ours {method.loss(logits, labels).item():.7f} "
          f"bit-identical: {torch.equal(official_la, method.loss(logits, labels))}")

    zero_shot = namespace["ZeroShotCLIP"](official)
    zero_shot.init_text_features(prompts)
    zmethod = create_method("zeroshot_clip", prompt="default")  # LIFT's zero-shot prompt
    zmodel = zmethod.build_model(ClipBackbone(pristine, tokenizer, "open_clip:tiny", half), info).eval()
    with torch.no_grad():
        a, b = zero_shot(x), zmethod.predict(zmodel, x)
    print(f"zero-shot logits     max |diff| {float((a - b).abs().max()):.2e} (largest |logit| {float(a.abs().max()):.2f})")

    from PIL import Image
    from torchvision import transforms

    mean, std = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
    small = np.random.default_rng(0).integers(0, 256, (28, 28, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((224, 224), Image.BILINEAR)
    official_tte = transforms.Compose([  # trainer.py build_data_loader, tte_mode fivecrop, expand 24
        transforms.Resize(224 + 24), transforms.FiveCrop(224),
        transforms.Lambda(lambda crops: torch.stack([transforms.ToTensor()(c) for c in crops])),
        transforms.Normalize(mean, std)])(image)
    ours_tte = tte_crops(transforms.Normalize(mean, std)(transforms.ToTensor()(image))[None], "fivecrop")
    diff = (official_tte - ours_tte).abs()
    print(f"TTE five crops       max |diff| {float(diff.max()):.4f}, mean {float(diff.mean()):.4f} "
          f"(one uint8 level / std = {1 / 255 / min(std):.4f}: the official pipeline rounds to uint8 after PIL's resize)")


if __name__ == "__main__":
    main()
