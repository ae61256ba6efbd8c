"""Whole-batch image augmentation on the compute device, with per-sample random parameters.

Training reads uint8 batches (N×3×H×W) from the pixel cache and augments them here, on whatever
device the batch lives on, with no per-item PIL work. torchvision's v2 transforms would draw one
set of random parameters for the whole batch, so the ops are written with plain tensor maths:

* geometry (random resized crop, flips, rotation, resize to S×S) is one affine grid (built by
  :func:`affine_grid`, equal to ``F.affine_grid``) + ``F.grid_sample`` per batch with one affine
  matrix per sample; resize + flips alone skip the grid (exact resize, exact flips);
* colour (brightness, contrast, saturation, hue, grayscale) is vectorised with per-sample factors;
  the samples an op is applied to are gathered once (``index_select``) and written back
  (``index_copy_``), so skipped samples cost nothing and stay bit-identical.

Random parameters are drawn from the given ``torch.Generator`` and then moved to the batch's
device, so a seed reproduces a batch exactly. Pass a CPU generator (or None: the global CPU RNG):
the per-sample decisions then live on the host and selecting samples needs no device sync.
On the CPU a uint8 batch is resized as uint8 (PyTorch's fast SIMD kernel; the same rounding as
torchvision/PIL on uint8); on CUDA it is resized in float32 — results differ by ≤ 1/255.

The presets follow the ECL code (zylbuaa/ECL, ``utils/dataset/isic.py``); see :data:`PRESETS`.
Differences from torchvision (all deliberate, for speed or precision):

* colour ops run on float32 images; torchvision-on-PIL (what ECL uses) rounds to uint8 after each;
* ColorJitter's four ops are applied in one random order per *batch* (torchvision: per image);
* rotation interpolates bilinearly and pads with zeros (black). ECL's ``RandomRotation(90)`` on
  PIL uses nearest-neighbour with fill 0; torchvision's tensor path additionally multiplies the
  edge pixels by an interpolated mask. Only the one-pixel rim along the border differs;
* the crop is sampled exactly like ``RandomResizedCrop.get_params`` (integer boxes, 10 attempts,
  central fallback) but resampled with bilinear ``grid_sample``; large sources are first
  antialias-resized (see :func:`presample_size`), so it is close to, not equal to, torchvision's
  antialiased ``resized_crop``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ltbench.errors import LtbenchError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# ITU-R 601-2 luma weights, as torchvision's rgb_to_grayscale (and PIL's "L" conversion).
_LUMA = (0.2989, 0.587, 0.114)
# torchvision's RandomResizedCrop tries this many random boxes before the central fallback.
_CROP_ATTEMPTS = 10
# grid_sample (bilinear, 4 taps) aliases when it shrinks by much more than this; larger sources are
# first resized with an antialiasing filter.
_MAX_GRID_DOWNSCALE = 1.5


# ----------------------------------------------------------------------------------------------
# colour ops: images are float N×3×H×W in [0, 1]; factors are floats or per-sample tensors [N]
# ----------------------------------------------------------------------------------------------

def _per_sample(factor: Tensor | float, images: Tensor) -> Tensor:
    """A factor as an N×1×1×1 tensor (or a 0-d one) that broadcasts over ``images``."""
    t = torch.as_tensor(factor, dtype=images.dtype, device=images.device)
    return t.view(-1, 1, 1, 1) if t.ndim == 1 else t


def _blend(a: Tensor, b: Tensor, ratio: Tensor) -> Tensor:
    """``ratio·a + (1−ratio)·b`` clamped to [0, 1], as torchvision's ``_blend`` for float images."""
    return torch.lerp(b.expand_as(a), a, ratio).clamp_(0.0, 1.0)  # one fused pass


def rgb_to_grayscale(images: Tensor) -> Tensor:
    """Luma N×1×H×W of RGB images N×3×H×W (torchvision's weights)."""
    r, g, b = images.unbind(dim=-3)
    # In-place accumulation: 3 passes, fast for both NCHW and channels_last (a 1×1 conv2d is
    # 10× slower on NCHW CPU tensors).
    return torch.mul(r, _LUMA[0]).add_(g, alpha=_LUMA[1]).add_(b, alpha=_LUMA[2]).unsqueeze(-3)


