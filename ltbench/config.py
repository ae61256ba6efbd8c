"""Typed settings: every value of a benchmark file or the command line, converted by its declared type.

PyYAML reads YAML 1.1, where ``1e-3``, ``1e3``, ``5E-4`` and ``1e+3`` are *strings* (a float needs a
dot there), and the command line gives text. So no value is trusted as it comes: each is converted
by the type its setting declares — a ``TrainConfig`` field, a split option, a dataset loader's or a
method ``__init__``'s annotated keyword — strictly (an integer setting refuses ``16.0`` and
``1e3``; a float setting takes ``1e-3`` and keeps an integer as it is, which int is in Python's
numeric tower, so that run keys of existing files do not move), then checked against its rule
(``lr > 0``, ``0 <= seed < 2**32``, a known backbone...). A refused value is one line naming where
it came from, the key and the value: ``bench.yaml: train.epochs = 2.5: expected an integer``,
``--lr -1: must be greater than 0``, ``--param gamma=abc: expected a number``.

All of it runs when a file or the command line is read, before any label file, pixel or pretrained
weight is touched. Checks that need the data (a class-weight vector of the wrong length) belong to
the method's ``setup``, which ``ltbench.runs.check_methods_on_data`` runs before the pixels.

Training settings come in three layers, later ones winning: the dataset's default protocol
(``ltbench.data.datasets``), the benchmark file, the command line (:func:`train_config`).
"""
from __future__ import annotations

import collections.abc
import functools
import inspect
import math
import os
import re
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from ltbench.errors import LtbenchError

MAX_SEED = 2**32 - 1  # numpy's and scikit-learn's seeds are 32-bit unsigned
ROW_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")  # a results folder and a report row

# A decimal number as YAML 1.2 and Python write it; no "nan", "inf" or "1_000" (Python's float() takes them).
_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_INT = re.compile(r"[+-]?\d+")
_NONE = ("none", "null", "~")

Label = Callable[[str, object], str]  # (key, value as given) -> where it came from, e.g. "--lr -1"


class Invalid(ValueError):
    """A value its setting refuses; the message says what is wrong, the caller adds where."""


# ------------------------------------------------------------------------------------ conversion


def _is_none(value: object) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in _NONE)


def _union_args(annotation: Any) -> tuple | None:
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        return typing.get_args(annotation)
    return None


def _wants_text(annotation: Any) -> bool:
    """Whether command-line text for this type is used as it is (not read as a YAML scalar)."""
    args = _union_args(annotation)
    if args is not None:
        return any(_wants_text(a) for a in args if a is not type(None))
    return annotation is str or annotation is Path


def _expected(annotation: Any) -> str:
    if annotation is int:
        return "an integer"
    if annotation is float:
        return "a number"
    if annotation is bool:
        return "true or false"
    if annotation is str:
        return "text"
    args = _union_args(annotation)
    if args is not None:
        return " or ".join(_expected(a) if a is not type(None) else "null" for a in args)
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return "one of " + ", ".join(map(str, typing.get_args(annotation)))
    if origin in (list, tuple, collections.abc.Sequence, typing.Sequence):
        return "a list"
    if origin in (dict, collections.abc.Mapping):
        return "a mapping"
    return getattr(annotation, "__name__", str(annotation))


def to_type(value: object, annotation: Any, text: bool = False) -> object:
    """``value`` as the declared ``annotation`` requires, or :class:`Invalid`.

    ``text=True``: ``value`` is command-line text; for a non-text type it is first read as a YAML
    scalar or list (``true``, ``[1, 2]``), as ``--param`` always did. Unknown annotations (and
    ``Any``/none) pass the value through unchanged.
    """
    if text and isinstance(value, str) and not _wants_text(annotation):
        try:
            value = yaml.safe_load(value) if value.strip() else value
        except yaml.YAMLError:
            raise Invalid("not a valid value (a number, true/false, text or a [list])") from None
    return _convert(value, annotation, text)


