"""The contrastive geometry against torchvision, two ways, on real ISIC images (issue 14, parts 1-2).

(a) against ``torchvision.transforms.v2.functional`` (resized_crop → hflip → vflip → rotate)
    applied per image to the cached square with the very parameters the preset drew;
(b) end to end against ECL's per-image PIL pipeline on original-geometry JPEGs, as distributions.

Tolerances (float images in [0, 1]). Without rotation ltbench samples exactly what
``resized_crop`` gives (max |Δ| ≤ 1e-5). With rotation ltbench resamples ONCE where torchvision
resamples twice (resize, then rotate), so they differ by the second bilinear blur, largest on
hair and lesion edges. Over the pixels fully inside the rotated crop, on real images:

* raw: mean |Δ| ≤ 0.012, max |Δ| ≤ 0.3, ≤ 10 % of pixels beyond 8/255 (measured on 16 real
  images: mean 0.0016–0.0101, max ≤ 0.25, ≤ 7.1 % beyond 8/255);
* after a 5×5 box blur (which removes the interpolation difference but not a geometric error):
  mean |Δ| ≤ 0.004, max ≤ 0.04, ≤ 15 % of pixels beyond 2/255 (measured ≤ 0.0032, ≤ 0.026,
  ≤ 9.5 %; the same output shifted by ONE pixel gives mean 0.009–0.044 and 24–88 % beyond);
* which pixels are black (rotation corners) agrees with the nearest-neighbour rotation of ECL's
  pipeline except on ≤ 0.2 % of pixels (the boundary row, decided by float rounding).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from PIL import Image
from scipy import stats
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from ltbench.data import augment as A
from ltbench.data.augment import geometry
from ltbench.data.cache import decode_image

CACHE = 256
S = 224


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def jpegs(isic2018_test_images: Path) -> list[Path]:
    return sorted((isic2018_test_images / "images").glob("*.jpg"))


@pytest.fixture(scope="module")
def cached(jpegs: list[Path]) -> torch.Tensor:
    """16 real images as the cache holds them: uint8 16×3×256×256."""
    arr = np.stack([decode_image(p, CACHE) for p in jpegs[:16]])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def _geometry_only(**kw) -> A.BatchAugment:
    """The contrastive preset's geometry, no colour ops, no normalisation (outputs in [0, 1])."""
    params = dict(crop_scale=(0.8, 1.0), hflip_p=0.5, vflip_p=0.5, rotation_deg=90.0)
    params.update(kw)
    return A.BatchAugment(S, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), **params)


def _torchvision(img: torch.Tensor, box, hflip: bool, vflip: bool, angle: float,
                 interpolation=InterpolationMode.BILINEAR) -> torch.Tensor:
    """ECL's per-image chain with torchvision's functional ops (float [k×]3×H×W in [0, 1], one geometry)."""
    top, left, h, w = (int(v) for v in box)
    y = TF.resized_crop(img, top, left, h, w, [S, S], antialias=True)
    if hflip:
        y = TF.horizontal_flip(y)
    if vflip:
        y = TF.vertical_flip(y)
    return TF.rotate(y, angle, interpolation=interpolation, fill=0.0)


def _coverage(box, hflip, vflip, angle, height=CACHE, width=CACHE) -> torch.Tensor:
    """torchvision's bilinear coverage of the rotated crop (1 = fully inside), S×S."""
    return _torchvision(torch.ones(3, height, width), box, hflip, vflip, angle)[0]


