"""Whole-batch image augmentation on the compute device, with per-sample random parameters.

Public face: the preset registry (:func:`register_augmentation`, :func:`get_augmentation`,
:func:`list_augmentations`, :data:`PRESETS`, :class:`Augmentation`), :class:`BatchAugment` with
:class:`ColorJitter` (to build a preset) and the ImageNet normalisation. One module per job:
``geometry`` (crop boxes, flips, rotation: the sampling grid), ``colour`` (colour ops and jitter),
``draws`` (per-sample random parameters), ``batch`` (the batch transform), ``presets`` (the registry
and the built-in presets), ``randaugment`` (BCL's RandAugment view).

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

**CPU speed, same bits (issue 11).** The CPU path computes exactly the values of the plain tensor
formulas above (tests/test_augment_exact.py pins every preset's output bits, strides and
generator state against the code before, and each rewrite against the op it replaces), but: a
single-threaded worker computes its chunk 4 images at a time (``CPU_PIECE``: every op is per
image; small intermediates are reused from the heap, not freshly page-faulted), output batches
are recycled once nothing references them (:class:`_OutputPool`), the resize-only path flips
uint8 pixels and converts them straight into the output, jitter ops run in place, ops whose
broadcast operands would drop PyTorch into its scalar loop (``addcmul`` normalisation, contrast's
``lerp``, the grid's ``addcmul``/``clamp``) are issued per channel or per image as the same
vectorised single-rounding kernels, hue avoids ``remainder`` by an exact case split (see
:func:`_hue_`), and the grid is interleaved via ``torch.complex`` instead of ``torch.stack``.
CUDA keeps the whole-batch ops.

The presets follow the ECL code (zylbuaa/ECL, ``utils/dataset/isic.py``); see ``presets``.
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
from ltbench.data.augment import randaugment as _randaugment  # noqa: F401  registers "randaugment" (BCL)
from ltbench.data.augment.batch import IMAGENET_MEAN, IMAGENET_STD, BatchAugment
from ltbench.data.augment.colour import ColorJitter
from ltbench.data.augment.presets import (PRESET_SOURCES, PRESETS, Augmentation, get_augmentation, list_augmentations,
                                          register_augmentation, renormalised, unregister_augmentation)

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "PRESETS", "PRESET_SOURCES", "Augmentation", "BatchAugment", "ColorJitter",
           "get_augmentation", "list_augmentations", "register_augmentation", "renormalised", "unregister_augmentation"]
