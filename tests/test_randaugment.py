"""Batched RandAugment (BCL's classifier view): each op vs torchvision's per-image functional op,
per-sample decisions, determinism, and the ``randaugment`` preset.

Tolerances: colour ops 1e-5 (float32 rounding; they are the same formulas). Geometric ops 1e-5
where the bilinear footprint lies inside the image; on the one-pixel rim next to the fill ours
weighs the fill by the footprint outside the image, torchvision multiplies by an interpolated
mask as well — the two differ there by at most c·(1 − c) ≤ 1/4 (c = inside coverage).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

from ltbench.data import augment as A
from ltbench.data.augment import randaugment as R

S = 32
FILL = list(R.IMAGENET_FILL)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(n: int = 4, size: int = S, seed: int = 0) -> torch.Tensor:
    """Smooth colour images plus noise, different per sample, in [0, 1]."""
    y = torch.linspace(0, 1, size).view(1, 1, size, 1)
    x = torch.linspace(0, 1, size).view(1, 1, 1, size)
    phase = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1)
    freq = torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1)
    smooth = 0.5 + 0.35 * torch.sin(math.pi * freq * (x + 0.7 * y) + phase)
    noise = 0.1 * torch.rand(n, 3, size, size, generator=_gen(seed))
    return (smooth + noise).clamp(0, 1)


def _forced(op: str, magnitudes: list[float], signs: list[float]) -> tuple[R.RandAugment, R.RandAugmentDraw]:
    """A one-layer draw applying ``op`` to every sample with the given magnitudes and signs."""
    ra = R.RandAugment(num_ops=1)
    n = len(magnitudes)
    draw = R.RandAugmentDraw(op=torch.full((1, n), R.BCL_OPS.index(op)),
                             applied=torch.ones(1, n, dtype=torch.bool),
                             magnitude=torch.tensor([magnitudes], dtype=torch.float64),
                             sign=torch.tensor([signs], dtype=torch.float64))
    return ra, draw


def _torchvision(op: str, image: torch.Tensor, m: float, s: float) -> torch.Tensor:
    """The per-image reference at magnitude m, sign s (official level functions written out)."""
    frac = m / 10
    enhance = frac * 1.8 + 0.1
    bilinear = InterpolationMode.BILINEAR
    if op == "AutoContrast":
        return TF.autocontrast(image)
    if op == "Equalize":
        return TF.equalize(image)
    if op == "Invert":
        return TF.invert(image)
    if op == "Rotate":
        return TF.rotate(image, s * frac * 30, interpolation=bilinear, fill=FILL)
    if op == "PosterizeTpu":
        return TF.posterize(image, int(frac * 4))
    if op == "Solarize":
        return TF.solarize(image, min(int(frac * 256), 255) / 255)
    if op == "Color":
        return TF.adjust_saturation(image, enhance)
    if op == "Contrast":
        return TF.adjust_contrast(image, enhance)
    if op == "Brightness":
        return TF.adjust_brightness(image, enhance)
    if op == "Sharpness":
        return TF.adjust_sharpness(image, enhance)
    if op in ("ShearX", "ShearY"):
        # torchvision's RandAugment: shear atan(f) degrees about the top-left corner (PIL's op).
        angle = math.degrees(math.atan(s * frac * 0.3))
        shear = [angle, 0.0] if op == "ShearX" else [0.0, angle]
        return TF.affine(image, angle=0.0, translate=[0, 0], scale=1.0, shear=shear,
                         interpolation=bilinear, fill=FILL, center=[0, 0])
    if op in ("TranslateXRel", "TranslateYRel"):
        # PIL's (1, 0, p, 0, 1, 0) samples the source at x + p: torchvision's translate −p.
        h, w = image.shape[-2:]
        shift = s * frac * 0.45
        translate = [-shift * w, 0.0] if op == "TranslateXRel" else [0.0, -shift * h]
        return TF.affine(image, angle=0.0, translate=translate, scale=1.0, shear=[0.0, 0.0],
                         interpolation=bilinear, fill=FILL)
    raise AssertionError(op)


def _solarize_add_pil(image: torch.Tensor, m: float) -> torch.Tensor:
    """The official SolarizeAdd: PIL ``point`` with timm's LUT on a uint8 image."""
    add = int(m / 10 * 110)
    lut = [min(255, i + add) if i < 128 else i for i in range(256)] * 3
    u8 = (image * 255).round().to(torch.uint8)[0].permute(1, 2, 0).numpy()
    out = np.asarray(Image.fromarray(u8).point(lut))
    return torch.from_numpy(out.copy()).permute(2, 0, 1)[None].float() / 255


COLOUR = [op for op in R.BCL_OPS if op not in R._GEOMETRIC and op != "SolarizeAdd"]


