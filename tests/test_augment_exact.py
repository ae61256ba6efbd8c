"""The CPU augmentation presets give bit-identical batches to the code before issue 11's speed-ups.

Issue 11 made the CPU presets cheaper (colour ops in fewer passes, flips on uint8, normalisation
fused, ...) under a hard constraint: for the same generator state every preset must return the
same bits, in the same memory layout, and leave the generator in the same state (the golden test
checks CE, focal and ECL on top of this). The code before the change (commit 1210f97) is kept in
``tests/reference`` and run here, in the same process, on the same inputs: a pinned hash of its
output would hold on one CPU only (float kernels differ across CPUs; tests/README.md), while the
two codes agree on every kernel tried (AVX-512, AVX2 and ATen's default, 1 and 2 threads).

Cases: real ISIC images in the cache's 256 px square, as the loader hands them over (a permuted
NHWC array, with original sizes) and contiguous (without sizes); random uint8 of odd sizes; float
input; batches of 5 (one chunk), 16 and 64 (four chunks); each preset, with 1 and 2 torch threads,
through ``forward`` and through the split jobs run in reverse order (the worker path), against the
code before's ``forward`` with the same thread count (RandAugment applies an op to a sub-batch of
one image, whose per-image mean torch splits across threads: 1 and 2 threads may differ, in both).
"""
from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch

from ltbench.data import augment as A
from ltbench.data.augment import batch, colour, geometry
from ltbench.data.cache import decode_image
from tests.conftest import REPO, shared_data_dir
from tests.reference import augment_1210f97 as BEFORE

CACHE, S = 256, 224
# Original (height, width) per image, cycled: ISIC-like sizes on which the contrastive crop is drawn.
ORIGINALS = ((450, 600), (768, 1024), (1024, 1024), (680, 1024), (1024, 768), (224, 224))


def _real_nhwc(n: int) -> np.ndarray:
    folder = shared_data_dir() / "isic2018_task3_test_224" / "images"
    paths = sorted(folder.glob("*.jpg"))[:n]
    if len(paths) < n:
        pytest.skip(f"real ISIC 2018 test images not found at {folder}")
    return np.stack([decode_image(p, CACHE) for p in paths])


def _sizes(n: int) -> torch.Tensor:
    return torch.tensor([ORIGINALS[i % len(ORIGINALS)] for i in range(n)])


def _inputs(name: str) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """(images, sizes, output side) of one input set."""
    if name == "real64":  # as TrainStream gives it: a permuted NHWC batch, with original sizes
        return torch.from_numpy(_real_nhwc(64)).permute(0, 3, 1, 2), _sizes(64), S
    if name == "real16":  # contiguous NCHW, no sizes
        return torch.from_numpy(_real_nhwc(16)).permute(0, 3, 1, 2).contiguous(), None, S
    g = torch.Generator().manual_seed(11)
    if name == "rand5":  # one chunk, non-square, upscaled, with sizes
        return torch.randint(0, 256, (5, 3, 90, 120), dtype=torch.uint8, generator=g), _sizes(5), 96
    if name == "rand40":  # a large source, shrunk (presample path), NHWC permuted
        x = torch.randint(0, 256, (40, 300, 310, 3), dtype=torch.uint8, generator=g)
        return x.permute(0, 3, 1, 2), _sizes(40), 64
    if name == "same20":  # uint8 already at the output size (no resize), NHWC permuted, 2 chunks
        x = torch.randint(0, 256, (20, 64, 64, 3), dtype=torch.uint8, generator=g)
        return x.permute(0, 3, 1, 2), None, 64
    if name == "float16":  # float input in [0, 1]
        return torch.rand(16, 3, 72, 72, generator=g), None, 64
    raise KeyError(name)


INPUTS = ("real64", "real16", "rand5", "rand40", "same20", "float16")
PRESETS = ("eval", "standard", "contrastive", "randaugment")
SEEDS = (0, 1)


def _cases() -> list[str]:
    out = []
    for inp in INPUTS:
        for preset in PRESETS:
            if preset == "randaugment" and inp == "real64":
                continue  # slow; real16 covers it
            out.extend(f"{inp}/{preset}/seed{seed}" for seed in SEEDS)
    return out


def augmented(module, case: str, threads: int, path: str, inputs: dict | None = None):
    """One case's output and the generator state afterwards, from ``module``'s presets (the current
    ``ltbench.data.augment`` or the code before)."""
    inp, preset, seed = case.split("/")
    images, sizes, size = (inputs or {}).get(inp) or _inputs(inp)
    aug = module.get_augmentation(preset, size)
    gen = torch.Generator().manual_seed(int(seed[4:]))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        if path == "split" and isinstance(aug, module.BatchAugment):
            out, jobs = aug.split(images, gen, sizes=sizes)
            results = [job() for job in reversed(jobs)]
            out = results[-1] if out is None else out
        else:
            out = aug(images, gen, sizes=sizes)
    finally:
        torch.set_num_threads(before)
    return out.detach(), gen.get_state()


# (torch threads, path): forward as the sequential stream runs it, the split jobs as the workers do.
RUNS = ((2, "forward"), (1, "forward"), (1, "split"))


@pytest.fixture(scope="module")
def inputs() -> dict:
    return {}


def _cached(inputs: dict, name: str):
    if name not in inputs:
        inputs[name] = _inputs(name)
    return inputs