def adjust_brightness(images: Tensor, factor: Tensor | float) -> Tensor:
    """Multiply by ``factor`` (per sample) and clamp, like ``adjust_brightness``."""
    return (images * _per_sample(factor, images)).clamp_(0.0, 1.0)


def adjust_contrast(images: Tensor, factor: Tensor | float) -> Tensor:
    """Blend each image with the mean of its own grayscale, like ``adjust_contrast``."""
    mean = rgb_to_grayscale(images).mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(images, mean, _per_sample(factor, images))


def adjust_saturation(images: Tensor, factor: Tensor | float) -> Tensor:
    """Blend each image with its grayscale, like ``adjust_saturation``."""
    return _blend(images, rgb_to_grayscale(images), _per_sample(factor, images))


def _hue_sextants(images: Tensor, minc: Tensor, maxc: Tensor) -> Tensor:
    """HSV hue in sextants ([0, 6) is one turn, up to a multiple of 6), N×1×H×W."""
    r, g, b = images.split(1, dim=-3)
    delta = maxc - minc
    # Grey pixels have g − b = 0 (and so on), so any non-zero divisor gives hue 0 without NaN.
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    # Ties go to red, then green, as in torchvision's _rgb_to_hsv.
    not_g = torch.where(maxc == g, (b - r).add_(delta, alpha=2.0), (r - g).add_(delta, alpha=4.0))
    return torch.where(maxc == r, g - b, not_g).div_(safe)


def adjust_hue(images: Tensor, shift: Tensor | float) -> Tensor:
    """Rotate the hue by ``shift`` turns (per sample, in [−0.5, 0.5]), like ``adjust_hue``.

    Equals torchvision's RGB→HSV, h += shift, HSV→RGB, in fewer passes: a hue rotation keeps
    max and min, and HSV→RGB is ``channel = min + (max − min)·clamp(|k − 2| − 1, 0, 1)`` with
    ``k = (n + 6h) mod 6`` for n = 5, 3, 1 (R, G, B).
    """
    # amin + amax: ~3× faster than aminmax over the channel dim of a CPU batch.
    minc, maxc = images.amin(dim=-3, keepdim=True), images.amax(dim=-3, keepdim=True)
    h6 = _hue_sextants(images, minc, maxc).add_(6.0 * _per_sample(shift, images))
    offsets = torch.tensor((5.0, 3.0, 1.0), dtype=images.dtype, device=images.device)
    k = (h6 + offsets.view(3, 1, 1)).remainder_(6.0)
    # In-place chain: the three-channel passes dominate the cost of this op.
    weight = k.sub_(2.0).abs_().sub_(1.0).clamp_(0.0, 1.0)
    return weight.mul_(maxc - minc).add_(minc).clamp_(0.0, 1.0)


# ----------------------------------------------------------------------------------------------
# random parameters (drawn on the generator's device, then moved)
# ----------------------------------------------------------------------------------------------

def _uniform(n: int, low: float, high: float, generator: torch.Generator | None) -> Tensor:
    """``n`` float64 draws, uniform in [low, high]."""
    device = generator.device if generator is not None else None
    u = torch.rand(n, dtype=torch.float64, generator=generator, device=device)
    return low + (high - low) * u


def _coin(n: int, p: float, generator: torch.Generator | None) -> Tensor:
    """``n`` booleans, each True with probability ``p``."""
    return _uniform(n, 0.0, 1.0, generator) < p


