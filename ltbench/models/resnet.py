"""ltbench's own backbones: torchvision ResNet-18/34/50 (ImageNet weights) and a small CPU-sized CNN."""
from __future__ import annotations

from torch import Tensor, nn

from ltbench.errors import InputError, LtbenchError
from ltbench.models.backbone import Backbone, check_blocks
from ltbench.models.weights import load_weights, read_weights_file

# torchvision is imported only when a ResNet is built: it costs seconds at every CLI start.
# ImageNet weights: IMAGENET1K_V1, what `pretrained=True` gives in the reference codebases (ECL).
RESNETS = {
    "resnet18": ("resnet18", "ResNet18_Weights"),
    "resnet34": ("resnet34", "ResNet34_Weights"),
    "resnet50": ("resnet50", "ResNet50_Weights"),
}
# small-cnn at two widths: 32 (the tests' and golden values') and 16, the embedded default digits-lt's
# (a quarter of the convolution cost, so that every registered method x 3 seeds fits make bench's budget).
SMALL_CNNS = {"small-cnn": 32, "small-cnn-16": 16}
OWN_BACKBONES = (*RESNETS, *SMALL_CNNS)


class ResNetBackbone(Backbone):
    """A torchvision ResNet (``fc`` = Identity) or ``small-cnn``: blocks are the residual blocks
    (ResNet) or the four conv–BN–ReLU blocks (small-cnn)."""

    @property
    def blocks(self) -> list[nn.Module]:
        if self.arch in RESNETS:
            return [block for layer in (self.body.layer1, self.body.layer2, self.body.layer3, self.body.layer4)
                    for block in layer]
        layers = list(self.body)  # _small_cnn: 4 × (conv, bn, relu), pool, flatten
        return [nn.Sequential(*layers[i:i + 3]) for i in range(0, len(layers) - 2, 3)]

    def split_last_stage(self, blocks: int | None = None) -> tuple[nn.Module, nn.Module]:
        """Split before ``layer4`` of a torchvision ResNet or the last conv block of ``small-cnn``.

        The tail ends with the global average pooling and the flatten, so it returns the
        N×``out_dim`` features. ``blocks=k`` puts only the last k residual blocks of that stage in
        the tail and the others in the trunk (BBN's official code duplicates the last *block*);
        None means the whole stage. A caller that needs a second tail (BBN) deep-copies it.
        """
        if self.arch in RESNETS:
            net = self.body  # torchvision ResNet, fc = Identity: conv1 .. layer4, avgpool, flatten
            stem = [net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3]
            stage = list(net.layer4)
            pool = [net.avgpool, nn.Flatten(1)]
        else:
            layers = list(self.body)
            stem, stage, pool = layers[:-5], [nn.Sequential(*layers[-5:-2])], layers[-2:]
        k = check_blocks(blocks, len(stage), self.arch)
        return nn.Sequential(*stem, *stage[:len(stage) - k]), nn.Sequential(*stage[len(stage) - k:], *pool)


def _small_cnn(width: int = 32) -> tuple[nn.Module, int]:
    """Four conv blocks and global pooling: trains in seconds on a CPU at 32 px."""

    def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    layers = [*block(3, width, 1), *block(width, width * 2, 2), *block(width * 2, width * 4, 2),
              *block(width * 4, width * 4, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers), width * 4


def build_own_backbone(name: str, pretrained: str | None = None) -> Backbone:
    """small-cnn or a torchvision ResNet; ``pretrained`` is None, "imagenet", a file path or a URL."""
    if name in SMALL_CNNS:
        if pretrained:
            raise LtbenchError(f"--pretrained: the {name} backbone has no pretrained weights")
        body, dim = _small_cnn(SMALL_CNNS[name])
        return ResNetBackbone(body, dim, name)
    import torchvision

    factory_name, weights_name = RESNETS[name]
    factory = getattr(torchvision.models, factory_name)
    weights = getattr(torchvision.models, weights_name).IMAGENET1K_V1
    net = factory(weights=None)
    if pretrained:
        _load_resnet(net, load_weights(pretrained, weights), name, pretrained)
    dim = net.fc.in_features
    net.fc = nn.Identity()
    return ResNetBackbone(net, dim, name)


def _load_resnet(net: nn.Module, state: dict[str, Tensor], name: str, pretrained: str,
                 label: str | None = None) -> None:
    label = label or f"--pretrained {pretrained}"
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches: another architecture's weights
        first = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
        raise InputError(f"{label}: not {name} weights ({first})") from None
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise InputError(
            f"{label}: not {name} weights "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )


def check_resnet_weights(name: str, source: str, label: str) -> None:
    """A local weights file fits the torchvision ResNet ``name`` (names and shapes), before any data is read."""
    import torchvision

    state = read_weights_file(source, label)
    _load_resnet(getattr(torchvision.models, RESNETS[name][0])(weights=None), state, name, source, label)
