"""The ``Backbone`` every method builds on: images N×3×H×W -> features N×``out_dim``.

A backbone knows its depth-ordered ``blocks`` (residual or transformer blocks), which layer each of
its parameters belongs to (stem 0, block i → i + 1, what follows the blocks with the last block;
partial fine-tuning and layer-wise lr decay read it), how to split off its last stage (BBN) and,
for hub models, the input its weights expect (:class:`InputConfig`). The builders live beside it:
``resnet.py`` (torchvision ResNets, small-cnn), ``timm_models.py`` (``timm:<model>``), ``clip.py``
(``open_clip:<arch>``).
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from ltbench.errors import LtbenchError


@dataclass(frozen=True)
class InputConfig:
    """The input a backbone's weights expect: square size, per-channel mean/std (0..1 scale), resize mode.

    timm's ``resolve_data_config`` / open_clip's ``preprocess_cfg``; a benchmark that sets
    ``image_size`` or ``normalise`` overrides it (docs/protocol.md).
    """

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"  # bilinear | bicubic
    crop_pct: float = 1.0


class Backbone(nn.Module):
    """A feature extractor: images N×3×H×W -> features N×``out_dim``.

    ``input_config`` is None for ltbench's own backbones (ImageNet mean/std, bilinear, the
    benchmark's size). ``transformer`` tells whether ``blocks`` are transformer blocks.
    """

    transformer = False

    def __init__(self, body: nn.Module, out_dim: int, name: str, input_config: InputConfig | None = None) -> None:
        super().__init__()
        self.body = body
        self.out_dim = out_dim
        self.arch = name
        self.input_config = input_config

    def forward(self, images: Tensor) -> Tensor:
        return self.body(images)

    @property
    def blocks(self) -> list[nn.Module]:
        """The depth-ordered blocks (residual or transformer blocks); [] when the backbone has none."""
        return []

    def layer_ids(self) -> dict[str, int]:
        """Parameter name (as in ``named_parameters()``) → layer: 0 before the first block, i + 1 in
        block i; what follows the last block (final norm, pooling) shares its layer, as timm's
        ``group_matcher`` puts the final norm with the last block. Parameters outside every block
        count as before the first block until a block parameter has been seen (registration order)."""
        owner = {id(p): i + 1 for i, block in enumerate(self.blocks) for p in block.parameters()}
        ids, seen = {}, 0
        for name, param in self.named_parameters():
            if id(param) in owner:
                ids[name] = seen = owner[id(param)]
            else:
                ids[name] = 0 if seen == 0 else len(self.blocks)
        return ids

    def split_last_stage(self, blocks: int | None = None) -> tuple[nn.Module, nn.Module]:
        """``(trunk, tail)`` with ``tail(trunk(x)) == self(x)``, split before the last stage (BBN).

        Both modules hold this backbone's own layers (shared references, no copy). Implemented by
        each kind of backbone; see ``ResNetBackbone``, ``TimmBackbone``, ``ClipBackbone``.
        """
        raise LtbenchError(f"backbone {self.arch!r}: split_last_stage knows resnet18/34/50, small-cnn and "
                           "transformer backbones (timm:, open_clip:)")

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute activations in the backward pass (memory for time); hub transformers only."""
        raise LtbenchError(f"grad_checkpointing: backbone {self.arch!r} does not support gradient checkpointing "
                           "(timm: and open_clip: models do)")


def check_blocks(blocks: int | None, available: int, arch: str) -> int:
    """The number of last blocks a split puts in the tail (None: the whole last stage, ``available``)."""
    k = available if blocks is None else blocks
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= available:
        raise ValueError(f"split_last_stage: blocks must be None or 1..{available} for {arch}, got {blocks}")
    return k
