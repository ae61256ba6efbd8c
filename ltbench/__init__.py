"""ltbench: one trainer, one evaluator and a registry of faithful long-tail methods."""
from ltbench.errors import LtbenchError
from ltbench.method import Batch, LossMethod, Method, TrainInfo
from ltbench.registry import create_method, get_method_class, list_methods, register_method

__version__ = "0.1.0"
__all__ = [
    "Batch", "LossMethod", "LtbenchError", "Method", "TrainInfo",
    "create_method", "get_method_class", "list_methods", "register_method",
]
