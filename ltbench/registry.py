"""Method registry: ``@register_method`` / ``create_method`` / ``list_methods`` (after timm's).

Built-in methods live in ``ltbench.methods``; other packages add theirs through the entry-point
group ``ltbench.methods`` (each entry point names a module to import or a Method subclass).
Unlike timm, registering a name twice raises.
"""
from __future__ import annotations

import fnmatch
import importlib
from importlib.metadata import entry_points
from typing import Callable, TypeVar

from ltbench.data.augment.presets import PRESET_SOURCES
from ltbench.errors import LtbenchError
from ltbench.method import Method

ENTRY_POINT_GROUP = "ltbench.methods"
_METHODS: dict[str, type[Method]] = {}
_loaded = False

M = TypeVar("M", bound=type)


def register_method(name: str) -> Callable[[M], M]:
    """Class decorator: make a :class:`~ltbench.method.Method` subclass available under ``name``."""

    def decorate(cls: M) -> M:
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(
                f"method name {name!r} is already registered by "
                f"{_METHODS[name].__module__}.{_METHODS[name].__qualname__}"
            )
        cls.name = name
        _METHODS[name] = cls
        return cls

    return decorate


def unregister_method(name: str) -> None:
    """Remove a registration (for tests and interactive work)."""
    _METHODS.pop(name, None)


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    importlib.import_module("ltbench.methods")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            target = ep.load()  # importing the module runs its @register_method
        except Exception as exc:
            raise LtbenchError(f"entry point {ep.name!r} ({ep.value}) failed to load: {exc}") from exc
        # An entry point may also name a Method subclass directly: register it under its name.
        if isinstance(target, type) and issubclass(target, Method) and target not in _METHODS.values():
            register_method(ep.name)(target)
    _loaded = True  # only once every plug-in loaded: a failure is reported again, not hidden


def list_methods(pattern: str = "*") -> list[str]:
    """Registered method names matching a shell-style ``pattern``, sorted."""
    _load_all()
    return sorted(n for n in _METHODS if fnmatch.fnmatch(n, pattern))


def get_method_class(name: str) -> type[Method]:
    _load_all()
    try:
        return _METHODS[name]
    except KeyError:
        known = ", ".join(sorted(_METHODS))
        raise LtbenchError(f"unknown method {name!r}; known methods: {known}") from None


def create_method(name: str, **params) -> Method:
    """Instantiate a registered method with its keyword hyperparameters."""
    cls = get_method_class(name)
    try:
        return cls(**params)
    except (TypeError, ValueError) as exc:
        raise LtbenchError(f"method {name!r}: bad parameters {params}: {exc}") from None


# Methods and method plug-ins register their augmentation presets when they are imported: a preset
# name the data layer does not know yet loads them first (ltbench.data.augment.presets).
PRESET_SOURCES.append(list_methods)
