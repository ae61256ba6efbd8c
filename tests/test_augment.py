"""Batch augmentation: shapes, torchvision equivalence of each op, per-sample randomness, seeds."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from ltbench.data import augment as A
from ltbench.data.augment import colour, geometry, presets
from ltbench.errors import LtbenchError
from tests.helpers import torchvision_resizes_uint8_natively

S = 64


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _smooth_uint8(n: int, height: int, width: int) -> torch.Tensor:
    """Low-frequency colour images, where resampling methods agree closely."""
    y = torch.linspace(0, 1, height).view(1, 1, height, 1)
    x = torch.linspace(0, 1, width).view(1, 1, 1, width)
    phase = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1)
    freq = torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1)
    img = 0.5 + 0.4 * torch.sin(math.pi * freq * (x + 0.7 * y) + phase)
    return (img * 255).round().to(torch.uint8)


def _random_uint8(n: int, height: int, width: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, height, width), dtype=torch.uint8, generator=_gen(seed))


def _unnormalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(A.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(A.IMAGENET_STD).view(1, 3, 1, 1)
    return x * std + mean


def _float_image(seed: int = 3, size: int = 32) -> torch.Tensor:
    return torch.rand(1, 3, size, size, generator=_gen(seed))


# ------------------------------------------------------------------ eval / resize / normalise


def test_eval_matches_torchvision_resize_and_normalize() -> None:
    images = _smooth_uint8(3, 768, 1024)
    out = A.get_augmentation("eval", 224)(images)
    assert out.shape == (3, 3, 224, 224) and out.dtype == torch.float32
    ref = TF.resize(images, [224, 224], antialias=True)  # uint8 path, as PIL Resize would round
    ref = TF.normalize(TF.to_dtype(ref, torch.float32, scale=True), A.IMAGENET_MEAN, A.IMAGENET_STD)
    # CPU: the same uint8 resize, where torchvision runs it (else one uint8 level: tests/helpers.py)
    level = 1 / 255 / min(A.IMAGENET_STD)
    torch.testing.assert_close(out, ref, atol=1e-5 if torchvision_resizes_uint8_natively() else level + 1e-5, rtol=0)
    # The float resize (the CUDA path) differs from it only by uint8 rounding: ≤ 1/255 / std.
    float_ref = TF.resize(TF.to_dtype(images, torch.float32, scale=True), [224, 224])
    float_ref = TF.normalize(float_ref, A.IMAGENET_MEAN, A.IMAGENET_STD)
    torch.testing.assert_close(out, float_ref, atol=0.02, rtol=0)


def test_eval_is_deterministic_and_normalised() -> None:
    mean_image = torch.tensor(A.IMAGENET_MEAN).view(1, 3, 1, 1).expand(2, 3, 40, 50).clone()
    aug = A.get_augmentation("eval", S)
    out = aug(mean_image)  # float input in [0, 1] is accepted as-is
    torch.testing.assert_close(out, torch.zeros(2, 3, S, S), atol=1e-5, rtol=0)
    images = _random_uint8(2, 80, 90)
    assert torch.equal(aug(images, _gen(1)), aug(images, _gen(2)))


def test_numpy_nhwc_uint8_input() -> None:
    arr = np.random.default_rng(0).integers(0, 256, size=(4, 50, 70, 3), dtype=np.uint8)
    images = torch.from_numpy(arr).permute(0, 3, 1, 2)
    for name in A.PRESETS:
        out = A.get_augmentation(name, S)(images, _gen())
        assert out.shape == (4, 3, S, S) and out.dtype == torch.float32
        assert torch.isfinite(out).all()
    eval_out = A.get_augmentation("eval", S)(images)
    torch.testing.assert_close(eval_out, A.get_augmentation("eval", S)(images.contiguous()))


def test_unknown_preset_lists_known_ones() -> None:
    with pytest.raises(LtbenchError,
                       match="unknown augmentation 'no-such-preset'; known presets: .*contrastive.*eval.*standard"):
        A.get_augmentation("no-such-preset", 224)


def test_rejects_bad_shape() -> None:
    with pytest.raises(ValueError, match="N×3×H×W"):
        A.get_augmentation("eval", S)(torch.zeros(3, 10, 10, dtype=torch.uint8))


# ------------------------------------------------------------------ flips, rotation, crop


def test_flip_only_equals_torch_flip_exactly() -> None:
    images = _random_uint8(16, S, S)
    base = A.BatchAugment(S)(images)
    out = A.BatchAugment(S, hflip_p=0.5)(images, _gen(0))
    flipped = torch.tensor([torch.equal(o, b.flip(-1)) for o, b in zip(out, base)])
    kept = torch.tensor([torch.equal(o, b) for o, b in zip(out, base)])
    assert (flipped | kept).all()
    assert 0 < flipped.sum() < 16  # decided per sample, not once per batch
    out_v = A.BatchAugment(S, vflip_p=1.0)(images, _gen(0))
    assert torch.equal(out_v, base.flip(-2))


def test_flip_through_the_grid_path() -> None:
    # A full-image "crop" forces affine_grid + grid_sample; flips must still be exact mirrors.
    images = _random_uint8(16, S, S)
    base = A.BatchAugment(S)(images)
    aug = A.BatchAugment(S, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip_p=0.5)
    out = aug(images, _gen(0))
    flipped = torch.tensor([torch.allclose(o, b.flip(-1), atol=1e-4) for o, b in zip(out, base)])
    kept = torch.tensor([torch.allclose(o, b, atol=1e-4) for o, b in zip(out, base)])
    assert (flipped | kept).all() and 0 < flipped.sum() < 16


def _geometry(images: torch.Tensor, hflip: bool, vflip: bool, angle: float) -> torch.Tensor:
    """Apply the grid path with fixed parameters (float images, output same square size)."""
    n, _, h, w = images.shape
    theta = geometry.affine_matrices(None, h, w, torch.full((n,), hflip), torch.full((n,), vflip),
                                     torch.full((n,), angle)).float()
    grid = F.affine_grid(theta, [n, 3, h, w], align_corners=False)
    return F.grid_sample(images, grid, align_corners=False)


def test_affine_grid_equals_torch() -> None:
    theta = torch.randn(5, 2, 3, generator=_gen())
    torch.testing.assert_close(geometry.affine_grid(theta, (7, 11)),
                               F.affine_grid(theta, [5, 3, 7, 11], align_corners=False))


def test_rotation_by_90_equals_rot90() -> None:
    images = _float_image(size=S)
    torch.testing.assert_close(_geometry(images, False, False, 90.0),
                               torch.rot90(images, 1, dims=(-2, -1)), atol=1e-4, rtol=0)
    torch.testing.assert_close(_geometry(images, False, False, -90.0),
                               torch.rot90(images, -1, dims=(-2, -1)), atol=1e-4, rtol=0)


def test_flip_then_rotate_order_matches_torchvision() -> None:
    # torchvision's chain: hflip → vflip → rotate; the composed matrix must keep that order.
    images = _float_image(size=S)
    expected = TF.rotate(TF.vertical_flip(TF.horizontal_flip(images)), 90.0)
    torch.testing.assert_close(_geometry(images, True, True, 90.0), expected, atol=1e-4, rtol=0)
    expected = TF.rotate(TF.horizontal_flip(images), 90.0)
    torch.testing.assert_close(_geometry(images, True, False, 90.0), expected, atol=1e-4, rtol=0)


def test_rotation_by_30_matches_torchvision_inside_the_border() -> None:
    images = TF.to_dtype(_smooth_uint8(1, S, S), torch.float32, scale=True)
    ours = _geometry(images, False, False, 30.0)
    ref = TF.rotate(images, 30.0, interpolation=InterpolationMode.BILINEAR)
    # Only the rim next to the black corners may differ (torchvision multiplies by a fill mask).
    rim = (_geometry(torch.ones_like(images), False, False, 30.0) < 0.999)
    assert rim.any()
    torch.testing.assert_close(ours[~rim], ref[~rim], atol=1e-4, rtol=0)
    assert (ours[rim] - ref[rim]).abs().max() < 0.5


def test_crop_matrix_matches_torchvision_resized_crop() -> None:
    images = TF.to_dtype(_random_uint8(1, 240, 320), torch.float32, scale=True)
    box = torch.tensor([[30.0, 50.0, 200.0, 160.0]])  # top, left, h, w
    no = torch.zeros(1, dtype=torch.bool)
    theta = geometry.affine_matrices(box, 240, 320, no, no, torch.zeros(1)).float()
    grid = F.affine_grid(theta, [1, 3, 100, 100], align_corners=False)
    ours = F.grid_sample(images, grid, align_corners=False)
    ref = TF.resized_crop(images, 30, 50, 200, 160, [100, 100], antialias=False)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)  # float32 grid rounding


def test_crop_boxes_follow_random_resized_crop() -> None:
    boxes = geometry.sample_crop_boxes(2000, 300, 400, (0.8, 1.0), (3 / 4, 4 / 3), _gen())
    top, left, h, w = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= 300).all() and (left + w <= 400).all()
    assert (boxes == boxes.round()).all()
    area = h * w / (300 * 400)
    assert area.min() > 0.78 and area.max() <= 1.0
    assert (w / h).min() >= 0.74 and (w / h).max() <= 4 / 3 + 0.02
    assert len(set(map(tuple, boxes.tolist()))) > 1000  # per sample, not one box for all


def test_crop_fallback_is_central() -> None:
    boxes = geometry.sample_crop_boxes(5, 100, 100, (0.9, 1.0), (3.0, 4.0), _gen())
    # No 3:1 box of ≥ 90 % area fits a square: torchvision falls back to the centre, ratio 3.
    assert boxes.tolist() == [[33.0, 0.0, 33.0, 100.0]] * 5


def test_presample_size() -> None:
    side = math.sqrt(0.8 * 0.75)
    assert geometry.presample_size(768, 1024, 224, side) == (290, 290)
    assert geometry.presample_size(256, 256, 224, side) == (256, 256)


def test_large_source_is_antialiased_before_grid_sample() -> None:
    # A 1-pixel checkerboard shrunk 16× must come out flat grey, not aliased into stripes.
    yy, xx = torch.meshgrid(torch.arange(1024), torch.arange(1024), indexing="ij")
    checker = (((yy + xx) % 2) * 255).to(torch.uint8).expand(2, 3, -1, -1)
    aug = A.BatchAugment(S, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), rotation_deg=1e-3,
                         mean=(0, 0, 0), std=(1, 1, 1))
    out = aug(checker, _gen())
    ref = TF.resize(checker.float() / 255, [S, S], antialias=True)
    torch.testing.assert_close(out, ref, atol=1 / 255, rtol=0)  # the CPU path rounds to uint8
    assert (out[..., 2:-2, 2:-2] - 0.5).abs().max() < 0.01


# ------------------------------------------------------------------ colour ops vs torchvision


@pytest.mark.parametrize("factor", [0.6, 1.0, 1.4])
def test_brightness_contrast_saturation_match_torchvision(factor: float) -> None:
    img = _float_image()
    for ours, ref in [(colour.adjust_brightness, TF.adjust_brightness),
                      (colour.adjust_contrast, TF.adjust_contrast),
                      (colour.adjust_saturation, TF.adjust_saturation)]:
        torch.testing.assert_close(ours(img, factor), ref(img, factor), atol=1e-6, rtol=0)


@pytest.mark.parametrize("shift", [-0.5, -0.1, 0.0, 0.07, 0.3, 0.5])
def test_hue_matches_torchvision(shift: float) -> None:
    img = torch.cat([_float_image(), torch.full((1, 3, 32, 32), 0.4)], dim=-1)  # incl. grey
    torch.testing.assert_close(colour.adjust_hue(img, shift), TF.adjust_hue(img, shift),
                               atol=1e-5, rtol=0)


def test_hue_handles_ties_and_extremes() -> None:
    # Few levels → many pixels where two channels share the maximum, plus pure black/white.
    img = torch.randint(0, 4, (2, 3, 16, 16), generator=_gen(4)).float() / 3
    for shift in (-0.5, -0.25, 0.1, 0.5):
        torch.testing.assert_close(colour.adjust_hue(img, shift), TF.adjust_hue(img, shift),
                                   atol=1e-5, rtol=0)


def test_colour_factors_are_per_sample() -> None:
    imgs = torch.cat([_float_image(1), _float_image(2), _float_image(3)])
    factors = torch.tensor([0.7, 1.0, 1.3])
    for ours, ref in [(colour.adjust_brightness, TF.adjust_brightness),
                      (colour.adjust_contrast, TF.adjust_contrast),
                      (colour.adjust_saturation, TF.adjust_saturation),
                      (colour.adjust_hue, TF.adjust_hue)]:
        batch = ours(imgs, factors - 1.0 if ours is colour.adjust_hue else factors)
        for i, f in enumerate(factors.tolist()):
            expected = ref(imgs[i:i + 1], f - 1.0 if ref is TF.adjust_hue else f)
            torch.testing.assert_close(batch[i:i + 1], expected, atol=1e-5, rtol=0)


def test_grayscale_matches_torchvision() -> None:
    img = _float_image()
    torch.testing.assert_close(colour.rgb_to_grayscale(img), TF.rgb_to_grayscale(img), atol=1e-6,
                               rtol=0)
    out = A.BatchAugment(S, grayscale_p=1.0)(_random_uint8(2, S, S), _gen())
    raw = _unnormalise(out)
    torch.testing.assert_close(raw[:, 0], raw[:, 1], atol=1e-5, rtol=0)
    torch.testing.assert_close(raw[:, 1], raw[:, 2], atol=1e-5, rtol=0)


def test_zero_probability_leaves_colours_unchanged() -> None:
    images = _random_uint8(8, S, S)
    plain = A.BatchAugment(S)(images)
    off = A.BatchAugment(S, jitter=A.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.0), grayscale_p=0.0)
    assert torch.equal(off(images, _gen()), plain)


def test_brightness_factor_range_and_spread() -> None:
    grey = torch.full((400, 3, 8, 8), 0.5)
    aug = A.BatchAugment(8, jitter=A.ColorJitter(brightness=0.4, p=1.0), mean=(0, 0, 0),
                         std=(1, 1, 1))
    factors = aug(grey, _gen())[:, 0, 0, 0] / 0.5
    assert factors.min() >= 0.6 - 1e-6 and factors.max() <= 1.4 + 1e-6
    assert factors.min() < 0.65 and factors.max() > 1.35


def test_jitter_probability_is_per_sample() -> None:
    images = _random_uint8(200, 8, 8)
    plain = A.BatchAugment(8)(images)
    out = A.BatchAugment(8, jitter=A.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8))(images, _gen())
    unchanged = torch.tensor([torch.equal(o, p) for o, p in zip(out, plain)]).float().mean()
    assert 0.1 < unchanged < 0.3


# ------------------------------------------------------------------ randomness


def test_parameters_differ_across_the_batch() -> None:
    same = _smooth_uint8(1, 96, 96).expand(8, -1, -1, -1)
    for name in ("standard", "contrastive"):
        out = A.get_augmentation(name, S)(same, _gen())
        distinct = {tuple(o.flatten()[::97].tolist()) for o in out}
        assert len(distinct) >= 6, name


def test_seed_reproducibility() -> None:
    images = _random_uint8(6, 90, 120)
    for name in ("standard", "contrastive"):
        aug = A.get_augmentation(name, S)
        assert torch.equal(aug(images, _gen(7)), aug(images, _gen(7)))
        assert not torch.equal(aug(images, _gen(7)), aug(images, _gen(8)))


def test_default_generator_is_seedable() -> None:
    images = _random_uint8(4, 40, 40)
    aug = A.get_augmentation("contrastive", S)
    torch.manual_seed(3)
    first = aug(images)
    torch.manual_seed(3)
    assert torch.equal(aug(images), first)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_batch_matches_cpu() -> None:
    images = _random_uint8(4, 100, 120)
    aug = A.get_augmentation("contrastive", S)
    on_gpu = aug(images.cuda(), _gen(1))
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), aug(images, _gen(1)), atol=1e-3, rtol=0)


# ------------------------------------------------------------------ registry and original sizes


def test_builtin_presets_are_registered() -> None:
    assert {"eval", "standard", "contrastive"} <= set(A.list_augmentations())
    assert A.PRESETS["contrastive"] is presets.contrastive_augment
    A.register_augmentation("standard", presets.standard_augment)  # the same factory again: a no-op
    with pytest.raises(ValueError, match="'standard' is already registered"):
        A.register_augmentation("standard", lambda size: A.BatchAugment(size))
    with pytest.raises(TypeError, match="callable"):
        A.register_augmentation("not-callable", 3)


class _Recorder(torch.nn.Module):
    """A third-party augmentation: remembers the sizes each call receives."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.inner = A.BatchAugment(size)
        self.calls: list = []

    def forward(self, images, generator=None, sizes=None):
        self.calls.append(None if sizes is None else sizes.clone())
        return self.inner(images, generator, sizes=sizes)


