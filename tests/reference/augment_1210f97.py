# ltbench/data/augment.py as of commit 1210f97 (before issue 11's speed-ups), verbatim but for these two
# lines and the randaugment import at the end: the reference of tests/test_augment_exact.py.
"""Whole-batch image augmentation on the compute device, with per-sample random parameters.

Training reads uint8 batches (N×3×H×W) from the pixel cache and augments them here, on whatever
device the batch lives on, with no per-item PIL work. torchvision's v2 transforms would draw one
set of random parameters for the whole batch, so the ops are written with plain tensor maths:

* geometry (random resized crop, flips, rotation, resize to S×S) is ONE ``F.grid_sample`` pass per
  batch with per-sample parameters, composed as torchvision composes the per-image ops: the crop
  box is resized to S×S, flipped, then rotated *as a picture of its own* — sampling is clamped
  inside the crop box (no pixel from outside it, no zero padding blended into an upscaled crop's
  edge) and output pixels whose rotated position falls outside the crop square are black, as
  ``RandomRotation``'s fill 0 (see :func:`geometry_grid`). Resize + flips alone skip the grid
  (exact resize, exact flips);
* colour (brightness, contrast, saturation, hue, grayscale) is vectorised with per-sample factors;
  the samples an op is applied to are gathered once (``index_select``) and written back
  (``index_copy_``), so skipped samples cost nothing and stay bit-identical.

**Original geometry.** The cache squashes every image to a square, but ``RandomResizedCrop`` draws
area and aspect ratio on the original H×W image. An augmentation is therefore called as
``augment(images, generator, sizes=sizes)`` with ``sizes`` the per-image original (height, width)
(int [N, 2]; None = each image is its own size, as for in-memory datasets): the box is drawn on
H×W exactly as ``RandomResizedCrop.get_params`` draws it and mapped onto the cached square with a
per-axis scale (the box's fractions of the image are kept exactly). Every factory registered with
:func:`register_augmentation` returns a callable with this signature.

Random parameters are drawn from the given ``torch.Generator`` and then moved to the batch's
device, so a seed reproduces a batch exactly. On the CPU, :meth:`BatchAugment.split` draws all of a
batch's parameters first and returns per-chunk jobs that draw nothing, so the loader can run the
chunks on several single-threaded workers with bit-identical results. Pass a CPU generator (or None: the global CPU RNG):
the per-sample decisions then live on the host and selecting samples needs no device sync.
On the CPU a uint8 batch is resized as uint8 (PyTorch's fast SIMD kernel; the same rounding as
torchvision/PIL on uint8); on CUDA it is resized in float32 — results differ by ≤ 1/255.

The presets follow the ECL code (zylbuaa/ECL, ``utils/dataset/isic.py``); see :data:`PRESETS`.
Differences from torchvision (all deliberate, for speed or precision):

* colour ops run on float32 images; torchvision-on-PIL (what ECL uses) rounds to uint8 after each;
* ColorJitter's four ops are applied in one random order per *batch* (torchvision: per image);
* crop, resize and rotation are ONE bilinear resampling of the cached square (torchvision: an
  antialiased resize of the crop, then a second resampling by the rotation — nearest-neighbour in
  ECL's PIL pipeline), so ours is slightly sharper than a bilinear two-pass chain and smoother than
  ECL's nearest rotation; which pixels are black (outside the rotated crop) is decided as PIL's
  nearest rotation decides it (the output pixel centre maps outside the crop square);
* the crop box is sampled like ``RandomResizedCrop.get_params`` (integer boxes on the original
  geometry, 10 attempts, central fallback) but with all 10 attempts drawn at once, so the
  distribution is torchvision's while the random stream is not. Upscaled crops equal
  torchvision's ``resized_crop`` (≤ 1e-5); crops shrunk by ≤ 1.5× (≤ 1.14× in the ``contrastive``
  preset from a 256 px cache) are not antialiased, and larger sources are first antialias-resized
  (see :func:`presample_size`), so the resampling is close to, not equal to, torchvision's
  antialiased ``resized_crop`` (tests/test_augment_fidelity.py states the tolerances).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple, Protocol, TypeVar

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


def _as_sides(value: int | Tensor, n: int, device: torch.device | None = None) -> Tensor:
    """An image side (one int for all, or one per sample) as float64 [n] on ``device`` (None: CPU)."""
    t = torch.as_tensor(value, dtype=torch.float64, device=device)
    return t.expand(n) if t.ndim == 0 else t.to(device=device, dtype=torch.float64)


def sample_crop_boxes(
    n: int, height: int | Tensor, width: int | Tensor, scale: tuple[float, float],
    ratio: tuple[float, float], generator: torch.Generator | None = None,
) -> Tensor:
    """``n`` boxes (top, left, h, w) as float64 [n, 4], drawn like ``RandomResizedCrop.get_params``.

    ``height``/``width``: the geometry the box is drawn on — one int for all samples or a
    per-sample tensor [n] (each image's original size). Each sample gets 10 tries at an area in
    ``scale`` × image area and a log-uniform aspect ratio; the first box that fits is kept,
    otherwise torchvision's central fallback (the whole image, trimmed to the nearest allowed ratio).
    """
    device = generator.device if generator is not None else None
    height, width = _as_sides(height, n, device), _as_sides(width, n, device)
    shape = (n * _CROP_ATTEMPTS,)
    area = _uniform(shape[0], *scale, generator).view(n, -1) * (height * width).view(n, 1)
    log_r = _uniform(shape[0], math.log(ratio[0]), math.log(ratio[1]), generator).view(n, -1)
    aspect = log_r.exp()
    w = (area * aspect).sqrt().round()  # round half to even, as Python's round in torchvision
    h = (area / aspect).sqrt().round()
    fits = (w > 0) & (w <= width.view(n, 1)) & (h > 0) & (h <= height.view(n, 1))
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # index of the first fitting try
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    fb_h, fb_w = _fallback_boxes(height, width, ratio)
    ok = fits.any(dim=1)
    h = torch.where(ok, h, fb_h)
    w = torch.where(ok, w, fb_w)
    # Integer offsets uniform in [0, H−h] as torch.randint would give; centred for the fallback.
    top = (_uniform(n, 0.0, 1.0, generator) * (height - h + 1)).floor().minimum(height - h)
    left = (_uniform(n, 0.0, 1.0, generator) * (width - w + 1)).floor().minimum(width - w)
    top = torch.where(ok, top, ((height - h) / 2).floor())
    left = torch.where(ok, left, ((width - w) / 2).floor())
    return torch.stack((top, left, h, w), dim=1)


def _fallback_boxes(height: Tensor, width: Tensor, ratio: tuple[float, float]) -> tuple[Tensor, Tensor]:
    """torchvision's fallback (h, w) per sample: the whole image, trimmed to the nearest allowed ratio."""
    in_ratio = width / height
    low, high = min(ratio), max(ratio)
    h = torch.where(in_ratio < low, (width / low).round(), height)
    w = torch.where(in_ratio > high, (height * high).round(), width)
    return h, w


def affine_matrices(
    boxes: Tensor | None, height: int | Tensor, width: int | Tensor, hflip: Tensor, vflip: Tensor,
    angle_deg: Tensor,
) -> Tensor:
    """Per-sample ``affine_grid`` matrices [n, 2, 3] (float64) mapping output to source coordinates.

    The forward chain is torchvision's: crop ``boxes`` (pixels of an H×W geometry; None = whole
    image) → resize → h-flip → v-flip → rotate counter-clockwise by ``angle_deg`` about the centre.
    Normalised coordinates are fractions of the image, so the same matrix maps the box onto a
    cached copy of any size (a per-axis scale). The output is square, so rotating in normalised
    coordinates keeps angles. The grid needs the inverse chain: source = Crop · Flip · Rotate⁻¹ · output.
    This matrix alone samples outside the box where the rotation uncovers corners; the presets use
    :func:`geometry_grid`, which clamps and masks.
    """
    n = hflip.shape[0]
    m = torch.eye(3, dtype=torch.float64).repeat(n, 1, 1)
    m[:, :2, :] = _flip_rotate(hflip, vflip, angle_deg)
    crop = torch.eye(3, dtype=torch.float64).repeat(n, 1, 1)
    if boxes is not None:
        centre, half = _box_centre_half(boxes, height, width)
        crop[:, 0, 0], crop[:, 0, 2] = half[:, 0], centre[:, 0]
        crop[:, 1, 1], crop[:, 1, 2] = half[:, 1], centre[:, 1]
    return (crop @ m)[:, :2, :]


def _flip_rotate(hflip: Tensor, vflip: Tensor, angle_deg: Tensor) -> Tensor:
    """[n, 2, 3] float64: output coordinates → coordinates in the (flipped) crop, Flip · Rotate⁻¹."""
    n = hflip.shape[0]
    theta = torch.deg2rad(angle_deg.to(torch.float64))
    cos, sin = theta.cos(), theta.sin()
    sx = 1.0 - 2.0 * hflip.to(torch.float64)
    sy = 1.0 - 2.0 * vflip.to(torch.float64)
    m = torch.zeros(n, 2, 3, dtype=torch.float64)
    # Rotate⁻¹ with y pointing down: a CCW turn on screen is a clockwise one in (x, y) maths.
    m[:, 0, 0], m[:, 0, 1] = sx * cos, -sx * sin
    m[:, 1, 0], m[:, 1, 1] = sy * sin, sy * cos
    return m


def _box_centre_half(boxes: Tensor, height: int | Tensor, width: int | Tensor) -> tuple[Tensor, Tensor]:
    """Centre and half extent [n, 2] (x, y) of each box in normalised coordinates ([−1, 1] = image)."""
    n = boxes.shape[0]
    height, width = _as_sides(height, n), _as_sides(width, n)
    top, left, h, w = boxes.to(device="cpu", dtype=torch.float64).unbind(dim=1)
    # Output u ∈ [−1, 1] covers pixels [left, left + w) of the source (align_corners=False).
    centre = torch.stack(((2 * left + w) / width - 1, (2 * top + h) / height - 1), dim=1)
    half = torch.stack((w / width, h / height), dim=1)
    return centre, half


# Where masked-out grid points are sent: far enough outside [−1, 1] that all four bilinear taps
# fall in the zero padding, so grid_sample itself writes the exact 0 of RandomRotation's fill.
_OUTSIDE = -4.0


def geometry_grid(
    boxes: Tensor | None, height: int | Tensor, width: int | Tensor, hflip: Tensor, vflip: Tensor,
    angle_deg: Tensor, size: int, sampled: tuple[int, int], device: torch.device | None = None,
    dtype: torch.dtype = torch.float32, rotate: bool = True,
) -> Tensor:
    """The sampling grid [n, S, S, 2] of crop → resize → flips → rotation, as torchvision composes them.

    ``boxes`` are in the H×W geometry ``height``/``width`` (per sample or shared; None = whole
    image); ``sampled`` is the (h, w) of the tensor ``grid_sample`` reads (the cached square or
    its presampled copy). In ECL's pipeline the rotation acts on the resized crop, so:

    * sampling positions are clamped half a pixel (of ``sampled``) inside the crop box: bilinear
      taps read only pixels of the box, as ``resized_crop`` (which resizes the cut-out crop with
      edge clamping) does — no pixel from outside the box, no zero padding at an upscaled edge;
    * an output pixel whose centre, rotated back, lies outside the crop square gets a grid point
      far outside the image, so ``grid_sample`` (zero padding) returns black there: the corners
      ``RandomRotation(fill=0)`` uncovers (PIL's nearest rule: the pixel centre decides).

    One grid, one ``grid_sample``: no second resampling pass. ``rotate=False`` skips the mask
    (no sample can leave the square without a rotation).
    """
    n = hflip.shape[0]
    if boxes is None:
        centre = torch.zeros(n, 2, dtype=torch.float64)
        half = torch.ones(n, 2, dtype=torch.float64)
    else:
        centre, half = _box_centre_half(boxes, height, width)
    # Clamp bound in crop coordinates: half a pixel of ``sampled`` inside the box edge (a box
    # under one pixel wide collapses to its centre).
    pixel = torch.tensor((1.0 / sampled[1], 1.0 / sampled[0]), dtype=torch.float64)
    bound = (1.0 - pixel / half).clamp(min=0.0)
    m = _flip_rotate(hflip, vflip, angle_deg)

    def per_sample(v: Tensor) -> Tensor:
        return v.to(device=device, dtype=dtype).view(n, 1, 1)

    # x and y as separate contiguous S×S planes: elementwise ops on them are much faster than
    # on the interleaved last dimension of an N×S×S×2 grid.
    xs = (torch.arange(size, dtype=dtype, device=device) * 2 + 1) / size - 1
    rs, gs = [], []
    for axis in (0, 1):
        # r: the position in the (flipped, rotated-back) crop square, [−1, 1] inside it; one full
        # pass (the other terms broadcast over a row or a column only).
        r = per_sample(m[:, axis, 0]) * xs.view(1, 1, size) + (per_sample(m[:, axis, 1]) * xs.view(1, size, 1)
                                                                 + per_sample(m[:, axis, 2]))
        lo = per_sample(centre[:, axis] - half[:, axis] * bound[:, axis])
        hi = per_sample(centre[:, axis] + half[:, axis] * bound[:, axis])
        gs.append(torch.addcmul(per_sample(centre[:, axis]), r, per_sample(half[:, axis])).clamp_(lo, hi))
        rs.append(r)
    gx, gy = gs
    if rotate:
        reach = rs[0].abs_()
        outside = torch.maximum(reach, rs[1].abs_(), out=reach) >= 1.0
        gx.masked_fill_(outside, _OUTSIDE)  # x alone far outside: all four taps read zero padding
    return torch.stack((gx, gy), dim=-1)


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


class Geometry(NamedTuple):
    """Per-sample geometric parameters (float64 / bool, on the generator's device)."""

    boxes: Tensor | None  # [n, 4] (top, left, h, w) on the original geometry; None: no crop
    hflip: Tensor  # bool [n]
    vflip: Tensor  # bool [n]
    angle: Tensor  # [n] degrees, counter-clockwise


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

    def forward(self, images: Tensor, generator: torch.Generator | None = None,
                sizes: Tensor | None = None) -> Tensor:
        """Augment a batch; the same ``generator`` state gives the same output.

        ``sizes``: each image's original (height, width), int [N, 2] (tensor or array) — the
        geometry a random resized crop is drawn on; None: the batch's own H×W.
        """
        _check_batch(images)
        if images.device.type == "cpu":
            out, jobs = self.split(images, generator, sizes)
            results = [job() for job in jobs]
            return results[0] if out is None else out
        sizes = _check_sizes(sizes, images.shape[0])
        return self._augment(images, generator, sizes)

    def split(self, images: Tensor, generator: torch.Generator | None = None,
              sizes: Tensor | None = None) -> tuple[Tensor | None, list[Callable[[], Tensor]]]:
        """Draw every random parameter of a CPU batch now; return the output and the jobs filling it.

        The draws are exactly those (and in the order) of :meth:`forward`, which runs the jobs in
        turn; the jobs (one per chunk of ``CPU_CHUNK`` images) draw nothing, write disjoint slices
        of the output and may run in any order on any threads — the loader runs them on
        single-threaded workers (bit-identical: every job runs the same ops on the same tensors).
        A batch of one chunk has no preallocated output (``None``): its job returns the output,
        in the memory format the ops give it, as :meth:`forward` always has.
        """
        _check_batch(images)
        if images.device.type != "cpu":
            raise ValueError("BatchAugment.split is for CPU batches; call the augmentation itself on a device")
        sizes = _check_sizes(sizes, images.shape[0])
        n = images.shape[0]
        out = torch.empty((n, 3, self.size, self.size), dtype=torch.float32) if n > CPU_CHUNK else None
        jobs = []
        # A 64×3×224×224 float batch (38 MB) is above glibc's mmap threshold, so each intermediate
        # tensor would be freshly mapped and page-faulted; chunks of 16 images stay in reusable
        # heap memory (≈1.3-1.5× faster on CPU; see benchmarks/throughput.py).
        for start in range(0, n, CPU_CHUNK):
            part = images[start:start + CPU_CHUNK]
            part_sizes = None if sizes is None else sizes[start:start + CPU_CHUNK]
            draws = self._draw(part.shape[0], part.shape[-2], part.shape[-1], part_sizes, generator)
            jobs.append(_Job(self, part, part_sizes, draws, None if out is None else out[start:start + CPU_CHUNK]))
        return out, jobs

    def _augment(self, images: Tensor, generator: torch.Generator | None, sizes: Tensor | None) -> Tensor:
        draws = self._draw(images.shape[0], images.shape[-2], images.shape[-1], sizes, generator)
        return self._apply(images, sizes, draws)

    def _draw(self, n: int, height: int, width: int, sizes: Tensor | None,
              generator: torch.Generator | None) -> _Draws:
        """All random parameters of ``n`` images (batch H×W ``height``×``width``), in forward's order."""
        # The geometry the crop is drawn on: the originals', else the batch's own.
        orig_h, orig_w = (height, width) if sizes is None else sizes.unbind(dim=1)
        geometry = self.sample_geometry(n, orig_h, orig_w, generator)
        jitter = None if self.jitter is None else _draw_jitter(n, self.jitter, generator)
        gray = _coin(n, self.grayscale_p, generator) if self.grayscale_p > 0 else None
        return _Draws(geometry, jitter, gray)

    def _apply(self, images: Tensor, sizes: Tensor | None, draws: _Draws, out: Tensor | None = None) -> Tensor:
        """The augmentation with given draws (no random draw here); into ``out`` if given."""
        # A new float32 tensor: later ops may be in place. Into a preallocated (NCHW) output the
        # layout of x is free; otherwise it stays what it always was (the model sees the same strides).
        x = self._apply_geometry(images, sizes, draws.geometry, contiguous=out is not None)
        if draws.jitter is not None:
            _apply_jitter_(x, draws.jitter)
        if draws.grayscale is not None:
            idx = _host_indices(draws.grayscale, x.device)
            if idx is not None:
                gray = rgb_to_grayscale(x.index_select(0, idx)).expand(-1, 3, -1, -1)
                x.index_copy_(0, idx, gray)
        return self._normalise(x, out)

    def sample_geometry(self, n: int, height: int | Tensor, width: int | Tensor,
                        generator: torch.Generator | None = None) -> Geometry:
        """The random geometric parameters of ``n`` samples, in the order :meth:`forward` draws them.

        ``height``/``width``: the geometry crop boxes are drawn on (ints or per-sample tensors).
        A generator in the state :meth:`forward` receives gives exactly the parameters it uses
        (for a batch of at most ``CPU_CHUNK`` images; larger CPU batches draw chunk by chunk).
        """
        boxes = None
        if self.crop_scale is not None:
            boxes = sample_crop_boxes(n, height, width, self.crop_scale, self.crop_ratio, generator)
        hflip = _coin(n, self.hflip_p, generator)
        vflip = _coin(n, self.vflip_p, generator)
        angle = _uniform(n, -self.rotation_deg, self.rotation_deg, generator)
        return Geometry(boxes, hflip, vflip, angle)

    def _apply_geometry(self, images: Tensor, sizes: Tensor | None, geometry: Geometry,
                        contiguous: bool = False) -> Tensor:
        """Crop / resize / flip / rotate to N×3×S×S with given parameters."""
        _, _, height, width = images.shape
        orig_h, orig_w = (height, width) if sizes is None else sizes.unbind(dim=1)
        boxes, hflip, vflip, angle = geometry
        if boxes is None and self.rotation_deg == 0:
            # Resize + flips only: an exact antialiased resize (= torchvision's Resize((S, S)))
            # and exact flips are both cheaper and sharper than a resampling grid.
            x = _resized_unit_float(images, (self.size, self.size), contiguous)
            _flip_samples_(x, hflip, dim=-1)
            _flip_samples_(x, vflip, dim=-2)
            return x
        if boxes is None:  # rotation alone: rotate the resized image
            x = _resized_unit_float(images, (self.size, self.size), contiguous)
        else:
            min_side = math.sqrt(self.crop_scale[0] * min(self.crop_ratio))
            x = _resized_unit_float(images, presample_size(height, width, self.size, min_side), contiguous)
        grid = geometry_grid(boxes, orig_h, orig_w, hflip, vflip, angle, self.size,
                             (x.shape[-2], x.shape[-1]), device=x.device, dtype=x.dtype,
                             rotate=self.rotation_deg != 0)
        # Every grid point is inside the box or far outside the image: zero padding only makes
        # the black corners, never blends into the box's edge.
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def _normalise(self, x: Tensor, out: Tensor | None = None) -> Tensor:
        """(x − mean) / std per channel, as one fused x·(1/std) − mean/std (into ``out`` if given)."""
        mean = torch.tensor(self.mean, dtype=torch.float64).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float64).view(1, -1, 1, 1)
        scale = (1.0 / std).to(device=x.device, dtype=x.dtype)
        bias = (-mean / std).to(device=x.device, dtype=x.dtype)
        if out is None:
            return torch.addcmul(bias, x, scale)
        return torch.addcmul(bias, x, scale, out=out)  # same kernel, no copy of the result


