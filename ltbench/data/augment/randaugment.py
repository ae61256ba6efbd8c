"""RandAugment on whole batches, with per-sample operations and magnitudes (BCL's classifier view).

BCL (Zhu et al., "Balanced Contrastive Learning for Long-Tailed Visual Recognition", CVPR 2022;
FlamieZhu/Balanced-Contrastive-Learning, ``main.py`` and its ``randaugment.py``, the 2019 timm
``auto_augment`` as modified by PaCo) composes its classifier view per image, on PIL images::

    RandomResizedCrop(224, scale=(0.08, 1)) → RandomHorizontalFlip → ColorJitter(0.4, 0.4, 0.4, 0)
    → rand_augment_transform("rand-n2-m10-mstd0.5", translate_const=100, img_mean=(124, 116, 104))
    → ToTensor → Normalize(ImageNet)

That RandAugment, for each image: draws 2 ops uniformly *with replacement* from the 15 of
:data:`BCL_OPS`; each is applied with probability 0.5, at a magnitude m ~ N(10, 0.5) clipped to
[0, 10], drawn anew for every op of every image; ops with a signed level flip its sign with
probability 0.5. Levels (m/10 = fraction of the maximum; s = ±1):

=============== ===================================== =============================================
op              level                                 action (torchvision v2 functional equivalent)
=============== ===================================== =============================================
AutoContrast    —                                     per-channel min–max stretch (``autocontrast``)
Equalize        —                                     per-channel histogram equalisation (``equalize``)
Invert          —                                     1 − x (``invert``)
Rotate          s·30·m/10 degrees (30: see below)     about the centre (``rotate``)
PosterizeTpu    int(4·m/10) bits                      ``posterize``
Solarize        threshold int(256·m/10)/255           invert pixels ≥ threshold (``solarize``)
SolarizeAdd     add int(110·m/10)/255                 pixels < 128/255 get + add, clipped (no tv op)
Color           factor 1.8·m/10 + 0.1                 ``adjust_saturation``
Contrast        factor 1.8·m/10 + 0.1                 ``adjust_contrast``
Brightness      factor 1.8·m/10 + 0.1                 ``adjust_brightness``
Sharpness       factor 1.8·m/10 + 0.1                 ``adjust_sharpness``
ShearX / ShearY s·0.3·m/10                            x ← x + f·y about the top-left corner (``affine``
                                                      with shear atan(f), centre (0, 0), as tv's RandAugment)
TranslateXRel/Y s·0.45·m/10 of the width / height     content moves left / up by that many pixels
=============== ===================================== =============================================

Geometric ops fill the uncovered area with ``img_mean`` = round(255 · ImageNet mean).

Here every random decision is drawn per sample from a ``torch.Generator``, on whole float
N×3×H×W batches in [0, 1], on the CPU or CUDA: samples that share an op are gathered once and
processed together; the five geometric ops of one layer share a single ``grid_sample`` with one
affine matrix per sample. torchvision's batched ``RandAugment`` instead draws one op and one
magnitude for the whole batch.

Where ltbench deviates from the official op implementations (PIL on uint8), and why:

* ops run on float images (no uint8 rounding after each); Equalize bins the floats into 256
  levels as torchvision does; Posterize is torchvision's float kernel (levels k/2^b; PIL's uint8
  bit mask gives k·2^(8−b)/255, at most 1/60 apart); Contrast blends with the float grey mean
  (PIL rounds the mean to an integer);
* geometric ops interpolate bilinearly (the official code picks bilinear or bicubic at random;
  torchvision's tensor ``affine`` has no bicubic) and blend the fill in by the bilinear coverage
  of the source, so only the one-pixel rim next to the fill differs from torchvision's tensor path
  (which multiplies by an interpolated mask) and from PIL (which replicates the edge).

The ``randaugment`` preset (:func:`randaugment_augment`) follows ltbench's shared protocol
(docs/protocol.md) for the rest of the view: the ``standard`` classifier view (square resize,
h-flip, colour jitter 0.4/0.4/0.4/0.1 with p 0.8) replaces BCL's RandomResizedCrop(0.08–1) +
ColorJitter(0.4, 0.4, 0.4, 0) with p 1, so that every method's classifier view starts from the
same images; RandAugment follows, then the ImageNet normalisation. On a dataset whose labels survive
less than that view's flips and BCL's ±30° (``ltbench.data.geometry``: digits-lt allows no flip and
±30°), :meth:`RandAugmentView.restricted` drops the flip and lowers Rotate's 30° to the dataset's
limit; shears and translations are kept.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ltbench.data.augment.batch import IMAGENET_MEAN, IMAGENET_STD, BatchAugment, normalise
from ltbench.data.augment.colour import ColorJitter, adjust_brightness, adjust_contrast, adjust_saturation
from ltbench.data.augment.geometry import affine_grid
from ltbench.data.augment.presets import register_augmentation
from ltbench.data.geometry import ViewGeometry

_MAX_LEVEL = 10.0
#: The official op list (``_RAND_TRANSFORMS`` of BCL's randaugment.py), in its order.
BCL_OPS: tuple[str, ...] = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeTpu", "Solarize", "SolarizeAdd",
    "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel",
    "TranslateYRel",
)
#: ``img_mean`` of BCL's ``ra_params``: round(255 · ImageNet mean), as a [0, 1] colour.
IMAGENET_FILL: tuple[float, float, float] = tuple(min(255, round(255 * m)) / 255 for m in IMAGENET_MEAN)
#: Rotate's level at magnitude 10, in degrees (``_rotate_level_to_arg``: ``(level / 10) · 30``).
MAX_ROTATE = 30.0
_GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
# PIL's SolarizeAdd threshold (uint8 128) on [0, 1] images.
_SOLARIZE_ADD_THRESHOLD = 128 / 255


# ----------------------------------------------------------------------------------------------
# batched ops: images float N×3×H×W in [0, 1]; per-sample arguments are tensors [N]
# ----------------------------------------------------------------------------------------------

def _col(values: Tensor, images: Tensor) -> Tensor:
    return values.to(device=images.device, dtype=images.dtype).view(-1, 1, 1, 1)


def invert(images: Tensor) -> Tensor:
    """1 − x (torchvision's ``invert`` for float images)."""
    return 1.0 - images


def auto_contrast(images: Tensor) -> Tensor:
    """Stretch each channel of each image to [0, 1]; constant channels are kept (``autocontrast``)."""
    low = images.amin(dim=(-2, -1), keepdim=True)
    high = images.amax(dim=(-2, -1), keepdim=True)
    flat = high == low
    scale = torch.where(flat, torch.ones_like(high), high - low)
    low = torch.where(flat, torch.zeros_like(low), low)
    return ((images - low) / scale).clamp_(0.0, 1.0)


def equalize(images: Tensor) -> Tensor:
    """Per-channel histogram equalisation with PIL's lookup table, on 256 bins (``equalize``).

    Floats are binned as torchvision's ``to_dtype(uint8, scale=True)`` does (⌊255.999·x⌋); the
    result is ``lut[bin] / 255``. A channel whose non-maximal pixels are fewer than 255 is kept.
    """
    n, c, h, w = images.shape
    bins = images.mul(255.999).to(torch.long).clamp_(0, 255).view(n * c, h * w)
    hist = torch.zeros(n * c, 256, dtype=torch.long, device=images.device)
    hist.scatter_add_(1, bins, torch.ones_like(bins))
    cum = hist.cumsum(dim=1)
    # Pixels not of the largest value present: the first index where the cumulative count peaks.
    last = cum.argmax(dim=1, keepdim=True)
    step = (h * w - hist.gather(1, last)).div(255, rounding_mode="floor")
    lut = (cum[:, :-1] + step // 2).div(step.clamp(min=1), rounding_mode="floor").clamp_(0, 255)
    lut = torch.cat([torch.zeros_like(lut[:, :1]), lut], dim=1)
    equalised = lut.gather(1, bins).to(images.dtype).div_(255.0)
    keep = (step == 0).expand_as(equalised)
    original = torch.where(keep, bins.to(images.dtype).div(255.0), equalised)
    # A kept channel returns the binned input, as torchvision does (it works on the uint8 copy).
    return original.view(n, c, h, w)


def posterize(images: Tensor, bits: Tensor) -> Tensor:
    """Keep ``bits`` bits per sample: ⌊x·2^b⌋/2^b clamped to [0, 1 − 2^−b] (tv's float kernel)."""
    levels = _col(torch.pow(2.0, bits.to(torch.float64)), images)
    return images.mul(levels).floor_().clamp_(min=0.0).minimum(levels - 1).div_(levels)


def solarize(images: Tensor, threshold: Tensor) -> Tensor:
    """Invert the pixels ≥ ``threshold`` (per sample, in [0, 1]; above 1 nothing is inverted)."""
    return torch.where(images >= _col(threshold, images), 1.0 - images, images)


def solarize_add(images: Tensor, add: Tensor, threshold: float = _SOLARIZE_ADD_THRESHOLD) -> Tensor:
    """Add ``add`` (per sample) to the pixels below ``threshold``, clipped at 1 (timm's LUT)."""
    return torch.where(images < threshold, (images + _col(add, images)).clamp_(max=1.0), images)


def adjust_sharpness(images: Tensor, factor: Tensor) -> Tensor:
    """Blend with PIL's smoothing kernel by ``factor`` (per sample); the border is kept (tv's op)."""
    if images.shape[-1] <= 2 or images.shape[-2] <= 2:
        return images.clone()
    kernel = torch.ones(3, 3, dtype=images.dtype, device=images.device)
    kernel[1, 1] = 5.0
    kernel = (kernel / 13.0).expand(3, 1, 3, 3)
    blurred = F.conv2d(images, kernel, groups=3)
    out = images.clone()
    inner = out[..., 1:-1, 1:-1]
    inner.copy_(torch.lerp(blurred, inner, _col(factor, images)))
    return out.clamp_(0.0, 1.0)


def _enhance(fn: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    return lambda images, factor: fn(images, factor.to(device=images.device, dtype=images.dtype))


OpFn = Callable[..., Tensor]
#: Colour ops: name -> function(images, per-sample argument) (argument-free ops take none).
COLOUR_OPS: dict[str, OpFn] = {
    "AutoContrast": auto_contrast,
    "Equalize": equalize,
    "Invert": invert,
    "PosterizeTpu": posterize,
    "Solarize": solarize,
    "SolarizeAdd": solarize_add,
    "Color": _enhance(adjust_saturation),
    "Contrast": _enhance(adjust_contrast),
    "Brightness": _enhance(adjust_brightness),
    "Sharpness": adjust_sharpness,
}


def inverse_affine(op: str, level: Tensor, height: int, width: int) -> Tensor:
    """Per-sample inverse matrices [n, 2, 3] (float64) of a geometric op, in centred pixel units.

    They map an output pixel (x, y), measured from the image centre with y pointing down, to the
    source position, as torchvision's ``_get_inverse_affine_matrix`` does: Rotate by ``level``
    degrees counter-clockwise about the centre; ShearX x ← x + f·y (ShearY y ← y + f·x) about the
    top-left corner; TranslateXRel / YRel sample the source at x + level·W (y + level·H).
    """
    level = level.to(torch.float64)
    n = level.shape[0]
    m = torch.zeros(n, 2, 3, dtype=torch.float64)
    m[:, 0, 0] = m[:, 1, 1] = 1.0
    if op == "Rotate":
        theta = torch.deg2rad(level)
        m[:, 0, 0], m[:, 0, 1] = theta.cos(), -theta.sin()
        m[:, 1, 0], m[:, 1, 1] = theta.sin(), theta.cos()
    elif op == "ShearX":  # corner coords: x_src = x + f·y; centred: + f·H/2
        m[:, 0, 1], m[:, 0, 2] = level, level * height / 2
    elif op == "ShearY":
        m[:, 1, 0], m[:, 1, 2] = level, level * width / 2
    elif op == "TranslateXRel":
        m[:, 0, 2] = level * width
    elif op == "TranslateYRel":
        m[:, 1, 2] = level * height
    else:
        raise ValueError(f"not a geometric RandAugment op: {op!r}")
    return m


def warp(images: Tensor, inverse: Tensor, fill: tuple[float, float, float] = IMAGENET_FILL) -> Tensor:
    """Resample each image with its inverse matrix [n, 2, 3] (centred pixel units), bilinearly.

    The source is extended by ``fill``: sampling ``x − fill`` with zero padding and adding
    ``fill`` back weighs the fill by the part of the bilinear footprint that falls outside.
    """
    n, _, height, width = images.shape
    # Centred pixels → grid_sample's normalised coordinates (align_corners=False) on both sides.
    to_norm = torch.tensor([2.0 / width, 2.0 / height], dtype=torch.float64).view(1, 2, 1)
    from_norm = torch.tensor([width / 2.0, height / 2.0], dtype=torch.float64).view(1, 1, 2)
    theta = inverse.clone()
    theta[:, :, :2] = inverse[:, :, :2] * from_norm * to_norm
    theta[:, :, 2] = inverse[:, :, 2] * to_norm[:, :, 0]
    theta = theta.to(device=images.device, dtype=images.dtype)
    grid = affine_grid(theta, (height, width))
    fill_t = torch.tensor(fill, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    out = F.grid_sample(images - fill_t, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.add_(fill_t)


# ----------------------------------------------------------------------------------------------
# levels: magnitude m in [0, 10] and sign s = ±1 -> the op's argument (official level functions)
# ----------------------------------------------------------------------------------------------

def op_argument(op: str, magnitude: Tensor, sign: Tensor, max_rotate: float = MAX_ROTATE) -> Tensor | None:
    """The argument BCL's ``LEVEL_TO_ARG`` gives ``op`` at per-sample magnitudes (float64 [n]).

    ``max_rotate``: Rotate's angle at magnitude 10 (BCL: 30°; lower for a dataset whose labels
    survive less, ``ltbench.data.geometry``).
    """
    frac = magnitude.to(torch.float64) / _MAX_LEVEL
    sign = sign.to(torch.float64)
    if op in ("AutoContrast", "Equalize", "Invert"):
        return None
    if op == "Rotate":
        return sign * frac * max_rotate
    if op == "PosterizeTpu":
        return (frac * 4).floor()
    if op == "Solarize":
        return (frac * 256).floor() / 255.0
    if op == "SolarizeAdd":
        return (frac * 110).floor() / 255.0
    if op in ("Color", "Contrast", "Brightness", "Sharpness"):
        return frac * 1.8 + 0.1
    if op in ("ShearX", "ShearY"):
        return sign * frac * 0.3
    if op in ("TranslateXRel", "TranslateYRel"):
        return sign * frac * 0.45
    raise ValueError(f"unknown RandAugment op {op!r}")


def apply_op(op: str, images: Tensor, argument: Tensor | None,
             fill: tuple[float, float, float] = IMAGENET_FILL) -> Tensor:
    """One op on every image of ``images``, with per-sample ``argument`` (see :func:`op_argument`)."""
    if op in _GEOMETRIC:
        return warp(images, inverse_affine(op, argument, *images.shape[-2:]), fill)
    fn = COLOUR_OPS[op]
    return fn(images) if argument is None else fn(images, argument)


# ----------------------------------------------------------------------------------------------
# the random policy
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RandAugmentDraw:
    """Per-sample decisions for ``num_ops`` layers (all CPU tensors of shape [num_ops, n])."""

    op: Tensor         # index into the op list
    applied: Tensor    # bool: the op's probability test passed
    magnitude: Tensor  # float64 in [0, 10]
    sign: Tensor       # float64, ±1


class RandAugment(torch.nn.Module):
    """timm-style RandAugment on float N×3×H×W batches in [0, 1], decided per sample.

    Defaults are BCL's ``rand-n2-m10-mstd0.5`` with op probability 0.5 and its 15 ops;
    ``max_rotate``: Rotate's angle at magnitude 10 (see :func:`op_argument`).
    """

    def __init__(self, num_ops: int = 2, magnitude: float = 10.0, magnitude_std: float = 0.5,
                 prob: float = 0.5, ops: tuple[str, ...] = BCL_OPS,
                 fill: tuple[float, float, float] = IMAGENET_FILL, max_rotate: float = MAX_ROTATE) -> None:
        super().__init__()
        unknown = [op for op in ops if op not in COLOUR_OPS and op not in _GEOMETRIC]
        if unknown or not ops:
            raise ValueError(f"RandAugment: unknown ops {unknown}" if unknown else "RandAugment: no ops")
        if num_ops < 0 or not 0.0 <= prob <= 1.0 or magnitude_std < 0:
            raise ValueError("RandAugment: need num_ops >= 0, 0 <= prob <= 1, magnitude_std >= 0")
        self.num_ops, self.magnitude, self.magnitude_std = num_ops, magnitude, magnitude_std
        self.prob, self.ops, self.fill = prob, tuple(ops), tuple(fill)
        if not 0.0 <= max_rotate <= 180.0:
            raise ValueError(f"RandAugment: max_rotate {max_rotate} not in [0, 180] degrees")
        self.max_rotate = float(max_rotate)

    def extra_repr(self) -> str:
        return (f"num_ops={self.num_ops}, magnitude={self.magnitude}, "
                f"magnitude_std={self.magnitude_std}, prob={self.prob}, ops={len(self.ops)}")

    def draw(self, n: int, generator: torch.Generator | None = None) -> RandAugmentDraw:
        """The per-sample decisions, drawn in a fixed order (so a seed fixes them all)."""
        device = generator.device if generator is not None else None
        shape = (self.num_ops, n)

        def uniform() -> Tensor:
            return torch.rand(shape, dtype=torch.float64, generator=generator, device=device).cpu()

        op = (uniform() * len(self.ops)).floor().long().clamp_(max=len(self.ops) - 1)
        applied = uniform() < self.prob
        noise = torch.randn(shape, dtype=torch.float64, generator=generator, device=device).cpu()
        magnitude = (self.magnitude + self.magnitude_std * noise).clamp_(0.0, _MAX_LEVEL)
        # timm's _randomly_negate: negative when random() > 0.5.
        sign = torch.where(uniform() > 0.5, -1.0, 1.0).to(torch.float64)
        return RandAugmentDraw(op, applied, magnitude, sign)

    def apply(self, images: Tensor, draw: RandAugmentDraw) -> Tensor:
        """Apply given decisions; each layer's ops touch disjoint samples, so order within a layer
        is irrelevant. Returns a new tensor. Runs in the images' dtype even under autocast."""
        with torch.autocast(device_type=images.device.type, enabled=False):
            return self._apply(images, draw)

    def _apply(self, images: Tensor, draw: RandAugmentDraw) -> Tensor:
        x = images.clone()
        for layer in range(draw.op.shape[0]):
            geometric_idx, inverses = [], []
            for k, name in enumerate(self.ops):
                chosen = ((draw.op[layer] == k) & draw.applied[layer]).nonzero().flatten()
                if chosen.numel() == 0:
                    continue
                argument = op_argument(name, draw.magnitude[layer, chosen], draw.sign[layer, chosen], self.max_rotate)
                if name in _GEOMETRIC:
                    geometric_idx.append(chosen)
                    inverses.append(inverse_affine(name, argument, *x.shape[-2:]))
                    continue
                idx = chosen.to(x.device)
                x.index_copy_(0, idx, apply_op(name, x.index_select(0, idx), argument, self.fill))
            if geometric_idx:  # one grid_sample for all geometric ops of this layer
                idx = torch.cat(geometric_idx).to(x.device)
                x.index_copy_(0, idx, warp(x.index_select(0, idx), torch.cat(inverses), self.fill))
        return x

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ValueError(f"RandAugment expects float N×3×H×W images in [0, 1], got "
                             f"{images.dtype} {tuple(images.shape)}")
        return self.apply(images, self.draw(images.shape[0], generator))


class RandAugmentView(torch.nn.Module):
    """A base view (un-normalised ``BatchAugment``), then RandAugment, then normalisation."""

    def __init__(self, base: BatchAugment, randaugment: RandAugment,
                 mean: tuple[float, ...] = IMAGENET_MEAN,
                 std: tuple[float, ...] = IMAGENET_STD) -> None:
        super().__init__()
        if any(m != 0 for m in base.mean) or any(s != 1 for s in base.std):
            raise ValueError("RandAugmentView: the base view must not normalise (mean 0, std 1)")
        self.base, self.randaugment = base, randaugment
        self.mean, self.std = mean, std
        self.size = base.size

    def forward(self, images: Tensor, generator: torch.Generator | None = None,
                sizes: Tensor | None = None) -> Tensor:
        """``augment(images, generator, sizes=None)``, the signature of every preset."""
        x = self.randaugment(self.base(images, generator, sizes=sizes), generator)
        # The same fused (x − mean)/std as BatchAugment, so RandAugment off gives its bits.
        return normalise(x, self.mean, self.std)

    def restricted(self, geometry: ViewGeometry) -> RandAugmentView:
        """The view without the flips a dataset forbids, Rotate capped at its rotation limit
        (``ltbench.data.geometry``; the same random draws). Shear and translation are kept."""
        base = self.base.restricted(geometry)
        max_rotate = min(self.randaugment.max_rotate, geometry.rotation)
        if base is self.base and max_rotate == self.randaugment.max_rotate:
            return self
        view = copy.deepcopy(self)
        view.base = base
        view.randaugment.max_rotate = max_rotate
        return view


@register_augmentation("randaugment")
def randaugment_augment(size: int) -> RandAugmentView:
    """The ``randaugment`` preset: the ``standard`` classifier view + BCL's rand-n2-m10-mstd0.5."""
    base = BatchAugment(size, hflip_p=0.5, jitter=ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8),
                        mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    return RandAugmentView(base, RandAugment())
