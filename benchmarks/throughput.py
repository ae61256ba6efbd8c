"""Training-input throughput: ltbench's cached batch pipeline vs a per-item PIL pipeline like ECL's.

Images per second delivered as TWO augmented 224 px views (float, normalised) — no network.

* ltbench: the source JPEGs are decoded once into a uint8 256 px cache (``load_images``; this
  one-off build is timed and reported separately), then ``TrainStream`` reads batches from the
  array and applies the "standard" and "contrastive" presets to the whole batch on the device
  (with the originals' sizes, on which the contrastive crop is drawn, as in training). Its CPU
  augmentation runs on single-threaded worker threads (``TrainStream(workers=...)``, default: the
  torch thread count), the random parameters drawn first in the sequential order.
* ltbench sequential: the same stream with ``workers=0`` — the augmentation in the consumer's
  thread with torch's intra-op threads (the path before the worker threads; bit-identical batches).
* ECL-like: a ``torch.utils.data.DataLoader`` over a Dataset that opens each JPEG with PIL and
  runs torchvision transforms per item, every epoch (ECL's ``augmentation_rand`` and
  ``augmentation_sim``), on the same source JPEGs.
* ECL-like from a 256 px cache: the same per-item pipeline reading 256×256 JPEGs of the cached
  pixels (what a per-item pipeline gains from pre-resizing alone).

Sources: by default N real ISIC 2018 images (224 px) upscaled to 1024×768 JPEGs (quality 90, ISIC
sizes) in a temporary folder that is deleted afterwards. ``--workers`` is both the DataLoader's
worker count and ltbench's cache-build threads and torch threads. The pipelines are interleaved
epoch by epoch (rotating order); round 0 is a warm-up; medians of the other rounds are reported.

``--before DIR`` (a pristine ``git archive`` export of earlier code) adds that code's augment.py +
loader.py as one more interleaved pipeline (after checking one epoch of its batches equals this
checkout's), so a change is measured against the old code in the same rounds — on a shared
machine the only comparison worth quoting. ``--profile-presets`` times each preset alone on a fixed
batch of 64 cached images (1 thread, as on the loader's workers; with ``--before``, interleaved).

    .venv/bin/python benchmarks/throughput.py
    .venv/bin/python benchmarks/throughput.py --num-images 512 --rounds 4 --workers 2
    base=$(mktemp -d) && git archive HEAD | tar -x -C "$base"
    .venv/bin/python benchmarks/throughput.py --before "$base" --rounds 4 --no-sequential
    .venv/bin/python benchmarks/throughput.py --before "$base" --profile-presets --num-images 64
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ltbench.data.augment import get_augmentation
from ltbench.data.base import ImageSet
from ltbench.data.cache import load_images
from ltbench.data.loader import TrainStream

TARGET = 3.0
# The shared data beside the repository (../shared/data) or $LTBENCH_SHARED_DATA, as the tests find it.
SHARED_DATA = Path(os.environ.get("LTBENCH_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
DEFAULT_IMAGES = SHARED_DATA / "isic2018_task3_test_224" / "images"


def make_sources(src: Path, n: int, out: Path, size: tuple[int, int], quality: int) -> list[Path]:
    """``n`` JPEGs of ``size`` (w, h) made by upscaling the real images in ``src`` (cycled)."""
    originals = sorted(src.glob("*.jpg"))
    if not originals:
        raise SystemExit(f"--images {src}: no .jpg files")
    paths = []
    for i in range(n):
        with Image.open(originals[i % len(originals)]) as img:
            big = img.convert("RGB").resize(size, Image.Resampling.BICUBIC)
        path = out / f"img_{i:05d}.jpg"
        big.save(path, quality=quality)
        paths.append(path)
    return paths


class PilTwoViews(torch.utils.data.Dataset):
    """ECL-style: open the JPEG with PIL per item, two torchvision-transformed views."""

    def __init__(self, paths: list[Path], labels: np.ndarray, size: int) -> None:
        from torchvision import transforms as T

        self.paths, self.labels = paths, labels
        norm = T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        jitter = T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8)
        self.view1 = T.Compose([T.Resize((size, size)), T.RandomHorizontalFlip(), jitter, T.ToTensor(), norm])
        self.view2 = T.Compose([T.RandomResizedCrop(size, scale=(0.8, 1.0)), T.RandomHorizontalFlip(),
                                T.RandomVerticalFlip(), T.RandomRotation(90), jitter, T.RandomGrayscale(0.2),
                                T.ToTensor(), norm])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        with Image.open(self.paths[i]) as img:
            img = img.convert("RGB")
        return self.view1(img), self.view2(img), int(self.labels[i])


def epoch_ltbench(stream: TrainStream) -> int:
    seen = 0
    for batch in stream:
        v1, v2 = batch.views
        seen += v1.shape[0]
    return seen


def epoch_loader(loader) -> int:
    seen = 0
    for v1, v2, _ in loader:
        seen += v1.shape[0]
    return seen


BEFORE = "ltbench, --before's code"


def load_before(root: Path):
    """(augment, loader) modules of a pristine export ``root``, importable beside this checkout's.

    Its loader is executed with ITS augment module in place of ``ltbench.data.augment``, so its
    TrainStream splits its own presets across the workers exactly as that code did.
    """
    import importlib.util

    def load(name: str, rel: str):
        spec = importlib.util.spec_from_file_location(name, root / rel)
        if spec is None or not (root / rel).is_file():
            raise SystemExit(f"--before {root}: no {rel}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module

    augment = load("ltbench_before_augment", "ltbench/data/augment.py")
    current = sys.modules["ltbench.data.augment"]
    sys.modules["ltbench.data.augment"] = augment
    try:
        loader = load("ltbench_before_loader", "ltbench/data/loader.py")
    finally:
        sys.modules["ltbench.data.augment"] = current
    return augment, loader


def profile_presets(pixels, sizes, args, before, reps: int = 15) -> int:
    """Each preset alone on a fixed batch of 64 cached images, interleaved with --before's; 1 thread."""
    from ltbench.data import augment as current

    n = min(64, len(pixels))
    images = torch.from_numpy(np.array(pixels[:n])).permute(0, 3, 1, 2)  # NHWC, as the loader gives them
    batch_sizes = torch.from_numpy(np.asarray(sizes[:n], dtype=np.int64))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as on the loader's single-threaded workers
    codes = {"this checkout": current, **({"before": before[0]} if before else {})}
    names = ("eval", "standard", "contrastive")
    times = {(c, p): [] for c in codes for p in names}
    for r in range(reps + 1):
        for p in names:
            outs = []
            for c in (list(codes) if r % 2 else list(codes)[::-1]):
                aug = codes[c].PRESETS[p](args.size)
                t0 = time.perf_counter()
                outs.append(aug(images, torch.Generator().manual_seed(r), sizes=batch_sizes))
                if r:
                    times[(c, p)].append(time.perf_counter() - t0)
            if len(outs) == 2 and not torch.equal(outs[0], outs[1]):
                print(f"WARNING: {p} differs from --before's output")
    torch.set_num_threads(threads)
    print(f"\neach preset alone, {n} cached images {pixels.shape[1]} px -> {args.size}, 1 thread, "
          f"median (min) of {reps} interleaved repetitions")
    for p in names:
        row = [f"{p:12s}"]
        for c in codes:
            v = times[(c, p)]
            row.append(f"{c}: {1e3 * statistics.median(v):6.1f} ms ({1e3 * min(v):6.1f}) = "
                       f"{n / statistics.median(v):5.0f} img/s")
        if before:
            row.append(f"speed-up {statistics.median(times[('before', p)]) / statistics.median(times[('this checkout', p)]):.2f}x")
        print(" | ".join(row))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="folder of real .jpg images")
    p.add_argument("--num-images", type=int, default=256)
    p.add_argument("--source-size", default="1024x768", help="W x H of the generated source JPEGs")
    p.add_argument("--quality", type=int, default=90)
    p.add_argument("--cache-size", type=int, default=256)
    p.add_argument("--size", type=int, default=224, help="output side of each view")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3, help="timed rounds (after one warm-up round)")
    p.add_argument("--threads", type=int, default=None, help="torch threads for ltbench (default: --workers)")
    p.add_argument("--stream-workers", type=int, default=None,
                   help="TrainStream augmentation threads (default: the torch thread count)")
    p.add_argument("--no-sequential", action="store_true", help="skip the workers=0 ltbench stream")
    p.add_argument("--malloc-tuned", action="store_true",
                   help="rerun this script with glibc's mmap/trim thresholds raised (see README)")
    p.add_argument("--no-pil-cache", action="store_true", help="skip the per-item pipeline on 256 px JPEGs")
    p.add_argument("--before", type=Path, default=None,
                   help="a pristine export of earlier code (git archive): also time ITS augment.py + loader.py, "
                        "interleaved in the same rounds (and check that its batches equal this checkout's)")
    p.add_argument("--profile-presets", action="store_true",
                   help="only time each preset alone on a fixed batch of 64 cached images (and --before's)")
    args = p.parse_args(argv)
    w, h = (int(v) for v in args.source_size.lower().split("x"))
    if args.malloc_tuned and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(2**30), "MALLOC_TRIM_THRESHOLD_": str(2**30)}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    torch.set_num_threads(args.threads or max(1, args.workers))
    before = load_before(args.before) if args.before else None

    with tempfile.TemporaryDirectory(prefix="ltbench-throughput-") as tmp:
        tmp = Path(tmp)
        (tmp / "src").mkdir()
        (tmp / "src256").mkdir()
        t0 = time.perf_counter()
        paths = make_sources(args.images, args.num_images, tmp / "src", (w, h), args.quality)
        mb = sum(q.stat().st_size for q in paths) / 1e6
        print(f"made {len(paths)} source JPEGs {w}x{h} q{args.quality} ({mb:.0f} MB) from {args.images} "
              f"in {time.perf_counter() - t0:.1f} s")
        labels = np.arange(len(paths)) % 7
        image_set = ImageSet(ids=[q.stem for q in paths], labels=labels, class_names=[str(c) for c in range(7)],
                             paths=paths)

        t0 = time.perf_counter()
        cached = load_images(image_set, args.cache_size, tmp / "cache", workers=args.workers)
        pixels = cached.pixels
        build_s = time.perf_counter() - t0
        print(f"ltbench one-off cache build ({args.cache_size} px, {args.workers} threads): {build_s:.2f} s "
              f"= {len(paths) / build_s:.0f} img/s")

        if args.profile_presets:
            return profile_presets(pixels, cached.sizes, args, before)
        pipelines = {}

        def stream_for(workers, code=None):
            aug, loader = (None, None) if code is None else code
            make = get_augmentation if aug is None else (lambda name, size: aug.PRESETS[name](size))
            return (TrainStream if loader is None else loader.TrainStream)(
                pixels, np.arange(len(paths)), labels, "instance", args.batch_size,
                [make("standard", args.size), make("contrastive", args.size)],
                torch.device("cpu"), torch.Generator().manual_seed(0), sizes=cached.sizes, workers=workers)

        stream = stream_for(args.stream_workers)
        print(f"ltbench stream: {stream.workers} augmentation worker thread(s), prefetch {stream.prefetch}, "
              f"torch threads {torch.get_num_threads()}")
        pipelines["ltbench cached batch"] = lambda: epoch_ltbench(stream)
        if before is not None:
            old_stream = stream_for(args.stream_workers, before)
            same = all(torch.equal(a, b) for x, y in zip(stream_for(args.stream_workers), old_stream)
                       for a, b in zip(x.views, y.views))
            print(f"--before {args.before}: one epoch's batches bit-identical to this checkout's: {same}")
            old_stream = stream_for(args.stream_workers, before)
            pipelines[BEFORE] = lambda: epoch_ltbench(old_stream)

        def loader_for(files):
            ds = PilTwoViews(files, labels, args.size)
            return torch.utils.data.DataLoader(ds, batch_size=args.batch_size, shuffle=True,
                                               num_workers=args.workers, persistent_workers=args.workers > 0)

        ecl = loader_for(paths)
        pipelines[f"per-item PIL, {w}x{h} JPEG"] = lambda: epoch_loader(ecl)
        if not args.no_pil_cache:
            small = []
            for i in range(len(paths)):
                q = tmp / "src256" / f"img_{i:05d}.jpg"
                Image.fromarray(np.asarray(pixels[i])).save(q, quality=args.quality)
                small.append(q)
            ecl_small = loader_for(small)
            pipelines[f"per-item PIL, {args.cache_size} px JPEG"] = lambda: epoch_loader(ecl_small)

        if not args.no_sequential:
            sequential = stream_for(0)
            pipelines["ltbench sequential (workers=0)"] = lambda: epoch_ltbench(sequential)
        names = list(pipelines)
        rates: dict[str, list[float]] = {k: [] for k in names}
        for r in range(args.rounds + 1):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                t0 = time.perf_counter()
                seen = pipelines[name]()
                rate = seen / (time.perf_counter() - t0)
                if r > 0:
                    rates[name].append(rate)
        del ecl, pipelines  # shut the persistent workers down before the folder goes

    print(f"\n{len(paths)} images/epoch, batch {args.batch_size}, {args.workers} workers, two {args.size} px views;"
          f" median of {args.rounds} interleaved rounds (after 1 warm-up)")
    print(f"{'pipeline':34s} {'img/s (median)':>15s} {'min':>8s} {'max':>8s}")
    for name in names:
        v = rates[name]
        print(f"{name:34s} {statistics.median(v):15.1f} {min(v):8.1f} {max(v):8.1f}")
    ours = statistics.median(rates[names[0]])
    base = statistics.median(rates[f"per-item PIL, {w}x{h} JPEG"])
    ratio = ours / base
    ok = "OK" if ratio >= TARGET else "MISSED"
    print(f"ltbench {ours:.0f} img/s | per-item PIL ({w}x{h}) {base:.0f} img/s | ratio {ratio:.2f} "
          f"(target >= {TARGET:.0f}) {ok}")
    small = f"per-item PIL, {args.cache_size} px JPEG"
    if small in rates:
        small_rate = statistics.median(rates[small])
        print(f"  (per-item PIL from {args.cache_size} px JPEGs {small_rate:.0f} img/s: ltbench / that = "
              f"{ours / small_rate:.2f})")
    if BEFORE in rates:
        old = statistics.median(rates[BEFORE])
        print(f"  (--before's code: {old:.0f} img/s, ratio {old / base:.2f}; this checkout / before = {ours / old:.2f})")
    if "ltbench sequential (workers=0)" in rates:
        seq = statistics.median(rates["ltbench sequential (workers=0)"])
        print(f"  (ltbench sequential, workers=0: {seq:.0f} img/s, ratio {seq / base:.2f}; "
              f"workers / sequential = {ours / seq:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