class _Draws(NamedTuple):
    """Every random parameter of one chunk, drawn by :meth:`BatchAugment._draw`."""

    geometry: Geometry
    jitter: tuple[Tensor, list[int], list] | None  # see _draw_jitter; None: no jitter
    grayscale: Tensor | None  # bool [n]; None: no random grayscale


class _Job:
    """One chunk of :meth:`BatchAugment.split`: computes it into its slice of the output."""

    __slots__ = ("augment", "images", "sizes", "draws", "out")

    def __init__(self, augment: BatchAugment, images: Tensor, sizes: Tensor | None, draws: _Draws,
                 out: Tensor | None) -> None:
        self.augment, self.images, self.sizes, self.draws, self.out = augment, images, sizes, draws, out

    def __call__(self) -> Tensor:
        return self.augment._apply(self.images, self.sizes, self.draws, self.out)


def _check_batch(images: Tensor) -> None:
    """Reject anything but an N×3×H×W uint8 or float batch."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected an N×3×H×W batch, got shape {tuple(images.shape)}")
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise ValueError(f"expected uint8 or float images, got {images.dtype}")


def _check_sizes(sizes, n: int) -> Tensor | None:
    """Per-image original sizes as int64 [n, 2] (height, width) on the CPU, or None."""
    if sizes is None:
        return None
    t = torch.as_tensor(sizes).to(device="cpu")
    if t.shape != (n, 2) or t.is_floating_point() or t.dtype == torch.bool or (t < 1).any():
        raise ValueError(f"sizes must be positive integers of shape ({n}, 2) (height, width), "
                         f"got {t.dtype} {tuple(t.shape)}")
    return t.to(torch.int64)


def _to_unit_float(images: Tensor, contiguous: bool = False) -> Tensor:
    """A new float32 tensor in [0, 1] (uint8 is scaled; float is taken as already in [0, 1]).

    ``contiguous``: in NCHW order (the same values; the colour ops' channel-plane passes run
    ~20 % faster on a CPU than on the channels-last layout a permuted NHWC cache gives).
    """
    layout = torch.contiguous_format if contiguous else torch.preserve_format
    if images.dtype == torch.uint8:
        return images.to(torch.float32, memory_format=layout).div_(255.0)
    return images.to(torch.float32, memory_format=layout, copy=True)  # a copy: later ops write in place


def _resized_unit_float(images: Tensor, size: tuple[int, int], contiguous: bool = False) -> Tensor:
    """Antialiased bilinear resize to ``size`` (as torchvision's ``resize``), as new float32.

    uint8 on the CPU is resized as uint8: PyTorch's SIMD kernel for it is ~10× faster than the
    float one, and rounding to uint8 is what torchvision (and PIL, which ECL uses) do as well.
    Elsewhere (CUDA has no uint8 antialias kernel) the batch is resized in float32.
    """
    if tuple(images.shape[-2:]) == size:
        return _to_unit_float(images, contiguous)
    if images.dtype == torch.uint8 and images.device.type == "cpu":
        images = F.interpolate(images, size=size, mode="bilinear", antialias=True)
        return _to_unit_float(images, contiguous)
    x = _to_unit_float(images)
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return x.contiguous() if contiguous else x


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
    _apply_jitter_(x, _draw_jitter(x.shape[0], cfg, generator))


def _draw_jitter(n: int, cfg: ColorJitter, generator: torch.Generator | None) -> tuple[Tensor, list[int], list]:
    """The random parameters of :func:`_jitter_` for ``n`` samples: (applied, op order, ops)."""
    applied = _coin(n, cfg.p, generator)
    order = torch.randperm(4, generator=generator,
                           device=generator.device if generator is not None else None).tolist()
    ops: list[tuple[Callable[[Tensor, Tensor], Tensor], Tensor] | None] = [
        _factor_op(adjust_brightness, cfg.brightness, n, generator),
        _factor_op(adjust_contrast, cfg.contrast, n, generator),
        _factor_op(adjust_saturation, cfg.saturation, n, generator),
        (adjust_hue, _uniform(n, -cfg.hue, cfg.hue, generator)) if cfg.hue > 0 else None,
    ]
    return applied, order, ops


def _apply_jitter_(x: Tensor, drawn: tuple[Tensor, list[int], list]) -> None:
    """:func:`_jitter_` with given parameters (from :func:`_draw_jitter`)."""
    applied, order, ops = drawn
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


class Augmentation(Protocol):
    """What a registered factory returns: ``augment(images, generator, sizes=None) -> views``.

    ``images``: uint8 (or float in [0, 1]) N×3×H×W on the compute device; ``generator``: the
    stream's ``torch.Generator`` (draw every random parameter from it, so a seed reproduces the
    batch); ``sizes``: each image's original (height, width), int [N, 2], or None when the cached
    pixels are the images' own size. Returns float32 N×3×S×S, normalised.
    """

    def __call__(self, images: Tensor, generator: torch.Generator | None = None,
                 sizes: Tensor | None = None) -> Tensor: ...


#: The registry: preset name → factory ``factory(image_size) -> Augmentation``. Add entries with
#: :func:`register_augmentation`, not by writing to the dict.
PRESETS: dict[str, Callable[[int], Augmentation]] = {}

F_ = TypeVar("F_", bound=Callable[[int], Augmentation])


def register_augmentation(name: str, factory: F_ | None = None):
    """Make ``factory(image_size) -> Augmentation`` available as the preset ``name``.

    Same shape as :func:`ltbench.registry.register_method`: registering a *different* factory under
    a taken name raises ``ValueError`` (the same one again is a no-op), so a plug-in cannot
    silently replace a built-in preset. Use it directly, ``register_augmentation("mine", make)``,
    or as a decorator, ``@register_augmentation("mine")``; a method's module (or plug-in) that
    registers its preset at import time can then name it in ``Method.views``.
    """
    if factory is None:
        return lambda f: register_augmentation(name, f)
    if not isinstance(name, str) or not name:
        raise ValueError(f"augmentation name must be a non-empty string, got {name!r}")
    if not callable(factory):
        raise TypeError(f"augmentation {name!r}: factory must be callable, got {type(factory).__name__}")
    known = PRESETS.get(name)
    if known is not None and known is not factory:
        raise ValueError(f"augmentation name {name!r} is already registered by "
                         f"{getattr(known, '__module__', '?')}.{getattr(known, '__qualname__', known)}")
    PRESETS[name] = factory
    return factory


def unregister_augmentation(name: str) -> None:
    """Remove a registration (for tests and interactive work)."""
    PRESETS.pop(name, None)


def list_augmentations() -> list[str]:
    """The registered preset names, sorted."""
    return sorted(PRESETS)


@register_augmentation("eval")
def eval_augment(size: int) -> BatchAugment:
    """Deterministic: resize to S×S, normalise."""
    return BatchAugment(size)


@register_augmentation("standard")
def standard_augment(size: int) -> BatchAugment:
    """ECL's classifier view (``augmentation_rand``): resize S×S, h-flip, colour jitter p 0.8."""
    return BatchAugment(size, hflip_p=0.5, jitter=_ECL_JITTER)


@register_augmentation("contrastive")
def contrastive_augment(size: int) -> BatchAugment:
    """ECL's contrastive view (``augmentation_sim``).

    RandomResizedCrop(S, scale 0.8–1) drawn on the original geometry, h- and v-flip, rotation
    uniform in ±90° of the resized crop (black corners), colour jitter p 0.8, grayscale p 0.2.
    """
    return BatchAugment(size, crop_scale=(0.8, 1.0), hflip_p=0.5, vflip_p=0.5, rotation_deg=90.0,
                        jitter=_ECL_JITTER, grayscale_p=0.2)


def get_augmentation(name: str, image_size: int) -> Augmentation:
    """The preset ``name`` at ``image_size``; an unknown name raises :class:`LtbenchError`."""
    if name not in PRESETS:
        # Methods (and method plug-ins) may register their presets when they are imported.
        from ltbench.registry import list_methods

        list_methods()
    if name not in PRESETS:
        raise LtbenchError(
            f"unknown augmentation {name!r}; known presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[name](image_size)


from tests.reference import randaugment_1210f97 as _randaugment  # noqa: E402,F401  registers "randaugment" (BCL)
