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

import numpy as np

from ltbench.data.base import ImageSet, Split
from ltbench.data.datasets import get_dataset, load_dataset
from ltbench.errors import LtbenchError
from ltbench.fileio import atomic_write
from ltbench.method import Method
from ltbench.registry import create_method
from ltbench.trainer import DataBundle, TrainConfig, Trainer

SCHEMA_VERSION = 1


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
    leak: dict | None = None  # lesions of the test set also in train, when lesion ids are known


def default_cache_dir() -> Path:
    return Path(os.environ.get("LTBENCH_CACHE", Path.home() / ".cache" / "ltbench"))


def prepare_data(spec: DataSpec, image_size: int) -> PreparedData:
    """Load the dataset, split it, and decode its pixels once (cached at ~8/7 of the train size)."""
    from ltbench.data.splits import lesion_leak, make_split

    image_set = load_dataset(spec.dataset, spec.data_root, **(spec.options or {}))
    split = make_split(image_set, kind=spec.split_kind, seed=spec.split_seed,
                       split_dir=Path(spec.split_dir) if spec.split_dir else None,
                       split_file=Path(spec.split_file) if spec.split_file else None,
                       dataset_name=spec.dataset)
    if image_set.pixels is not None:
        pixels = image_set.pixels
    else:
        from ltbench.data.cache import load_pixels

        cache = Path(spec.cache_dir) if spec.cache_dir else default_cache_dir()
        pixels = load_pixels(image_set, math.ceil(image_size * 8 / 7), cache)
    bundle = DataBundle(pixels=pixels, labels=image_set.labels, class_names=list(image_set.class_names),
                        train=split.train, val=split.val, test=split.test)
    leak = None
    if image_set.groups is not None:
        shared, total = lesion_leak(image_set, split, "test")
        leak = {"test_lesions_also_in_train": shared, "test_lesions": total}
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


def run_key(method: str, params: dict, seed: int, config: TrainConfig, data: DataSpec, split_hash: str) -> str:
    """Digest of everything that determines a run's result (not where its files are)."""
    ident = {"method": method, "params": _jsonable(params), "seed": seed, "data": data.identity(),
             "split_hash": split_hash, "config": {k: v for k, v in config.to_dict().items()
                                                   if k not in ("device", "seed")}}
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
            force: bool = False) -> tuple[dict, bool]:
    """Train one method with one seed unless its result exists. Returns (result, trained)."""
    config = TrainConfig(**{**config.to_dict(), "seed": seed})
    method: Method = create_method(method_name, **params)
    full_params = _jsonable(method.get_params())
    key = run_key(method_name, full_params, seed, config, data_spec, prepared.split_hash)
    if not force and (done := existing_result(out_dir, method_name, seed, key)) is not None:
        return done, False
    trainer = Trainer(config, progress=progress, desc=f"{method_name} seed {seed}")
    output = trainer.fit(method, prepared.bundle)
    json_path, npz_path = result_paths(out_dir, method_name, seed)
    image_set, bundle = prepared.image_set, prepared.bundle
    result = {
        "schema": SCHEMA_VERSION,
        "run_key": key,
        "benchmark": benchmark,
        "method": method_name,
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


def write_split(prepared: PreparedData, out_dir: Path) -> Path:
    from ltbench.data.splits import write_split_csv

    path = Path(out_dir) / "split.csv"
    write_split_csv(prepared.image_set, prepared.split, path)
    return path


def check_out_dir(out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise LtbenchError(f"--out {out_dir}: exists and is not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LtbenchError(f"--out {out_dir}: cannot create it ({exc.strerror})") from None
    return out_dir
