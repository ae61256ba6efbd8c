"""Fidelity of the batched presets to ECL's torchvision pipelines (issue 14, parts 1-2), before/after.

Prints, side by side, each figure for the landed code ("before": the ``ltbench/data/augment.py``
of a pristine export given with ``--before``), this checkout ("after") and torchvision/PIL as
ECL uses it. No network; a few seconds on 2 cores.

1. pixels from outside the crop box: a 216 px box of a 256 px cached square, rotated 45°, 224 px
   out; an image that is 1 inside the box and 0 outside shows every output pixel whose bilinear
   taps reach outside the box;
2. edge row of an upscaled crop touching the border (200 px box at the top-left corner, no
   rotation, white image): the mean of the first output row and column (1 = no darkening);
3. rotation corners over the contrastive preset's geometry (crop, flips, ±90°) on white images:
   the share of black output pixels. ltbench: 256 px cached square of a 600×450 original (after:
   with the original's size given); ECL: torchvision on the 600×450 PIL image;
4. crop boxes on a 600×450 and a 1024×1024 original: share of whole-image crops (the fallback,
   plus any draw that is the whole image), largest box shape (w/W)/(h/H), and the two-sample
   KS statistic of that shape against ``RandomResizedCrop.get_params``. Before: boxes drawn on the
   256 px square (what the landed code did); after: on the original geometry;
5. the ``standard`` preset's one real difference: ltbench decodes each JPEG once to the 256 px
   cache (JPEG draft scaling for ≥ 2× sources, then bilinear) and resizes 256 → 224 per batch;
   ECL decodes fully and runs one ``Resize((224, 224))``. Sources made from the real 224 px ISIC
   images in two ways: bicubic upscales (smooth, like a well-focused dermoscope) and tiles of
   the 224 px images (native-resolution detail at original size);
6. time of the contrastive preset alone (one 64-image batch from a 256 px cache, 1 torch thread
   by default), before vs after, interleaved; median ratio.

    base=$(mktemp -d) && git archive 1210f97 | tar -x -C "$base"   # an export with ltbench/data/augment.py
    .venv/bin/python benchmarks/augment_fidelity.py --before "$base"
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import stats

from ltbench.data import augment as _augment
from ltbench.data.augment import geometry as _geometry
from ltbench.data.cache import decode_image

# The shared data beside the repository (../shared/data) or $LTBENCH_SHARED_DATA, as the tests find it.
SHARED_DATA = Path(os.environ.get("LTBENCH_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
DEFAULT_IMAGES = SHARED_DATA / "isic2018_task3_test_224" / "images"
CACHE, S = 256, 224


# This checkout's augmentation as one namespace, like the single augment.py of an earlier export:
# the package's public face and its geometry module (sample_crop_boxes, geometry_grid, affine_*).
after = SimpleNamespace(**{**vars(_geometry), **{k: getattr(_augment, k) for k in _augment.__all__}})


def load_before(root: Path | None):
    """The augment module of a pristine export (or None)."""
    if root is None:
        return None
    path = Path(root) / "ltbench" / "data" / "augment.py"
    if not path.is_file():
        raise SystemExit(f"--before {root}: no ltbench/data/augment.py there")
    spec = importlib.util.spec_from_file_location("ltbench_augment_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _fixed_geometry(mod, images: torch.Tensor, box, angle: float) -> torch.Tensor:
    """One fixed crop + rotation through a module's grid (the landed one had no geometry_grid)."""
    n = images.shape[0]
    boxes = torch.tensor([box] * n, dtype=torch.float64)
    no = torch.zeros(n, dtype=torch.bool)
    ang = torch.full((n,), float(angle))
    if hasattr(mod, "geometry_grid"):
        grid = mod.geometry_grid(boxes, CACHE, CACHE, no, no, ang, S, (CACHE, CACHE))
    else:  # the landed code: one affine grid over the whole image, zero padding
        grid = mod.affine_grid(mod.affine_matrices(boxes, CACHE, CACHE, no, no, ang).float(), (S, S))
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _tv_chain(img: torch.Tensor, box, angle: float, interpolation) -> torch.Tensor:
    import torchvision.transforms.v2.functional as TF

    top, left, h, w = box
    return TF.rotate(TF.resized_crop(img, top, left, h, w, [S, S], antialias=True), angle,
                     interpolation=interpolation, fill=0.0)


