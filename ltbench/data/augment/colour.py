"""Colour ops on float N×3×H×W images in [0, 1], with per-sample factors, and ColorJitter.

The functional ops (:func:`adjust_brightness`, :func:`adjust_contrast`, :func:`adjust_saturation`,
:func:`adjust_hue`, :func:`rgb_to_grayscale`) are torchvision's formulas for float images, vectorised
over the batch. ``RandomApply(ColorJitter)`` draws its per-sample factors and one op order per
batch (:func:`_draw_jitter`) and applies them to the chosen samples only (:func:`_apply_jitter_`);
on the CPU through the in-place versions of the ops, bit-identical to the functional ones
(tests/test_augment_exact.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ltbench.data.augment.draws import _coin, _host_indices, _uniform

# ITU-R 601-2 luma weights, as torchvision's rgb_to_grayscale (and PIL's "L" conversion).
_LUMA = (0.2989, 0.587, 0.114)


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


@dataclass(frozen=True)
class ColorJitter:
    """torchvision's ``RandomApply([ColorJitter(b, c, s, h)], p)`` settings."""

    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0
    p: float = 1.0


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
    # On the CPU the ops run in place on the gathered copy (same values, no new tensors).
    in_place = x.device.type == "cpu" and x.dtype == torch.float32
    for op in (ops[i] for i in order):
        if op is not None:
            fn, factor = op
            factor = factor[applied].to(device=x.device, dtype=x.dtype)
            sub = _IN_PLACE[fn](sub, factor) if in_place else fn(sub, factor)
    if in_place:  # per-image copies: ~2× faster than index_copy_'s element loop on the CPU
        for j, i in enumerate(idx.tolist()):
            x[i].copy_(sub[j])
    else:
        x.index_copy_(0, idx, sub)


# In-place CPU versions of the jitter ops: the same kernels on the same operands (so the same
# bits, tests/test_augment_exact.py), but no new tensor per step — on the CPU fresh multi-MB
# tensors cost page faults — and vectorised where the functional form hits PyTorch's scalar loop.

def _brightness_(x: Tensor, factor: Tensor) -> Tensor:
    """:func:`adjust_brightness` in place (float32 CPU, ``factor`` float32 [N])."""
    return x.mul_(factor.view(-1, 1, 1, 1)).clamp_(0.0, 1.0)


def _contrast_(x: Tensor, factor: Tensor) -> Tensor:
    """:func:`adjust_contrast` in place.

    ``lerp`` with a broadcast start (the mean) and a broadcast weight falls back to PyTorch's
    scalar loop; per image, a scalar weight takes the vectorised kernel (the same formula: its
    scalar and vector forms both round once, as FMA) — ~7× faster, bit-identical.
    """
    mean = rgb_to_grayscale(x).mean(dim=(-3, -2, -1), keepdim=True)
    for i, f in enumerate(factor.tolist()):
        torch.lerp(mean[i].expand_as(x[i]), x[i], f, out=x[i])
    return x.clamp_(0.0, 1.0)


def _saturation_(x: Tensor, factor: Tensor) -> Tensor:
    """:func:`adjust_saturation` in place."""
    gray = rgb_to_grayscale(x)
    return torch.lerp(gray.expand_as(x), x, factor.view(-1, 1, 1, 1), out=x).clamp_(0.0, 1.0)


def _hue_(x: Tensor, shift: Tensor) -> Tensor:
    """:func:`adjust_hue` in place, bit-identical, without its costly ``remainder`` (Sleef fmod).

    adjust_hue computes ``t = (a mod 6) − 2`` for a = h6 + n (n = 5, 3, 1), then
    ``clamp(|t| − 1, 0, 1)``. Each sextant formula is bounded by rounding-monotone terms, so
    h ∈ [−1, 5]; with shifts in [−1/3, 1/2], a ∈ [−2, 13]. Here t = fl(a − 2), then 6 is
    subtracted where t ≥ 4, twice if a may reach 12. Both give the same bits: for a ∈ [6, 18),
    a − 6 (resp. a − 12) is exact (Sterbenz), a − 2 and a − 8 are exact too (a, being ≥ 6, lies
    on a grid of 2⁻²¹ that they fit), so every path rounds the same real number a − 8 (a − 14)
    once; t ≥ 4 exactly when a ≥ 6; for a ∈ [0, 6) both are fl(a − 2); for a ∈ [−2, 0) both
    |t| ≥ 2, i.e. weight 1. Other shifts fall back to :func:`adjust_hue`.
    """
    if shift.numel() == 0:
        return x
    low, high = float(shift.min()), float(shift.max())
    if low < -1.0 / 3.0 + 1e-6 or high > 0.5:
        return x.copy_(adjust_hue(x, shift))
    minc, maxc = x.amin(dim=-3, keepdim=True), x.amax(dim=-3, keepdim=True)
    r, g, b = x.split(1, dim=-3)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    not_g = torch.where(maxc == g, (b - r).add_(delta, alpha=2.0), (r - g).add_(delta, alpha=4.0))
    h6 = torch.where(maxc == r, g - b, not_g).div_(safe).add_(6.0 * _per_sample(shift, x))
    offsets = torch.tensor((5.0, 3.0, 1.0), dtype=x.dtype, device=x.device)
    t = (h6 + offsets.view(3, 1, 1)).sub_(2.0)
    for _ in range(2 if high > 1.0 / 3.0 - 1e-6 else 1):  # a ≥ 12 only for shifts above 1/3
        # t − 6·[t ≥ 4]: the product is exact, so one rounding of t − 6 (or t itself).
        t.sub_((t >= 4.0).to(t.dtype), alpha=6.0)
    weight = t.abs_().sub_(1.0).clamp_(0.0, 1.0)
    # adjust_hue's weight·(max − min) + min, clamped (max − min is delta), written into x.
    torch.mul(weight, delta, out=x)
    return x.add_(minc).clamp_(0.0, 1.0)


def _factor_op(
    fn: Callable[[Tensor, Tensor], Tensor], strength: float, n: int,
    generator: torch.Generator | None,
) -> tuple[Callable[[Tensor, Tensor], Tensor], Tensor] | None:
    """An op with per-sample factors uniform in [max(0, 1 − s), 1 + s]; None when s = 0."""
    if strength <= 0:
        return None
    return fn, _uniform(n, max(0.0, 1.0 - strength), 1.0 + strength, generator)


_IN_PLACE = {adjust_brightness: _brightness_, adjust_contrast: _contrast_,
             adjust_saturation: _saturation_, adjust_hue: _hue_}
