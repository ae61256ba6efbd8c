"""``timm:<model>``: any timm model as a feature extractor (``num_classes=0``; Wightman, pytorch-image-models).

``pretrained`` (docs/protocol.md, "Foundation-model backbones"): None (random init), ``hub`` (timm's
``pretrained=True``: the weights of the model name's tag, from the Hugging Face Hub — ``HF_ENDPOINT``
is honoured — into its cache, once, with a progress bar), ``hf-hub:<org>/<repo>`` (those weights),
an http(s) URL or a local file holding a timm state dict (strict key check). timm is imported only
here, when such a backbone is built: it costs seconds at every CLI start.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ltbench.errors import LtbenchError
from ltbench.models.backbone import Backbone, InputConfig, check_blocks
from ltbench.models.weights import load_weights


class TimmBackbone(Backbone):
    """A timm model with ``num_classes=0``: ``forward`` gives its pooled pre-logits features.

    ``blocks``: a ViT's ``blocks``; other families (ConvNeXt, Swin, EfficientNet) have their blocks
    grouped by timm's ``group_matcher`` (``layer_ids``), which is what partial fine-tuning and layer
    decay read; their ``blocks`` list is empty (no AdaptFormer, VPT or BBN split there).
    """

    @property
    def transformer(self) -> bool:  # type: ignore[override]
        return _is_vit(self.body)

    @property
    def blocks(self) -> list[nn.Module]:
        return list(self.body.blocks) if _is_vit(self.body) else []

    @property
    def num_prefix_tokens(self) -> int:
        """Class and register tokens in front of the patch tokens (VPT's prompts go after them)."""
        return int(getattr(self.body, "num_prefix_tokens", 1))

    def layer_ids(self) -> dict[str, int]:
        """timm's own grouping (``group_matcher(coarse=False)``, as its ``param_groups_layer_decay``)."""
        from timm.models import group_parameters

        ids = group_parameters(self.body, self.body.group_matcher(coarse=False), reverse=True)
        return {f"body.{name}": layer for name, layer in ids.items()}

    def split_last_stage(self, blocks: int | None = None) -> tuple[nn.Module, nn.Module]:
        """A ViT split before its last ``blocks`` transformer blocks (None: 1, the last block).

        trunk: patch embedding, class/register tokens and position embedding, the earlier blocks;
        tail: the last block(s), the final norm and the model's pooling (``fc_norm``), so
        ``tail(trunk(x)) == self(x)`` (token sequences N×T×D between them).
        """
        if not _is_vit(self.body):
            split = _cnn_split(self.body, blocks, self.arch)
            if split is None:
                raise LtbenchError(f"backbone {self.arch!r}: split_last_stage knows ResNets, small-cnn, timm ConvNeXt "
                                   "and EfficientNet, and ViT-family transformers (timm VisionTransformer, open_clip)")
            return split
        k = check_blocks(1 if blocks is None else blocks, len(self.body.blocks), self.arch)
        return _ViTTrunk(self.body, len(self.body.blocks) - k), _ViTTail(self.body, len(self.body.blocks) - k)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        try:
            self.body.set_grad_checkpointing(enable)
        except (AssertionError, NotImplementedError, AttributeError):
            super().set_grad_checkpointing(enable)


def _is_vit(model: nn.Module) -> bool:
    from timm.models.vision_transformer import VisionTransformer

    return isinstance(model, VisionTransformer)


class _ViTTrunk(nn.Module):
    """The first ``n`` blocks of a timm ``VisionTransformer`` and everything before them.

    Holds the ViT's own modules and parameters (shared references) under the ViT's attribute names,
    so timm's ``_pos_embed`` runs on it unchanged.
    """

    def __init__(self, vit: nn.Module, n: int) -> None:
        super().__init__()
        for name in ("patch_embed", "pos_drop", "patch_drop", "norm_pre"):
            setattr(self, name, getattr(vit, name))
        self.cls_token, self.reg_token, self.pos_embed = vit.cls_token, vit.reg_token, vit.pos_embed
        for name in ("dynamic_img_size", "no_embed_class", "num_prefix_tokens"):
            setattr(self, name, getattr(vit, name))
        self.blocks = nn.Sequential(*list(vit.blocks)[:n])
        self._pos_embed_fn = type(vit)._pos_embed

    def forward(self, images: Tensor) -> Tensor:
        x = self.patch_embed(images)
        x = self._pos_embed_fn(self, x)
        return self.blocks(self.norm_pre(self.patch_drop(x)))


class _ViTTail(nn.Module):
    """Blocks ``n`` .. of a timm ``VisionTransformer``, its final norm and its pooling (pre-logits)."""

    def __init__(self, vit: nn.Module, n: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*list(vit.blocks)[n:])
        self.norm, self.attn_pool, self.fc_norm, self.head_drop = vit.norm, vit.attn_pool, vit.fc_norm, vit.head_drop
        self.global_pool, self.num_prefix_tokens = vit.global_pool, vit.num_prefix_tokens
        self.pool_include_prefix = getattr(vit, "pool_include_prefix", False)
        self._pool_fn = type(vit).pool

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.norm(self.blocks(tokens))
        return self.head_drop(self.fc_norm(self._pool_fn(self, x)))


def _cnn_split(model: nn.Module, blocks: int | None, arch: str) -> tuple[nn.Module, nn.Module] | None:
    """A timm ConvNeXt or EfficientNet split before the last ``blocks`` blocks of its last stage (None: the
    whole stage, as a ResNet's ``layer4``); the tail ends with the model's own head (pooling, norm) in
    pre-logits form. None for other families."""
    from timm.models.convnext import ConvNeXt
    from timm.models.efficientnet import EfficientNet

    if isinstance(model, ConvNeXt):
        last = model.stages[-1]
        stage = list(last.blocks)
        k = check_blocks(blocks, len(stage), arch)
        trunk = nn.Sequential(model.stem, *model.stages[:-1], last.downsample, *stage[:len(stage) - k])
        return trunk, _CnnTail(nn.Sequential(*stage[len(stage) - k:], model.norm_pre), model.head, convnext=True)
    if isinstance(model, EfficientNet):
        stage = list(model.blocks[-1])
        k = check_blocks(blocks, len(stage), arch)
        trunk = nn.Sequential(model.conv_stem, model.bn1, *model.blocks[:-1], *stage[:len(stage) - k])
        tail = _CnnTail(nn.Sequential(*stage[len(stage) - k:], model.conv_head, model.bn2), model.global_pool,
                        drop_rate=model.drop_rate)
        return trunk, tail
    return None


class _CnnTail(nn.Module):
    """The last block(s) of a timm CNN, then its head as ``forward_head(x, pre_logits=True)`` computes it."""

    def __init__(self, body: nn.Module, head: nn.Module, convnext: bool = False, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.body, self.head, self.convnext, self.drop_rate = body, head, convnext, drop_rate

    def forward(self, features: Tensor) -> Tensor:
        x = self.body(features)
        if self.convnext:
            return self.head(x, pre_logits=True)
        return nn.functional.dropout(self.head(x), p=self.drop_rate, training=self.training) if self.drop_rate \
            else self.head(x)


def _input_config(model: nn.Module) -> InputConfig:
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    return InputConfig(size=int(cfg["input_size"][-1]), mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
                       interpolation=cfg.get("interpolation", "bilinear"), crop_pct=float(cfg.get("crop_pct", 1.0)))


def build_timm_backbone(model_name: str, pretrained: str | None = None, image_size: int | None = None) -> TimmBackbone:
    """``timm.create_model(model_name, num_classes=0)`` with ``pretrained`` (module docstring).

    ``image_size``: given to ViT-family models as ``img_size`` (their position embeddings are
    resampled when pretrained weights of another size load).
    """
    import timm

    if not timm.is_model(model_name.split(".")[0]) and not model_name.startswith("hf-hub:"):
        raise LtbenchError(f"backbone timm:{model_name}: timm has no such model (see timm.list_models())")
    kwargs: dict[str, Any] = {"num_classes": 0}
    if image_size is not None and _takes_img_size(model_name):
        kwargs["img_size"] = image_size
    hub = pretrained is not None and (pretrained == "hub" or pretrained.startswith(("hub:", "hf-hub:")))
    name = model_name
    if hub and pretrained.startswith("hub:"):
        name = f"{model_name.split('.')[0]}.{pretrained[4:]}"
    elif hub and pretrained.startswith("hf-hub:"):
        kwargs["pretrained_cfg_overlay"] = {"hf_hub_id": pretrained[len("hf-hub:"):]}
    try:
        model = timm.create_model(name, pretrained=hub, **kwargs)
    except LtbenchError:
        raise
    except Exception as exc:  # offline, a missing tag, a wrong repo: one line naming the option
        if not hub:
            raise LtbenchError(f"backbone timm:{model_name}: timm cannot build it ({_first_line(exc)})") from None
        from huggingface_hub import constants

        raise LtbenchError(
            f"--pretrained {pretrained}: cannot get the weights of timm:{name} from {constants.ENDPOINT} "
            f"({type(exc).__name__}: {_first_line(exc)}); download them elsewhere and pass --pretrained "
            "/path/to/weights.pth (a timm state dict), or set HF_ENDPOINT / HF_HOME") from None
    if pretrained is not None and not hub and pretrained != "none":
        if pretrained == "imagenet":
            raise LtbenchError(f"--pretrained imagenet: torchvision's ResNet weights; for timm:{model_name} "
                               "give hub, hub:<tag>, hf-hub:<org>/<repo>, a URL or a file")
        load_timm_state(model, load_weights(pretrained), pretrained, model_name)
    return TimmBackbone(model, int(model.num_features), f"timm:{model_name}", _input_config(model))


def load_timm_state(model: nn.Module, state: dict[str, Tensor], source: str, model_name: str) -> None:
    """A timm state dict into ``model``: the classifier head is dropped (``num_classes=0``), timm's
    ``checkpoint_filter_fn`` adapts position embeddings of another size, every other key must match."""
    state = {k: v for k, v in state.items() if not k.startswith(("head.", "fc.", "classifier.", "head.fc."))}
    filter_fn = getattr(__import__(type(model).__module__, fromlist=["checkpoint_filter_fn"]),
                        "checkpoint_filter_fn", None)
    if filter_fn is not None:
        try:
            state = filter_fn(state, model)
        except Exception:  # noqa: BLE001 - keep the raw keys; the strict check below names the problem
            pass
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatch: another model's weights
        raise LtbenchError(f"--pretrained {source}: not timm:{model_name} weights ({_first_line(exc, 1)})") from None
    missing = [k for k in missing if not k.startswith("head")]
    if missing or unexpected:
        raise LtbenchError(f"--pretrained {source}: not timm:{model_name} weights "
                           f"(missing {missing[:3]}, unexpected {unexpected[:3]})")


def _takes_img_size(model_name: str) -> bool:
    """ViT-family models build their position embedding for ``img_size`` (others are size-agnostic)."""
    base = model_name.split(".")[0].removeprefix("hf-hub:")
    return base.startswith(("vit_", "deit", "eva", "beit", "swin", "flexivit"))


def _first_line(exc: BaseException, index: int = 0) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
    return lines[min(index, len(lines) - 1)]