def _convert(value: object, annotation: Any, text: bool = False) -> object:
    if annotation is Any or annotation is inspect.Parameter.empty:
        return value
    args = _union_args(annotation)
    if args is not None:
        if type(None) in args and _is_none(value):
            return None
        for arm in args:
            if arm is type(None):
                continue
            try:
                return _convert(value, arm, text)
            except Invalid:
                pass
        raise Invalid(f"expected {_expected(annotation)}")
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise Invalid("expected true or false")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and _INT.fullmatch(value.strip()):
            return int(value)
        raise Invalid("expected an integer")  # 16.0 and 1e3 included: an integer setting is exact
    if annotation is float:
        if isinstance(value, int) and not isinstance(value, bool):
            # An int is a valid float (numeric tower): a file's `lr: 1` stays 1 so that run keys stay
            # put; command-line text becomes a float, as click's FLOAT option made it before.
            return float(value) if text else value
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            value = float(value)
        if isinstance(value, float):
            if not math.isfinite(value):
                raise Invalid("expected a finite number")
            return value
        raise Invalid("expected a number")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise Invalid("expected text")
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        choices = typing.get_args(annotation)
        if value in choices:
            return value
        raise Invalid(f"expected one of {', '.join(map(str, choices))}")
    if origin in (list, tuple, collections.abc.Sequence, typing.Sequence, collections.abc.Iterable):
        if not isinstance(value, (list, tuple)):
            raise Invalid(f"expected {_expected(annotation)}")
        item_types = typing.get_args(annotation)
        if origin is tuple and item_types and item_types[-1] is not Ellipsis:
            if len(item_types) != len(value):
                raise Invalid(f"expected a list of {len(item_types)} values")
        else:
            item_types = (item_types[0] if item_types else Any,) * len(value)
        items = []
        for k, (item, item_type) in enumerate(zip(value, item_types)):
            try:
                items.append(_convert(item, item_type, text))
            except Invalid as exc:
                raise Invalid(f"item {k} ({_show(item)}): {exc}") from None
        return tuple(items) if origin is tuple else items
    if origin in (dict, collections.abc.Mapping):
        if not isinstance(value, dict):
            raise Invalid("expected a mapping")
        _, value_type = typing.get_args(annotation) or (Any, Any)
        return {k: _convert(v, value_type, text) for k, v in value.items()}
    return value


