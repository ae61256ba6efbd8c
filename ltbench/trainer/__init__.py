"""The one training loop shared by every method (it never names one).

Public face: :class:`Trainer` (``fit`` trains and tests a method, ``evaluate`` / ``infer`` run the
evaluation transform), :class:`DataBundle` (what it trains on), :class:`RunOutput` (what it returns)
and :class:`~ltbench.config.TrainConfig` (the shared protocol; defined in ``ltbench.config``). One
module per part: ``loop`` (the loop, docs/architecture.md), ``probe`` (the probe stage's fit) and
``selection`` (the checkpoint rule and every rule's candidate epoch).
"""
from ltbench.config import TrainConfig
from ltbench.trainer.loop import DataBundle, RunOutput, Trainer, resolve_device, seed_everything

__all__ = ["DataBundle", "RunOutput", "TrainConfig", "Trainer", "resolve_device", "seed_everything"]