def outside_share(mod) -> float:
    box = [20, 20, 216, 216]
    marked = torch.zeros(1, 3, CACHE, CACHE)
    marked[..., 20:236, 20:236] = 1.0
    ones = torch.ones(1, 3, CACHE, CACHE)
    inside, cover = _fixed_geometry(mod, marked, box, 45.0), _fixed_geometry(mod, ones, box, 45.0)
    return ((cover[0, 0] > 0) & (inside[0, 0] < cover[0, 0] - 1e-6)).float().mean().item()


def outside_share_tv() -> float:
    from torchvision.transforms import InterpolationMode

    box = [20, 20, 216, 216]
    marked = torch.zeros(3, CACHE, CACHE)
    marked[:, 20:236, 20:236] = 1.0
    inside = _tv_chain(marked, box, 45.0, InterpolationMode.BILINEAR)
    cover = _tv_chain(torch.ones(3, CACHE, CACHE), box, 45.0, InterpolationMode.BILINEAR)
    return ((cover[0] > 0) & (inside[0] < cover[0] - 1e-6)).float().mean().item()


def edge_row(mod) -> tuple[float, float]:
    out = _fixed_geometry(mod, torch.ones(1, 3, CACHE, CACHE), [0, 0, 200, 200], 0.0)[0, 0]
    return out[0].mean().item(), out[:, 0].mean().item()


def edge_row_tv() -> tuple[float, float]:
    import torchvision.transforms.v2.functional as TF

    out = TF.resized_crop(torch.ones(3, CACHE, CACHE), 0, 0, 200, 200, [S, S], antialias=True)[0]
    return out[0].mean().item(), out[:, 0].mean().item()


def _geometry_of(mod, name: str = "contrastive"):
    p = mod.get_augmentation(name, S)
    return mod.BatchAugment(S, crop_scale=p.crop_scale, crop_ratio=p.crop_ratio, hflip_p=p.hflip_p,
                            vflip_p=p.vflip_p, rotation_deg=p.rotation_deg, mean=(0, 0, 0), std=(1, 1, 1))


