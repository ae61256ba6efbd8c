"""The batch transform: uint8 N×3×H×W → float32 N×3×S×S, augmented per sample, normalised.

:class:`BatchAugment` runs a preset's pipeline (geometry, colour, grayscale, normalisation) on
whatever device the batch lives on; on the CPU it draws every random parameter of a batch first and
splits the work into chunk jobs that draw nothing (:meth:`BatchAugment.split`), which the loader
runs on single-threaded workers with bit-identical results. The package docstring
(``ltbench.data.augment``) describes the ops and where they depart from torchvision.
"""
from __future__ import annotations

import copy
import math
import threading
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ltbench.data.augment.colour import ColorJitter, _apply_jitter_, _draw_jitter, rgb_to_grayscale
from ltbench.data.augment.draws import _coin, _host_indices, _uniform
from ltbench.data.augment.geometry import (Geometry, _flip_samples_, geometry_grid, presample_size,
                                           sample_crop_boxes)
from ltbench.data.geometry import ViewGeometry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


CPU_CHUNK = 16  # images per chunk when augmenting on the CPU (fixes the order of the random draws)
CPU_PIECE = 4  # images computed at once within a chunk by a single-threaded worker (see BatchAugment._apply)


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
        self._outputs = _OutputPool()

    def extra_repr(self) -> str:
        return (f"size={self.size}, crop_scale={self.crop_scale}, hflip_p={self.hflip_p}, "
                f"vflip_p={self.vflip_p}, rotation_deg={self.rotation_deg}, "
                f"jitter={self.jitter}, grayscale_p={self.grayscale_p}")

    def restricted(self, geometry: ViewGeometry) -> BatchAugment:
        """This view with only the flips and rotation ``geometry`` allows (itself if it allows all).

        The random draws stay the same (a forbidden flip is drawn with probability 0, a rotation
        range capped at the dataset's limit), so the colour draws of every image are unchanged.
        """
        hflip_p = self.hflip_p if geometry.hflip else 0.0
        vflip_p = self.vflip_p if geometry.vflip else 0.0
        rotation = min(self.rotation_deg, geometry.rotation)
        if (hflip_p, vflip_p, rotation) == (self.hflip_p, self.vflip_p, self.rotation_deg):
            return self
        view = copy.deepcopy(self)  # a fresh output pool (see _OutputPool.__deepcopy__)
        view.hflip_p, view.vflip_p, view.rotation_deg = hflip_p, vflip_p, rotation
        return view

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
        out = self._outputs.get((n, 3, self.size, self.size)) if n > CPU_CHUNK else None
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
        """The augmentation with given draws (no random draw here); into ``out`` if given.

        Single-threaded into a preallocated output (the loader's workers), the chunk is computed
        CPU_PIECE images at a time: every op is per image, so the values are the same, while the
        intermediates stay small enough to be reused from the heap and the caches instead of
        being freshly mapped (page faults) for every op. (With several intra-op threads the chunk
        runs whole: torch splits a one-image reduction across threads, which changes its bits.)
        """
        n = images.shape[0]
        if out is None or n <= CPU_PIECE or images.device.type != "cpu" or torch.get_num_threads() != 1:
            return self._apply_piece(images, sizes, draws, out)
        for start in range(0, n, CPU_PIECE):
            part = slice(start, start + CPU_PIECE)
            self._apply_piece(images[part], None if sizes is None else sizes[part], _slice_draws(draws, part),
                              out[part])
        return out

    def _apply_piece(self, images: Tensor, sizes: Tensor | None, draws: _Draws, out: Tensor | None) -> Tensor:
        # A new float32 tensor: later ops may be in place. Into a preallocated (NCHW) output the
        # layout of x is free; otherwise it stays what it always was (the model sees the same strides).
        x = self._apply_geometry(images, sizes, draws.geometry, contiguous=out is not None, into=out)
        if draws.jitter is not None:
            _apply_jitter_(x, draws.jitter)
        if draws.grayscale is not None:
            idx = _host_indices(draws.grayscale, x.device)
            if idx is not None:
                gray = rgb_to_grayscale(x.index_select(0, idx)).expand(-1, 3, -1, -1)
                if x.device.type == "cpu":  # per-image copies: faster than index_copy_ on the CPU
                    for j, i in enumerate(idx.tolist()):
                        x[i].copy_(gray[j])
                else:
                    x.index_copy_(0, idx, gray)
        return self._normalise(x, out)  # x may be out itself: normalised in place

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
                        contiguous: bool = False, into: Tensor | None = None) -> Tensor:
        """Crop / resize / flip / rotate to N×3×S×S with given parameters.

        ``into`` (CPU, NCHW float32, with ``contiguous``): a buffer the result may be written to
        (the chunk's slice of the output, so the resize-only path allocates no float tensor).
        """
        _, _, height, width = images.shape
        orig_h, orig_w = (height, width) if sizes is None else sizes.unbind(dim=1)
        boxes, hflip, vflip, angle = geometry
        if boxes is None and self.rotation_deg == 0:
            # Resize + flips only: an exact antialiased resize (= torchvision's Resize((S, S)))
            # and exact flips are both cheaper and sharper than a resampling grid.
            if images.dtype == torch.uint8 and images.device.type == "cpu":
                # Flip the resized uint8 pixels (a permutation commutes with the conversion to
                # float, so the same values), a quarter of the bytes of flipping floats.
                size = (self.size, self.size)
                if tuple(images.shape[-2:]) != size:
                    pixels = F.interpolate(images, size=size, mode="bilinear", antialias=True)
                elif bool(hflip.any() or vflip.any()):
                    pixels = images.clone()  # never flip the caller's tensor
                else:
                    pixels = images
                _flip_samples_(pixels, hflip, dim=-1)
                _flip_samples_(pixels, vflip, dim=-2)
                return _to_unit_float(pixels, contiguous, into=into if contiguous else None)
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
        return normalise(x, self.mean, self.std, out)