def sample_crop_boxes(
    n: int, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
    generator: torch.Generator | None = None,
) -> Tensor:
    """``n`` boxes (top, left, h, w) as float64 [n, 4], drawn like ``RandomResizedCrop.get_params``.

    Each sample gets 10 tries at an area in ``scale`` × image area and a log-uniform aspect ratio;
    the first box that fits is kept, otherwise the central crop clamped to ``ratio``.
    """
    shape = (n * _CROP_ATTEMPTS,)
    area = _uniform(shape[0], *scale, generator).view(n, -1) * (height * width)
    log_r = _uniform(shape[0], math.log(ratio[0]), math.log(ratio[1]), generator).view(n, -1)
    aspect = log_r.exp()
    w = (area * aspect).sqrt().round()
    h = (area / aspect).sqrt().round()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # index of the first fitting try
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    fb_h, fb_w = _fallback_box(height, width, ratio)
    ok = fits.any(dim=1)
    h = torch.where(ok, h, torch.full_like(h, fb_h))
    w = torch.where(ok, w, torch.full_like(w, fb_w))
    # Integer offsets uniform in [0, H−h] as torch.randint would give; centred for the fallback.
    top = (_uniform(n, 0.0, 1.0, generator) * (height - h + 1)).floor().clamp(max=height - h)
    left = (_uniform(n, 0.0, 1.0, generator) * (width - w + 1)).floor().clamp(max=width - w)
    top = torch.where(ok, top, ((height - h) / 2).floor())
    left = torch.where(ok, left, ((width - w) / 2).floor())
    return torch.stack((top, left, h, w), dim=1)


def _fallback_box(height: int, width: int, ratio: tuple[float, float]) -> tuple[float, float]:
    """torchvision's fallback (h, w): the whole image, trimmed to the nearest allowed ratio."""
    in_ratio = width / height
    if in_ratio < min(ratio):
        return float(round(width / min(ratio))), float(width)
    if in_ratio > max(ratio):
        return float(height), float(round(height * max(ratio)))
    return float(height), float(width)


def affine_matrices(
    boxes: Tensor | None, height: int, width: int, hflip: Tensor, vflip: Tensor, angle_deg: Tensor,
) -> Tensor:
    """Per-sample ``affine_grid`` matrices [n, 2, 3] (float64) mapping output to source coordinates.

    The forward chain is torchvision's: crop ``boxes`` (None = whole image) → resize → h-flip →
    v-flip → rotate counter-clockwise by ``angle_deg`` about the centre. The output is square, so
    rotating in normalised coordinates keeps angles. The grid needs the inverse chain:
    source = Crop · Flip · Rotate⁻¹ · output.
    """
    n = hflip.shape[0]
    m = torch.eye(3, dtype=torch.float64).repeat(n, 1, 1)
    theta = torch.deg2rad(angle_deg.to(torch.float64))
    cos, sin = theta.cos(), theta.sin()
    # Rotate⁻¹ with y pointing down: a CCW turn on screen is a clockwise one in (x, y) maths.
    rot = m.clone()
    rot[:, 0, 0], rot[:, 0, 1], rot[:, 1, 0], rot[:, 1, 1] = cos, -sin, sin, cos
    flip = m.clone()
    flip[:, 0, 0] = 1.0 - 2.0 * hflip.to(torch.float64)
    flip[:, 1, 1] = 1.0 - 2.0 * vflip.to(torch.float64)
    crop = m.clone()
    if boxes is not None:
        top, left, h, w = boxes.to(torch.float64).unbind(dim=1)
        # Output u ∈ [−1, 1] covers pixels [left, left + w) of the source (align_corners=False).
        crop[:, 0, 0], crop[:, 0, 2] = w / width, (2 * left + w) / width - 1
        crop[:, 1, 1], crop[:, 1, 2] = h / height, (2 * top + h) / height - 1
    return (crop @ flip @ rot)[:, :2, :]


