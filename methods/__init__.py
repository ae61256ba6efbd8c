"""Built-in methods, installed as ``ltbench.methods``: one module per method.

Every module in this package is imported here so its ``@register_method`` runs; adding a
method is adding a file.
"""
import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