def _show(value: object) -> str:
    """A value as the user wrote it (YAML spelling for null and booleans)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    return str(value)


# ------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Setting:
    """One named value: its declared type, its default and an optional rule (problem text or None)."""

    name: str
    type: Any = Any
    default: Any = inspect.Parameter.empty  # none declared
    rule: Callable[[Any], str | None] | None = None

    def convert(self, value: object, text: bool = False) -> object:
        value = to_type(value, self.type, text=text)
        if self.rule is not None and value is not None:
            problem = self.rule(value)
            if problem:
                raise Invalid(problem)
        return value


def read(settings: Mapping[str, Setting], given: Mapping, label: Label, *, text: bool = False,
         unknown: str = "unknown key", open_ended: bool = False) -> dict:
    """Convert every entry of ``given`` by its setting; the first problem is one LtbenchError line.

    ``open_ended``: keys without a setting pass unchanged (a callable taking ``**kwargs``).
    """
    if not isinstance(given, Mapping):
        raise LtbenchError(f"expected a mapping of settings, got {_show(given)}")
    out = {}
    for key, value in given.items():
        setting = settings.get(key)
        if setting is None:
            if open_ended:  # a **kwargs keyword: no declared type; text is read as YAML, as before
                try:
                    out[key] = to_type(value, Any, text=text)
                except Invalid as exc:
                    raise LtbenchError(f"{label(key, value)}: {exc}") from None
                continue
            known = ", ".join(sorted(settings)) or "none"
            raise LtbenchError(f"{label(key, value)}: {unknown} (known: {known})")
        try:
            out[key] = setting.convert(value, text=text)
        except Invalid as exc:
            raise LtbenchError(f"{label(key, value)}: {exc}") from None
    return out


def in_file(path: str | Path, section: str) -> Label:
    """Label of a benchmark-file entry: ``bench.yaml: train.lr = '1e-x'``."""
    prefix = f"{section}." if section else ""
    return lambda key, value: f"{path}: {prefix}{key} = {_show(value)}"


def flag(names: Mapping[str, str] | None = None) -> Label:
    """Label of a command-line option: ``--batch-size 16.0`` (``names`` maps key -> option)."""
    names = names or {}
    return lambda key, value: f"{names.get(key, '--' + key.replace('_', '-'))} {value}"


def param_flag(key: str, value: object) -> str:
    return f"--param {key}={value}"


def _hints(fn: Callable) -> dict[str, Any]:
    """Resolved annotations of ``fn``; ones that cannot be evaluated count as absent."""
    try:
        return typing.get_type_hints(fn)
    except Exception:  # a plug-in's annotation may name something imported only for type checkers
        hints = {}
        for name, ann in getattr(fn, "__annotations__", {}).items():
            try:
                hints[name] = eval(ann, getattr(fn, "__globals__", {})) if isinstance(ann, str) else ann
            except Exception:
                hints[name] = Any
        return hints


@functools.lru_cache(maxsize=None)
def settings_of(fn: Callable, skip: tuple[str, ...] = ("self",)) -> tuple[dict[str, Setting], bool]:
    """The keyword settings of a callable's signature, and whether it also takes ``**kwargs``.

    An unannotated keyword whose default is a float, bool or str takes that type (an int default
    does not decide: ``gamma=2`` may well mean a float).
    """
    hints = _hints(fn)
    settings, open_ended = {}, False
    for name, p in inspect.signature(fn).parameters.items():
        if name in skip or p.kind is p.VAR_POSITIONAL:
            continue
        if p.kind is p.VAR_KEYWORD:
            open_ended = True
            continue
        annotation = hints.get(name, Any)
        if annotation is Any and isinstance(p.default, (float, bool, str)):
            annotation = type(p.default)
        settings[name] = Setting(name, annotation, p.default)
    return settings, open_ended


# ---------------------------------------------------------------------------------------- rules


def at_least(low: int) -> Callable[[Any], str | None]:
    return lambda v: None if v >= low else f"must be at least {low}"


def positive(v: Any) -> str | None:
    return None if v > 0 else "must be greater than 0"


def non_negative(v: Any) -> str | None:
    return None if v >= 0 else "must be 0 or more"


def one_of(choices: Callable[[], tuple] | tuple) -> Callable[[Any], str | None]:
    def rule(v: Any) -> str | None:
        allowed = tuple(choices() if callable(choices) else choices)
        return None if v in allowed else f"choose one of {', '.join(map(str, allowed))}"

    return rule


def seed_rule(v: int) -> str | None:
    return None if 0 <= v <= MAX_SEED else f"must be an integer from 0 to {MAX_SEED}"


def _backbones() -> tuple:
    from ltbench.models import BACKBONES

    return BACKBONES


def _metrics() -> tuple:
    from ltbench.metrics import SELECTABLE

    return tuple(SELECTABLE)


@functools.lru_cache(maxsize=None)  # every TrainConfig checks its eval_view: try each preset once
def _deterministic_preset(name: str) -> str | None:
    """An evaluation preset: registered, and drawing nothing (two generators give the same batch)."""
    import torch

    from ltbench.data.augment import get_augmentation, list_augmentations

    try:
        augment = get_augmentation(name, 8)
    except LtbenchError:
        return f"not an augmentation preset (known: {', '.join(list_augmentations())})"
    images = torch.randint(0, 256, (16, 3, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    if not torch.equal(augment(images, torch.Generator().manual_seed(1)), augment(images, torch.Generator().manual_seed(2))):
        return "an evaluation preset must be deterministic (e.g. eval, plain_half)"
    return None


def _lr_schedules() -> tuple:
    from ltbench.schedules import LR_SCHEDULES

    return LR_SCHEDULES


def _device(v: str) -> str | None:
    if v == "auto":
        return None
    import torch

    try:
        torch.device(v)
    except (RuntimeError, ValueError):
        return "not a device (use auto, cpu, cuda or cuda:N)"
    return None


def _not_empty(v: str) -> str | None:
    return None if v.strip() else "must not be empty"


# What each TrainConfig field must satisfy beyond its type (the type comes from the dataclass).
TRAIN_RULES: dict[str, Callable[[Any], str | None]] = {
    "backbone": one_of(_backbones),
    "pretrained": _not_empty,
    "image_size": at_least(1),
    "epochs": at_least(1),
    "batch_size": at_least(1),
    "eval_batch_size": at_least(1),
    "lr": positive,
    "momentum": non_negative,
    "weight_decay": non_negative,
    "select_metric": one_of(_metrics),
    "optimizer": one_of(("sgd", "adam")),
    "betas": lambda v: None if all(0 <= b < 1 for b in v) else "each beta must be in [0, 1)",
    "lr_schedule": one_of(_lr_schedules),
    "lr_milestones": lambda v: None if all(m >= 1 for m in v) and list(v) == sorted(set(v)) else
    "must be increasing epochs of at least 1",
    "lr_gamma": positive,
    "warmup_epochs": non_negative,
    "warmup_start_factor": lambda v: None if 0 < v <= 1 else "must be in (0, 1]",
    "eval_view": _deterministic_preset,
    "group_sizes": lambda v: None if len(v) in (0, 2) and all(n >= 1 for n in v) else
    "give [head, medium]: the number of head and medium classes by training frequency (empty: terciles)",
    "device": _device,
    "seed": seed_rule,
}

# Backbones that have no pretrained weights: an inherited `pretrained` does not follow them.
NO_PRETRAINED = ("small-cnn",)


@functools.lru_cache(maxsize=None)
def train_settings() -> dict[str, Setting]:
    """One Setting per TrainConfig field: its annotation, default and rule."""
    from ltbench.trainer import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    return {f.name: Setting(f.name, hints[f.name], f.default, TRAIN_RULES.get(f.name)) for f in fields(TrainConfig)}


def check_train_config(config: Any) -> None:
    """Convert and check every field of a TrainConfig in place (also for configs built in Python)."""
    label = lambda key, value: f"TrainConfig {key}={_show(value)}"  # noqa: E731 - one-line label
    values = read(train_settings(), {f.name: getattr(config, f.name) for f in fields(config)}, label)
    for key, value in values.items():
        setattr(config, key, value)


def train_flag(key: str, value: object) -> object:
    """One TrainConfig field given as a command-line option (e.g. ``data prepare --image-size``)."""
    return read({key: train_settings()[key]}, {key: value}, flag(), text=isinstance(value, str))[key]


def split_settings(classes: bool = False) -> dict[str, Setting]:
    """The split options; ``classes``: also FlexSampling's class set (``--classes``, ``split: {classes: 14}``;
    ``ltbench train`` and ``ltbench/bench.py`` pass it on to ``DataSpec.split_classes``)."""
    from ltbench.data.splits import KINDS

    settings = {"kind": Setting("kind", str | None, None, one_of(KINDS)),
                "seed": Setting("seed", int, 0, seed_rule),
                "dir": Setting("dir", str | None, None, _not_empty),
                "file": Setting("file", str | None, None, _not_empty),
                # FlexSampling's imbalance ratio (--split flexsampling; ltbench/data/published_splits.py)
                "ratio": Setting("ratio", int | None, None, one_of((100, 200, 500)))}
    if classes:  # FlexSampling's 8-class (default) or 14-class split
        settings["classes"] = Setting("classes", int | None, None, one_of((8, 14)))
    return settings


def slurm_settings() -> dict[str, Setting]:
    """``--launcher slurm``: the benchmark file's ``slurm:`` section and ``--slurm KEY=VALUE`` (ltbench/launchers/slurm.py)."""
    text = str | None
    return {"cluster": Setting("cluster", text, None, one_of(("slurm", "local"))),  # local: submitit's local executor
            "partition": Setting("partition", text, None, _not_empty),
            "account": Setting("account", text, None, _not_empty),
            "qos": Setting("qos", text, None, _not_empty),
            "time_min": Setting("time_min", int | None, None, at_least(1)),  # per task
            "gpus_per_job": Setting("gpus_per_job", int | None, None, non_negative),
            "cpus_per_job": Setting("cpus_per_job", int | None, None, at_least(1)),
            "mem_gb": Setting("mem_gb", float | None, None, positive),
            "array_parallelism": Setting("array_parallelism", int | None, None, at_least(1)),
            "setup": Setting("setup", list[str] | None, None)}  # shell lines run before each task