def test_a_registered_factory_receives_original_sizes_through_train_stream() -> None:
    from ltbench.data.loader import TrainStream

    @A.register_augmentation("test-recorder")
    def recorder(size: int) -> _Recorder:
        return _Recorder(size)

    try:
        with pytest.raises(ValueError, match="already registered"):
            A.register_augmentation("test-recorder", lambda size: _Recorder(size))
        aug = A.get_augmentation("test-recorder", 8)
        pixels = np.zeros((10, 12, 12, 3), dtype=np.uint8)
        sizes = np.array([[100 + i, 200 + i] for i in range(10)])
        rows = np.array([9, 1, 4, 6, 0])
        stream = TrainStream(pixels, rows, np.zeros(5, dtype=np.int64), "instance", 2, [aug],
                             torch.device("cpu"), _gen(0), sizes=sizes)
        for batch in stream:
            got = aug.calls[-1]
            expected = sizes[rows[batch.indices.numpy()]]
            assert got is not None and got.tolist() == expected.tolist()
        assert len(aug.calls) == len(stream)
        # Without sizes (in-memory datasets) the augmentation gets None.
        list(TrainStream(pixels, rows, np.zeros(5, dtype=np.int64), "instance", 5, [aug], torch.device("cpu"), _gen(0)))
        assert aug.calls[-1] is None
    finally:
        A.unregister_augmentation("test-recorder")
    with pytest.raises(LtbenchError, match="unknown augmentation 'test-recorder'"):
        A.get_augmentation("test-recorder", 8)


