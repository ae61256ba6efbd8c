"""Fine-tuning modes for any backbone (``finetune:`` in ``train``), applied in one place by the trainer.

``prepare_backbone(backbone, spec)`` runs on the backbone *before* the method's ``build_model``:
it inserts the mode's modules (LoRA layers, adapters, prompts) and sets ``requires_grad`` on the
backbone's own parameters, so every copy a method makes of a part of it (BBN's second branch)
carries both, and the heads ``build_model`` adds stay trainable. The trainer keeps parameters the
model froze frozen in every stage (``Stage.trains`` only narrows further). After ``build_model``,
``optimizer_params`` gives the stage optimiser its parameter groups (layer-wise lr decay) and
``parameter_counts`` the trainable and total counts recorded with each run.

Modes (docs/finetuning.md):
* ``full`` — everything trains (the default; results and run keys as before).
* ``linear`` — the backbone is frozen; the method's heads train (linear probing).
* ``partial`` — the last ``blocks`` blocks (and the final norm/pooling after them) train.
* ``lora`` — LoRA (Hu et al., ICLR 2022) on every Linear layer of the blocks (attention qkv and
  output, MLP; an ``nn.MultiheadAttention`` as a whole, peft's layer for it), through peft's
  ``inject_adapter_in_model``; rank r, alpha = r, no dropout.
* ``adaptformer`` — AdaptFormer (Chen et al., NeurIPS 2022): a bottleneck adapter in parallel with each
  block's MLP, ``x + mlp(norm2(x)) + s · up(relu(down(x)))`` with x the post-attention residual,
  s = 0.1, bottleneck 64, up-projection zero-initialised (ShoufaChen/AdaptFormer ``Adapter``).
* ``vpt`` — deep visual prompt tuning (Jia et al., ECCV 2022): ``prompts`` learned tokens per block
  inserted after the class token, replaced at every block (KMnP/vpt ``incorporate_prompt``,
  ``forward_deep_prompt``), uniform init ±sqrt(6 / (3·p² + d)).
* ``bitfit`` — only the backbone's biases train (Ben Zaken et al., ACL 2022).
* ``layer_decay`` (any mode) — layer-wise lr decay (BEiT, Bao et al., ICLR 2022; MAE): a backbone
  parameter of layer i (0 = embeddings, 1..L blocks) gets ``lr · decay^(L + 1 − i)``; heads get lr.
Frozen BatchNorm layers (no trainable parameter) stay in eval mode when the mode is not ``full``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ltbench.errors import LtbenchError
from ltbench.models.backbone import Backbone

FINETUNE_MODES = ("full", "linear", "partial", "lora", "adaptformer", "vpt", "bitfit")
_BLOCK_MODES = ("adaptformer", "vpt")  # need transformer blocks
_SCALE = "_ltbench_lr_scales"  # a module's {local parameter name: lr scale}; deep copies keep it


@dataclass(frozen=True)
class FinetuneSpec:
    """A fine-tuning mode and its settings (TrainConfig ``finetune``, ``finetune_blocks``, ...)."""

    mode: str = "full"
    blocks: int = 1  # partial: the last k blocks train
    rank: int = 8  # lora: r (alpha = r)
    adapter_dim: int = 64  # adaptformer: bottleneck width
    prompts: int = 10  # vpt: prompt tokens per block
    layer_decay: float = 1.0  # 1: none
    grad_checkpointing: bool = False

    @classmethod
    def of(cls, config) -> "FinetuneSpec":
        """The spec of a TrainConfig (or anything with its fields)."""
        return cls(config.finetune, config.finetune_blocks, config.finetune_rank, config.finetune_dim,
                   config.finetune_prompts, config.layer_decay, config.grad_checkpointing)


# ------------------------------------------------------------------------------------- modules
class AdaptFormer(nn.Module):
    """The AdaptFormer bottleneck: ``s · up(relu(down(LN?(x))))`` (Chen et al., NeurIPS 2022).

    Defaults as ShoufaChen/AdaptFormer's ``Adapter`` (``ffn_adapter_scalar=0.1``, ``layernorm_option
    none``, LoRA-style init: down Kaiming-uniform(a=√5), up and biases zero, so a new adapter adds
    nothing). ``scale=None``: a learned scalar initialised to 1 and ``layernorm=True``, as LIFT's
    ``AdaptFormer`` (shijxcs/LIFT); the LIFT method builds it that way.
    """

    def __init__(self, dim: int, bottleneck: int = 64, scale: float | None = 0.1, layernorm: bool = False,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(dim) if layernorm else nn.Identity()
        self.down_proj = nn.Linear(dim, bottleneck)
        self.up_proj = nn.Linear(bottleneck, dim)
        self.dropout = dropout
        if scale is None:
            self.scale = nn.Parameter(torch.ones(1))
        else:
            self.register_buffer("scale", torch.tensor(float(scale)), persistent=False)
        nn.init.kaiming_uniform_(self.down_proj.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down_proj.bias)
        nn.init.zeros_(self.up_proj.weight)
        nn.init.zeros_(self.up_proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.down_proj(self.ln(x)))
        h = nn.functional.dropout(h, self.dropout, self.training)
        return self.up_proj(h) * self.scale


class AdaptFormerBlock(nn.Module):
    """A transformer block with an adapter in parallel to its MLP: ``block(x) + adapter(x_attn)``.

    ``x_attn`` — the residual stream after the attention, the input of the block's second norm
    (timm ``norm2``, open_clip ``ln_2``) — is read by a forward pre-hook on that norm, so the block's
    own forward (layer scale, drop path, checkpointing) runs unchanged and ``block(x) = x_attn +
    mlp_branch``: the sum is AdaptFormer's parallel form exactly.
    """

    def __init__(self, block: nn.Module, adapter: nn.Module) -> None:
        super().__init__()
        self.block = block
        self.adapter = adapter
        tap = getattr(block, "norm2", None) or getattr(block, "ln_2", None)
        if tap is None:
            raise LtbenchError(f"finetune adaptformer: a {type(block).__name__} has no norm2/ln_2 before its MLP")
        self._x_attn: Tensor | None = None
        tap.register_forward_pre_hook(self._keep_input)

    def _keep_input(self, module: nn.Module, args: tuple) -> None:
        self._x_attn = args[0]

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        out = self.block(x, *args, **kwargs)
        x_attn, self._x_attn = self._x_attn, None
        return out + self.adapter(x_attn)


class PromptedBlock(nn.Module):
    """Deep VPT: the block sees ``[prefix tokens, its own prompts, the rest]``; the prompt outputs are dropped.

    ``prefix``: class/register tokens in front; ``batch_first=False``: sequences are N×B×D (old open_clip).
    """

    def __init__(self, block: nn.Module, prompts: int, dim: int, prefix: int, patch_pixels: int,
                 batch_first: bool = True) -> None:
        super().__init__()
        self.block = block
        self.prefix, self.batch_first = prefix, batch_first
        bound = math.sqrt(6.0 / float(3 * patch_pixels + dim))  # KMnP/vpt: xavier-uniform over patch and dim
        self.prompt = nn.Parameter(torch.empty(prompts, dim).uniform_(-bound, bound))

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        if not self.batch_first:
            x = x.transpose(0, 1)
        p = self.prompt.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
        y = torch.cat([x[:, :self.prefix], p, x[:, self.prefix:]], dim=1)
        if not self.batch_first:
            y = y.transpose(0, 1)
        y = self.block(y, *args, **kwargs)
        if not self.batch_first:
            y = y.transpose(0, 1)
        n = self.prompt.shape[0]
        y = torch.cat([y[:, :self.prefix], y[:, self.prefix + n:]], dim=1)
        return y if self.batch_first else y.transpose(0, 1)


# ------------------------------------------------------------------------------------ applying
def _replace_blocks(backbone: Backbone, wrap) -> None:
    """Replace each of ``backbone.blocks`` in its parent container by ``wrap(i, block)``."""
    targets = {id(b): i for i, b in enumerate(backbone.blocks)}
    for module in list(backbone.modules()):
        for name, child in list(module.named_children()):
            if id(child) in targets:
                module._modules[name] = wrap(targets[id(child)], child)


def _patch_pixels(backbone: Backbone) -> int:
    body = backbone.body
    size = getattr(getattr(body, "patch_embed", None), "patch_size", None) or getattr(body, "patch_size", (16, 16))
    size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
    return int(size[0] * size[1])


def _width(backbone: Backbone) -> int:
    body = backbone.body
    width = getattr(body, "embed_dim", None) or getattr(getattr(body, "transformer", None), "width", None)
    if width is None:
        raise LtbenchError(f"finetune: cannot read the token width of {backbone.arch}")
    return int(width)


def add_lora(backbone: Backbone, rank: int) -> None:
    """peft's LoRA layers on every ``nn.Linear`` inside the blocks (alpha = rank, no dropout, biases frozen)."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise LtbenchError("finetune lora needs peft: pip install 'ltbench[peft]'") from None
    block_ids = {id(b) for b in backbone.blocks}
    if not block_ids:
        raise LtbenchError(f"finetune lora: backbone {backbone.arch!r} exposes no blocks; use a transformer")
    inside = set()
    for module in backbone.body.modules():
        if id(module) in block_ids:
            # nn.MultiheadAttention (open_clip) reads its projections' weights directly, so LoRA on its
            # out_proj alone would never run: peft's MultiheadAttention layer adapts in_proj and out_proj.
            packed = {id(m.out_proj) for m in module.modules() if isinstance(m, nn.MultiheadAttention)}
            inside |= {id(m) for m in module.modules()
                       if isinstance(m, nn.MultiheadAttention) or isinstance(m, nn.Linear) and id(m) not in packed}
    names = [name for name, m in backbone.body.named_modules() if id(m) in inside]
    if not names:
        raise LtbenchError(f"finetune lora: the blocks of {backbone.arch!r} have no Linear layer; use a transformer")
    config = LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, bias="none", target_modules=names)
    inject_adapter_in_model(config, backbone.body)