def dataset_option_settings(dataset: str) -> tuple[dict[str, Setting], bool]:
    """The dataset loader's keywords (``data_root`` is its own option)."""
    from ltbench.data.datasets import get_dataset

    return settings_of(get_dataset(dataset).load, ("self", "data_root"))


def method_params(method: str, params: Mapping, label: Label, text: bool = False) -> dict:
    """A registered method's hyperparameters converted by its ``__init__`` annotations."""
    from ltbench.registry import get_method_class

    settings, open_ended = settings_of(get_method_class(method).__init__)
    return read(settings, params, label, text=text, unknown=f"method {method!r} has no such parameter",
                open_ended=open_ended)


def key_value_pairs(pairs, option: str) -> dict[str, str]:
    """``KEY=VALUE`` command-line pairs as text (``--param``, ``--set``, ``--slurm``); each is
    converted later by its setting's type. A malformed or repeated key is one line naming ``option``."""
    out: dict[str, str] = {}
    for pair in pairs or ():
        key, sep, value = str(pair).partition("=")
        key = key.strip()
        if not sep or not key:
            raise LtbenchError(f"{option} {pair!r}: expected KEY=VALUE")
        if key in out:
            raise LtbenchError(f"{option} {pair}: {key} is given twice")
        out[key] = value
    return out