def corner_share(mod, n: int, orig=(450, 600)) -> float:
    geo = _geometry_of(mod)
    white = torch.full((16, 3, CACHE, CACHE), 255, dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    sizes = torch.tensor([list(orig)] * 16)
    shares = []
    for _ in range(n // 16):
        try:
            out = geo(white, g, sizes=sizes)
        except TypeError:  # the landed code takes no sizes
            out = geo(white, g)
        shares.append((out[:, 0] < 0.5).float().mean().item())
    return float(np.mean(shares))


def corner_share_ecl(n: int, orig=(450, 600)) -> float:
    from torchvision import transforms as T

    torch.manual_seed(0)
    tf = T.Compose([T.RandomResizedCrop(S, scale=(0.8, 1.0)), T.RandomHorizontalFlip(), T.RandomVerticalFlip(),
                    T.RandomRotation(90), T.PILToTensor()])
    white = Image.new("RGB", (orig[1], orig[0]), (255, 255, 255))
    return float(np.mean([(tf(white)[0] < 128).float().mean().item() for _ in range(n)]))


def boxes(mod, n: int, height: int, width: int, on_original: bool) -> np.ndarray:
    """Boxes as fractions (top, left, h, w) of the image."""
    g = torch.Generator().manual_seed(1)
    if on_original:
        b = mod.sample_crop_boxes(n, height, width, (0.8, 1.0), (3 / 4, 4 / 3), g).numpy()
        return b / np.array([height, width, height, width])
    b = mod.sample_crop_boxes(n, CACHE, CACHE, (0.8, 1.0), (3 / 4, 4 / 3), g).numpy()
    return b / CACHE


def boxes_tv(n: int, height: int, width: int) -> np.ndarray:
    from torchvision import transforms as T

    torch.manual_seed(1)
    img = torch.empty(1, height, width)
    b = np.array([T.RandomResizedCrop.get_params(img, [0.8, 1.0], [3 / 4, 4 / 3]) for _ in range(n)], float)
    return b / np.array([height, width, height, width])


def box_stats(frac: np.ndarray, ref: np.ndarray | None) -> tuple[float, float, float]:
    whole = np.mean((np.abs(frac[:, 2] - 1) < 1e-9) & (np.abs(frac[:, 3] - 1) < 1e-9))
    shape = frac[:, 3] / frac[:, 2]
    ks = stats.ks_2samp(shape, ref[:, 3] / ref[:, 2]).statistic if ref is not None else 0.0
    return whole, shape.max(), ks


def standard_resize(images: Path, n: int) -> list[tuple[str, dict]]:
    """ltbench's original → 256 (draft) → 224 vs ECL's Resize((224, 224)), on real-image sources."""
    import torchvision.transforms as T

    originals = sorted(images.glob("*.jpg"))[:n]
    ecl = T.Resize((S, S))  # PIL bilinear with antialiasing, as ECL's transform
    eval_aug = after.get_augmentation("eval", S)
    rows = []
    with tempfile.TemporaryDirectory(prefix="ltbench-fidelity-") as tmp:
        for label, make, size in (
            ("600x450 bicubic upscale", "up", (600, 450)), ("1024x768 bicubic upscale", "up", (1024, 768)),
            ("600x450 tiles of 224 px", "tile", (600, 450)), ("1024x768 tiles of 224 px", "tile", (1024, 768)),
        ):
            diffs, sharp_ratio = [], []
            for i, p in enumerate(originals):
                src = Path(tmp) / f"{make}_{size[0]}_{i}.jpg"
                with Image.open(p) as im:
                    im = im.convert("RGB")
                    if make == "up":
                        big = im.resize(size, Image.Resampling.BICUBIC)
                    else:  # a mosaic of different real images at their native resolution
                        big = Image.new("RGB", size)
                        tiles = [Image.open(originals[(i + k) % len(originals)]).convert("RGB") for k in range(20)]
                        k = 0
                        for y in range(0, size[1], 224):
                            for x in range(0, size[0], 224):
                                big.paste(tiles[k % len(tiles)], (x, y))
                                k += 1
                    big.save(src, quality=90)
                cached = torch.from_numpy(decode_image(src, CACHE)).permute(2, 0, 1)[None]
                ours = eval_aug(cached)  # normalised; undo for uint8-scale figures
                mean = torch.tensor(after.IMAGENET_MEAN).view(1, 3, 1, 1)
                std = torch.tensor(after.IMAGENET_STD).view(1, 3, 1, 1)
                ours = ((ours * std + mean) * 255)[0].permute(1, 2, 0).numpy()
                with Image.open(src) as im:
                    ref = np.asarray(ecl(im.convert("RGB")), dtype=np.float64)
                diffs.append(np.abs(ours - ref))
                grad = lambda a: np.abs(np.diff(a, axis=0)).mean() + np.abs(np.diff(a, axis=1)).mean()  # noqa: E731
                sharp_ratio.append(grad(ours) / grad(ref))
            d = np.stack(diffs)
            mse = np.mean(d ** 2)
            rows.append((label, {"mean": d.mean(), "p99": np.percentile(d, 99), "max": d.max(),
                                 "psnr": 10 * np.log10(255 ** 2 / mse), "sharp": float(np.mean(sharp_ratio))}))
    return rows


def timing(mod_a, mod_b, threads: int, reps: int) -> tuple[float, float]:
    torch.set_num_threads(threads)
    images = torch.randint(0, 256, (64, 3, CACHE, CACHE), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    sizes = torch.tensor([[450, 600]] * 64)
    augs = [(mod_a.get_augmentation("contrastive", S), False), (mod_b.get_augmentation("contrastive", S), True)]
    times: list[list[float]] = [[], []]
    for r in range(reps + 1):
        for k in (0, 1) if r % 2 == 0 else (1, 0):
            aug, with_sizes = augs[k]
            g = torch.Generator().manual_seed(r)
            t0 = time.perf_counter()
            aug(images, g, sizes=sizes) if with_sizes else aug(images, g)
            if r > 0:
                times[k].append(time.perf_counter() - t0)
    return statistics.median(times[0]), statistics.median(times[1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", type=Path, help="a pristine export (git archive HEAD) to compare with")
    p.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="real .jpg images (224 px ISIC)")
    p.add_argument("--samples", type=int, default=4000, help="crop boxes / views per figure")
    p.add_argument("--resize-images", type=int, default=24, help="images for the standard-preset figure")
    p.add_argument("--threads", type=int, default=1, help="torch threads for the timing")
    p.add_argument("--reps", type=int, default=9, help="timed repetitions (after one warm-up)")
    args = p.parse_args(argv)
    before = load_before(args.before)
    torch.set_num_threads(args.threads)
    col = lambda v, fmt: (fmt % v) if v is not None else "—"  # noqa: E731
    print(f"{'figure':58s} {'before':>10s} {'after':>10s} {'torchvision':>12s}")

    def row(name, b, a, t, fmt="%.4f"):
        print(f"{name:58s} {col(b, fmt):>10s} {col(a, fmt):>10s} {col(t, fmt):>12s}")

    pct = "%.2f %%"
    row("1. 216 px crop rotated 45°: pixels from outside the box",
        100 * outside_share(before) if before else None, 100 * outside_share(after), 100 * outside_share_tv(), pct)
    eb, ea, et = (edge_row(before) if before else (None, None)), edge_row(after), edge_row_tv()
    row("2. 200 px crop at the corner, white: first row mean", eb[0], ea[0], et[0])
    row("   ... first column mean", eb[1], ea[1], et[1])
    n = args.samples
    row("3. contrastive geometry, white 600x450: rotation corners",
        100 * corner_share(before, n // 4) if before else None, 100 * corner_share(after, n // 4),
        100 * corner_share_ecl(n // 4), pct)
    row("   ... same on a 1024x1024 original",
        100 * corner_share(before, n // 4, (1024, 1024)) if before else None,
        100 * corner_share(after, n // 4, (1024, 1024)), 100 * corner_share_ecl(n // 4, (1024, 1024)), pct)
    for h, w in ((450, 600), (1024, 1024)):
        ref = boxes_tv(n, h, w)
        sb = box_stats(boxes(before, n, h, w, False), ref) if before else (None, None, None)
        sa = box_stats(boxes(after, n, h, w, True), ref)
        st = box_stats(ref, None)
        row(f"4. {w}x{h} original: whole-image crops", *(100 * v if v is not None else None
                                                        for v in (sb[0], sa[0], st[0])), fmt=pct)
        row("   ... largest box shape (w/W)/(h/H)", sb[1], sa[1], st[1], "%.3f")
        row("   ... KS statistic of the box shape vs torchvision", sb[2], sa[2], None, "%.3f")
    print("\n5. 'standard' preset (unchanged): ltbench 256 px cache (draft) -> 224 vs ECL Resize((224, 224)),"
          f" {args.resize_images} real images, uint8 scale")
    print(f"   {'source':28s} {'mean |d|':>9s} {'p99 |d|':>8s} {'max |d|':>8s} {'PSNR dB':>8s} {'sharpness':>10s}")
    for label, r in standard_resize(args.images, args.resize_images):
        print(f"   {label:28s} {r['mean']:9.2f} {r['p99']:8.1f} {r['max']:8.1f} {r['psnr']:8.1f} {r['sharp']:10.3f}")
    print("   (sharpness: mean absolute gradient of ltbench's image / ECL's)")
    if before:
        tb, ta = timing(before, after, args.threads, args.reps)
        print(f"\n6. contrastive preset, 64 images 256 -> 224, {args.threads} thread(s), median of {args.reps}: "
              f"before {1e3 * tb:.0f} ms ({64 / tb:.0f} img/s), after {1e3 * ta:.0f} ms ({64 / ta:.0f} img/s), "
              f"after/before time {ta / tb:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