def test_sizes_change_only_cropping_presets() -> None:
    images = _random_uint8(6, 64, 64)
    sizes = torch.tensor([[450, 600]] * 6)
    for name in ("eval", "standard"):  # no crop: the originals' geometry cannot matter
        aug = A.get_augmentation(name, S)
        assert torch.equal(aug(images, _gen(1), sizes=sizes), aug(images, _gen(1)))
    aug = A.get_augmentation("contrastive", S)
    assert not torch.equal(aug(images, _gen(1), sizes=sizes), aug(images, _gen(1)))
    # The square's own size given explicitly is the same as None.
    assert torch.equal(aug(images, _gen(1), sizes=torch.tensor([[64, 64]] * 6)), aug(images, _gen(1)))
    for bad in (torch.tensor([[450, 600]] * 5), torch.tensor([[450.0, 600.0]] * 6), torch.tensor([[0, 600]] * 6)):
        with pytest.raises(ValueError, match="sizes must be positive integers"):
            aug(images, _gen(1), sizes=bad)


def test_rotation_corners_are_black_and_nothing_comes_from_outside_the_crop() -> None:
    # White inside the crop box, grey around it: a 45° turn of the crop must show black corners
    # (not the grey surround, as one affine grid over the whole image would) and only white inside.
    img = torch.full((1, 3, 100, 100), 128, dtype=torch.uint8)
    img[..., 25:75, 25:75] = 255
    box = torch.tensor([[25.0, 25.0, 50.0, 50.0]])
    no = torch.zeros(1, dtype=torch.bool)
    grid = geometry.geometry_grid(box, 100, 100, no, no, torch.tensor([45.0]), S, (100, 100))
    out = F.grid_sample(img.float() / 255, grid, align_corners=False)
    values = set(out.flatten().round(decimals=5).tolist())
    assert values == {0.0, 1.0}
    # A square turned 45° inside its own frame covers the octagon 2(√2 − 1) ≈ 82.8 % of it.
    corner_share = (out[0, 0] == 0).float().mean().item()
    assert abs(corner_share - (1 - 2 * (2 ** 0.5 - 1))) < 0.01
    # The whole-image affine grid of the landed code filled those corners with the grey surround.
    theta = geometry.affine_matrices(box, 100, 100, no, no, torch.tensor([45.0])).float()
    old = F.grid_sample(img.float() / 255, geometry.affine_grid(theta, (S, S)), align_corners=False)
    assert ((old - 128 / 255).abs() < 1e-3).float().mean() > 0.1
