"""Head / medium / tail groups of a report, from the stored training counts (issue 12).

A benchmark file may say how the classes are grouped::

    groups: {head: 500, tail: 100}          # train count >= 500: head; < 100: tail; the rest medium
    groups: {head: [NV, MEL], tail: [DF]}   # explicit class names; classes not listed are medium

Without ``groups`` the report keeps the terciles of the sorted training counts that
:func:`ltbench.metrics.group_classes` computes at test time (and stores in each result). The
grouping is applied in the report only, from each result's stored training counts and per-class
recall, so changing it never retrains anything and never enters a run key.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from ltbench.errors import LtbenchError
from ltbench.metrics import GROUPS, group_classes

TERCILES = "terciles of the sorted training counts (ties by class index)"


def parse_groups(raw: object, where: str) -> dict | None:
    """The ``groups:`` setting of a benchmark file, checked; None when absent.

    ``where`` names the file (``bench.yaml``); every problem is one LtbenchError line naming the key.
    Returns ``{"head": int, "tail": int}`` (thresholds) or ``{"head": [...], "medium": [...], "tail": [...]}``
    (class names; ``medium`` optional).
    """
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or not raw:
        raise LtbenchError(f"{where}: groups = {raw!r}: expected a mapping like {{head: 500, tail: 100}} "
                           "or {head: [NV], tail: [DF]}")
    extra = [k for k in raw if k not in GROUPS]
    if extra:
        raise LtbenchError(f"{where}: groups.{extra[0]}: unknown group; allowed: {', '.join(GROUPS)}")
    values = list(raw.values())
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        if set(raw) != {"head", "tail"}:
            raise LtbenchError(f"{where}: groups: thresholds need both head and tail (train count >= head is head, "
                               "< tail is tail), and no medium")
        for key in ("head", "tail"):
            if raw[key] < 0:
                raise LtbenchError(f"{where}: groups.{key} = {raw[key]}: must be 0 or more")
        if raw["tail"] > raw["head"]:
            raise LtbenchError(f"{where}: groups.tail = {raw['tail']}: must not exceed groups.head = {raw['head']}")
        return {"head": int(raw["head"]), "tail": int(raw["tail"])}
    if all(isinstance(v, list) for v in values):
        seen: dict[str, str] = {}
        out: dict[str, list[str]] = {}
        for key, names in raw.items():
            for name in names:
                if not isinstance(name, str) or not name:
                    raise LtbenchError(f"{where}: groups.{key}: {name!r}: expected a class name")
                if name in seen:
                    raise LtbenchError(f"{where}: groups.{key}: {name} is also in groups.{seen[name]}")
                seen[name] = key
            out[key] = list(names)
        return out
    raise LtbenchError(f"{where}: groups: give integer thresholds (head: 500, tail: 100) or lists of class "
                       "names, not a mix")


def class_groups(spec: Mapping | None, train_counts: Sequence[int], class_names: Sequence[str],
                 where: str = "groups") -> dict[str, list[int]]:
    """Class indices of each group under ``spec`` (None: terciles, as at test time)."""
    if spec is None:
        return group_classes(train_counts)
    order = sorted(range(len(train_counts)), key=lambda i: (-int(train_counts[i]), i))  # head -> tail
    if "head" in spec and isinstance(spec["head"], int):
        head, tail = spec["head"], spec["tail"]
        which = {i: "head" if train_counts[i] >= head else "tail" if train_counts[i] < tail else "medium"
                 for i in order}
    else:
        index = {str(n): i for i, n in enumerate(class_names)}
        which = {i: "medium" for i in order}
        for g in GROUPS:
            for name in spec.get(g, []):
                if name not in index:
                    raise LtbenchError(f"{where}.{g}: {name} is not a class of these results "
                                       f"({', '.join(map(str, class_names))})")
                which[index[name]] = g
    return {g: [i for i in order if which[i] == g] for g in GROUPS}


def describe(spec: Mapping | None, results: Sequence[dict] = ()) -> str:
    """The grouping in words, for the report (``results``: to name a test-time ``group_sizes``)."""
    if spec is None:
        sizes = {tuple(r.get("config", {}).get("group_sizes") or ()) for r in results}
        if len(sizes) == 1 and (only := sizes.pop()):
            return (f"the {only[0]} most frequent training classes head, the next {only[1]} medium, the rest tail "
                    "(group_sizes, as stored at test time)")
        return TERCILES
    if isinstance(spec.get("head"), int):
        return (f"training count ≥ {spec['head']}: head, < {spec['tail']}: tail, otherwise medium "
                "(thresholds from the benchmark file)")
    listed = "; ".join(f"{g}: {', '.join(spec[g])}" for g in GROUPS if spec.get(g))
    return f"class lists from the benchmark file ({listed}; others medium)"


def apply_groups(results: Sequence[dict], spec: Mapping | None) -> list[dict]:
    """Results whose ``test.groups``/``test.group_recall`` follow ``spec`` (copies; inputs untouched).

    Without ``spec`` the results are returned as they are (the stored terciles). A result without
    training counts or per-class recall keeps what it stored.
    """
    if spec is None:
        return list(results)
    out = []
    for r in results:
        train = (r.get("dataset", {}).get("class_counts") or {}).get("train")
        per_class = r["test"].get("per_class") or {}
        recall, names = per_class.get("recall"), per_class.get("name")
        if not train or recall is None or names is None:
            out.append(r)
            continue
        ids = class_groups(spec, train, names)
        test = {**r["test"],
                "groups": {g: [str(names[i]) for i in members] for g, members in ids.items()},
                "group_recall": {g: float(np.mean([recall[i] for i in members])) if members else math.nan
                                 for g, members in ids.items()}}
        out.append({**r, "test": test})
    return out