def _compare(ours: torch.Tensor, ours_white: torch.Tensor, img: torch.Tensor, box, hflip, vflip, angle) -> dict:
    """Worst case over a batch ``img`` [k, 3, H, W] sharing one geometry (``ours`` [k, 3, S, S]).

    ``ours_white``: the same geometry applied to a white image (its zeros are the corners).
    """
    ref = _torchvision(img, box, hflip, vflip, angle)
    inside = _coverage(box, hflip, vflip, angle) > 0.999
    diff = (ours - ref).abs().amax(dim=1)[:, inside]
    blur = lambda x: F.avg_pool2d(x, 5, 1, 2)  # noqa: E731
    eroded = -F.max_pool2d(-inside.float()[None, None], 5, 1, 2)[0, 0] > 0.5  # 2 px inside
    blurred = (blur(ours) - blur(ref)).abs().amax(dim=1)[:, eroded]
    black_ours = ours_white[0] == 0
    black_tv = _torchvision(torch.ones(3, CACHE, CACHE), box, hflip, vflip, angle, InterpolationMode.NEAREST)[0] == 0
    diff, blurred = diff.max(dim=0).values, blurred.max(dim=0).values  # worst image per pixel
    return {"mean": diff.mean().item(), "max": diff.max().item(),
            "beyond": (diff > 8 / 255).float().mean().item(),
            "blur_mean": blurred.mean().item(), "blur_max": blurred.max().item(),
            "blur_beyond": (blurred > 2 / 255).float().mean().item(),
            "mask_disagree": (black_ours ^ black_tv).float().mean().item()}


def _within_tolerance(r: dict) -> None:
    assert r["mean"] <= 0.012 and r["max"] <= 0.3 and r["beyond"] <= 0.10, r
    assert r["blur_mean"] <= 0.004 and r["blur_max"] <= 0.04 and r["blur_beyond"] <= 0.15, r
    assert r["mask_disagree"] <= 0.002, r


# ------------------------------------------------------------------ (a) torchvision functional


def test_a_preset_matches_torchvision_functional_per_image(cached: torch.Tensor) -> None:
    aug = _geometry_only()
    n = 8  # ≤ CPU_CHUNK: one draw for the whole batch
    geo = aug.sample_geometry(n, CACHE, CACHE, _gen(11))
    out = aug(cached[:n], _gen(11))
    white = aug(torch.full_like(cached[:n], 255), _gen(11))
    imgs = cached[:n].float() / 255
    for i in range(n):
        r = _compare(out[i:i + 1], white[i], imgs[i:i + 1], geo.boxes[i].tolist(), bool(geo.hflip[i]),
                     bool(geo.vflip[i]), float(geo.angle[i]))
        _within_tolerance(r)


def test_a_crop_rotated_45_degrees(cached: torch.Tensor) -> None:
    imgs = cached[:4].float() / 255
    for box, hflip, vflip in (([20, 20, 216, 216], False, False), ([0, 0, 205, 256], True, False),
                              ([51, 0, 205, 256], True, True)):  # the last two touch the border
        out = _fixed(imgs, box, hflip, vflip, 45.0)
        white = _fixed(torch.ones(1, 3, CACHE, CACHE), box, hflip, vflip, 45.0)[0]
        _within_tolerance(_compare(out, white, imgs, box, hflip, vflip, 45.0))


def test_a_crop_touching_the_border_is_exact_without_rotation(cached: torch.Tensor) -> None:
    # An upscaled crop at the image border: no darker edge row (zero padding never blends in).
    imgs = cached[:4].float() / 255
    for box in ([0, 0, 200, 200], [0, 40, 216, 216], [40, 56, 216, 200]):
        for hflip, vflip in ((False, False), (True, True)):
            out = _fixed(imgs, box, hflip, vflip, 0.0)
            ref = _torchvision(imgs, box, hflip, vflip, 0.0)
            torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    # A box wider than the output is shrunk without antialiasing (≤ 1.14× in the preset):
    # exact against resized_crop(antialias=False), within 0.04 of the antialiased one.
    box = [56, 0, 200, 256]
    out = _fixed(imgs, box, False, False, 0.0)
    plain = TF.resized_crop(imgs, *box, [S, S], antialias=False)
    torch.testing.assert_close(out, plain, atol=1e-5, rtol=0)
    smooth = _torchvision(imgs, box, False, False, 0.0)
    assert (out - smooth).abs().max() < 0.04 and (out - smooth).abs().mean() < 0.003


