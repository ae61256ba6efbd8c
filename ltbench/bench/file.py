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

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import yaml

from ltbench import config as cfg
from ltbench import typed
from ltbench.bench.tuning import parse_tune, parse_tune_flags
from ltbench.config import TrainConfig
from ltbench.data.geometry import read_geometry
from ltbench.errors import LtbenchError
from ltbench.registry import get_method_class
from ltbench.report.groups import parse_groups
from ltbench.report.references import parse_references
from ltbench.retrieval.run_pass import RetrievalSettings
from ltbench.runs import DataSpec

_TOP_KEYS = ("name", "description", "dataset", "split", "train", "seeds", "methods", "cache_dir", "retrieval",
             "references", "groups",  # the last two: report only (ltbench/report/references.py, groups.py)
             "slurm",  # --launcher slurm only (ltbench/launchers/slurm.py), never in a run key
             "tune")  # per-row tuning on validation (ltbench/bench/tuning.py)
_DATASET_KEYS = ("name", "data_root", "options", "geometry")  # geometry: ltbench/data/geometry.py


@dataclass(frozen=True)
class MethodRow:
    """One row of a benchmark: its name (results, report) and the registered method it runs."""

    name: str
    method: str
    params: dict = field(default_factory=dict)
    recipe: str | None = None  # a paper recipe of the method (ltbench.recipes), None: the shared protocol
    config: TrainConfig | None = None  # the row's own settings (a recipe, tuned values); None: the bench's
    tuned: dict | None = None  # the settings tuning chose for this row (ltbench.bench.tuning)
    tune: dict | None = None  # the row's own tuning grid (over the bench's ``tune:``); None: the bench's
    train: dict | None = None  # the row's own training settings (over its recipe's), e.g. a backbone it needs


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
    tune: dict = field(default_factory=dict)  # setting -> values tried per row (ltbench.bench.tuning); {}: none

    def row_config(self, row: MethodRow) -> TrainConfig:
        """The settings a row trains with: its own (recipe, tuning) or the bench's."""
        return self.train if row.config is None else row.config


def recipe_train(row: MethodRow) -> dict:
    """The row's own training settings: its recipe's, then its ``train:`` over them ({} without either);
    bench-wide settings are never a recipe's (a row's ``train:`` may not name them)."""
    from ltbench.bench.tuning import BENCH_WIDE

    recipe = get_method_class(row.method).recipes[row.recipe].train if row.recipe else {}
    return {k: v for k, v in recipe.items() if k not in BENCH_WIDE} | dict(row.train or {})


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
    """The row with its method's recipe and its own ``train:``: settings between the file and the flags (the
    row's over the recipe's), the recipe's params under the row's."""
    from dataclasses import replace

    recipes = get_method_class(row.method).recipes
    if row.recipe and row.recipe not in recipes:
        known = ", ".join(sorted(recipes)) or "none"
        raise LtbenchError(f"{path}: methods.{row.name}.recipe = {row.recipe!r}: method {row.method!r} has no such "
                           f"recipe (its recipes: {known}; `ltbench methods --recipes` lists them)")
    recipe_params = recipes[row.recipe].params if row.recipe else {}
    label = f"{path}: methods.{row.name}: " + (f"recipe {row.recipe}" if row.recipe else "train")
    train = recipe_train(row)
    params = cfg.method_params(row.method, dict(recipe_params), typed.in_file(path, f"methods.{row.name}.recipe"))
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
        raise LtbenchError(f"{path}: {key} = {value!r:.80}: expected text")
    return value