def affine_grid(theta: Tensor, size: tuple[int, int]) -> Tensor:
    """``F.affine_grid(theta, [N, C, *size], align_corners=False)`` by broadcasting.

    Same sampling grid (to float rounding), ~9× faster on the CPU: PyTorch's version multiplies
    an N×H×W×3 base grid by θ with a batched matmul of inner size 3.
    """
    n, (height, width) = theta.shape[0], size
    # Pixel centres in normalised coordinates, as align_corners=False places them.
    xs = (torch.arange(width, dtype=theta.dtype, device=theta.device) * 2 + 1) / width - 1
    ys = (torch.arange(height, dtype=theta.dtype, device=theta.device) * 2 + 1) / height - 1
    t = theta.reshape(n, 6, 1, 1)
    gx = t[:, 0] * xs.view(1, 1, width) + (t[:, 1] * ys.view(1, height, 1) + t[:, 2])
    gy = t[:, 3] * xs.view(1, 1, width) + (t[:, 4] * ys.view(1, height, 1) + t[:, 5])
    return torch.stack((gx, gy), dim=-1)


def presample_size(height: int, width: int, size: int, min_crop_side: float) -> tuple[int, int]:
    """The size to antialias-resize a batch to before ``grid_sample``.

    ``min_crop_side`` is (about) the smallest crop side as a fraction of the image side:
    √(min_scale · min_ratio) for a random resized crop. The target side
    ``T = ceil(size / min_crop_side)`` keeps the smallest crop at ≥ ``size`` pixels; an axis
    longer than 1.5·T is shrunk to T (antialiased) so that bilinear ``grid_sample`` never shrinks
    by more than 1.5×. Shorter axes are kept as they are,
    which avoids a needless second resampling of a cache already near the output size.
    """
    target = math.ceil(size / min_crop_side)
    limit = _MAX_GRID_DOWNSCALE * target
    return (target if height > limit else height, target if width > limit else width)


# ----------------------------------------------------------------------------------------------
# the batch transform
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ColorJitter:
    """torchvision's ``RandomApply([ColorJitter(b, c, s, h)], p)`` settings."""

    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0
    p: float = 1.0


CPU_CHUNK = 16  # images per chunk when augmenting on the CPU


