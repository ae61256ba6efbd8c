"""A benchmark = one YAML file: dataset, split, training protocol, seeds and methods with params.

``load_benchmark`` reads and converts the whole file (``ltbench.config``: every value by its declared
type, one line per problem) before any data is touched; ``run_benchmark`` trains every row × seed
that has no result yet (so an interrupted bench resumes where it stopped), then rebuilds the report
from the result files alone.

A row of ``methods`` is a name and its parameters; a *named variant* says which registered method
it runs when its name is not one: ``focal_g1: {method: focal, gamma: 1}``. Results, run keys and
report rows use the row name, so two variants of one method never overwrite each other.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import yaml

from ltbench import config as cfg
from ltbench.errors import LtbenchError
from ltbench.launchers.grid import row_labels
from ltbench.registry import get_method_class
from ltbench.report import leak_text, write_report
from ltbench.report.groups import class_groups, parse_groups
from ltbench.report.references import parse_references, write_settings
from ltbench.retrieval.run_pass import RetrievalSettings
from ltbench.runs import (DataSpec, RunClaimed, RunFailed, StaleResult, check_cache_dir, check_methods_on_data,
                          check_out_dir, prepare_data, read_result, result_paths, run_one, write_split)
from ltbench.trainer import TrainConfig

_TOP_KEYS = ("name", "description", "dataset", "split", "train", "seeds", "methods", "cache_dir", "retrieval",
             "references", "groups",  # the last two: report only (ltbench/report/references.py, groups.py)
             "slurm",  # --launcher slurm only (ltbench/launchers/slurm.py), never in a run key
             "tune")  # per-row tuning on validation (ltbench/tuning.py)
_DATASET_KEYS = ("name", "data_root", "options", "geometry")  # geometry: ltbench/data/geometry.py


@dataclass(frozen=True)
class MethodRow:
    """One row of a benchmark: its name (results, report) and the registered method it runs."""

    name: str
    method: str
    params: dict = field(default_factory=dict)
    recipe: str | None = None  # a paper recipe of the method (ltbench.recipes), None: the shared protocol
    config: TrainConfig | None = None  # the row's own settings (a recipe, tuned values); None: the bench's
    tuned: dict | None = None  # the settings tuning chose for this row (ltbench.tuning)
    tune: dict | None = None  # the row's own tuning grid (over the bench's ``tune:``); None: the bench's


@dataclass
class Benchmark:
    name: str
    data: DataSpec
    train: TrainConfig
    seeds: list[int]
    methods: dict[str, MethodRow] = field(default_factory=dict)  # row name -> row, in YAML order
    description: str = ""
    sources: dict[str, cfg.Layer] = field(default_factory=dict)  # where each training setting came from
    retrieval: RetrievalSettings = field(default_factory=RetrievalSettings)  # evaluation only: not in the run key
    references: dict | None = None  # published numbers (report only, never in a run key)
    groups: dict | None = None  # head/medium/tail of the report (report only; None: terciles)
    slurm: dict = field(default_factory=dict)  # --launcher slurm settings (ltbench.config.slurm_settings)
    layers: list = field(default_factory=list)  # the train layers above the dataset protocol (file, flags, --set)
    tune: dict = field(default_factory=dict)  # setting -> values tried per row (ltbench.tuning); {}: none

    def row_config(self, row: MethodRow) -> TrainConfig:
        """The settings a row trains with: its own (recipe, tuning) or the bench's."""
        return self.train if row.config is None else row.config


# Settings of the bench or the machine, never of a recipe (one pixel cache, one device per bench).
_NOT_RECIPE = ("image_size", "device", "seed", "eval_batch_size", "amp", "channels_last", "compile")


def row_train_config(dataset: str, layers: list, recipe: dict | None = None, recipe_label: str = "",
                     tuned: dict | None = None) -> TrainConfig:
    """The dataset protocol < the file's ``train:`` < a recipe < flags and ``--set`` < tuned values."""
    stack = list(layers)
    if recipe:
        stack.insert(1 if stack else 0, cfg.Layer(recipe_label, recipe, lambda k, v: f"{recipe_label} {k}={v!r}"))
    if tuned:
        stack.append(cfg.Layer("tuning", tuned, lambda k, v: f"tune {k}={v!r}"))
    return cfg.train_config(dataset, *stack)[0]


