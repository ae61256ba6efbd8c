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
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ltbench.data.base import ImageSet, Split
from ltbench.data.datasets import get_dataset, load_dataset
from ltbench.data.geometry import ViewGeometry
from ltbench.store.checkpoint import CheckpointStore, hook
from ltbench.store.claims import Claim
from ltbench.errors import InputError, LtbenchError
from ltbench.store.files import atomic_write
from ltbench.method import Method
from ltbench.registry import create_method
from ltbench.trainer import DataBundle, TrainConfig, Trainer

SCHEMA_VERSION = 1
# The input pipeline (decoding, pixel cache, augmentation) as far as it changes results; part of
# every run key, so a bench folder never reuses results of an older pipeline. Bump it with any
# change of what a method sees. 1: until issue 14 (implicit); 2: crop boxes drawn on the original
# geometry, rotation inside the resized crop (issue 14, parts 1-2).
DATA_PIPELINE_VERSION = 2

# Settings added after run keys existed, with the value every earlier run had: a method keyword or
# TrainConfig field equal to its entry here is left out of the run identity, so adding a setting
# never moves the keys of existing results. Add a new setting's name here when its default
# reproduces the former behaviour exactly (a new default that changes results bumps a version).
KEY_NEUTRAL: dict[str, object] = {
    # TrainConfig, issue 15: the protocol options of FlexSampling's and MONICA's benchmarks
    "optimizer": "sgd", "betas": (0.9, 0.999), "lr_schedule": "cosine", "lr_milestones": (), "lr_gamma": 0.1,
    "warmup_epochs": 0, "warmup_start_factor": 0.01, "group_sizes": (), "eval_view": "eval",
    # issue 24: SAM / ImbSAM settings, inert unless optimizer is sam or imbsam
    "sam_rho": 0.05, "sam_adaptive": False, "imbsam_threshold": 20,
    # issue 23: fine-tuning modes and the input normalisation (a hub backbone's own; ImageNet's for the others)
    "finetune": "full", "finetune_blocks": 1, "finetune_rank": 8, "finetune_dim": 64, "finetune_prompts": 10,
    "layer_decay": 1.0, "grad_checkpointing": False, "normalise": "model",
    # rotation_hashing's training view (issue 16: the code's plain_half pipeline)
    "view": "standard",
    # method keywords, issue 15: the loss tricks of FlexSampling's repository (LossMethod, ce, focal, ...)
    "sampler": "instance", "mixup_alpha": 0.0, "label_smoothing": 0.0,
}


def _key_relevant(values: dict) -> dict:
    """``values`` without the entries equal to their KEY_NEUTRAL default."""
    return {k: v for k, v in values.items() if not (k in KEY_NEUTRAL and v == KEY_NEUTRAL[k])}


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
    split_ratio: int | None = None  # FlexSampling's imbalance ratio (split kind "flexsampling")
    split_classes: int | None = None  # FlexSampling's class set: None/8, or 14 (its own image set)
    geometry: ViewGeometry | None = None  # the benchmark file's; None -> the dataset's declared geometry

    @property
    def view_geometry(self) -> ViewGeometry:
        """The flips and rotations the training views may use (ltbench.data.geometry)."""
        return self.geometry if self.geometry is not None else get_dataset(self.dataset).geometry

    def identity(self) -> dict:
        """What determines the data (not where it is stored)."""
        ident = {"dataset": self.dataset, "options": self.options or {}, "split": self.split_kind,
                 "split_seed": self.split_seed}
        if self.split_ratio is not None:  # only when set, so that existing run keys do not move
            ident["split_ratio"] = self.split_ratio
        if self.split_classes not in (None, 8):  # the 8-class default leaves existing run keys unchanged
            ident["split_classes"] = self.split_classes
        version = get_dataset(self.dataset).version
        if version != 1:  # only when bumped, so that existing run keys do not move
            ident["dataset_version"] = version
        geometry = self.view_geometry
        if not geometry.is_any:  # every view as it was (ISIC, DermaMNIST) leaves run keys unchanged
            ident["geometry"] = geometry.to_dict()
        return ident

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
    from ltbench.data.splits import image_set_for_split, leak_report, make_split

    image_set = load_dataset(spec.dataset, spec.data_root, **(spec.options or {}))
    split_dir = resolve_split_dir(spec.split_dir, spec.data_root)
    # FlexSampling's 14-class split has its own image set (ISIC 2019 relabelled + ISIC-archive images).
    image_set = image_set_for_split(image_set, spec.split_kind, split_dir, spec.split_classes, spec.data_root)
    split = make_split(image_set, kind=spec.split_kind, seed=spec.split_seed, split_dir=split_dir,
                       split_file=Path(spec.split_file) if spec.split_file else None,
                       dataset_name=spec.dataset, ratio=spec.split_ratio, classes=spec.split_classes)
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
                        train=split.train, val=split.val, test=split.test, original_sizes=sizes,
                        geometry=spec.view_geometry)
    leak = leak_report(image_set, split, "test")
    return PreparedData(image_set, split, split.hash(image_set), bundle, leak)


