"""Which epoch a run tests (the checkpoint rule), and which epochs the other rules would test (issue 26).

**The rule** (``TrainConfig.select_metric``): the selectable epoch with the best validation metric
(``acc``, ``sen``, ``pre``, ``f1``, ``auc``, ``group_acc``; strictly better, so ties keep the earlier
epoch), or ``last``: no selection, the last epoch of the last selectable stage (what ECL's released
``train.py`` tests). :func:`selection_score` is the one number an epoch competes with; for ``last`` it is
the epoch itself, so the trainer's "strictly better" rule keeps the last selectable epoch.

**Selection sensitivity.** While a run trains, :class:`Candidates` follows the choice of every rule of
:data:`SENSITIVITY_RULES` (and of the run's own rule) and evaluates the *test* set at each epoch that
some rule holds as its best so far, plus the last selectable epoch. The trainer never reads these
predictions: they only let the report show what the test would have said under another rule
(``evidence.md``, "Selection sensitivity"). Cost: one test pass per epoch at which some rule's best
improves (most often early in training), stored only for the epochs that remain a rule's choice at
the end (``selection_*`` arrays of the run's NPZ). The passes draw no random number and change no
state (eval mode, ``inference_mode``), so every result is bit-identical with or without them.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np

#: The rules the report compares for every run: Acc (the ECL paper's), balanced accuracy (ISIC's
#: metric), macro F1 and no selection at all.
SENSITIVITY_RULES = ("acc", "sen", "f1", "last")

#: How each rule reads in a report.
RULE_TEXT = {"acc": "best validation Acc", "sen": "best validation Sen (balanced accuracy)",
             "pre": "best validation Pre", "f1": "best validation macro F1", "auc": "best validation AUC",
             "group_acc": "best validation group-mean accuracy (MONICA)",
             "last": "the last selectable epoch (no selection)"}


def selection_score(metrics: Mapping[str, float], rule: str, epoch: int) -> float:
    """The score an epoch competes with under ``rule``: its validation metric, or (``last``) the epoch."""
    if rule == "last":
        return float(epoch)
    return float(metrics[rule])


class Candidates:
    """The epoch each rule would test, and the test probabilities at those epochs (module docstring).

    ``offer`` every validated epoch in order (``test``: a callable returning the test probabilities
    of the model as it is now); ``finish`` after the last epoch, with the model still in its final
    state. ``state``/``load`` carry everything across a resumed run.
    """

    def __init__(self, select_metric: str) -> None:
        self.rules = tuple(dict.fromkeys((select_metric, *SENSITIVITY_RULES)))
        self.best: dict[str, tuple[float, int]] = {}  # metric rule -> (score, epoch), as the trainer's best
        self.probs: dict[int, np.ndarray] = {}  # epoch -> test probabilities [N, C]
        self.last: int | None = None  # the last selectable epoch so far
        self.final: int | None = None  # the last epoch offered (selectable or not)

    def offer(self, epoch: int, metrics: Mapping[str, float], selectable: bool,
              test: Callable[[], np.ndarray]) -> None:
        """Record a validated epoch; evaluate ``test`` when it is some metric rule's new best."""
        self.final = epoch
        if not selectable:
            return
        self.last = epoch
        new = False
        for rule in self.rules:
            if rule == "last" or rule not in metrics:
                continue
            score = selection_score(metrics, rule, epoch)
            if rule not in self.best or score > self.best[rule][0]:  # the trainer's rule: ties keep the earlier
                self.best[rule] = (score, epoch)
                new = True
        if new:
            self.probs[epoch] = np.asarray(test(), dtype=np.float32)
        self._prune()

    def finish(self, test: Callable[[], np.ndarray]) -> None:
        """After the last epoch: the ``last`` rule's test pass, when the final epoch was selectable."""
        if self.last is not None and self.last == self.final and self.last not in self.probs:
            self.probs[self.last] = np.asarray(test(), dtype=np.float32)

    def epochs(self) -> dict[str, int]:
        """Rule -> the epoch it chooses (rules with no selectable epoch left out)."""
        chosen = {rule: held[1] for rule, held in self.best.items()}
        if self.last is not None:
            chosen["last"] = self.last
        return {rule: chosen[rule] for rule in self.rules if rule in chosen}

    def _prune(self) -> None:
        # Only epochs that are still some rule's choice (the last selectable one may become "last").
        keep = set(self.epochs().values())
        for epoch in [e for e in self.probs if e not in keep]:
            del self.probs[epoch]

    def arrays(self) -> dict[str, np.ndarray]:
        """``selection_rules`` [R] (str), ``selection_epochs`` [R] (−1: none), ``selection_tested`` [K]
        (epochs with test probabilities) and ``selection_test_probs`` [K, N, C] for the run's NPZ."""
        chosen = self.epochs()
        tested = sorted(e for e in set(chosen.values()) if e in self.probs)
        out = {"selection_rules": np.array(self.rules, dtype=str),
               "selection_epochs": np.array([chosen.get(rule, -1) for rule in self.rules], dtype=np.int64),
               "selection_tested": np.array(tested, dtype=np.int64)}
        if tested:
            out["selection_test_probs"] = np.stack([self.probs[e] for e in tested]).astype(np.float32)
        return out

    def state(self) -> dict:
        """Plain data for a checkpoint (``ltbench.store.checkpoint.plain`` turns the arrays into tensors)."""
        return {"best": {rule: [score, epoch] for rule, (score, epoch) in self.best.items()},
                "probs": {str(e): p for e, p in self.probs.items()}, "last": self.last, "final": self.final}

    def load(self, state: dict | None) -> None:
        """Restore :meth:`state` (None: a checkpoint written before candidates existed; start empty)."""
        if not state:
            return
        self.best = {rule: (float(score), int(epoch)) for rule, (score, epoch) in state["best"].items()}
        self.probs = {int(e): np.asarray(p, dtype=np.float32) for e, p in state["probs"].items()}
        self.last, self.final = state["last"], state["final"]


def epochs_from_history(history: list, best_epoch: int | None, rules) -> dict[str, int]:
    """Rule -> epoch chosen, recomputed from a stored history (results without ``selection_*`` arrays).

    The history does not say which stages were selectable: the records of the best epoch's stage
    (``stage`` key; single-stage runs have none) are taken as the selectable ones. Records without
    a number for a rule are skipped; a rule no record has is left out.
    """
    records = [h for h in history or [] if isinstance(h, dict) and isinstance(h.get("epoch"), int)]
    if not records:
        return {}
    stage_of = {h["epoch"]: h.get("stage") for h in records}
    selectable = [h for h in records if best_epoch not in stage_of or h.get("stage") == stage_of[best_epoch]]
    out: dict[str, int] = {}
    for rule in rules:
        if rule == "last":
            out[rule] = max(h["epoch"] for h in selectable)
            continue
        held: tuple[float, int] | None = None
        for h in selectable:
            value = (h.get("val") or {}).get(rule)
            if not isinstance(value, (int, float)) or math.isnan(value):
                continue
            if held is None or value > held[0]:
                held = (float(value), h["epoch"])
        if held is not None:
            out[rule] = held[1]
    return out
