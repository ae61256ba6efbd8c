"""One run = one method × one seed on one split: prepare the data, train, store the result.

Each run writes ``runs/<method>/seed<k>.npz`` (validation/test labels and probabilities, so any
metric can be recomputed without training) and then ``runs/<method>/seed<k>.json`` (config,
hyperparameters, split hash, versions, history, metrics). Both are written atomically and the
JSON last, so a result file exists only for a finished run; a rerun with the same run key skips.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ltbench.data.base import ImageSet, Split
from ltbench.data.datasets import get_dataset, load_dataset
from ltbench.errors import LtbenchError
from ltbench.fileio import atomic_write
from ltbench.method import Method
from ltbench.registry import create_method
from ltbench.trainer import DataBundle, TrainConfig, Trainer

SCHEMA_VERSION = 1
# The input pipeline (decoding, pixel cache, augmentation) as far as it changes results; part of
# every run key, so a bench folder never reuses results of an older pipeline. Bump it with any
# change of what a method sees. 1: until issue 14 (implicit); 2: crop boxes drawn on the original
# geometry, rotation inside the resized crop (issue 14, parts 1-2).
DATA_PIPELINE_VERSION = 2


@dataclass
class DataSpec:
    """Which data a run uses: dataset, its options, the split, and where the pixel cache lives."""

    dataset: str
    data_root: str | None = None
    options: dict | None = None
    split: str | None = None  # None -> the dataset's default split kind
    split_seed: int = 0
    split_dir: str | None = None
    split_file: str | None = None
    cache_dir: str | None = None

    def identity(self) -> dict:
        """What determines the data (not where it is stored)."""
        return {"dataset": self.dataset, "options": self.options or {}, "split": self.split_kind,
                "split_seed": self.split_seed}

    @property
    def split_kind(self) -> str:
        return self.split or get_dataset(self.dataset).default_split


@dataclass
class PreparedData:
    image_set: ImageSet
    split: Split
    split_hash: str
    bundle: DataBundle
    leak: dict | None = None  # splits.leak_report: test lesions also in train, test images without an id


def default_cache_dir() -> Path:
    return Path(os.environ.get("LTBENCH_CACHE", Path.home() / ".cache" / "ltbench"))


def prepare_data(spec: DataSpec, image_size: int, verify: bool = False,
                 before_pixels: Callable[[ImageSet, Split], None] | None = None) -> PreparedData:
    """Load the dataset, split it, and decode its pixels once (cached at ~8/7 of the train size).

    ``verify``: also hash the source files and rebuild the cache if any changed (``data prepare
    --verify``); by default a cache is reused while sizes and mtimes match. ``before_pixels(image_set,
    split)`` runs once the labels are read and split, before any pixel is decoded: the checks that
    need the data (``check_methods_on_data``) fail there, not after minutes of caching.
    """
    from ltbench.data.splits import leak_report, make_split

    image_set = load_dataset(spec.dataset, spec.data_root, **(spec.options or {}))
    split = make_split(image_set, kind=spec.split_kind, seed=spec.split_seed,
                       split_dir=Path(spec.split_dir) if spec.split_dir else None,
                       split_file=Path(spec.split_file) if spec.split_file else None,
                       dataset_name=spec.dataset)
    if before_pixels is not None:
        before_pixels(image_set, split)
    if image_set.pixels is not None:
        pixels = image_set.pixels
        sizes = np.tile(np.asarray(pixels.shape[1:3], dtype=np.int64), (len(pixels), 1))  # their own size
    else:
        from ltbench.data.cache import load_images

        cache = Path(spec.cache_dir) if spec.cache_dir else default_cache_dir()
        cached = load_images(image_set, math.ceil(image_size * 8 / 7), cache, verify=verify)
        pixels, sizes = cached.pixels, cached.sizes  # sizes: the originals' (height, width)
    bundle = DataBundle(pixels=pixels, labels=image_set.labels, class_names=list(image_set.class_names),
                        train=split.train, val=split.val, test=split.test, original_sizes=sizes)
    leak = leak_report(image_set, split, "test")
    return PreparedData(image_set, split, split.hash(image_set), bundle, leak)


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def run_identity(method: str, params: dict, seed: int, config: TrainConfig, data: DataSpec, split_hash: str,
                 registered: str | None = None) -> dict:
    """Everything that determines a run's result (not where its files are).

    ``method`` is the row name of the benchmark; ``registered`` the method it runs when that
    differs (a named variant such as ``focal_g1``), so that two variants never share a key.
    """
    ident = {"method": method, "params": _jsonable(params), "seed": seed, "data": data.identity(),
             "split_hash": split_hash, "config": {k: v for k, v in config.to_dict().items()
                                                   if k not in ("device", "seed")},
             "pipeline": DATA_PIPELINE_VERSION}
    if registered is not None and registered != method:
        ident["registered_method"] = registered
    return ident


def run_key(method: str, params: dict, seed: int, config: TrainConfig, data: DataSpec, split_hash: str,
            registered: str | None = None) -> str:
    """Digest of :func:`run_identity`."""
    ident = run_identity(method, params, seed, config, data, split_hash, registered)
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]


def _atomic_savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    import io

    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write(path, buffer.getvalue())


def result_paths(out_dir: Path, method: str, seed: int) -> tuple[Path, Path]:
    base = Path(out_dir) / "runs" / method / f"seed{seed}"
    return base.with_suffix(".json"), base.with_suffix(".npz")


def existing_result(out_dir: Path, method: str, seed: int, key: str) -> dict | None:
    """The stored result of this run if it was made with the same run key."""
    json_path, _ = result_paths(out_dir, method, seed)
    if not json_path.is_file():
        return None
    try:
        result = json.loads(json_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # unreadable: retrain and overwrite
    return result if result.get("run_key") == key else None


def versions() -> dict:
    import sklearn
    import torch
    import torchvision

    import ltbench

    return {"ltbench": ltbench.__version__, "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "numpy": np.__version__, "scikit-learn": sklearn.__version__,
            "platform": platform.platform()}


def run_one(method_name: str, params: dict, seed: int, config: TrainConfig, data_spec: DataSpec,
            prepared: PreparedData, out_dir: Path, benchmark: str = "", progress: bool = True,
            force: bool = False, row: str | None = None) -> tuple[dict, bool]:
    """Train one method with one seed unless its result exists. Returns (result, trained).

    ``row``: the benchmark row name (default: the method's); results live in ``runs/<row>/``
    and carry it as ``method``, with the registered method as ``registered_method``.
    """
    row = row or method_name
    config = TrainConfig(**{**config.to_dict(), "seed": seed})
    method: Method = create_method(method_name, **params)
    full_params = _jsonable(method.get_params())
    key = run_key(row, full_params, seed, config, data_spec, prepared.split_hash, registered=method_name)
    if not force and (done := existing_result(out_dir, row, seed, key)) is not None:
        return done, False
    trainer = Trainer(config, progress=progress, desc=f"{row} seed {seed}")
    output = trainer.fit(method, prepared.bundle)
    json_path, npz_path = result_paths(out_dir, row, seed)
    image_set, bundle = prepared.image_set, prepared.bundle
    result = {
        "schema": SCHEMA_VERSION,
        "run_key": key,
        "pipeline": DATA_PIPELINE_VERSION,
        "benchmark": benchmark,
        "method": row,
        "registered_method": method_name,
        "method_params": full_params,
        "seed": seed,
        "dataset": {
            "name": data_spec.dataset, "options": data_spec.options or {}, "description": image_set.description,
            "class_names": list(bundle.class_names),
            "class_counts": {part: bundle.counts(rows) for part, rows in prepared.split.parts().items()},
        },
        "split": {"kind": prepared.split.kind, "hash": prepared.split_hash,
                  "details": _jsonable(prepared.split.details), "lesion_leak": prepared.leak,
                  "file": "split.csv"},
        "config": config.to_dict(),
        "device": str(trainer.device),
        "versions": versions(),
        "wall_time_s": round(output.wall_time_s, 3),
        "best_epoch": output.best_epoch,
        "history": output.history,
        "val": output.val,
        "test": output.test,
        "arrays": npz_path.name,
    }
    _atomic_savez(npz_path, output.arrays)
    atomic_write(json_path, json.dumps(_jsonable(result), indent=1, allow_nan=True))
    return result, True


def check_methods_on_data(rows: dict[str, tuple[str, dict]], config: TrainConfig, image_set: ImageSet,
                          split: Split) -> None:
    """Run each method's ``setup`` on the real class counts before any pixel is decoded.

    ``rows`` maps a row name to (registered method, params). A ``ValueError``/``TypeError`` from
    ``setup`` (a check that needs the data, e.g. one class weight per class) becomes one line
    naming the row; so does a batch size of 1 for a model with BatchNorm layers, whose training
    statistics need at least two images. Runs on throwaway instances: the real run builds its own.
    """
    import torch

    from ltbench.data.loader import steps_per_epoch
    from ltbench.method import TrainInfo
    from ltbench.models import build_backbone
    from ltbench.trainer import resolve_device

    info = TrainInfo(class_counts=tuple(split.class_counts(image_set, "train")),
                     class_names=tuple(image_set.class_names), epochs=config.epochs,
                     steps_per_epoch=steps_per_epoch(len(split.train), config.batch_size),
                     device=resolve_device(config.device), lr=config.lr)
    for row, (name, params) in rows.items():
        method = create_method(name, **params)
        try:
            method.setup(info)
        except (ValueError, TypeError) as exc:
            raise LtbenchError(f"method {row!r}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        if config.batch_size < 2:
            model = method.build_model(build_backbone(config.backbone, None), info)
            if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
                raise LtbenchError(f"batch_size {config.batch_size}: method {row!r} on {config.backbone} has "
                                   "BatchNorm layers, which need at least 2 images per training batch")


def write_split(prepared: PreparedData, out_dir: Path) -> Path:
    from ltbench.data.splits import write_split_csv

    path = Path(out_dir) / "split.csv"
    write_split_csv(prepared.image_set, prepared.split, path)
    return path


def check_cache_dir(spec: DataSpec, label: str = "--cache-dir") -> None:
    """The pixel cache folder is usable (or creatable) before any image is decoded."""
    from ltbench.config import check_folder

    if spec.cache_dir:
        check_folder(spec.cache_dir, label)
    elif get_dataset(spec.dataset).needs_root:  # in-memory datasets never touch the cache
        check_folder(default_cache_dir(), "the pixel cache ($LTBENCH_CACHE or ~/.cache/ltbench)")


def check_out_dir(out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise LtbenchError(f"--out {out_dir}: exists and is not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LtbenchError(f"--out {out_dir}: cannot create it ({exc.strerror})") from None
    return out_dir
