"""``open_clip:<arch>``: the image tower of an open_clip CLIP model as a Backbone; the text tower rides along.

Radford et al., ICML 2021 (CLIP); Ilharco et al., open_clip. ``pretrained``: None (random init),
``hub:<tag>`` (an open_clip pretrained tag, e.g. ``hub:openai``, ``hub:laion2b_s34b_b79k``, downloaded
once into open_clip's cache with a progress bar), ``hf-hub:<org>/<repo>`` (an open_clip model on
the Hugging Face Hub), or a local file / URL holding the CLIP model's state dict (open_clip's
``load_checkpoint`` keys). open_clip is imported only here.

The text tower is reachable, never trained by the trainer: ``backbone.clip_model`` is the whole
``open_clip.CLIP`` (its ``.visual`` is ``backbone.body``) kept *outside* the module tree (not in
``parameters()``, ``state_dict()`` or ``.to()``), ``backbone.tokenizer`` open_clip's tokenizer,
``backbone.encode_text(texts)`` the normalised text embeddings (float32), ``backbone.logit_scale``
CLIP's learned temperature (a float), ``backbone.unprojected(x)`` the image features before the
projection. Functions the rest of ltbench relies on: ``build_clip_backbone``,
``ClipBackbone.blocks`` / ``layer_ids`` / ``split_last_stage`` / ``set_grad_checkpointing`` /
``num_prefix_tokens`` / ``lora_targets`` (docs: /tmp/iss/23-interface.md, docs/finetuning.md).
"""
from __future__ import annotations

import types

import torch
from torch import Tensor, nn

from ltbench.errors import LtbenchError
from ltbench.models.backbone import Backbone, InputConfig, check_blocks
from ltbench.models.weights import load_weights