def _name(path: Path, value: object) -> str:
    """The benchmark's name names its folder, ``reports/NAME``: refused like a row name, so it stays inside."""
    name = _text(path, "name", value, path.stem)
    if not typed.ROW_NAME.fullmatch(name) and (value is not None or name in (".", "..")):
        raise LtbenchError(f"{path}: name = {name!r:.80}: a benchmark name is letters, digits and _ . + - "
                           "(starting with a letter or digit): it names the folder reports/NAME")
    return name


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
        typed.check_row_name(name, f"{path}: methods.{name}")
        params = dict(params or {}) if isinstance(params, dict) or params is None else params
        if not isinstance(params, dict):
            raise LtbenchError(f"{path}: methods.{name} = {params!r}: expected a mapping of parameters")
        method = params.pop("method", name)
        recipe = params.pop("recipe", None)
        if recipe is not None and not isinstance(recipe, str):
            raise LtbenchError(f"{path}: methods.{name}.recipe = {recipe!r}: expected a recipe name (e.g. paper)")
        own_train = params.pop("train", None)
        if own_train is not None:
            from ltbench.bench.tuning import BENCH_WIDE

            if not isinstance(own_train, dict) or not own_train:
                raise LtbenchError(f"{path}: methods.{name}.train = {own_train!r}: expected a mapping of training settings")
            wide = [k for k in own_train if k in BENCH_WIDE]
            if wide:
                raise LtbenchError(f"{path}: methods.{name}.train.{wide[0]}: a bench-wide setting; set it in the "
                                   "file's train: section")
        own_tune = params.pop("tune", None)
        if own_tune is not None:
            own_tune = parse_tune(own_tune, f"{path}: methods.{name}.tune")
        if not isinstance(method, str):
            raise LtbenchError(f"{path}: methods.{name}.method = {method!r}: expected a method name")
        try:
            get_method_class(method)
        except LtbenchError as exc:
            hint = "" if method != name else f" (a variant names its method: {name}: {{method: NAME, ...}})"
            raise LtbenchError(f"{path}: methods.{name}: {exc}{hint}") from None
        params = cfg.method_params(method, params, typed.in_file(path, f"methods.{name}"))
        rows[name] = MethodRow(name, method, params, recipe=recipe, tune=own_tune, train=own_train)
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
        raw = typed.load_yaml(path.read_text())  # no duplicate keys, aliases bounded (issue 21)
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
    options = typed.read(option_settings, options_raw, typed.in_file(path, "dataset.options"),
                         unknown=f"not an option of dataset {dataset['name']!r}", open_ended=open_ended)
    geometry = None  # the flips and rotations its labels survive; None: the dataset's declaration
    if dataset.get("geometry") is not None:
        geometry = read_geometry(dataset["geometry"], get_dataset(dataset["name"]).geometry, str(path))

    split = raw.get("split") or {}
    if isinstance(split, str):
        split = {"kind": split}
    if not isinstance(split, dict):
        raise LtbenchError(f"{path}: split = {split!r}: expected a kind or a mapping (kind, seed, dir, file)")
    split = typed.read(cfg.split_settings(classes=True), split, typed.in_file(path, "split"), unknown="not a split option")
    given = {k: str(v) for k, v in (split_flags or {}).items() if v is not None}
    split.update(typed.read(cfg.split_settings(classes=True), given,
                            typed.flag({"ratio": "--ratio", "classes": "--classes"}), text=True))

    train = raw.get("train") or {}
    if not isinstance(train, dict):
        raise LtbenchError(f"{path}: train = {train!r}: expected a mapping of training settings")
    if "seed" in train:
        raise LtbenchError(f"{path}: train.seed: the run seeds are the top-level 'seeds' list")
    layers = [cfg.Layer("benchmark file", train, typed.in_file(path, "train"))]
    if train_flags:
        layers.append(cfg.Layer("command line", train_flags, typed.flag(), text=True))
    if settings:
        layers.append(cfg.set_layer(settings))
    config, sources = cfg.train_config(dataset["name"], *layers)

    seeds = typed.seeds(raw.get("seeds", [0, 1, 2]), f"{path}: seeds")
    rows = _rows(path, raw.get("methods"))
    rows = {name: _apply_recipe(path, dataset["name"], layers, row) if row.recipe or row.train else row
            for name, row in rows.items()}
    for name, row in rows.items():  # the method's own checks (e.g. focal's gamma >= 0), named by file and row
        try:
            get_method_class(row.method)(**row.params)
        except (TypeError, ValueError) as exc:
            raise LtbenchError(f"{path}: methods.{name}: {(str(exc).splitlines() or [type(exc).__name__])[0]}") from None

    tune = parse_tune_flags(tune_flags) if tune_flags else parse_tune(raw.get("tune"), f"{path}: tune")
    cache_dir = raw.get("cache_dir")
    if cache_dir is not None:
        if not isinstance(cache_dir, str):
            raise LtbenchError(f"{path}: cache_dir = {cache_dir!r}: expected a folder path")
        typed.check_folder(cache_dir, f"{path}: cache_dir")
    data = DataSpec(dataset=dataset["name"], data_root=data_root, options=options or None,
                    split=split.get("kind"), split_seed=split.get("seed", 0), split_dir=split.get("dir"),
                    split_file=split.get("file"), cache_dir=cache_dir, split_ratio=split.get("ratio"),
                    split_classes=split.get("classes"), geometry=geometry)
    return Benchmark(name=_name(path, raw.get("name")), data=data, train=config, seeds=seeds,
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
    return typed.read(cfg.slurm_settings(), raw, typed.in_file(path, "slurm"), unknown="not a slurm setting")


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
