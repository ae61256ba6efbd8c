"""The CPU augmentation presets give bit-identical batches to the code before issue 11's speed-ups.

Issue 11 made the CPU presets cheaper (colour ops in fewer passes, flips on uint8, normalisation
fused, ...) under a hard constraint: for the same generator state every preset must return the
same bits, in the same memory layout, and leave the generator in the same state (the golden test
pins CE, focal and ECL on top of this). ``EXACT`` holds a SHA-256 of (values, shape, strides,
generator state afterwards) per case, recorded with ``python -m tests.test_augment_exact`` (which
prints the dict) from a pristine export of the code before the change (commit 1210f97), on this
project's 2-core CPU machine (AVX-512) with torch 2.14.1. Float results can depend on the CPU's
vector width, so on another machine or torch version these hashes may not apply: re-record them
from the old code there, never from the new.

Cases: real ISIC images in the cache's 256 px square, as the loader hands them over (a permuted
NHWC array, with original sizes) and contiguous (without sizes); random uint8 of odd sizes; float
input; batches of 5 (one chunk), 16 and 64 (four chunks); each preset, with 1 and 2 torch threads,
through ``forward`` and through the split jobs run in reverse order (the worker path).
"""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ltbench.data import augment as A
from ltbench.data.cache import decode_image
from tests.conftest import shared_data_dir

CACHE, S = 256, 224
# Original (height, width) per image, cycled: ISIC-like sizes on which the contrastive crop is drawn.
ORIGINALS = ((450, 600), (768, 1024), (1024, 1024), (680, 1024), (1024, 768), (224, 224))

# case -> sha256[:20] (see the module docstring; recorded from the code before the speed-ups).
# "case@Nt": the value with N torch threads where it differs (pre-existing: RandAugment applies an
# op to a sub-batch of one image, whose per-image mean torch splits across threads).
EXACT: dict[str, str] = {
    'real64/eval/seed0': '941178602f4708e9c410',
    'real64/eval/seed1': '9e7fe5d76e4834ad199e',
    'real64/standard/seed0': 'ddfedb7981050b7b3dea',
    'real64/standard/seed1': '0d72d35f7579b0926635',
    'real64/contrastive/seed0': '7570682082386655410d',
    'real64/contrastive/seed1': '69634414ad59ab5c011c',
    'real16/eval/seed0': 'c0512cb1201cdefa5709',
    'real16/eval/seed1': 'b6f3ffa35bf33c965a74',
    'real16/standard/seed0': '5e84e852553439427bfa',
    'real16/standard/seed1': 'd230465d5ec9d2619973',
    'real16/contrastive/seed0': 'ea788140c2d6baf6908e',
    'real16/contrastive/seed1': '88ea290009d4b4452610',
    'real16/randaugment/seed0': '265002279b054d8b97ed',
    'real16/randaugment/seed0@1t': '951878f7e7417008fd29',  # differs with 1 thread(s)
    'real16/randaugment/seed1': '5624e0aa60b8071a026d',
    'rand5/eval/seed0': '6ef372ce8935a512fefd',
    'rand5/eval/seed1': '8afeb7960bb0cf05c6db',
    'rand5/standard/seed0': 'd173e2a3ecbaa4ec4f4d',
    'rand5/standard/seed1': '27363e43db8317342cb1',
    'rand5/contrastive/seed0': '5ca74604d75cc7569d63',
    'rand5/contrastive/seed1': '9e68bbbe5c4bacd722d1',
    'rand5/randaugment/seed0': '8b6cb04ad613c76df09b',
    'rand5/randaugment/seed1': '8741c9c116b1e119a49f',
    'rand40/eval/seed0': 'e5782c029b7d21aa484c',
    'rand40/eval/seed1': '4c150f9ed71285000f3f',
    'rand40/standard/seed0': 'ebd0f5545b5becb41f39',
    'rand40/standard/seed1': 'bef9ad1613eba305a292',
    'rand40/contrastive/seed0': 'd9968ec4bcb8f81ff327',
    'rand40/contrastive/seed1': 'db25b7582c4f3cab66a4',
    'rand40/randaugment/seed0': '989b4a1d90a0a9097af5',
    'rand40/randaugment/seed1': '532e6ae3e94ea8dc08a7',
    'same20/eval/seed0': '2a7ed67db6ff4490bc32',
    'same20/eval/seed1': 'ab66fbb0615ec4c58102',
    'same20/standard/seed0': '2cd509b056dccf4d4610',
    'same20/standard/seed1': 'c5661dff62046ffe1718',
    'same20/contrastive/seed0': 'e2611edb4ef54378ca99',
    'same20/contrastive/seed1': '6fd42afbf5ec8f8fedea',
    'same20/randaugment/seed0': 'c9be896784bd449d1017',
    'same20/randaugment/seed1': '13299eb1c4a14544a9e2',
    'float16/eval/seed0': '437c3e2049ff0d3fb5ab',
    'float16/eval/seed1': 'c6764241ca3dbfb8f120',
    'float16/standard/seed0': 'ae681c30caff1b07664c',
    'float16/standard/seed1': '74ac87ef8c2012326c76',
    'float16/contrastive/seed0': '1bd6abe65ac84daac5be',
    'float16/contrastive/seed1': 'b799b30246022d6c9a34',
    'float16/randaugment/seed0': 'f57d4bea6f8ae0fa3e6e',
    'float16/randaugment/seed1': '2ecb466aeaa635cb6a85',
}


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