def _apply_recipe(path: Path, dataset: str, layers: list, row: MethodRow) -> MethodRow:
    """The row with its method's recipe: settings between the file and the flags, params under the row's."""
    from dataclasses import replace

    recipes = get_method_class(row.method).recipes
    if row.recipe not in recipes:
        known = ", ".join(sorted(recipes)) or "none"
        raise LtbenchError(f"{path}: methods.{row.name}.recipe = {row.recipe!r}: method {row.method!r} has no such "
                           f"recipe (its recipes: {known}; `ltbench methods --recipes` lists them)")
    recipe = recipes[row.recipe]
    label = f"{path}: methods.{row.name}: recipe {row.recipe}"
    train = {k: v for k, v in recipe.train.items() if k not in _NOT_RECIPE}
    params = cfg.method_params(row.method, dict(recipe.params), cfg.in_file(path, f"methods.{row.name}.recipe"))
    try:
        config = row_train_config(dataset, layers, train, label)
    except LtbenchError as exc:
        raise LtbenchError(f"{label}: {exc}") from None
    return replace(row, params={**params, **row.params}, config=config)




def _check_keys(path: Path, where: str, given: Mapping, allowed: tuple[str, ...]) -> None:
    extra = [k for k in given if k not in allowed]
    if extra:
        raise LtbenchError(f"{path}: unknown key(s) {', '.join(map(str, extra))} in {where}; "
                           f"allowed: {', '.join(allowed)}")


def _text(path: Path, key: str, value: object, default: str) -> str:
    if value is None:
        return default
    if not isinstance(value, str):
        raise LtbenchError(f"{path}: {key} = {value!r}: expected text")
    return value


def _rows(path: Path, raw: object) -> dict[str, MethodRow]:
    if isinstance(raw, list):
        if not all(isinstance(m, str) for m in raw):
            raise LtbenchError(f"{path}: 'methods' lists names; for parameters write a mapping name: {{...}}")
        dup = [m for i, m in enumerate(raw) if m in raw[:i]]
        if dup:
            raise LtbenchError(f"{path}: methods: {dup[0]} is listed twice")
        raw = {m: {} for m in raw}
    if not isinstance(raw, dict) or not raw:
        raise LtbenchError(f"{path}: 'methods' must list at least one method")
    rows = {}
    for name, params in raw.items():
        cfg.check_row_name(name, f"{path}: methods.{name}")
        params = dict(params or {}) if isinstance(params, dict) or params is None else params
        if not isinstance(params, dict):
            raise LtbenchError(f"{path}: methods.{name} = {params!r}: expected a mapping of parameters")
        method = params.pop("method", name)
        recipe = params.pop("recipe", None)
        if recipe is not None and not isinstance(recipe, str):
            raise LtbenchError(f"{path}: methods.{name}.recipe = {recipe!r}: expected a recipe name (e.g. paper)")
        own_tune = params.pop("tune", None)
        if own_tune is not None:
            from ltbench.tuning import parse_tune

            own_tune = parse_tune(own_tune, f"{path}: methods.{name}.tune")
        if not isinstance(method, str):
            raise LtbenchError(f"{path}: methods.{name}.method = {method!r}: expected a method name")
        try:
            get_method_class(method)
        except LtbenchError as exc:
            hint = "" if method != name else f" (a variant names its method: {name}: {{method: NAME, ...}})"
            raise LtbenchError(f"{path}: methods.{name}: {exc}{hint}") from None
        params = cfg.method_params(method, params, cfg.in_file(path, f"methods.{name}"))
        rows[name] = MethodRow(name, method, params, recipe=recipe, tune=own_tune)
    return rows