@pytest.mark.parametrize("op", COLOUR)
def test_colour_ops_match_torchvision_per_image(op: str) -> None:
    images = _images(4)
    if op == "AutoContrast":
        images = images * 0.6 + 0.15  # something to stretch
    magnitudes, signs = [10.0, 9.3, 8.1, 4.0], [1.0, -1.0, 1.0, -1.0]
    ra, draw = _forced(op, magnitudes, signs)
    out = ra.apply(images, draw)
    for i, (m, s) in enumerate(zip(magnitudes, signs)):
        torch.testing.assert_close(out[i:i + 1], _torchvision(op, images[i:i + 1], m, s), atol=1e-5, rtol=0)


def test_solarize_add_matches_the_official_lut() -> None:
    images = (_images(3) * 255).round() / 255  # uint8 values, as the official op sees them
    magnitudes = [10.0, 8.7, 5.0]
    ra, draw = _forced("SolarizeAdd", magnitudes, [1.0] * 3)
    out = ra.apply(images, draw)
    for i, m in enumerate(magnitudes):
        torch.testing.assert_close(out[i:i + 1], _solarize_add_pil(images[i:i + 1], m), atol=1e-6, rtol=0)


def test_solarize_at_magnitude_10_inverts_nothing() -> None:
    images = _images(2)
    ra, draw = _forced("Solarize", [10.0, 10.0], [1.0, 1.0])  # threshold 256/255 > 1
    assert torch.equal(ra.apply(images, draw), images)


@pytest.mark.parametrize("op", R._GEOMETRIC)
def test_geometric_ops_match_torchvision_per_image(op: str) -> None:
    images = _images(4)
    magnitudes, signs = [10.0, 9.3, 8.1, 4.0], [1.0, -1.0, 1.0, -1.0]
    ra, draw = _forced(op, magnitudes, signs)
    out = ra.apply(images, draw)
    coverage = ra.apply(torch.ones_like(images), draw) - torch.tensor(FILL).view(1, 3, 1, 1)
    coverage = coverage / (1 - torch.tensor(FILL).view(1, 3, 1, 1))  # fraction of footprint inside
    for i, (m, s) in enumerate(zip(magnitudes, signs)):
        ref = _torchvision(op, images[i:i + 1], m, s)
        inside = coverage[i:i + 1] > 1 - 1e-5
        assert inside.float().mean() > 0.5
        torch.testing.assert_close(out[i:i + 1][inside], ref[inside], atol=1e-5, rtol=0)
        assert (out[i:i + 1] - ref).abs().max() <= 0.25 + 1e-5


@pytest.mark.parametrize("op,coefficients", [
    ("ShearX", lambda v, w, h: (1, v, 0, 0, 1, 0)),
    ("ShearY", lambda v, w, h: (1, 0, 0, v, 1, 0)),
    ("TranslateXRel", lambda v, w, h: (1, 0, v * w, 0, 1, 0)),
    ("TranslateYRel", lambda v, w, h: (1, 0, 0, 0, 1, v * h)),
])
def test_geometric_directions_follow_the_official_pil_ops(op, coefficients) -> None:
    # The official op on PIL (bilinear): the same direction and size, to uint8 rounding.
    image = (_images(1, 48) * 255).round() / 255
    ra, draw = _forced(op, [8.0], [-1.0])
    out = ra.apply(image, draw)
    level = R.op_argument(op, draw.magnitude[0], draw.sign[0]).item()
    u8 = Image.fromarray((image[0] * 255).round().byte().permute(1, 2, 0).numpy())
    fill = tuple(round(255 * f) for f in FILL)
    ref = u8.transform(u8.size, Image.AFFINE, coefficients(level, 48, 48), resample=Image.BILINEAR, fillcolor=fill)
    ref = torch.from_numpy(np.asarray(ref).copy()).permute(2, 0, 1)[None].float() / 255
    coverage = ra.apply(torch.ones_like(image), draw)
    inside = (coverage > 1 - 1e-5).expand_as(image).clone()
    inside[..., :2, :] = inside[..., -2:, :] = inside[..., :, :2] = inside[..., :, -2:] = False
    assert (out - ref).abs()[inside].max() < 1.5 / 255


def test_levels_are_the_official_ones() -> None:
    m = torch.tensor([10.0, 9.0, 7.4], dtype=torch.float64)
    s = torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64)
    assert R.op_argument("Rotate", m, s).tolist() == pytest.approx([30.0, -27.0, 22.2])
    assert R.op_argument("PosterizeTpu", m, s).tolist() == [4, 3, 2]
    assert R.op_argument("Solarize", m, s).mul(255).tolist() == pytest.approx([256, 230, 189])
    assert R.op_argument("SolarizeAdd", m, s).mul(255).tolist() == pytest.approx([110, 99, 81])
    assert R.op_argument("Brightness", m, s).tolist() == pytest.approx([1.9, 1.72, 1.432])
    assert R.op_argument("ShearX", m, s).tolist() == pytest.approx([0.3, -0.27, 0.222])
    assert R.op_argument("TranslateYRel", m, s).tolist() == pytest.approx([0.45, -0.405, 0.333])
    assert R.op_argument("Equalize", m, s) is None
    assert R.IMAGENET_FILL == (124 / 255, 116 / 255, 104 / 255)


