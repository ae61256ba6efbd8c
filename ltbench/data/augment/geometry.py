"""Geometric parameters and sampling grids: random resized crop, flips, rotation, resize.

Crop boxes are drawn on each image's original geometry as ``RandomResizedCrop.get_params`` draws
them (:func:`sample_crop_boxes`); crop, resize, flips and rotation are then ONE ``grid_sample`` pass
per batch (:func:`geometry_grid`), composed as torchvision composes the per-image ops. Which
transforms a dataset's labels survive is ``ltbench.data.geometry``'s (a property of the dataset).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from ltbench.data.augment.draws import _as_sides, _host_indices, _uniform

# torchvision's RandomResizedCrop tries this many random boxes before the central fallback.
_CROP_ATTEMPTS = 10
# grid_sample (bilinear, 4 taps) aliases when it shrinks by much more than this; larger sources are
# first resized with an antialiasing filter.
_MAX_GRID_DOWNSCALE = 1.5


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
    on_cpu = (device is None or torch.device(device).type == "cpu") and dtype == torch.float32
    rs, gs = [], []
    for axis in (0, 1):
        # Per-sample terms, float64 → the grid's dtype (on the CPU: one conversion for all).
        terms = torch.stack((m[:, axis, 0], m[:, axis, 1], m[:, axis, 2], centre[:, axis], half[:, axis],
                             centre[:, axis] - half[:, axis] * bound[:, axis],
                             centre[:, axis] + half[:, axis] * bound[:, axis]), dim=1)
        cast = terms.to(device=device, dtype=dtype) if on_cpu else None
        col = (lambda k: cast[:, k].view(n, 1, 1)) if on_cpu else (lambda k: per_sample(terms[:, k]))
        # r: the position in the (flipped, rotated-back) crop square, [−1, 1] inside it; one full
        # pass (the other terms broadcast over a row or a column only).
        r = col(0) * xs.view(1, 1, size) + (col(1) * xs.view(1, size, 1) + col(2))
        if on_cpu:
            # centre + r·half, clamped to [lo, hi], per image: the same single-rounding FMA as
            # addcmul and the same clamp, but vectorised (two broadcast operands are not).
            g = torch.empty_like(r)
            for i, (h, lo, hi) in enumerate(cast[:, 4:].tolist()):
                torch.add(cast[i, 3], r[i], alpha=h, out=g[i]).clamp_(lo, hi)
            gs.append(g)
        else:
            gs.append(torch.addcmul(col(3), r, col(4)).clamp_(col(5), col(6)))
        rs.append(r)
    gx, gy = gs
    if rotate:
        reach = rs[0].abs_()
        outside = torch.maximum(reach, rs[1].abs_(), out=reach) >= 1.0
        gx.masked_fill_(outside, _OUTSIDE)  # x alone far outside: all four taps read zero padding
    return _interleave(gx, gy)


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
    return _interleave(gx, gy)


def _interleave(gx: Tensor, gy: Tensor) -> Tensor:
    """``torch.stack((gx, gy), dim=-1)``, the same values and strides, ~30× faster on the CPU.

    Stacking along a new last dimension is a slow strided copy; building a complex tensor
    interleaves real and imaginary parts in one vectorised pass (a pure copy: exact).
    """
    if gx.dtype not in (torch.float32, torch.float64) or gx.dtype != gy.dtype or gx.shape != gy.shape:
        return torch.stack((gx, gy), dim=-1)
    return torch.view_as_real(torch.complex(gx.contiguous(), gy.contiguous()))


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


class Geometry(NamedTuple):
    """Per-sample geometric parameters (float64 / bool, on the generator's device)."""

    boxes: Tensor | None  # [n, 4] (top, left, h, w) on the original geometry; None: no crop
    hflip: Tensor  # bool [n]
    vflip: Tensor  # bool [n]
    angle: Tensor  # [n] degrees, counter-clockwise


def _flip_samples_(x: Tensor, mask: Tensor, dim: int) -> None:
    """Flip, in place along ``dim``, the samples whose mask is set (mask: bool [N])."""
    idx = _host_indices(mask, x.device)
    if idx is None:
        return
    if x.device.type == "cpu":  # per image: index_copy_'s element loop is ~5× slower (a pure copy)
        for i in idx.tolist():
            x[i].copy_(x[i].flip(dim))
    else:
        x.index_copy_(0, idx, x.index_select(0, idx).flip(dim))