def seeds(value: object, label: str, text: bool = False) -> list[int]:
    """A non-empty list of distinct run seeds (YAML list, or text like ``0,1,2``)."""
    if text and isinstance(value, str):
        value = [s for s in re.split(r"[,\s]+", value.strip()) if s]
    if not isinstance(value, list) or not value:
        raise LtbenchError(f"{label}: expected a non-empty list of integers like [0, 1, 2]")
    setting = Setting("seed", int, rule=seed_rule)
    out = []
    for item in value:
        try:
            out.append(setting.convert(item))
        except Invalid as exc:
            raise LtbenchError(f"{label}: seed {_show(item) if not text else item}: {exc}") from None
    dup = [s for i, s in enumerate(out) if s in out[:i]]
    if dup:
        raise LtbenchError(f"{label}: seed {dup[0]} is listed twice")
    return out


def check_folder(path: str | Path, label: str) -> Path:
    """A folder that exists and is writable, or can be created; created here only by the caller."""
    path = Path(path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise LtbenchError(f"{label} {path}: exists and is not a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise LtbenchError(f"{label} {path}: the folder is not writable")
        return path
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise LtbenchError(f"{label} {path}: cannot be created ({parent} is not a folder)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise LtbenchError(f"{label} {path}: cannot be created ({parent} is not writable)")
    return path


def check_row_name(name: object, label: str) -> str:
    if not isinstance(name, str) or not ROW_NAME.fullmatch(name):
        raise LtbenchError(f"{label}: a row name is letters, digits and _ . + - (starting with a letter or digit)")
    return name


# ------------------------------------------------------------------------------ training layers


@dataclass
class Layer:
    """One source of training settings: its name, its values and how to label them in errors."""

    source: str
    values: Mapping
    label: Label
    text: bool = False


def set_layer(settings: Mapping[str, str]) -> Layer:
    """``--set KEY=VALUE`` text (:func:`key_value_pairs`) as the last layer of training settings."""
    return Layer("command line", dict(settings), lambda k, v: f"--set {k}={v}", text=True)


def train_config(dataset: str, *layers: Layer) -> tuple[Any, dict[str, Layer]]:
    """The effective TrainConfig: dataset default protocol < each layer in order (later wins).

    Returns the config and, per field set by a layer, the layer it came from (for messages and the
    one-line summary). Inherited ``pretrained`` weights do not follow a later layer's switch to a
    backbone that has none (``--backbone small-cnn`` on ISIC trains from scratch).
    """
    from ltbench.data.datasets import get_dataset
    from ltbench.trainer import TrainConfig

    settings = train_settings()
    default = Layer(f"{dataset} protocol", get_dataset(dataset).protocol,
                    lambda k, v: f"dataset {dataset!r} default protocol {k}={_show(v)}")
    values: dict = {}
    sources: dict[str, Layer] = {}
    for layer in (default, *layers):
        given = {k: v for k, v in layer.values.items() if v is not None or not layer.text}
        for key, value in read(settings, given, layer.label, text=layer.text,
                               unknown="not a training setting").items():
            values[key], sources[key] = value, layer
    rank = {id(layer): k for k, layer in enumerate((default, *layers))}
    if (values.get("backbone") in NO_PRETRAINED and values.get("pretrained") is not None
            and rank[id(sources["pretrained"])] < rank[id(sources["backbone"])]):
        values["pretrained"], sources["pretrained"] = None, sources["backbone"]
    config = TrainConfig(**values)
    check_environment(config, sources)
    return config, sources


def check_environment(config: Any, sources: Mapping[str, Layer] | None = None) -> None:
    """What the machine must provide for this config: the device, a local weights file."""
    sources = sources or {}

    def where(key: str) -> str:
        value = getattr(config, key)
        layer = sources.get(key)
        return layer.label(key, value) if layer else f"{key} {value}"

    if config.backbone in NO_PRETRAINED and config.pretrained is not None:
        raise LtbenchError(f"{where('pretrained')}: the {config.backbone} backbone has no pretrained weights "
                           "(set pretrained to none)")
    weights = config.pretrained
    if weights and weights != "imagenet" and not weights.startswith(("http://", "https://")):
        if not Path(weights).expanduser().is_file():
            raise LtbenchError(f"{where('pretrained')}: no such file (give imagenet, a URL or a .pth file)")
    if config.device != "auto":
        import torch

        device = torch.device(config.device)
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise LtbenchError(f"{where('device')}: CUDA is not available on this machine")
            if device.index is not None and device.index >= torch.cuda.device_count():
                raise LtbenchError(f"{where('device')}: this machine has {torch.cuda.device_count()} CUDA device(s)")


SUMMARY_KEYS = ("backbone", "pretrained", "image_size", "epochs", "batch_size", "lr", "momentum",
                "weight_decay", "select_metric", "device")


def describe_train(config: Any, sources: Mapping[str, Layer], seed: bool = False) -> str:
    """One line: the effective training settings and which layer set what."""
    settings = train_settings()
    keys = [*SUMMARY_KEYS, *(k for k in settings if k not in SUMMARY_KEYS and k != "seed"
                             and getattr(config, k) != settings[k].default)]
    if seed:
        keys.append("seed")
    shown = " ".join(f"{k}={'none' if getattr(config, k) is None else getattr(config, k)}" for k in keys)
    by_source: dict[str, list[str]] = {}
    for key, layer in sources.items():
        by_source.setdefault(layer.source, []).append(key)
    origin = "; ".join(f"{source}: {', '.join(keys)}" for source, keys in by_source.items())
    return f"settings: {shown} ({origin or 'built-in defaults'}; the rest built-in defaults)"