@pytest.mark.parametrize("case", _cases())
def test_preset_output_is_bit_identical_to_the_code_before(case: str, inputs: dict) -> None:
    _cached(inputs, case.split("/")[0])
    before = {t: augmented(BEFORE, case, t, "forward", inputs) for t in sorted({t for t, _ in RUNS})}
    for threads, path in RUNS:
        (out, state), (ref, ref_state) = augmented(A, case, threads, path, inputs), before[threads]
        where = (case, threads, path)
        assert (out.dtype, out.shape, out.stride()) == (ref.dtype, ref.shape, ref.stride()), where
        assert torch.equal(out, ref), (*where, f"max |diff| {(out.double() - ref.double()).abs().max().item():.3g}")
        assert torch.equal(state, ref_state), (*where, "generator state")


def test_the_reference_is_the_code_before_verbatim() -> None:
    """tests/reference holds commit 1210f97's files, changed only in their header and one import."""
    for name, imported in (("augment", "randaugment"), ("randaugment", "augment")):
        try:
            landed = subprocess.run(["git", "-C", str(REPO), "show", f"1210f97:ltbench/data/{name}.py"],
                                    capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            pytest.skip("no git history with commit 1210f97 (an export or a shallow clone)")
        kept = (REPO / "tests" / "reference" / f"{name}_1210f97.py").read_text(encoding="utf-8")
        kept = kept.split("\n", 2)[2].replace(f"from tests.reference import {imported}_1210f97 as",
                                               f"from ltbench.data import {imported} as")
        assert kept == landed, name


# ------------------------------------------------------------------ the exact rewrites, op by op
# (bit-equality with the functional ops they replace, on inputs chosen to reach their edge cases)


def _colour_batch(n: int = 6, side: int = 37, seed: int = 3) -> torch.Tensor:
    """Random colours plus few-level images (ties between channels, grey, black, white)."""
    g = torch.Generator().manual_seed(seed)
    smooth = torch.rand(n, 3, side, side, generator=g)
    levels = torch.randint(0, 4, (n, 3, side, side), generator=g).float() / 3
    return torch.cat([smooth, levels])


@pytest.mark.parametrize("shift", [-0.5, -0.34, -1 / 3, -0.3, -0.1, -1e-7, 0.0, 0.05, 0.1, 1 / 3, 0.34, 0.5])
def test_in_place_hue_equals_adjust_hue_bit_for_bit(shift: float) -> None:
    x = _colour_batch()
    shifts = torch.full((x.shape[0],), shift)
    shifts[::3] = -shifts[::3]  # per-sample shifts of both signs in one call
    assert torch.equal(colour._hue_(x.clone(), shifts), colour.adjust_hue(x, shifts))


def test_in_place_hue_on_the_preset_range() -> None:
    x = _colour_batch(n=12, side=64, seed=5)
    for seed in range(3):
        shifts = torch.empty(x.shape[0]).uniform_(-0.1, 0.1, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(colour._hue_(x.clone(), shifts), colour.adjust_hue(x, shifts))


def test_in_place_colour_ops_equal_the_functional_ones() -> None:
    x = _colour_batch()
    factors = torch.linspace(0.0, 1.6, x.shape[0])  # lerp's two branches (weight below / above 0.5)
    for in_place, functional in ((colour._brightness_, colour.adjust_brightness), (colour._contrast_, colour.adjust_contrast),
                                 (colour._saturation_, colour.adjust_saturation)):
        assert torch.equal(in_place(x.clone(), factors), functional(x, factors)), functional.__name__


def test_normalise_equals_addcmul_everywhere() -> None:
    """Every uint8 level at every position of a vector body and of a scalar tail, plus random floats."""
    mean = torch.tensor(A.IMAGENET_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(A.IMAGENET_STD, dtype=torch.float64).view(1, 3, 1, 1)
    scale, bias = (1 / std).float(), (-mean / std).float()
    levels = torch.arange(256, dtype=torch.float32).div_(255.0)
    for width in (256 * 33, 256 + 7, 1, 5):
        x = levels.repeat(3 * width // 256 + 1)[: 3 * width].view(1, 3, 1, width)
        x = torch.cat([x, torch.rand(2, 3, 1, width, generator=torch.Generator().manual_seed(width))])
        assert torch.equal(batch.normalise(x, A.IMAGENET_MEAN, A.IMAGENET_STD), torch.addcmul(bias, x, scale))
    channels_last = torch.rand(2, 3, 9, 11).contiguous(memory_format=torch.channels_last)
    out = batch.normalise(channels_last, A.IMAGENET_MEAN, A.IMAGENET_STD)
    ref = torch.addcmul(bias, channels_last, scale)
    assert torch.equal(out, ref) and out.stride() == ref.stride()


def test_interleave_equals_stack() -> None:
    gx, gy = torch.rand(3, 5, 7), torch.rand(3, 5, 7)
    out, ref = geometry._interleave(gx, gy), torch.stack((gx, gy), dim=-1)
    assert torch.equal(out, ref) and out.stride() == ref.stride()


def test_output_buffers_are_reused_only_when_released() -> None:
    aug = A.get_augmentation("standard", 32)
    images = torch.randint(0, 256, (40, 3, 40, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    first = aug(images, torch.Generator().manual_seed(1))
    kept, address = first.clone(), first.data_ptr()
    view = first[:3]
    del first
    second = aug(images, torch.Generator().manual_seed(1))  # a view still holds the first buffer
    assert second.data_ptr() != address and torch.equal(view, kept[:3])
    del view, second
    third = aug(images, torch.Generator().manual_seed(1))  # released: reused, and the same values
    assert third.data_ptr() == address and torch.equal(third, kept)
    assert third.stride() == kept.stride()
