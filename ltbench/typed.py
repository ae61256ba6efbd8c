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

A benchmark file, and a command-line value that is not text, is read as strict YAML first
(:func:`load_yaml`: no duplicate keys, aliases bounded; issue 21).

This module is the reading, the conversion and the generic rules, and knows no setting: the
settings of a run (``TrainConfig``, splits, SLURM, a method's or a dataset loader's keywords) are
``ltbench.config``'s.
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
from dataclasses import dataclass
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


# ------------------------------------------------------------------------------------ strict YAML
#
# YAML for files a user hands ltbench: safe, no duplicate keys, aliases bounded (issue 21).
#
# PyYAML's ``safe_load`` keeps the last of two equal keys (so ``epochs: 100`` followed later by
# ``epochs: 1`` silently trains one epoch), and it resolves aliases by reference, so a 1.4 KB file of
# nested aliases (a "billion laughs") loads at once but expands to ~10^9 nodes wherever the value is
# later walked or formatted whole. :func:`load_yaml` refuses both, as a ``yaml.YAMLError`` whose first line
# says what and where. Merge keys (``<<: *base``) still override as YAML defines.

MAX_YAML_NODES = 100_000  # nodes after expanding every alias; a benchmark file has a few hundred


class _StrictLoader(yaml.SafeLoader):
    def get_single_node(self):
        node = super().get_single_node()
        if node is not None:
            _check_expansion(node)
        return node

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} on line {key_node.start_mark.line + 1} "
                        f"(first on line {first + 1})", key_node.start_mark)
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a document whose aliases expand past :data:`MAX_YAML_NODES` nodes (or refer to themselves)."""
    size: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    open_: set[int] = set()
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            open_.discard(key)
            children = _children(node)
            size[key] = 1 + sum(size[id(c)] for c in children)
            if size[key] > MAX_YAML_NODES:
                raise yaml.constructor.ConstructorError(
                    None, None, f"aliases expand to more than {MAX_YAML_NODES:,} values (line {node.start_mark.line + 1}); "
                    "refusing to read it (write the values out, or use fewer nested aliases)", node.start_mark)
            continue
        if key in size:
            continue
        if key in open_:
            raise yaml.constructor.ConstructorError(
                None, None, f"an alias that contains itself (line {node.start_mark.line + 1})", node.start_mark)
        open_.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in size)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def load_yaml(text: str):
    """``yaml.safe_load(text)`` without duplicate keys and with aliases bounded; ``yaml.YAMLError`` otherwise."""
    loader = _StrictLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


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
            value = load_yaml(value) if value.strip() else value
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
                raise Invalid(f"item {k} ({show(item)}): {exc}") from None
        return tuple(items) if origin is tuple else items
    if origin in (dict, collections.abc.Mapping):
        if not isinstance(value, dict):
            raise Invalid("expected a mapping")
        _, value_type = typing.get_args(annotation) or (Any, Any)
        return {k: _convert(v, value_type, text) for k, v in value.items()}
    return value


def show(value: object) -> str:
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
        raise LtbenchError(f"expected a mapping of settings, got {show(given)}")
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
    return lambda key, value: f"{path}: {prefix}{key} = {show(value)}"


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


def not_empty(v: str) -> str | None:
    return None if v.strip() else "must not be empty"


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
            raise LtbenchError(f"{label}: seed {show(item) if not text else item}: {exc}") from None
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