def _fixed(imgs: torch.Tensor, box, hflip: bool, vflip: bool, angle: float, height=CACHE, width=CACHE,
           sampled=(CACHE, CACHE)) -> torch.Tensor:
    n = imgs.shape[0]
    grid = geometry.geometry_grid(torch.tensor([box] * n, dtype=torch.float64), height, width,
                                  torch.full((n,), hflip), torch.full((n,), vflip), torch.full((n,), angle), S,
                                  sampled)
    return F.grid_sample(imgs, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def test_no_pixel_from_outside_the_crop_box(cached: torch.Tensor) -> None:
    """Each image is 1 inside the box the preset draws and 0 outside: every output pixel is 1 or 0.

    (1 up to float rounding of the bilinear weights, 1e-6; any tap outside the box would pull a
    pixel below 1 by its weight, and a darker edge row would show the same way.)
    """
    aug = _geometry_only()
    n = cached.shape[0]
    for seed in range(3):
        geo = aug.sample_geometry(n, CACHE, CACHE, _gen(seed))
        marked = torch.zeros(n, 3, CACHE, CACHE, dtype=torch.uint8)
        for i, (top, left, h, w) in enumerate(geo.boxes.long().tolist()):
            marked[i, :, top:top + h, left:left + w] = 255
        out = aug(marked, _gen(seed))
        assert ((out == 0) | ((out - 1).abs() < 1e-6)).all()
        # ... and the zeros are exactly the corners the rotation uncovers (nearest-neighbour rule).
        for i in range(0, n, 4):
            tv = _torchvision(torch.ones(3, CACHE, CACHE), geo.boxes[i].tolist(), bool(geo.hflip[i]),
                              bool(geo.vflip[i]), float(geo.angle[i]), InterpolationMode.NEAREST)
            assert ((out[i] == 0) ^ (tv == 0)).float().mean() <= 0.002


def test_a_crop_drawn_on_the_original_geometry_maps_per_axis() -> None:
    """A box drawn on a 600×450 original, sampled from the 256 px square, equals resized_crop on the original."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 450), torch.linspace(0, 1, 600), indexing="ij")
    original = torch.stack([0.5 + 0.4 * torch.sin(3 * xx + 2 * yy), 0.5 + 0.4 * torch.cos(4 * yy),
                            0.5 + 0.3 * torch.sin(5 * xx * yy)])
    square = TF.resize(original, [CACHE, CACHE], antialias=True)
    aug = _geometry_only(rotation_deg=0.0)
    sizes = torch.tensor([[450, 600]] * 8)
    geo = aug.sample_geometry(8, sizes[:, 0], sizes[:, 1], _gen(3))
    out = aug(square.expand(8, -1, -1, -1).contiguous(), _gen(3), sizes=sizes)
    for i in range(8):
        top, left, h, w = (int(v) for v in geo.boxes[i])
        assert h <= 450 and w <= 600 and (w / 600) / (h / 450) <= 1.0 + 1e-9  # ECL's ratios on 600×450
        ref = TF.resized_crop(original, top, left, h, w, [S, S], antialias=True)
        ref = TF.horizontal_flip(ref) if geo.hflip[i] else ref
        ref = TF.vertical_flip(ref) if geo.vflip[i] else ref
        assert (out[i] - ref).abs().max() < 0.01  # two resampling paths of a smooth image


# ------------------------------------------------------------------ crop-box distribution (part 2)


@pytest.mark.parametrize("height,width", [(450, 600), (1024, 1024)])
def test_crop_boxes_match_random_resized_crop_get_params(height: int, width: int) -> None:
    n = 3000
    ours = geometry.sample_crop_boxes(n, height, width, (0.8, 1.0), (3 / 4, 4 / 3), _gen(5)).numpy()
    torch.manual_seed(5)
    img = torch.empty(1, height, width)
    ref = np.array([T.RandomResizedCrop.get_params(img, [0.8, 1.0], [3 / 4, 4 / 3]) for _ in range(n)],
                   dtype=np.float64)
    assert (ours == np.round(ours)).all()
    for k, name in enumerate(("top", "left", "height", "width")):
        p = stats.ks_2samp(ours[:, k], ref[:, k]).pvalue
        assert p > 0.01, (name, p)
    for arr in (ours, ref):
        assert (arr[:, 0] + arr[:, 2] <= height).all() and (arr[:, 1] + arr[:, 3] <= width).all()
    whole = lambda b: np.mean((b[:, 2] == height) & (b[:, 3] == width))  # noqa: E731
    # Whole-image (fallback) share: binomial standard error ~0.6 % at n = 3000.
    assert abs(whole(ours) - whole(ref)) < 0.025, (whole(ours), whole(ref))
    aspect = lambda b: (b[:, 3] / width) / (b[:, 2] / height)  # noqa: E731  (box shape as fractions)
    assert stats.ks_2samp(aspect(ours), aspect(ref)).pvalue > 0.01
    assert aspect(ours).max() <= aspect(ref).max() + 0.01


def test_crop_boxes_per_sample_geometry() -> None:
    heights = torch.tensor([450.0, 1024.0] * 500)
    widths = torch.tensor([600.0, 1024.0] * 500)
    boxes = geometry.sample_crop_boxes(1000, heights, widths, (0.8, 1.0), (3 / 4, 4 / 3), _gen(2))
    assert (boxes[:, 0] + boxes[:, 2] <= heights).all() and (boxes[:, 1] + boxes[:, 3] <= widths).all()
    wide = boxes[0::2]
    assert ((wide[:, 3] / 600) / (wide[:, 2] / 450)).max() <= 1.0 + 1e-9
    assert (wide[:, 2] == 450).float().mean() > 0.05  # the 600×450 fallback is frequent


# ------------------------------------------------------------------ (b) end to end vs ECL's PIL pipeline


@pytest.mark.slow
def test_b_contrastive_view_matches_ecl_pil_pipeline_as_distributions(jpegs: list[Path], tmp_path: Path) -> None:
    """Real images as 600×450 originals: ECL's PIL geometry vs ltbench's cache (256 px) + sizes."""
    originals = []
    for i, p in enumerate(jpegs[:24]):
        q = tmp_path / f"{i}.jpg"
        with Image.open(p) as im:
            im.convert("RGB").resize((600, 450), Image.Resampling.BICUBIC).save(q, quality=95)
        originals.append(q)
    ecl = T.Compose([T.RandomResizedCrop(S, scale=(0.8, 1.0)), T.RandomHorizontalFlip(), T.RandomVerticalFlip(),
                     T.RandomRotation(90), T.PILToTensor()])
    torch.manual_seed(0)
    repeats = 10
    pil = [Image.open(q).convert("RGB") for q in originals]
    ref = torch.stack([ecl(im) for _ in range(repeats) for im in pil]).float() / 255
    cache = torch.from_numpy(np.stack([decode_image(q, CACHE) for q in originals])).permute(0, 3, 1, 2)
    aug = _geometry_only()
    sizes = torch.tensor([[450, 600]] * len(originals))
    ours = torch.cat([aug(cache, _gen(100 + r), sizes=sizes) for r in range(repeats)])
    black = lambda x: (x == 0).all(dim=1).float().mean(dim=(1, 2)).numpy()  # noqa: E731
    # Which part of each view is rotation corners, and the brightness of each view: same distributions.
    assert stats.ks_2samp(black(ours), black(ref)).pvalue > 0.01
    assert abs(black(ours).mean() - black(ref).mean()) < 0.01
    for c in range(3):
        m_ours, m_ref = ours[:, c].mean(dim=(1, 2)).numpy(), ref[:, c].mean(dim=(1, 2)).numpy()
        assert stats.ks_2samp(m_ours, m_ref).pvalue > 0.01, c
