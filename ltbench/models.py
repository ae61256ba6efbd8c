"""Backbones (torchvision ResNet-18/34/50, a small CPU-sized CNN) and the heads methods put on them.

Pretrained weights come from torchvision's ImageNet weights ("imagenet"), a local file, or an
http(s) URL; offline, a download fails with one line telling the user how to supply a file.
"""
from __future__ import annotations

import urllib.error
from pathlib import Path

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltbench.errors import LtbenchError

if TYPE_CHECKING:
    import torchvision

# torchvision is imported only when a ResNet is built: it costs seconds at every CLI start.
# ImageNet weights: IMAGENET1K_V1, what `pretrained=True` gives in the reference codebases (ECL).
_RESNETS = {
    "resnet18": ("resnet18", "ResNet18_Weights"),
    "resnet34": ("resnet34", "ResNet34_Weights"),
    "resnet50": ("resnet50", "ResNet50_Weights"),
}
BACKBONES = (*_RESNETS, "small-cnn")


class Backbone(nn.Module):
    """A feature extractor: images N×3×H×W -> features N×``out_dim``."""

    def __init__(self, body: nn.Module, out_dim: int, name: str) -> None:
        super().__init__()
        self.body = body
        self.out_dim = out_dim
        self.arch = name

    def forward(self, images: Tensor) -> Tensor:
        return self.body(images)

    def split_last_stage(self, blocks: int | None = None) -> tuple[nn.Module, nn.Module]:
        """``(trunk, tail)`` with ``tail(trunk(x)) == self(x)``, split before the last stage.

        The last stage is ``layer4`` of a torchvision ResNet and the last conv block of
        ``small-cnn``; the tail ends with the global average pooling and the flatten, so it
        returns the N×``out_dim`` features. ``blocks=k`` puts only the last k residual blocks of
        that stage in the tail and the others in the trunk (BBN's official code duplicates the
        last *block*); None means the whole stage.

        Both modules hold this backbone's own layers (shared references, no copy): their
        parameters are the backbone's, split without overlap. A caller that needs a second
        tail (BBN's two branches) deep-copies it.
        """
        if self.arch in _RESNETS:
            net = self.body  # torchvision ResNet, fc = Identity: conv1 .. layer4, avgpool, flatten
            stem = [net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3]
            stage = list(net.layer4)
            pool = [net.avgpool, nn.Flatten(1)]
        elif self.arch == "small-cnn":
            layers = list(self.body)  # _small_cnn: 4 × (conv, bn, relu), pool, flatten
            stem, stage, pool = layers[:-5], [nn.Sequential(*layers[-5:-2])], layers[-2:]
        else:
            raise LtbenchError(f"backbone {self.arch!r}: split_last_stage knows resnet18/34/50 and small-cnn")
        k = len(stage) if blocks is None else blocks
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(stage):
            raise ValueError(f"split_last_stage: blocks must be None or 1..{len(stage)} for {self.arch}, got {blocks}")
        return nn.Sequential(*stem, *stage[:len(stage) - k]), nn.Sequential(*stage[len(stage) - k:], *pool)


class Classifier(nn.Module):
    """Backbone followed by a classification head; ``forward`` returns logits."""

    def __init__(self, backbone: Backbone, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.backbone(images))


class NormedLinear(nn.Module):
    """Cosine classifier: normalised features × normalised weights, no bias (LDAM, BCL).

    Initialised as in kaidic/LDAM-DRW: uniform(-1, 1), then renormalised columns.
    """

    def __init__(self, in_dim: int, num_classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_dim, num_classes))
        self.weight.data.uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)

    def forward(self, features: Tensor) -> Tensor:
        return F.normalize(features, dim=1) @ F.normalize(self.weight, dim=0)


class ProjectionHead(nn.Module):
    """Linear(in, dim) -> BN -> ReLU -> Linear(dim, dim), L2-normalised output (ECL, SCL, BCL)."""

    def __init__(self, in_dim: int, dim: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, dim), nn.BatchNorm1d(dim), nn.ReLU(inplace=True), nn.Linear(dim, dim)
        )

    def forward(self, features: Tensor) -> Tensor:
        return F.normalize(self.net(features), dim=1)


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

    if backbone.arch in _RESNETS:
        from torchvision.models.resnet import BasicBlock, Bottleneck

        for block in list(backbone.body.modules()):  # a list: the loop replaces submodules
            if isinstance(block, BasicBlock):
                block.bn2 = gate(block.bn2)
            elif isinstance(block, Bottleneck):
                block.bn3 = gate(block.bn3)
    elif backbone.arch == "small-cnn":
        body = backbone.body
        for i, layer in enumerate(body):
            if isinstance(layer, nn.BatchNorm2d):
                body[i] = gate(layer)
    else:
        raise LtbenchError(f"backbone {backbone.arch!r}: spatial attention knows resnet18/34/50 and small-cnn")
    return backbone


def _small_cnn(width: int = 32) -> tuple[nn.Module, int]:
    """Four conv blocks and global pooling: trains in seconds on a CPU at 32 px."""

    def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    layers = [*block(3, width, 1), *block(width, width * 2, 2), *block(width * 2, width * 4, 2),
              *block(width * 4, width * 4, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers), width * 4


def build_backbone(name: str, pretrained: str | None = None) -> Backbone:
    """Create a backbone by name; ``pretrained`` is None, "imagenet", a file path or a URL."""
    if name == "small-cnn":
        if pretrained:
            raise LtbenchError("--pretrained: the small-cnn backbone has no pretrained weights")
        body, dim = _small_cnn()
        return Backbone(body, dim, name)
    if name not in _RESNETS:
        raise LtbenchError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}")
    import torchvision

    factory_name, weights_name = _RESNETS[name]
    factory = getattr(torchvision.models, factory_name)
    weights = getattr(torchvision.models, weights_name).IMAGENET1K_V1
    net = factory(weights=None)
    if pretrained:
        state = load_weights(pretrained, weights)
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        try:
            missing, unexpected = net.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shape mismatches: another architecture's weights
            first = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
            raise LtbenchError(f"--pretrained {pretrained}: not {name} weights ({first})") from None
        missing = [k for k in missing if not k.startswith("fc.")]
        if missing or unexpected:
            raise LtbenchError(
                f"--pretrained {pretrained}: not {name} weights "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
    dim = net.fc.in_features
    net.fc = nn.Identity()
    return Backbone(net, dim, name)


def load_weights(source: str, weights: "torchvision.models.WeightsEnum") -> dict[str, Tensor]:
    """Read a state dict from "imagenet" (torchvision's URL), an http(s) URL or a local file."""
    url = weights.url if source == "imagenet" else source
    if url.startswith(("http://", "https://")):
        try:
            state = torch.hub.load_state_dict_from_url(url, progress=True, map_location="cpu")
        except (urllib.error.URLError, OSError, RuntimeError) as exc:
            cache = Path(torch.hub.get_dir()) / "checkpoints"
            raise LtbenchError(
                f"--pretrained {source}: cannot download {url} ({exc}); download it elsewhere and "
                f"pass --pretrained /path/to/{Path(url).name}, or put it in {cache}"
            ) from None
    else:
        path = Path(source)
        if not path.is_file():
            raise LtbenchError(f"--pretrained {source}: no such file (give 'imagenet', a URL or a .pth file)")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise LtbenchError(f"--pretrained {source}: not a PyTorch state dict ({exc})") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise LtbenchError(f"--pretrained {source}: the file holds no state dict")
    return state