def prepare_backbone(backbone: Backbone, spec: FinetuneSpec) -> Backbone:
    """Insert the mode's modules into ``backbone`` and set which of its parameters train (in place)."""
    mode = spec.mode
    if mode not in FINETUNE_MODES:
        raise LtbenchError(f"finetune {mode!r}: choose one of {', '.join(FINETUNE_MODES)}")
    if mode in _BLOCK_MODES and not backbone.transformer:
        raise LtbenchError(f"finetune {mode}: backbone {backbone.arch!r} has no transformer blocks "
                           "(use a timm ViT or an open_clip model, or finetune full/linear/partial/bitfit)")
    if spec.grad_checkpointing:
        backbone.set_grad_checkpointing(True)
    own = {name for name, _ in backbone.named_parameters()}  # before any inserted module
    if mode == "lora":
        add_lora(backbone, spec.rank)
    elif mode == "adaptformer":
        width = _width(backbone)
        # ShoufaChen/AdaptFormer builds its Adapter with dropout=0.1 (models/vit_video.py, vit_image.py)
        _replace_blocks(backbone, lambda i, b: AdaptFormerBlock(b, AdaptFormer(width, spec.adapter_dim, dropout=0.1)))
    elif mode == "vpt":
        width, pixels = _width(backbone), _patch_pixels(backbone)
        prefix = int(getattr(backbone, "num_prefix_tokens", 1))
        batch_first = getattr(getattr(backbone.body, "transformer", None), "batch_first", True)
        _replace_blocks(backbone, lambda i, b: PromptedBlock(b, spec.prompts, width, prefix, pixels, batch_first))
    ids = backbone.layer_ids()
    last = max(ids.values(), default=0)
    for name, param in backbone.named_parameters():
        original = _original_name(name) in own
        if mode == "full":
            trains = True
        elif mode == "linear":
            trains = False
        elif mode == "partial":
            if spec.blocks > last:
                raise LtbenchError(f"finetune_blocks {spec.blocks}: backbone {backbone.arch!r} has {last} blocks")
            trains = ids[name] > last - spec.blocks
        elif mode == "bitfit":
            trains = name.endswith("bias")
        else:  # lora, adaptformer, vpt: only the inserted modules
            trains = not original
        param.requires_grad_(trains)
    if spec.layer_decay != 1.0:
        _tag_layer_scales(backbone, ids, last, spec.layer_decay)
    return backbone


