"""A benchmark = one YAML file: dataset, split, training protocol, seeds and methods with params.

``run_benchmark`` trains every method × seed that has no result yet (so an interrupted bench
resumes where it stopped), then rebuilds the report from the result files alone.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from ltbench.errors import LtbenchError
from ltbench.registry import get_method_class
from ltbench.report import load_results, write_report
from ltbench.runs import DataSpec, check_out_dir, prepare_data, run_one, write_split
from ltbench.trainer import TrainConfig

_TOP_KEYS = {"name", "description", "dataset", "split", "train", "seeds", "methods", "cache_dir"}
_DATASET_KEYS = {"name", "data_root", "options"}
_SPLIT_KEYS = {"kind", "seed", "dir", "file"}


@dataclass
class Benchmark:
    name: str
    data: DataSpec
    train: TrainConfig
    seeds: list[int]
    methods: dict[str, dict] = field(default_factory=dict)  # name -> params, in YAML order
    description: str = ""


def _unknown(path: Path, where: str, given: dict, allowed: set) -> None:
    extra = sorted(set(given) - allowed)
    if extra:
        raise LtbenchError(f"{path}: unknown key(s) {', '.join(extra)} in {where}; allowed: {', '.join(sorted(allowed))}")


def load_benchmark(path: str | Path) -> Benchmark:
    """Read and validate a benchmark YAML; every problem is one line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise LtbenchError(f"--benchmark {path}: no such file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise LtbenchError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise LtbenchError(f"{path}: expected a mapping at the top level")
    _unknown(path, "the top level", raw, _TOP_KEYS)
    dataset = raw.get("dataset")
    if isinstance(dataset, str):
        dataset = {"name": dataset}
    if not isinstance(dataset, dict) or "name" not in dataset:
        raise LtbenchError(f"{path}: 'dataset' needs a 'name'")
    _unknown(path, "'dataset'", dataset, _DATASET_KEYS)
    split = raw.get("split") or {}
    if isinstance(split, str):
        split = {"kind": split}
    _unknown(path, "'split'", split, _SPLIT_KEYS)
    train = raw.get("train") or {}
    allowed_train = {f.name for f in fields(TrainConfig)} - {"seed"}
    _unknown(path, "'train'", train, allowed_train)
    try:
        config = TrainConfig(**train)
    except TypeError as exc:
        raise LtbenchError(f"{path}: bad 'train' section ({exc})") from None
    seeds = raw.get("seeds", [0, 1, 2])
    if not isinstance(seeds, list) or not all(isinstance(s, int) for s in seeds) or not seeds:
        raise LtbenchError(f"{path}: 'seeds' must be a non-empty list of integers")
    methods = raw.get("methods")
    if isinstance(methods, list):
        methods = {m: {} for m in methods}
    if not isinstance(methods, dict) or not methods:
        raise LtbenchError(f"{path}: 'methods' must list at least one method")
    methods = {name: dict(params or {}) for name, params in methods.items()}
    for name in methods:
        get_method_class(name)  # unknown names fail before any training
    data = DataSpec(dataset=dataset["name"], data_root=dataset.get("data_root"), options=dataset.get("options"),
                    split=split.get("kind"), split_seed=int(split.get("seed", 0)), split_dir=split.get("dir"),
                    split_file=split.get("file"), cache_dir=raw.get("cache_dir"))
    return Benchmark(name=raw.get("name", path.stem), data=data, train=config, seeds=seeds, methods=methods,
                     description=raw.get("description", ""))


def run_benchmark(bench: Benchmark, out_dir: Path, progress: bool = True, echo=print) -> dict[str, Path]:
    """Train what is missing, then write the report. Returns the report's files."""
    start = time.perf_counter()
    out_dir = check_out_dir(out_dir)
    prepared = prepare_data(bench.data, bench.train.image_size)
    write_split(prepared, out_dir)
    counts = prepared.bundle.counts(prepared.split.train)
    echo(f"{bench.name}: {len(prepared.image_set)} images, split {prepared.split.kind} "
         f"({len(prepared.split.train)}/{len(prepared.split.val)}/{len(prepared.split.test)}), "
         f"train counts {counts}")
    total = len(bench.methods) * len(bench.seeds)
    done = trained = 0
    for name, params in bench.methods.items():
        for seed in bench.seeds:
            done += 1
            result, was_trained = run_one(name, params, seed, bench.train, bench.data, prepared, out_dir,
                                          benchmark=bench.name, progress=progress)
            trained += was_trained
            status = f"trained in {result['wall_time_s']:.1f} s" if was_trained else "already done, skipped"
            t = result["test"]
            echo(f"[{done}/{total}] {name} seed {seed}: {status}; test Acc {t['acc']:.2f} "
                 f"Sen {t['sen']:.2f} F1 {t['f1']:.2f}")
    files = write_report(load_results(out_dir / "runs"), out_dir, order=list(bench.methods))
    echo(f"{trained} run(s) trained, {total - trained} skipped; report: {files['summary.md']}")
    echo(f"wall time: {time.perf_counter() - start:.1f} s")
    return files