class BatchAugment(torch.nn.Module):
    """uint8 N×3×H×W → float32 N×3×S×S, augmented with per-sample random parameters, normalised.

    Pipeline (ECL's order): [random resized crop | resize to S×S] → h-flip → v-flip → rotation →
    colour jitter → random grayscale → normalise. Float input is taken to be in [0, 1] already.
    """

    def __init__(
        self, size: int, *, crop_scale: tuple[float, float] | None = None,
        crop_ratio: tuple[float, float] = (3 / 4, 4 / 3), hflip_p: float = 0.0,
        vflip_p: float = 0.0, rotation_deg: float = 0.0, jitter: ColorJitter | None = None,
        grayscale_p: float = 0.0, mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        if size <= 0:
            raise ValueError(f"image size must be positive, got {size}")
        self.size = size
        self.crop_scale = crop_scale
        self.crop_ratio = crop_ratio
        self.hflip_p, self.vflip_p = hflip_p, vflip_p
        self.rotation_deg = rotation_deg
        self.jitter = jitter
        self.grayscale_p = grayscale_p
        self.mean, self.std = mean, std

    def extra_repr(self) -> str:
        return (f"size={self.size}, crop_scale={self.crop_scale}, hflip_p={self.hflip_p}, "
                f"vflip_p={self.vflip_p}, rotation_deg={self.rotation_deg}, "
                f"jitter={self.jitter}, grayscale_p={self.grayscale_p}")

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Augment a batch; the same ``generator`` state gives the same output."""
        _check_batch(images)
        if images.device.type == "cpu" and images.shape[0] > CPU_CHUNK:
            # A 64×3×224×224 float batch (38 MB) is above glibc's mmap threshold, so each
            # intermediate tensor would be freshly mapped and page-faulted; chunks of 16 images
            # stay in reusable heap memory (≈1.3-1.5× faster on CPU; see benchmarks/throughput.py).
            out = torch.empty((images.shape[0], 3, self.size, self.size), dtype=torch.float32)
            for start in range(0, images.shape[0], CPU_CHUNK):
                out[start:start + CPU_CHUNK] = self._augment(images[start:start + CPU_CHUNK], generator)
            return out
        return self._augment(images, generator)

    def _augment(self, images: Tensor, generator: torch.Generator | None) -> Tensor:
        x = self._geometry(images, generator)  # a new float32 tensor, so later ops may be in place
        x = self._colour(x, generator)
        return self._normalise(x)

    def _geometry(self, images: Tensor, generator: torch.Generator | None) -> Tensor:
        """Crop / resize / flip / rotate to N×3×S×S."""
        n, _, height, width = images.shape
        boxes = None
        if self.crop_scale is not None:
            boxes = sample_crop_boxes(n, height, width, self.crop_scale, self.crop_ratio, generator)
        hflip = _coin(n, self.hflip_p, generator)
        vflip = _coin(n, self.vflip_p, generator)
        angle = _uniform(n, -self.rotation_deg, self.rotation_deg, generator)
        if boxes is None and self.rotation_deg == 0:
            # Resize + flips only: an exact antialiased resize (= torchvision's Resize((S, S)))
            # and exact flips are both cheaper and sharper than a resampling grid.
            x = _resized_unit_float(images, (self.size, self.size))
            _flip_samples_(x, hflip, dim=-1)
            _flip_samples_(x, vflip, dim=-2)
            return x
        if boxes is None:  # rotation alone: rotate the resized image
            x = _resized_unit_float(images, (self.size, self.size))
        else:
            min_side = math.sqrt(self.crop_scale[0] * min(self.crop_ratio))
            x = _resized_unit_float(images, presample_size(height, width, self.size, min_side))
        theta = affine_matrices(boxes, height, width, hflip, vflip, angle)
        theta = theta.to(device=x.device, dtype=x.dtype)
        grid = affine_grid(theta, (self.size, self.size))
        # Zero padding: the corners a rotation uncovers are black, like RandomRotation's fill=0.
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def _colour(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        """Random-applied colour jitter, then random grayscale (both in place on ``x``)."""
        if self.jitter is not None:
            _jitter_(x, self.jitter, generator)
        if self.grayscale_p > 0:
            idx = _host_indices(_coin(x.shape[0], self.grayscale_p, generator), x.device)
            if idx is not None:
                gray = rgb_to_grayscale(x.index_select(0, idx)).expand(-1, 3, -1, -1)
                x.index_copy_(0, idx, gray)
        return x

    def _normalise(self, x: Tensor) -> Tensor:
        """(x − mean) / std per channel, as one fused x·(1/std) − mean/std."""
        mean = torch.tensor(self.mean, dtype=torch.float64).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float64).view(1, -1, 1, 1)
        scale = (1.0 / std).to(device=x.device, dtype=x.dtype)
        bias = (-mean / std).to(device=x.device, dtype=x.dtype)
        return torch.addcmul(bias, x, scale)


def _check_batch(images: Tensor) -> None:
    """Reject anything but an N×3×H×W uint8 or float batch."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected an N×3×H×W batch, got shape {tuple(images.shape)}")
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise ValueError(f"expected uint8 or float images, got {images.dtype}")


def _to_unit_float(images: Tensor) -> Tensor:
    """A new float32 tensor in [0, 1] (uint8 is scaled; float is taken as already in [0, 1])."""
    if images.dtype == torch.uint8:
        return images.to(torch.float32).div_(255.0)
    return images.to(torch.float32, copy=True)  # a copy: later ops write in place


def _resized_unit_float(images: Tensor, size: tuple[int, int]) -> Tensor:
    """Antialiased bilinear resize to ``size`` (as torchvision's ``resize``), as new float32.

    uint8 on the CPU is resized as uint8: PyTorch's SIMD kernel for it is ~10× faster than the
    float one, and rounding to uint8 is what torchvision (and PIL, which ECL uses) do as well.
    Elsewhere (CUDA has no uint8 antialias kernel) the batch is resized in float32.
    """
    if tuple(images.shape[-2:]) == size:
        return _to_unit_float(images)
    if images.dtype == torch.uint8 and images.device.type == "cpu":
        images = F.interpolate(images, size=size, mode="bilinear", antialias=True)
        return _to_unit_float(images)
    x = _to_unit_float(images)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def _host_indices(mask: Tensor, device: torch.device) -> Tensor | None:
    """Indices of the set entries of a bool [N] mask, on ``device``; None if there are none.

    The mask comes from the (CPU) generator, so this costs no device synchronisation, and
    touching only the chosen samples beats a full-batch ``torch.where``.
    """
    idx = mask.cpu().nonzero().flatten()
    return idx.to(device) if idx.numel() else None