#: ``open_clip:ltbench-tiny-clip``: a random-init CLIP small enough for a CPU (2 blocks of width 32 in each
#: tower, patch 8: 16 px gives 2x2 patches + the class token), with the real tokenizer's vocabulary so class-name
#: prompts tokenize as with CLIP. The embedded default's CLIP rows and the tests use it: a smoke model, not CLIP.
TINY_CLIP_ARCH = "ltbench-tiny-clip"
TINY_CLIP = {"embed_dim": 16,
             "vision_cfg": {"image_size": 16, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}


def register_tiny_clip() -> None:
    """Add :data:`TINY_CLIP` to open_clip's model configs (once per process; no download)."""
    import json
    import tempfile
    from pathlib import Path

    import open_clip

    if TINY_CLIP_ARCH not in open_clip.list_models():
        with tempfile.TemporaryDirectory() as folder:  # open_clip reads the file when it is added
            path = Path(folder) / f"{TINY_CLIP_ARCH}.json"
            path.write_text(json.dumps(TINY_CLIP))
            open_clip.add_model_config(path)


class ClipBackbone(Backbone):
    """``body`` = the open_clip image tower (``VisionTransformer``): images → projected N×``out_dim`` embeddings."""

    transformer = True
    num_prefix_tokens = 1  # the class token

    def __init__(self, clip_model: nn.Module, tokenizer, name: str, input_config: InputConfig) -> None:
        super().__init__(clip_model.visual, int(clip_model.visual.output_dim), name, input_config)
        self.__dict__["clip_model"] = clip_model  # outside the module tree: not trained, saved or moved
        self.tokenizer = tokenizer

    @property
    def logit_scale(self) -> float:
        return float(self.clip_model.logit_scale.detach().exp())

    @torch.no_grad()
    def encode_text(self, texts: list[str], device: torch.device | str = "cpu") -> Tensor:
        """L2-normalised text embeddings N×``out_dim`` (the text tower moved to ``device`` for the call).

        In float32 even inside an autocast region (a run under bf16 autocast builds its model there): class
        text features initialise heads once, as the official code computes them outside its amp context.
        """
        model = self.clip_model.to(device)
        tokens = self.tokenizer(texts).to(device)
        with torch.autocast(device_type=torch.device(device).type, enabled=False):
            return nn.functional.normalize(model.encode_text(tokens).float(), dim=-1)

    def unprojected(self, images: Tensor) -> Tensor:
        """The pooled image features before ``proj`` (N×width; the class token after ``ln_post`` for a ViT):
        ``backbone(x) == unprojected(x) @ body.proj`` (LIFT's classifier reads these, ``peft_vit.py``)."""
        visual = self.body
        pooled, _ = visual._pool(visual.transformer(visual._embeds(images)))
        return pooled

    @property
    def blocks(self) -> list[nn.Module]:
        return list(self.body.transformer.resblocks)

    def layer_ids(self) -> dict[str, int]:
        """conv1, class/position embeddings, ln_pre → 0; resblock i → i + 1; ln_post, proj, pooling → L (with the last block)."""
        n = len(self.blocks)
        ids = {}
        for name, _ in self.named_parameters():
            inner = name.removeprefix("body.")
            if inner.startswith("transformer.resblocks."):
                ids[name] = int(inner.split(".")[2]) + 1
            elif inner.split(".")[0] in ("conv1", "class_embedding", "positional_embedding", "ln_pre"):
                ids[name] = 0
            else:
                ids[name] = n
        return ids

    @property
    def lora_targets(self) -> list[str]:
        """The Linear layers of the blocks (attention output, MLP); the packed qkv is an ``in_proj_weight``."""
        return [f"{i}.{name}" for i, block in enumerate(self.blocks)
                for name, m in block.named_modules() if isinstance(m, nn.Linear)]

    def split_last_stage(self, blocks: int | None = None) -> tuple[nn.Module, nn.Module]:
        """Split before the last ``blocks`` residual attention blocks (None: 1); ``tail(trunk(x)) == self(x)``."""
        n = len(self.blocks)
        k = check_blocks(1 if blocks is None else blocks, n, self.arch)
        return _ClipTrunk(self.body, n - k), _ClipTail(self.body, n - k)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.body.set_grad_checkpointing(enable)


def _run_blocks(blocks: nn.ModuleList, x: Tensor, batch_first: bool) -> Tensor:
    if not batch_first:
        x = x.transpose(0, 1)
    for block in blocks:
        x = block(x)
    return x if batch_first else x.transpose(0, 1)


class _ClipTrunk(nn.Module):
    """Patch embedding, class and position embeddings, ln_pre and the first ``n`` blocks (shared modules)."""

    def __init__(self, visual: nn.Module, n: int) -> None:
        super().__init__()
        self.conv1, self.patch_dropout, self.ln_pre = visual.conv1, visual.patch_dropout, visual.ln_pre
        self.class_embedding, self.positional_embedding = visual.class_embedding, visual.positional_embedding
        self.blocks = nn.ModuleList(list(visual.transformer.resblocks)[:n])
        self.batch_first = visual.transformer.batch_first
        self._embeds = types.MethodType(type(visual)._embeds, self)

    def forward(self, images: Tensor) -> Tensor:
        return _run_blocks(self.blocks, self._embeds(images), self.batch_first)


class _ClipTail(nn.Module):
    """Blocks ``n`` .., the pooling with ln_post, and the projection: the image embedding."""

    def __init__(self, visual: nn.Module, n: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(list(visual.transformer.resblocks)[n:])
        self.ln_post, self.attn_pool = visual.ln_post, visual.attn_pool
        self.attn_pool_contrastive = getattr(visual, "attn_pool_contrastive", None)
        self.proj = visual.proj
        for name in ("attn_pool_type", "final_ln_after_pool", "pool_type"):
            setattr(self, name, getattr(visual, name, None))
        self.batch_first = visual.transformer.batch_first
        self._pool = types.MethodType(type(visual)._pool, self)
        self._global_pool = types.MethodType(type(visual)._global_pool, self)

    def forward(self, tokens: Tensor) -> Tensor:
        pooled, _ = self._pool(_run_blocks(self.blocks, tokens, self.batch_first))
        return pooled @ self.proj if self.proj is not None else pooled


def build_clip_backbone(arch: str, pretrained: str | None = None, image_size: int | None = None) -> ClipBackbone:
    """``open_clip.create_model(arch)`` at ``image_size`` (position embeddings resampled when
    pretrained weights of another size load) with ``pretrained`` (module docstring)."""
    import open_clip

    if arch == TINY_CLIP_ARCH:
        register_tiny_clip()
    tag = None
    if pretrained is not None and pretrained.startswith("hub:"):
        tag = pretrained[4:]
    elif pretrained == "hub":
        raise LtbenchError(f"--pretrained hub: open_clip:{arch} has several weights; name one as hub:<tag> "
                           f"(tags: {', '.join(open_clip.list_pretrained_tags_by_model(arch)) or 'none'})")
    name = pretrained if pretrained is not None and pretrained.startswith("hf-hub:") else arch
    if arch not in open_clip.list_models():
        raise LtbenchError(f"backbone open_clip:{arch}: open_clip has no such model (see open_clip.list_models())")
    kwargs = {"force_image_size": image_size} if image_size is not None else {}
    try:
        model = open_clip.create_model(name, pretrained=tag, **kwargs)
    except Exception as exc:  # offline, an unknown tag: one line naming the option
        first = next((s.strip() for s in str(exc).splitlines() if s.strip()), type(exc).__name__)
        raise LtbenchError(f"--pretrained {pretrained}: cannot build open_clip:{arch} with these weights "
                           f"({type(exc).__name__}: {first}); download them elsewhere and pass --pretrained "
                           "/path/to/open_clip_model.bin") from None
    if pretrained is not None and tag is None and not pretrained.startswith("hf-hub:") and pretrained != "none":
        state = load_weights(pretrained)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = next((s.strip() for s in str(exc).splitlines()[1:] if s.strip()), str(exc))
            raise LtbenchError(f"--pretrained {pretrained}: not open_clip:{arch} weights ({first})") from None
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    size = cfg.get("size", model.visual.image_size)
    size = size[-1] if isinstance(size, (tuple, list)) else size
    input_config = InputConfig(size=int(size), mean=tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)),
                               std=tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD)),
                               interpolation=cfg.get("interpolation", "bicubic"))
    model.eval()  # the text tower: no dropout when methods encode class names
    return ClipBackbone(model, open_clip.get_tokenizer(arch), f"open_clip:{arch}", input_config)