def fingerprint(case: str, threads: int, path: str, inputs: dict | None = None) -> str:
    """SHA-256 (hex, 20 digits) of one case's output (values, shape, strides) and generator state."""
    inp, preset, seed = case.split("/")
    images, sizes, size = (inputs or {}).get(inp) or _inputs(inp)
    aug = A.get_augmentation(preset, size)
    gen = torch.Generator().manual_seed(int(seed[4:]))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        if path == "split" and isinstance(aug, A.BatchAugment):
            out, jobs = aug.split(images, gen, sizes=sizes)
            results = [job() for job in reversed(jobs)]
            out = results[-1] if out is None else out
        else:
            out = aug(images, gen, sizes=sizes)
    finally:
        torch.set_num_threads(before)
    h = hashlib.sha256()
    h.update(repr((out.dtype, tuple(out.shape), out.stride())).encode())
    h.update(out.detach().contiguous().numpy().tobytes())
    h.update(gen.get_state().numpy().tobytes())
    return h.hexdigest()[:20]


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
    assert case in EXACT, f"no recorded hash for {case}"
    for threads, path in RUNS:
        want = EXACT.get(f"{case}@{threads}t", EXACT[case])
        assert fingerprint(case, threads, path, inputs) == want, (case, threads, path)


if __name__ == "__main__":  # print the values to paste into EXACT (run it on the OLD code)
    cache: dict = {}
    for c in _cases():
        _cached(cache, c.split("/")[0])
        prints = {(t, p): fingerprint(c, t, p, cache) for t, p in RUNS}
        print(f"    {c!r}: {prints[RUNS[0]]!r},")
        for t in sorted({t for t, _ in RUNS if prints[(t, "forward")] != prints[RUNS[0]]}):
            print(f"    {c + f'@{t}t'!r}: {prints[(t, 'forward')]!r},  # differs with {t} thread(s)")
        if len({v for (t, _), v in prints.items() if t == 1}) != 1:
            print(f"# {c}: split jobs differ from forward", file=sys.stderr)


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
    assert torch.equal(A._hue_(x.clone(), shifts), A.adjust_hue(x, shifts))


def test_in_place_hue_on_the_preset_range() -> None:
    x = _colour_batch(n=12, side=64, seed=5)
    for seed in range(3):
        shifts = torch.empty(x.shape[0]).uniform_(-0.1, 0.1, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(A._hue_(x.clone(), shifts), A.adjust_hue(x, shifts))


def test_in_place_colour_ops_equal_the_functional_ones() -> None:
    x = _colour_batch()
    factors = torch.linspace(0.0, 1.6, x.shape[0])  # lerp's two branches (weight below / above 0.5)
    for in_place, functional in ((A._brightness_, A.adjust_brightness), (A._contrast_, A.adjust_contrast),
                                 (A._saturation_, A.adjust_saturation)):
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
        assert torch.equal(A.normalise(x, A.IMAGENET_MEAN, A.IMAGENET_STD), torch.addcmul(bias, x, scale))
    channels_last = torch.rand(2, 3, 9, 11).contiguous(memory_format=torch.channels_last)
    out = A.normalise(channels_last, A.IMAGENET_MEAN, A.IMAGENET_STD)
    ref = torch.addcmul(bias, channels_last, scale)
    assert torch.equal(out, ref) and out.stride() == ref.stride()


def test_interleave_equals_stack() -> None:
    gx, gy = torch.rand(3, 5, 7), torch.rand(3, 5, 7)
    out, ref = A._interleave(gx, gy), torch.stack((gx, gy), dim=-1)
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