def _flip_samples_(x: Tensor, mask: Tensor, dim: int) -> None:
    """Flip, in place along ``dim``, the samples whose mask is set (mask: bool [N])."""
    idx = _host_indices(mask, x.device)
    if idx is not None:
        x.index_copy_(0, idx, x.index_select(0, idx).flip(dim))


def _jitter_(x: Tensor, cfg: ColorJitter, generator: torch.Generator | None) -> None:
    """``RandomApply(ColorJitter)`` in place: per-sample factors, one random op order per batch."""
    n = x.shape[0]
    applied = _coin(n, cfg.p, generator)
    order = torch.randperm(4, generator=generator,
                           device=generator.device if generator is not None else None).tolist()
    ops: list[tuple[Callable[[Tensor, Tensor], Tensor], Tensor] | None] = [
        _factor_op(adjust_brightness, cfg.brightness, n, generator),
        _factor_op(adjust_contrast, cfg.contrast, n, generator),
        _factor_op(adjust_saturation, cfg.saturation, n, generator),
        (adjust_hue, _uniform(n, -cfg.hue, cfg.hue, generator)) if cfg.hue > 0 else None,
    ]
    idx = _host_indices(applied, x.device)
    if idx is None:
        return
    # Gather the chosen samples once, run the ops on them, scatter back: skipped samples stay
    # bit-identical and cost nothing.
    sub = x.index_select(0, idx)
    for op in (ops[i] for i in order):
        if op is not None:
            fn, factor = op
            sub = fn(sub, factor[applied].to(device=x.device, dtype=x.dtype))
    x.index_copy_(0, idx, sub)


def _factor_op(
    fn: Callable[[Tensor, Tensor], Tensor], strength: float, n: int,
    generator: torch.Generator | None,
) -> tuple[Callable[[Tensor, Tensor], Tensor], Tensor] | None:
    """An op with per-sample factors uniform in [max(0, 1 − s), 1 + s]; None when s = 0."""
    if strength <= 0:
        return None
    return fn, _uniform(n, max(0.0, 1.0 - strength), 1.0 + strength, generator)


# ----------------------------------------------------------------------------------------------
# presets
# ----------------------------------------------------------------------------------------------

_ECL_JITTER = ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8)


def eval_augment(size: int) -> BatchAugment:
    """Deterministic: resize to S×S, normalise."""
    return BatchAugment(size)


def standard_augment(size: int) -> BatchAugment:
    """ECL's classifier view (``augmentation_rand``): resize S×S, h-flip, colour jitter p 0.8."""
    return BatchAugment(size, hflip_p=0.5, jitter=_ECL_JITTER)


def contrastive_augment(size: int) -> BatchAugment:
    """ECL's contrastive view (``augmentation_sim``).

    RandomResizedCrop(S, scale 0.8–1), h- and v-flip, rotation uniform in ±90°, colour jitter
    p 0.8, grayscale p 0.2.
    """
    return BatchAugment(size, crop_scale=(0.8, 1.0), hflip_p=0.5, vflip_p=0.5, rotation_deg=90.0,
                        jitter=_ECL_JITTER, grayscale_p=0.2)


PRESETS: dict[str, Callable[[int], BatchAugment]] = {
    "eval": eval_augment,
    "standard": standard_augment,
    "contrastive": contrastive_augment,
}


def get_augmentation(name: str, image_size: int) -> BatchAugment:
    """The preset ``name`` at ``image_size``; an unknown name raises :class:`LtbenchError`."""
    if name not in PRESETS:
        raise LtbenchError(
            f"unknown augmentation {name!r}; known presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[name](image_size)
