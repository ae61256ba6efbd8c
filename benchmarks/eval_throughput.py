"""Evaluation throughput: ltbench's batched evaluation vs batch-size-1 evaluation (like ECL's).

Same model (``build_backbone`` + linear head, seeded, in eval mode), same images, same "eval"
preprocessing (resize to S×S, normalise), everything under ``torch.inference_mode``:

* ``Trainer.evaluate``: ltbench's real path (``eval_batches`` of ``--batch-size``, eval
  augmentation, softmax, then the metrics) — the headline figure;
* batched loop: the same without the metrics (how much of it is the model);
* batch size 1: one image at a time through the same preprocessing and model.

The three are interleaved (rotating order) for ``--rounds`` rounds after one warm-up round;
medians are reported, and the probabilities of batched and batch-size-1 evaluation are compared.

    .venv/bin/python benchmarks/eval_throughput.py                           # digits-lt, small-cnn 16 px
    .venv/bin/python benchmarks/eval_throughput.py --backbone resnet18 --image-size 64 \\
        --images ../shared/data/isic2018_task3_test_224/images --num-images 256
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import ltbench
from ltbench.data.augment import get_augmentation
from ltbench.data.base import ImageSet
from ltbench.data.cache import load_pixels
from ltbench.data.loader import eval_batches, to_device
from ltbench.models import Classifier, build_backbone
from ltbench.runs import DataSpec, prepare_data
from ltbench.trainer import DataBundle, Trainer, TrainConfig, seed_everything



def load_images(folder: Path, n: int, size: int, cache_dir: Path) -> DataBundle:
    """``n`` real JPEGs, cached as ltbench does (at ceil(size · 8/7) px), with dummy labels."""
    paths = sorted(folder.glob("*.jpg"))[:n]
    if not paths:
        raise SystemExit(f"--images {folder}: no .jpg files")
    labels = np.arange(len(paths)) % 7
    image_set = ImageSet(ids=[p.stem for p in paths], labels=labels, class_names=[str(c) for c in range(7)],
                         paths=paths)
    pixels = load_pixels(image_set, math.ceil(size * 8 / 7), cache_dir)
    rows = np.arange(len(paths))
    return DataBundle(pixels=pixels, labels=labels, class_names=image_set.class_names, train=rows[:0],
                      val=rows, test=rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="small-cnn")
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=256, help="ltbench's eval batch size")
    p.add_argument("--dataset", default="digits-lt", help="in-memory ltbench dataset (all its images)")
    p.add_argument("--images", type=Path, default=None, help="use real .jpg files from this folder instead")
    p.add_argument("--num-images", type=int, default=256, help="with --images: how many")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds (after one warm-up round)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="ltbench-eval-") as tmp:
        if args.images:
            bundle = load_images(args.images, args.num_images, args.image_size, Path(tmp))
            source = f"{len(bundle.val)} JPEGs from {args.images}"
        else:
            bundle = prepare_data(DataSpec(args.dataset), args.image_size).bundle
            rows = np.arange(len(bundle.labels))
            bundle = DataBundle(pixels=bundle.pixels, labels=bundle.labels, class_names=bundle.class_names,
                                train=rows[:0], val=rows, test=rows)
            source = f"all {len(rows)} images of {args.dataset}"
        rows = bundle.val
        pixels = np.array(bundle.pixels)  # a writable in-memory copy: time the model, not the disk

        seed_everything(0)
        backbone = build_backbone(args.backbone)
        model = Classifier(backbone, nn.Linear(backbone.out_dim, len(bundle.class_names))).eval()
        method = ltbench.create_method("ce")
        trainer = Trainer(TrainConfig(backbone=args.backbone, image_size=args.image_size,
                                      eval_batch_size=args.batch_size, device="cpu"), progress=False)
        resize = get_augmentation("eval", args.image_size)
        cpu = torch.device("cpu")
        out: dict[str, np.ndarray] = {}

        def ltbench_evaluate() -> None:
            out["trainer"] = trainer.evaluate(method, model, bundle, rows)["probs"]

        @torch.inference_mode()
        def batched() -> None:
            probs = [torch.softmax(model(resize(x)), dim=1) for x in eval_batches(pixels, rows, args.batch_size, cpu)]
            out["batched"] = torch.cat(probs).numpy()

        @torch.inference_mode()
        def single() -> None:
            probs = [torch.softmax(model(resize(to_device(pixels[r:r + 1], cpu))), dim=1) for r in rows]
            out["single"] = torch.cat(probs).numpy()

        runs = {f"Trainer.evaluate (batch {args.batch_size})": ltbench_evaluate,
                f"batched loop (batch {args.batch_size})": batched, "batch size 1": single}
        names = list(runs)
        rates: dict[str, list[float]] = {k: [] for k in names}
        for r in range(args.rounds + 1):
            for name in names[r % 3:] + names[:r % 3]:
                t0 = time.perf_counter()
                runs[name]()
                if r > 0:
                    rates[name].append(len(rows) / (time.perf_counter() - t0))

    diff = float(np.abs(out["trainer"] - out["single"]).max())
    print(f"data: {source}, {tuple(pixels.shape[1:3])} px stored, evaluated at {args.image_size} px; "
          f"backbone {args.backbone}; {torch.get_num_threads()} torch threads")
    print(f"median of {args.rounds} interleaved rounds (after 1 warm-up); "
          f"max |prob difference| batched vs batch size 1 = {diff:.1e}")
    print(f"{'evaluation':32s} {'img/s (median)':>15s} {'min':>9s} {'max':>9s}")
    for name in names:
        v = rates[name]
        print(f"{name:32s} {statistics.median(v):15.0f} {min(v):9.0f} {max(v):9.0f}")
    ours, loop, one = (statistics.median(rates[n]) for n in names)
    ratio = ours / one
    # No target: on a CPU the model is compute-bound here (benchmarks/README.md).
    print(f"ltbench {ours:.0f} img/s | batch size 1 {one:.0f} img/s | ratio {ratio:.1f} "
          f"(batched loop / bs1 = {loop / one:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