# ------------------------------------------------------------------ the random policy


def test_draws_are_per_sample_and_follow_the_official_distribution() -> None:
    ra = R.RandAugment()
    draw = ra.draw(20000, _gen())
    assert draw.op.shape == (2, 20000)
    counts = torch.bincount(draw.op.flatten(), minlength=15).float() / draw.op.numel()
    assert counts.min() > 0.8 / 15 and counts.max() < 1.2 / 15  # uniform over the 15 ops
    assert abs(draw.applied.float().mean().item() - 0.5) < 0.02
    assert draw.magnitude.max() <= 10.0 and draw.magnitude.min() >= 7.0
    # N(10, 0.5) clipped at 10: half the draws sit at 10, the rest spread below.
    assert abs((draw.magnitude == 10.0).double().mean().item() - 0.5) < 0.02
    assert abs(draw.magnitude[draw.magnitude < 10].std().item() - 0.5 * math.sqrt(1 - 2 / math.pi)) < 0.02
    assert abs((draw.sign < 0).double().mean().item() - 0.5) < 0.02
    # Two layers are independent draws (with replacement): the same op twice happens.
    assert 0.04 < (draw.op[0] == draw.op[1]).double().mean().item() < 0.09


def test_images_of_one_batch_get_different_operations() -> None:
    same = _images(1).expand(16, -1, -1, -1).contiguous()
    ra = R.RandAugment()
    draw = ra.draw(16, _gen(3))
    assert len(set(draw.op[0].tolist())) >= 6
    out = ra.apply(same, draw)
    distinct = {tuple(o.flatten()[::37].tolist()) for o in out}
    assert len(distinct) >= 10
    # A sample whose two ops both failed the probability test is untouched.
    untouched = ~draw.applied.any(dim=0)
    assert untouched.any()
    assert torch.equal(out[untouched], same[untouched])


def test_apply_equals_the_ops_one_sample_at_a_time() -> None:
    images = _images(12)
    ra = R.RandAugment()
    draw = ra.draw(12, _gen(5))
    batched = ra.apply(images, draw)
    for i in range(12):
        x = images[i:i + 1]
        for layer in range(2):
            if draw.applied[layer, i]:
                op = R.BCL_OPS[draw.op[layer, i]]
                arg = R.op_argument(op, draw.magnitude[layer, i:i + 1], draw.sign[layer, i:i + 1])
                x = R.apply_op(op, x, arg)
        torch.testing.assert_close(batched[i:i + 1], x, atol=1e-6, rtol=0)


def test_fixed_generator_is_deterministic() -> None:
    images = _images(8)
    ra = R.RandAugment()
    assert torch.equal(ra(images, _gen(7)), ra(images, _gen(7)))
    assert not torch.equal(ra(images, _gen(7)), ra(images, _gen(8)))
    torch.manual_seed(1)
    first = ra(images)
    torch.manual_seed(1)
    assert torch.equal(ra(images), first)


def test_runs_in_float32_under_autocast() -> None:
    # The CUDA path trains under bf16 autocast; augmentation must not be cast (conv2d, grid_sample).
    images = _images(8)
    ra = R.RandAugment()
    draw = ra.draw(8, _gen(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ra.apply(images, draw)
    assert out.dtype == torch.float32
    assert torch.equal(out, ra.apply(images, draw))


def test_rejects_bad_input_and_settings() -> None:
    with pytest.raises(ValueError, match="float N×3×H×W"):
        R.RandAugment()(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="unknown ops"):
        R.RandAugment(ops=("Cutout",))


# ------------------------------------------------------------------ the preset


def test_preset_is_registered_and_builds_on_the_standard_view() -> None:
    assert "randaugment" in A.list_augmentations()
    aug = A.get_augmentation("randaugment", S)
    images = torch.randint(0, 256, (6, 3, 40, 40), dtype=torch.uint8, generator=_gen(2))
    out = aug(images, _gen(4))
    assert out.shape == (6, 3, S, S) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert torch.equal(aug(images, _gen(4)), out)
    sizes = torch.tensor([[40, 40]] * 6)  # the preset signature: per-image original sizes
    assert torch.equal(aug(images, _gen(4), sizes=sizes), out)
    # With every op's probability at 0 the view is exactly the `standard` preset.
    aug.randaugment.prob = 0.0
    assert torch.equal(aug(images, _gen(4)), A.get_augmentation("standard", S)(images, _gen(4)))
    aug.randaugment.prob = 0.5
    assert not torch.equal(out, A.get_augmentation("standard", S)(images, _gen(4)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu() -> None:
    images = _images(8)
    ra = R.RandAugment()
    draw = ra.draw(8, _gen(1))
    torch.testing.assert_close(ra.apply(images.cuda(), draw).cpu(), ra.apply(images, draw), atol=1e-4, rtol=0)
