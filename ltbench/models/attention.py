"""HDCSA spatial attention (Zhang et al., MedIA 2022), put into ltbench's ResNet backbones (rotation_hashing)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ltbench.errors import LtbenchError
from ltbench.models.backbone import Backbone
from ltbench.models.resnet import RESNETS


class DilatedSpatialAttention(nn.Module):
    """HDCSA, the hybrid-dilated-convolution spatial attention of Zhang et al. (MedIA 2022;
    zylbuaa/dermoscopic_img_retrieval ``network/Attention.py``, class ``HDCSA``): a B×1×H×W map.

    ``c = C // reduction_ratio``; dilated branch ``conv1×1(C→c) → BN → ReLU``, then for each
    dilation d ``conv3×3(c→c, dilation d, padding d) → BN → ReLU``, then ``conv1×1(c→1)`` (biased
    convs, no activation on the map); ``A = sigmoid(conv k×k(3→1, no bias)(cat[mean_C x, max_C x,
    map]))``. Convs are drawn ``normal(0, sqrt(2 / (k·k·C_out)))`` as the official ``ResNet.__init__``
    does (biases keep PyTorch's default), BN weight 1, bias 0.
    """

    def __init__(self, channels: int, reduction_ratio: int = 16, dilations: tuple[int, ...] = (1, 2, 5),
                 kernel_size: int = 7) -> None:
        super().__init__()
        reduced = channels // reduction_ratio
        if reduced < 1:
            raise ValueError(f"spatial attention: {channels} channels // reduction_ratio {reduction_ratio} is 0")
        if kernel_size % 2 != 1:
            raise ValueError(f"spatial attention: kernel_size must be odd, got {kernel_size}")
        # Submodule names as the official HDCSA (gate_s, conv1), so its weights load by name.
        self.gate_s = nn.Sequential()
        self.gate_s.add_module("gate_s_conv_reduce0", nn.Conv2d(channels, reduced, 1))
        self.gate_s.add_module("gate_s_bn_reduce0", nn.BatchNorm2d(reduced))
        self.gate_s.add_module("gate_s_relu_reduce0", nn.ReLU())
        for i, d in enumerate(dilations):
            self.gate_s.add_module(f"gate_s_conv_di_{i}", nn.Conv2d(reduced, reduced, 3, padding=d, dilation=d))
            self.gate_s.add_module(f"gate_s_bn_di_{i}", nn.BatchNorm2d(reduced))
            self.gate_s.add_module(f"gate_s_relu_di_{i}", nn.ReLU())
        self.gate_s.add_module("gate_s_conv_final", nn.Conv2d(reduced, 1, 1))
        self.conv1 = nn.Conv2d(3, 1, kernel_size, padding=kernel_size // 2, bias=False)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, (2.0 / n) ** 0.5)

    def forward(self, x: Tensor) -> Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True), self.gate_s(x)], dim=1)
        return torch.sigmoid(self.conv1(pooled))


class AttendedNorm(nn.Module):
    """A normalisation layer followed by a spatial attention gate: ``y = norm(x); y · A(y)``."""

    def __init__(self, norm: nn.Module, attention: nn.Module) -> None:
        super().__init__()
        self.norm = norm
        self.attention = attention

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm(x)
        return self.attention(y) * y


def add_spatial_attention(backbone: Backbone, reduction_ratio: int = 16, dilations: tuple[int, ...] = (1, 2, 5),
                          kernel_size: int = 7) -> Backbone:
    """Put HDCSA (:class:`DilatedSpatialAttention`) into ``backbone`` in place and return it.

    Each gated BatchNorm ``bn`` becomes ``AttendedNorm(bn, attention)`` (its state-dict keys move
    from ``bn.*`` to ``bn.norm.*``; the official ``layerX.Y.spa.*`` are ``layerX.Y.bn2.attention.*``
    here); the backbone's own layers and their weights are untouched.
    * torchvision BasicBlock (ResNet-18/34): after ``bn2``, before the residual addition — as the
      official ``BasicBlock_HDCSA``;
    * torchvision Bottleneck (ResNet-50): after ``bn3``, before the addition — a departure (the
      official Bottleneck has no attention);
    * ``small-cnn``: after the BN of each conv–BN–ReLU block, before its ReLU — ltbench's choice.
    Draws random numbers (the new convs' initialisation) from torch's global generator.
    """
    def gate(norm: nn.BatchNorm2d) -> AttendedNorm:
        return AttendedNorm(norm, DilatedSpatialAttention(norm.num_features, reduction_ratio, tuple(dilations),
                                                          kernel_size))

    if backbone.arch in RESNETS:
        from torchvision.models.resnet import BasicBlock, Bottleneck

        for block in list(backbone.body.modules()):  # a list: the loop replaces submodules
            if isinstance(block, BasicBlock):
                block.bn2 = gate(block.bn2)
            elif isinstance(block, Bottleneck):
                block.bn3 = gate(block.bn3)
    elif backbone.arch.startswith("small-cnn"):
        body = backbone.body
        for i, layer in enumerate(body):
            if isinstance(layer, nn.BatchNorm2d):
                body[i] = gate(layer)
    else:
        raise LtbenchError(f"backbone {backbone.arch!r}: HDCSA spatial attention (rotation_hashing) is ResNet-specific "
                           "(it gates the BatchNorms of residual blocks); use resnet18/34/50 or small-cnn")
    return backbone