def _original_name(name: str) -> str:
    """A parameter's name before wrapping (``.block.`` of AdaptFormer/VPT wrappers, peft's ``base_layer``)."""
    return name.replace(".block.", ".").replace(".base_layer.", ".")


def _tag_layer_scales(backbone: Backbone, ids: dict[str, int], last: int, decay: float) -> None:
    """Each module remembers the lr scale of its own parameters (copies a method makes keep it)."""
    for module_name, module in backbone.named_modules():
        scales = {}
        for local, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{local}" if module_name else local
            scales[local] = decay ** (last + 1 - ids[full])
        if scales:
            setattr(module, _SCALE, scales)


def optimizer_params(model: nn.Module, params: list[nn.Parameter]) -> list[nn.Parameter] | list[dict]:
    """The stage optimiser's parameters: unchanged, or with layer decay one group per lr scale
    (``lr_scale``: the trainer sets ``lr · lr_scale`` on each group). Parameters of modules without
    a scale (the method's heads) get 1."""
    scale_of: dict[int, float] = {}
    for module in model.modules():
        for local, param in module.named_parameters(recurse=False):
            if local in getattr(module, _SCALE, {}):
                scale_of[id(param)] = getattr(module, _SCALE)[local]
    if not scale_of:
        return params
    groups: dict[float, list] = {}
    for param in params:
        groups.setdefault(scale_of.get(id(param), 1.0), []).append(param)
    return [{"params": ps, "lr_scale": scale} for scale, ps in sorted(groups.items())]


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """``{"trainable": ..., "total": ...}`` over the model's distinct parameters (before stages narrow it)."""
    seen: dict[int, nn.Parameter] = {id(p): p for p in model.parameters()}
    return {"trainable": sum(p.numel() for p in seen.values() if p.requires_grad),
            "total": sum(p.numel() for p in seen.values())}


def freeze_norm_statistics(model: nn.Module, spec: FinetuneSpec) -> None:
    """Frozen BatchNorm layers in eval mode (their running statistics stay the pretrained ones); not for ``full``."""
    if spec.mode == "full":
        return
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
                p.requires_grad for p in module.parameters()):
            module.eval()