class _Draws(NamedTuple):
    """Every random parameter of one chunk, drawn by :meth:`BatchAugment._draw`."""

    geometry: Geometry
    jitter: tuple[Tensor, list[int], list] | None  # see _draw_jitter; None: no jitter
    grayscale: Tensor | None  # bool [n]; None: no random grayscale


class _OutputPool:
    """Output batches for :meth:`BatchAugment.split`, recycled once nothing references them.

    A 64×3×224×224 float32 batch (38.5 MB) is above glibc's largest dynamic mmap threshold, so a
    fresh one is mapped for every batch and page-faulted in by the first write (~10-30 ms on
    this CPU, per view and batch). The pool keeps the storages of up to ``keep`` outputs and
    hands one out again only when no tensor uses it any more (its reference count is the pool's
    alone: the consumer, its views and autograd's saved tensors all count), so a batch still in
    use is never overwritten. Every output element is written by the chunk jobs, so a reused
    buffer returns exactly what a fresh one would.
    """

    def __init__(self, keep: int = 3) -> None:
        self.keep, self._storages, self._lock = keep, [], threading.Lock()

    def get(self, shape: tuple[int, ...]) -> Tensor:
        numel = math.prod(shape)
        with self._lock:
            if _storage_use_count is not None:
                for storage in self._storages:
                    if storage.nbytes() == numel * 4 and _storage_use_count(storage._cdata) == 1:
                        return torch.empty(0, dtype=torch.float32).set_(storage, 0, shape)
            out = torch.empty(shape, dtype=torch.float32)
            if _storage_use_count is not None:
                if len(self._storages) >= self.keep:
                    self._storages.pop(0)  # all in use: forget the oldest (it is freed with its batch)
                self._storages.append(out.untyped_storage())
            return out

    def __getstate__(self) -> dict:  # a copied or pickled preset starts with an empty pool
        return {"keep": self.keep}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["keep"])

    def __deepcopy__(self, memo) -> "_OutputPool":
        return _OutputPool(self.keep)


# PyTorch's reference count of a storage (private, but stable since 1.x); without it no pooling.
_storage_use_count = getattr(torch._C, "_storage_Use_Count", None)


def _slice_draws(draws: _Draws, part: slice) -> _Draws:
    """The draws of the images ``part`` of a chunk (every draw is per image, except the jitter's op order)."""
    boxes, hflip, vflip, angle = draws.geometry
    geometry = Geometry(None if boxes is None else boxes[part], hflip[part], vflip[part], angle[part])
    jitter = None
    if draws.jitter is not None:
        applied, order, ops = draws.jitter
        jitter = (applied[part], order, [None if op is None else (op[0], op[1][part]) for op in ops])
    gray = None if draws.grayscale is None else draws.grayscale[part]
    return _Draws(geometry, jitter, gray)


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


def normalise(x: Tensor, mean: tuple[float, ...], std: tuple[float, ...], out: Tensor | None = None) -> Tensor:
    """(x − mean) / std per channel, computed as the fused ``fma(x, 1/std, −mean/std)`` (float32).

    ``out``: write there (it may be ``x`` itself); None: a new tensor in ``x``'s memory format.
    ``torch.addcmul(bias, x, scale)`` computes exactly this, but with two broadcast operands
    PyTorch's CPU loop is not vectorised; on the CPU each channel is instead one vectorised
    ``torch.add(bias_c, x_c, alpha=scale_c)`` — the same single-rounding FMA, bit for bit
    (tests/test_augment_exact.py), ~2× faster.
    """
    mean_t = torch.tensor(mean, dtype=torch.float64).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float64).view(1, -1, 1, 1)
    scale = (1.0 / std_t).to(device=x.device, dtype=x.dtype)
    bias = (-mean_t / std_t).to(device=x.device, dtype=x.dtype)
    if x.device.type != "cpu" or x.dtype != torch.float32 or x.shape[1] != scale.shape[1]:
        return torch.addcmul(bias, x, scale) if out is None else torch.addcmul(bias, x, scale, out=out)
    dst = torch.empty_like(x) if out is None else out  # empty_like keeps x's strides, as addcmul's output
    for c in range(x.shape[1]):
        torch.add(bias[0, c, 0, 0], x[:, c], alpha=float(scale[0, c, 0, 0]), out=dst[:, c])
    return dst


def _to_unit_float(images: Tensor, contiguous: bool = False, into: Tensor | None = None) -> Tensor:
    """A new float32 tensor in [0, 1] (uint8 is scaled; float is taken as already in [0, 1]).

    ``contiguous``: in NCHW order (the same values; the colour ops' channel-plane passes run
    ~20 % faster on a CPU than on the channels-last layout a permuted NHWC cache gives).
    ``into``: an NCHW float32 buffer of the batch's shape to fill and return instead.
    """
    if into is not None:
        into.copy_(images)  # the same conversion as .to(float32), into existing memory
        return into.div_(255.0) if images.dtype == torch.uint8 else into
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