def load_benchmark(path: str | Path, train_flags: Mapping[str, object] | None = None,
                   settings: Mapping[str, str] | None = None, split_flags: Mapping[str, object] | None = None,
                   tune_flags: Mapping[str, str] | None = None) -> Benchmark:
    """Read, convert and check a benchmark YAML; every problem is one line naming the file and key.

    ``train_flags``: command-line text for TrainConfig fields (None = not given), which overrides
    the file's ``train:`` section, which overrides the dataset's default protocol; ``settings``:
    ``--set KEY=VALUE`` text, over all of them. ``split_flags``: command-line text for split
    options (``ratio``, ``classes``; None = not given) over the file's ``split:`` section.
    ``tune_flags``: ``--tune KEY=V1,V2`` pairs, replacing the file's ``tune:`` grid.
    """
    path = Path(path)
    if not path.is_file():
        raise LtbenchError(f"--benchmark {path}: no such file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise LtbenchError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LtbenchError(f"--benchmark {path}: cannot read it ({exc})") from None
    if not isinstance(raw, dict):
        raise LtbenchError(f"{path}: expected a mapping at the top level")
    _check_keys(path, "the top level", raw, _TOP_KEYS)

    dataset = raw.get("dataset")
    if isinstance(dataset, str):
        dataset = {"name": dataset}
    if not isinstance(dataset, dict) or not isinstance(dataset.get("name"), str):
        raise LtbenchError(f"{path}: 'dataset' needs a 'name'")
    _check_keys(path, "'dataset'", dataset, _DATASET_KEYS)
    from ltbench.data.datasets import get_dataset

    try:
        get_dataset(dataset["name"])
    except LtbenchError as exc:
        raise LtbenchError(f"{path}: dataset.name: {exc}") from None
    data_root = dataset.get("data_root")
    if data_root is not None and not isinstance(data_root, str):
        raise LtbenchError(f"{path}: dataset.data_root = {data_root!r}: expected a folder path")
    options_raw = dataset.get("options") or {}
    if not isinstance(options_raw, dict):
        raise LtbenchError(f"{path}: dataset.options = {options_raw!r}: expected a mapping")
    option_settings, open_ended = cfg.dataset_option_settings(dataset["name"])
    options = cfg.read(option_settings, options_raw, cfg.in_file(path, "dataset.options"),
                       unknown=f"not an option of dataset {dataset['name']!r}", open_ended=open_ended)
    geometry = None  # the flips and rotations its labels survive; None: the dataset's declaration
    if dataset.get("geometry") is not None:
        from ltbench.data.geometry import read_geometry

        geometry = read_geometry(dataset["geometry"], get_dataset(dataset["name"]).geometry, str(path))

    split = raw.get("split") or {}
    if isinstance(split, str):
        split = {"kind": split}
    if not isinstance(split, dict):
        raise LtbenchError(f"{path}: split = {split!r}: expected a kind or a mapping (kind, seed, dir, file)")
    split = cfg.read(cfg.split_settings(classes=True), split, cfg.in_file(path, "split"), unknown="not a split option")
    given = {k: str(v) for k, v in (split_flags or {}).items() if v is not None}
    split.update(cfg.read(cfg.split_settings(classes=True), given,
                          cfg.flag({"ratio": "--ratio", "classes": "--classes"}), text=True))

    train = raw.get("train") or {}
    if not isinstance(train, dict):
        raise LtbenchError(f"{path}: train = {train!r}: expected a mapping of training settings")
    if "seed" in train:
        raise LtbenchError(f"{path}: train.seed: the run seeds are the top-level 'seeds' list")
    layers = [cfg.Layer("benchmark file", train, cfg.in_file(path, "train"))]
    if train_flags:
        layers.append(cfg.Layer("command line", train_flags, cfg.flag(), text=True))
    if settings:
        layers.append(cfg.set_layer(settings))
    config, sources = cfg.train_config(dataset["name"], *layers)

    seeds = cfg.seeds(raw.get("seeds", [0, 1, 2]), f"{path}: seeds")
    rows = _rows(path, raw.get("methods"))
    rows = {name: _apply_recipe(path, dataset["name"], layers, row) if row.recipe else row
            for name, row in rows.items()}
    from ltbench.tuning import parse_tune, parse_tune_flags

    tune = parse_tune_flags(tune_flags) if tune_flags else parse_tune(raw.get("tune"), f"{path}: tune")
    cache_dir = raw.get("cache_dir")
    if cache_dir is not None:
        if not isinstance(cache_dir, str):
            raise LtbenchError(f"{path}: cache_dir = {cache_dir!r}: expected a folder path")
        cfg.check_folder(cache_dir, f"{path}: cache_dir")
    data = DataSpec(dataset=dataset["name"], data_root=data_root, options=options or None,
                    split=split.get("kind"), split_seed=split.get("seed", 0), split_dir=split.get("dir"),
                    split_file=split.get("file"), cache_dir=cache_dir, split_ratio=split.get("ratio"),
                    split_classes=split.get("classes"), geometry=geometry)
    return Benchmark(name=_text(path, "name", raw.get("name"), path.stem), data=data, train=config, seeds=seeds,
                     methods=rows, description=_text(path, "description", raw.get("description"), ""),
                     sources=sources, retrieval=RetrievalSettings.parse(raw.get("retrieval"), f"{path}: retrieval"),
                     references=parse_references(raw.get("references"), str(path), list(rows)),
                     groups=parse_groups(raw.get("groups"), str(path)), slurm=_slurm(path, raw.get("slurm")),
                     layers=layers, tune=tune)


def _slurm(path: Path, raw: object) -> dict:
    """The file's ``slurm:`` section, converted (used only by ``--launcher slurm``)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise LtbenchError(f"{path}: slurm = {raw!r}: expected a mapping of SLURM settings (partition, time_min, ...)")
    return cfg.read(cfg.slurm_settings(), raw, cfg.in_file(path, "slurm"), unknown="not a slurm setting")


def select_rows(bench: Benchmark, text: str) -> dict[str, MethodRow]:
    """``--methods a,b``: rows of the benchmark, or registered methods with their defaults."""
    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise LtbenchError(f"--methods {text!r}: expected names like ce,focal")
    rows = {}
    for name in names:
        if name in bench.methods:
            rows[name] = bench.methods[name]
            continue
        try:
            get_method_class(name)
        except LtbenchError as exc:
            raise LtbenchError(f"--methods {name}: not a row of the benchmark ({', '.join(bench.methods)}) "
                               f"and {exc}") from None
        rows[name] = MethodRow(name, name, {})
    return rows


def _warn(message: str) -> None:
    print(message, file=sys.stderr)


def _first_missing(folder: Path) -> Path | None:
    """The highest ancestor of ``folder`` (or itself) that does not exist yet; None if it exists."""
    missing = None
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            break
        missing = candidate
    return missing


def _remove_empty(folder: Path, up_to: Path | None) -> None:
    """Remove ``folder`` and its parents up to ``up_to`` while they are empty (never anything else)."""
    if up_to is None:
        return
    for candidate in (folder, *folder.parents):
        try:
            candidate.rmdir()  # only succeeds on an empty folder
        except OSError:
            return
        if candidate == up_to:
            return


class BenchIncomplete(LtbenchError):
    """Raised after the report is written when some runs failed or have stale results (exit non-zero)."""


def _train_rows(bench: Benchmark, out_dir: Path, prepared, *, progress: bool, echo, warn, force: bool,
                retry_failed: bool, keep_checkpoints: bool, launcher) -> tuple[dict, list, list, int]:
    """Train every row x seed of ``bench`` that has no result in ``out_dir`` (sequentially or through
    ``launcher``): (results by (row, seed), failures, stale results, number trained)."""
    total = len(bench.methods) * len(bench.seeds)
    results: dict[tuple[str, int], dict] = {}
    failures: list[dict] = []
    stale: list[dict] = []
    counter = {"done": 0, "trained": 0}

    def attempt(name: str, row: MethodRow, seed: int, wait: bool) -> bool:
        """One run; False if another bench holds its claim (retried at the end, waiting)."""
        try:
            result, was_trained = run_one(row.method, row.params, seed, bench.row_config(row), bench.data, prepared,
                                          out_dir, labels=row_labels(row), benchmark=bench.name, progress=progress, row=name, wait=wait,
                                          replace_stale=force, retry_failed=retry_failed,
                                          keep_checkpoints=keep_checkpoints, warn=warn, retrieval=bench.retrieval)
        except RunClaimed as exc:
            echo(f"[-/{total}] {name} seed {seed}: {exc}; doing the others first")
            return False
        counter["done"] += 1
        head = f"[{counter['done']}/{total}] {name} seed {seed}"
        results[(name, seed)] = result
        counter["trained"] += was_trained
        status = f"trained in {result['wall_time_s']:.1f} s" if was_trained else "already done, skipped"
        t = result["test"]
        echo(f"{head}: {status}; test Acc {t['acc']:.2f} Sen {t['sen']:.2f} F1 {t['f1']:.2f}")
        return True

    def guarded(name: str, row: MethodRow, seed: int, wait: bool) -> bool:
        try:
            return attempt(name, row, seed, wait)
        except RunFailed as exc:  # isolated: recorded next to the run, the bench goes on
            counter["done"] += 1
            failures.append(exc.record)
            again = " (recorded earlier; --retry-failed reruns it)" if exc.record.get("previous") else ""
            when = "before training" if exc.record["epoch"] is None else f"in epoch {exc.record['epoch']}"
            echo(f"[{counter['done']}/{total}] {name} seed {seed}: FAILED {when}: "
                 f"{exc.record['reason']}{again}; traceback: {exc.record['log_path']}")
        except StaleResult as exc:
            counter["done"] += 1
            stale.append({"method": name, "seed": seed, "path": str(exc.path), "stored_key": exc.stored,
                          "current_key": exc.current})
            echo(f"[{counter['done']}/{total}] {name} seed {seed}: STALE: {exc}")
        return True

    if launcher is not None:  # ltbench/launchers: the same runs through run_one, in other processes
        tally = launcher(bench, out_dir, prepared, echo=echo, warn=warn, force=force, retry_failed=retry_failed,
                         keep_checkpoints=keep_checkpoints, progress=progress)
        results, failures, stale = tally.results, tally.failures, tally.stale
        counter["trained"] = tally.trained
    deferred = [] if launcher is not None else [
        (name, row, seed) for name, row in bench.methods.items() for seed in bench.seeds
        if not guarded(name, row, seed, wait=False)]
    for name, row, seed in deferred:  # claimed by another bench: wait for it, then use its result
        echo(f"{name} seed {seed}: waiting for the bench that is training it")
        guarded(name, row, seed, wait=True)

    return results, failures, stale, counter["trained"]


def _tune(bench: Benchmark, out_dir: Path, train_rows, echo) -> tuple[Benchmark, tuple[list, list]]:
    """Train each row's tuning grid on the first seed (runs under ``<out>/tuning``), choose by validation,
    write ``tuning.json``; the bench whose rows carry the chosen settings, and the tuning runs' problems."""
    from dataclasses import replace

    from ltbench.tuning import TUNING_DIR, choose, combinations, tuning_metric, tuning_row, write_tuning

    seed = bench.seeds[0]
    grids = {name: row.tune if row.tune is not None else bench.tune for name, row in bench.methods.items()}
    grids = {name: combinations(grid) for name, grid in grids.items() if grid}  # rows without a grid: as they are
    rows = {tuning_row(name, values): replace(row, name=tuning_row(name, values), config=_row_config(bench, row, values),
                                               tuned=values, tune=None)
            for name, row in bench.methods.items() for values in grids.get(name, [])}
    echo(f"{bench.name}: tuning on validation: {len(rows)} run(s) of {len(grids)} row(s) on seed {seed}, "
         f"under {Path(out_dir) / TUNING_DIR}")
    results, failures, stale, _ = train_rows(replace(bench, methods=rows, seeds=[seed], tune={}),
                                             Path(out_dir) / TUNING_DIR)
    records, chosen_rows = {}, dict(bench.methods)
    for name, grid in grids.items():
        row = bench.methods[name]
        tried = [(values, results.get((tuning_row(name, values), seed))) for values in grid]
        record = choose(name, tried, tuning_metric(bench.row_config(row).select_metric))
        record["grid"] = {k: list(dict.fromkeys(v[k] for v in grid)) for k in grid[0]}
        records[name] = record
        chosen = record["chosen"]
        chosen_rows[name] = row if chosen is None else replace(row, config=_row_config(bench, row, chosen), tuned=chosen)
        echo(f"{bench.name}: {name}: " + (f"chose {chosen} by validation {record['metric']}" if chosen
                                           else "no tuning run finished: the untuned settings"))
    write_tuning(out_dir, bench.tune, records, seed)
    return replace(bench, methods=chosen_rows), (failures, stale)


def _row_config(bench: Benchmark, row: MethodRow, tuned: dict) -> TrainConfig:
    """The row's settings (its recipe, if any) with ``tuned`` values over everything else."""
    recipe = {}
    if row.recipe:
        recipe = {k: v for k, v in get_method_class(row.method).recipes[row.recipe].train.items()
                  if k not in _NOT_RECIPE}
    return row_train_config(bench.data.dataset, bench.layers, recipe, f"recipe {row.recipe}", tuned)


def run_benchmark(bench: Benchmark, out_dir: Path, progress: bool = True, echo=print,
                  warn: Callable[[str], None] = _warn, *, force: bool = False, retry_failed: bool = False,
                  keep_checkpoints: bool = False, launcher=None) -> dict[str, Path]:
    """Train what is missing, then write the report. Returns the report's files.

    ``launcher`` (``ltbench.launchers.make_launcher``): several runs at once, in worker processes or a
    SLURM job array, once the data are prepared here; None trains them one by one in this process.

    Interrupted runs resume from their last epoch's checkpoint. A failed run is recorded and the
    bench goes on; a run another bench is training is done last, after waiting for its claim; a
    stored result of another configuration is kept out of the table and listed (``force``
    retrains it and replaces a damaged result file; up-to-date results are still skipped). When any run failed or is stale, :class:`BenchIncomplete` is raised after the
    report is written.
    """
    start = time.perf_counter()
    check_cache_dir(bench.data, "cache_dir")
    cfg.check_folder(out_dir, "--out")
    if not force:  # a damaged result file is one line before any pixel, never silently replaced
        for name in bench.methods:
            for seed in bench.seeds:
                read_result(result_paths(out_dir, name, seed)[0])
    echo(f"{bench.name}: " + cfg.describe_train(bench.train, bench.sources))
    for name, row in bench.methods.items():
        if row.recipe:
            recipe = get_method_class(row.method).recipes[row.recipe]
            echo(f"{bench.name}: {name}: recipe {row.recipe}: {recipe.describe()}")
    rows = {name: (row.method, row.params) for name, row in bench.methods.items()}
    created = _first_missing(Path(out_dir))
    out_dir = check_out_dir(out_dir)
    try:
        prepared = prepare_data(bench.data, bench.train.image_size,
                                before_pixels=lambda s, sp: check_methods_on_data(rows, bench.train, s, sp))
    except BaseException:  # bad data: leave no empty output folder behind
        _remove_empty(out_dir, created)
        raise
    if prepared.split.details.get("warning"):
        warn(f"ltbench: warning: {prepared.split.details['warning']}")
    write_split(prepared, out_dir)
    if bench.groups is not None:  # class names are known now: a wrong one fails before any training
        class_groups(bench.groups, prepared.bundle.counts(prepared.split.train), prepared.bundle.class_names,
                     where=f"{bench.name}: groups")
    write_settings(out_dir, bench.references, bench.groups)  # for `ltbench report DIR` later
    counts = prepared.bundle.counts(prepared.split.train)
    echo(f"{bench.name}: {len(prepared.image_set)} images, split {prepared.split.kind} "
         f"({len(prepared.split.train)}/{len(prepared.split.val)}/{len(prepared.split.test)}), "
         f"train counts {counts}; lesion leak: {leak_text(prepared.leak)}")

    def train_rows(bench: Benchmark, out_dir: Path) -> tuple[dict, list, list, int]:
        """Every row x seed of ``bench`` in ``out_dir``: (results by (row, seed), failures, stale, trained)."""
        return _train_rows(bench, out_dir, prepared, progress=progress, echo=echo, warn=warn, force=force,
                           retry_failed=retry_failed, keep_checkpoints=keep_checkpoints, launcher=launcher)

    tuning = bench.tune or any(row.tune for row in bench.methods.values())
    if tuning:  # each row's grid on the first seed, then every seed with the chosen values
        bench, tuning_problems = _tune(bench, out_dir, train_rows, echo)
    results, failures, stale, trained = train_rows(bench, out_dir)
    if tuning:
        failures, stale = tuning_problems[0] + failures, tuning_problems[1] + stale
    total = len(bench.methods) * len(bench.seeds)
    finished = [results[(n, s)] for n in bench.methods for s in bench.seeds if (n, s) in results]
    no_embeddings = [f"{r['method']} seed {r['seed']}" for r in finished if bench.retrieval.enabled
                     and r.get("retrieval") is None]  # finished before retrieval was asked for: no weights kept
    if no_embeddings:
        echo(f"no embeddings (retrieval left out of the report): {len(no_embeddings)} run(s): "
             f"{', '.join(no_embeddings)}; --force retrains them")
    problems = []
    if failures:
        problems.append(f"{len(failures)} failed")
    if stale:
        problems.append(f"{len(stale)} stale (another configuration's result kept; --force retrains)")
    if finished:
        files = write_report(finished, out_dir, order=list(bench.methods), failures=failures, stale=stale,
                             references=bench.references, groups=bench.groups)
        where = f"report: {files['summary.md']}"
    else:
        files, where = {}, "no finished run, no report"
    skipped = len(finished) - trained
    echo(f"{trained} run(s) trained, {skipped} skipped{''.join('; ' + p for p in problems)}; {where}")
    echo(f"wall time: {time.perf_counter() - start:.1f} s")
    if problems:
        raise BenchIncomplete(f"{total} runs: {len(finished)} finished, {', '.join(problems)}"
                              + (f"; see {files['summary.md']}" if files else ""))
    return files