def resolve_split_dir(split_dir: str | None, data_root: str | None) -> Path | None:
    """A relative split folder: under the working folder if there, else under ``data_root``.

    So a benchmark file can say ``dir: flexible_sampling_splits`` and ``make bench DATA_ROOT=...``
    finds the published split files kept beside the images.
    """
    if not split_dir:
        return None
    path = Path(split_dir).expanduser()
    if not path.is_absolute() and not path.exists() and data_root and (Path(data_root).expanduser() / path).exists():
        return Path(data_root).expanduser() / path
    return path


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
    ident = {"method": method, "params": _jsonable(_key_relevant(params)), "seed": seed, "data": data.identity(),
             "split_hash": split_hash, "config": {k: v for k, v in _key_relevant(config.to_dict()).items()
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


def read_result(path: Path) -> dict | None:
    """A stored result file, None if absent; an unreadable or damaged one is one LtbenchError line.

    Results are written atomically, so a truncated or garbled file was made or damaged outside
    ltbench: it is reported, never silently replaced (``--force`` retrains and replaces it). The JSON
    and its NPZ are checked by the report's readers (``ltbench.report.results``), so the bench never
    reads a key the file lacks.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise LtbenchError(f"{path}: unreadable result file ({reason}); remove it, or rerun with --force "
                           "to retrain and replace it") from None
    from ltbench.report.results import arrays_path, check_result, load_arrays

    check_result(path, result)  # empty, incomplete, mistyped: one line (issue 21), as the report says it
    load_arrays(arrays_path(path, result), result)  # and its NPZ: truncated, or the wrong row count
    return result


def existing_result(out_dir: Path, method: str, seed: int, key: str) -> dict | None:
    """The stored result of this run if it was made with the same run key."""
    json_path, _ = result_paths(out_dir, method, seed)
    result = read_result(json_path)
    return result if result is not None and result.get("run_key") == key else None


class RunFailed(LtbenchError):
    """A run whose training raised or whose loss became NaN/inf; ``record`` is its failure record."""

    def __init__(self, record: dict) -> None:
        super().__init__(f"run {record['method']} seed {record['seed']} {failure_text(record)}")
        self.record = record


def failure_text(record: dict) -> str:
    """How a failure record reads in one line: when it failed, why, whether it is a replay, where its log is.

    A replayed record (``previous``) says so, with its file and time: the run is not trained again
    until ``--retry-failed``. A run whose process died (``lost``: killed, out of memory) says how, not
    "before training".
    """
    if record.get("lost"):
        head = f"FAILED: {record['reason']}"  # the reason says how the process ended (killed by SIGKILL, ...)
    else:
        when = "before training" if record.get("epoch") is None else f"in epoch {record['epoch']}"
        head = f"FAILED {when}: {record['reason']}"
    if record.get("previous"):
        head += (f" (replaying the failure recorded in {record.get('record_path', 'its .failed.json')} at "
                 f"{record.get('recorded_at', '?')}; --retry-failed retrains it)")
    what = "log" if record.get("lost") else "traceback"
    return f"{head}; {what}: {record.get('log_path', '?')}"


class StaleResult(LtbenchError):
    """A stored result of this row and seed made with another run key (another configuration)."""

    def __init__(self, path: Path, stored: str, current: str) -> None:
        super().__init__(f"{path} holds a result of another configuration (run key {stored}, now {current}); "
                         "it is kept and left out of the table: rerun with --force to retrain and replace it")
        self.path, self.stored, self.current = path, stored, current


class RunClaimed(LtbenchError):
    """The run is being trained by another process right now."""


def failure_paths(out_dir: Path, method: str, seed: int) -> tuple[Path, Path]:
    """The failure record (``seed<k>.failed.json``) and its traceback log (``seed<k>.failed.log``)."""
    base = Path(out_dir) / "runs" / method / f"seed{seed}"
    return base.with_name(base.name + ".failed.json"), base.with_name(base.name + ".failed.log")


def read_failure(out_dir: Path, method: str, seed: int) -> dict | None:
    """The run's failure record with where and when it was recorded (``record_path``, ``recorded_at``), or None.

    Absent, unreadable or incomplete (never by ltbench: written atomically): None, the run is retried.
    """
    path, _ = failure_paths(out_dir, method, seed)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        when = record.get("time") or time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(path.stat().st_mtime))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None
    epoch = record.get("epoch")
    if not isinstance(record.get("reason"), str) or not (epoch is None or isinstance(epoch, int)):
        return None
    return {**record, "record_path": str(path), "recorded_at": str(when)}


def _storage_error(exc: OSError) -> LtbenchError:
    where = exc.filename or "the output folder"
    return LtbenchError(f"cannot write {where}: {exc.strerror or exc} (the bench stopped; finished runs and "
                        "checkpoints are kept, rerun to resume)")


def torch_threads() -> int:
    """This process's torch thread count: on the CPU, results reproduce bit for bit only at equal counts."""
    import torch

    return torch.get_num_threads()


def versions() -> dict:
    import sklearn
    import torch
    import torchvision

    import ltbench

    return {"ltbench": ltbench.__version__, "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "numpy": np.__version__, "scikit-learn": sklearn.__version__,
            "platform": platform.platform()}


def memory_start(device) -> dict:
    """Before a run: the process's peak RSS so far; CUDA's peak-allocation counter reset.

    ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` is a process-lifetime maximum (KiB on Linux,
    bytes on macOS): in a bench that trains runs one after another in one process, a run whose
    own peak stays below an earlier run's cannot raise it. :func:`memory_end` says whether it did.
    """
    import resource
    import sys

    if getattr(device, "type", str(device)) == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats(device)
    scale = 1.0 if sys.platform == "darwin" else 1024.0
    return {"before": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20}


def memory_end(start: dict, device) -> dict:
    """After a run: process peak RSS (MB), whether this run raised it, CUDA max allocated (MB or None)."""
    import resource
    import sys

    scale = 1.0 if sys.platform == "darwin" else 1024.0
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20
    cuda = None
    if getattr(device, "type", str(device)) == "cuda":
        import torch

        cuda = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return {"cpu_peak_rss_mb": round(after, 1), "cpu_peak_rss_mb_before": round(start["before"], 1),
            "rss_peak_raised_by_run": bool(after > start["before"]), "cuda_max_allocated_mb": cuda}


def run_one(method_name: str, params: dict, seed: int, config: TrainConfig, data_spec: DataSpec,
            prepared: PreparedData, out_dir: Path, benchmark: str = "", progress: bool = True,
            force: bool = False, row: str | None = None, *, wait: bool = True, retry_failed: bool = False,
            keep_checkpoints: bool = False, warn: Callable[[str], None] | None = None,
            replace_stale: bool = False, retrieval=None, labels: dict | None = None) -> tuple[dict, bool]:
    """Train one method with one seed unless its result exists. Returns (result, trained).

    ``labels``: what the result records of its row beyond the run key (``recipe``, ``tuned``).

    ``row``: the benchmark row name (default: the method's); results live in ``runs/<row>/``
    and carry it as ``method``, with the registered method as ``registered_method``.

    Reliability (issue 9): the run is claimed first (``ltbench.store.claims``; ``wait=False`` raises
    :class:`RunClaimed` if another process holds it, else this waits). A result of another run key
    raises :class:`StaleResult` (kept; ``replace_stale`` retrains it and a damaged result file,
    ``force`` retrains even an up-to-date result, from scratch). Training resumes from the run's last
    checkpoint (``seed<k>.ckpt``, written every epoch, removed once the result is written unless
    ``keep_checkpoints``; ``seed<k>.ckpt.prev`` always is). Temp files a killed writer of this run left
    are removed once the claim is held. A run that raises or whose loss becomes NaN/inf writes
    ``seed<k>.failed.json`` (epoch, reason) and ``seed<k>.failed.log`` (traceback) and raises
    :class:`RunFailed`; a recorded failure of the same key is raised again without training unless
    ``retry_failed``. A write that fails (full disk, read-only folder) is one LtbenchError line.
    ``retrieval`` (``ltbench.retrieval.run_pass.RetrievalSettings``, not part of the run key): when enabled,
    the retrieval pass runs after the test pass and its section goes into the result; a stored result
    without one is returned as it is (the bench lists it) unless ``replace_stale`` retrains it.
    """
    row = row or method_name
    config = TrainConfig(**{**config.to_dict(), "seed": seed})
    method: Method = create_method(method_name, **params)
    full_params = _jsonable(method.get_params())
    key = run_key(row, full_params, seed, config, data_spec, prepared.split_hash, registered=method_name)
    json_path, npz_path = result_paths(out_dir, row, seed)
    claim = Claim(json_path.with_suffix(".lock"))
    if not claim.acquire(wait=False):
        if not wait:
            raise RunClaimed(f"run {row} seed {seed} is being trained by {claim.holder()} (claim {claim.path})")
        claim.acquire(wait=True)
    try:
        return _run_claimed(method, method_name, full_params, key, seed, config, data_spec, prepared, out_dir,
                            benchmark, progress, force, row, retry_failed, keep_checkpoints, warn, replace_stale,
                            retrieval, labels)
    except OSError as exc:
        raise _storage_error(exc) from None
    finally:
        claim.release()


def _run_claimed(method: Method, method_name: str, full_params: dict, key: str, seed: int, config: TrainConfig,
                 data_spec: DataSpec, prepared: PreparedData, out_dir: Path, benchmark: str, progress: bool,
                 force: bool, row: str, retry_failed: bool, keep_checkpoints: bool,
                 warn: Callable[[str], None] | None, replace_stale: bool, retrieval=None,
                 labels: dict | None = None) -> tuple[dict, bool]:
    """:func:`run_one` once this process holds the run's claim (so the checks below cannot race)."""
    json_path, npz_path = result_paths(out_dir, row, seed)
    failed_path, log_path = failure_paths(out_dir, row, seed)
    store = CheckpointStore(json_path.with_suffix(""), key, warn=warn)
    for stray in json_path.parent.glob(f".{json_path.stem}.*.tmp"):  # a killed writer's: we hold the claim
        stray.unlink(missing_ok=True)
    if not force:
        try:
            stored = read_result(json_path)
        except LtbenchError:
            if not replace_stale:
                raise
            stored = None  # damaged: retrained and replaced
        if stored is not None and stored.get("run_key") == key and not (
                replace_stale and retrieval is not None and retrieval.enabled and stored.get("retrieval") is None):
            return stored, False  # (a result without the retrieval asked for is retrained only with --force)
        if stored is not None and not replace_stale:
            raise StaleResult(json_path, stored.get("run_key"), key)
        failure = read_failure(out_dir, row, seed)
        if failure is not None and failure.get("run_key") == key and not retry_failed:
            raise RunFailed({**failure, "log_path": str(log_path), "previous": True})
    else:
        store.remove()  # --force: a fresh run, not a resumption
    trainer = Trainer(config, progress=progress, desc=f"{row} seed {seed}")
    try:
        memory = memory_start(trainer.device)  # peak memory of this run (issue 12; not in the run key)
        output = trainer.fit(method, prepared.bundle, checkpoint=store)
        memory = memory_end(memory, trainer.device)
        found = None  # the retrieval pass (ltbench/retrieval/run_pass.py): after the test pass, no random numbers
        if retrieval is not None and retrieval.enabled:
            from ltbench.retrieval.run_pass import embedding_path, retrieval_pass

            if getattr(trainer, "model", None) is None:
                raise LtbenchError("retrieval: Trainer.fit left no trained model (Trainer.model)")
            found = retrieval_pass(method, trainer.model, prepared, config, embedding_path(json_path), retrieval,
                                   trainer.device)
    except (OSError, KeyboardInterrupt, SystemExit, InputError):
        raise  # the machine's problem (a full disk), the user's (a bad weights file, ^C): not the run's failure
    except Exception as exc:
        import traceback

        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        record = {"schema": SCHEMA_VERSION, "status": "failed", "run_key": key, "benchmark": benchmark,
                  "method": row, "registered_method": method_name, "seed": seed, "epoch": trainer.epoch,
                  "reason": f"{type(exc).__name__}: {reason}" if not isinstance(exc, LtbenchError) else reason,
                  "log": log_path.name, "time": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
        atomic_write(log_path, f"run {row} seed {seed} (run key {key}) failed in epoch {trainer.epoch}\n\n"
                     + traceback.format_exc())
        atomic_write(failed_path, json.dumps(record, indent=1))
        raise RunFailed({**record, "log_path": str(log_path)}) from None
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
            "geometry": bundle.geometry.to_dict(),  # the flips and rotations its training views could use
            "class_names": list(bundle.class_names),
            "class_counts": {part: bundle.counts(rows) for part, rows in prepared.split.parts().items()},
        },
        "split": {"kind": prepared.split.kind, "hash": prepared.split_hash,
                  "details": _jsonable(prepared.split.details), "lesion_leak": prepared.leak,
                  "file": "split.csv"},
        "config": config.to_dict(),
        "device": str(trainer.device),
        "threads": torch_threads(),  # a label, not in the run key: CPU float sums depend on it (issue 21)
        "versions": versions(),
        "wall_time_s": round(output.wall_time_s, 3),
        "best_epoch": output.best_epoch,
        "params": output.params,  # trainable and total parameters under the fine-tuning mode (issue 23)
        "history": output.history,
        "val": output.val,
        "test": output.test,
        "arrays": npz_path.name,
        "memory": memory,
        **(labels or {}),  # the row's recipe / tuned values: labels, not part of the run key
    }
    if found is not None:
        result["retrieval"] = found  # embeddings: runs/<row>/seed<k>.emb.npz
    _atomic_savez(npz_path, output.arrays)
    hook("result")  # test-only kill point between the arrays and the JSON that marks the run done
    atomic_write(json_path, json.dumps(_jsonable(result), indent=1, allow_nan=True))
    failed_path.unlink(missing_ok=True)
    log_path.unlink(missing_ok=True)
    store.remove(keep_latest=keep_checkpoints)  # the previous checkpoint was a fallback while training
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

    from ltbench.data.samplers import steps_per_epoch
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
        if config.optimizer == "imbsam" and not method.has_sample_losses():
            raise LtbenchError(f"optimizer imbsam: method {row!r} gives no per-sample losses (Method.sample_losses), "
                               "which ImbSAM splits into head and tail classes")
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
    from ltbench.typed import check_folder

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
    # A real probe, not os.access: root passes every permission check, a read-only mount does not.
    try:
        fd, probe = tempfile.mkstemp(dir=out_dir, prefix=".ltbench-probe-")
        os.close(fd)
        os.unlink(probe)
        os.listdir(out_dir)
    except OSError as exc:
        raise LtbenchError(f"--out {out_dir}: cannot write and read files there ({exc.strerror or exc})") from None
    return out_dir
