"""Head / medium / tail groups of a report, from the stored training counts (issues 12, 26).

A benchmark file may say how the classes are grouped::

    groups: {head: 500, tail: 100}          # train count >= 500: head; < 100: tail; the rest medium
    groups: {head: [NV, MEL], tail: [DF]}   # explicit class names; classes not listed are medium

Without ``groups`` (:func:`resolve`): the head/medium sizes a run stored at test time
(``group_sizes``, MONICA's benchmark); else the grouping the dataset's literature uses
(:data:`LITERATURE`, for the class set it was made for); terciles of the sorted training counts only
as the fallback — for 7 ISIC classes they put NV, BKL and MEL in "head", so an NV-only model shows
Head 33.3. The grouping is applied in the report only, from each result's stored training counts
and per-class recall, so changing it never retrains anything and never enters a run key.

:func:`class_order` is the one class order of every report table and figure: head → tail by training
count, ties by class index.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from ltbench.errors import LtbenchError
from ltbench.metrics import GROUPS, group_classes

TERCILES = "terciles of the sorted training counts (ties by class index)"

#: dataset -> (number of classes it applies to, spec, where it comes from). A ``sizes`` spec counts
#: classes ranked by training frequency (head, medium; the rest tail), as MONICA's configs do
#: (``datasets.head`` / ``medium`` are cumulative indices: ``accs[:head]``, ``accs[head:medium]``).
LITERATURE: dict[str, tuple[int, dict, str]] = {
    "isic2019": (8, {"sizes": [2, 3]}, "MONICA's ISIC-2019-LT grouping (Ju et al., configs/isic: head 2, medium 5): "
                                       "the 2 most frequent training classes head, the next 3 medium, the last 3 tail"),
    "isic2018": (7, {"sizes": [1, 4]}, "MONICA's grouping of the 7 HAM10000 classes (configs/medmnist/"
                                       "base_dermamnist.yml: head 1, medium 5): the most frequent training class "
                                       "head, the next 4 medium, the last 2 tail"),
    "dermamnist": (7, {"sizes": [1, 4]}, "MONICA's DermaMNIST grouping (configs/medmnist/base_dermamnist.yml: "
                                         "head 1, medium 5): the most frequent training class head, the next 4 "
                                         "medium, the last 2 tail"),
    "digits-lt": (10, {"head": 101, "tail": 20}, "ImageNet-LT's many / medium / few shot (Liu et al., CVPR 2019; "
                                                 "as CIFAR-LT papers): > 100 training images head, 20–100 medium, "
                                                 "< 20 tail"),
}


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
    if "sizes" in spec:  # frequency-ranked counts of head and medium classes
        return group_classes(train_counts, spec["sizes"])
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
    if "sizes" in spec:
        return (f"the {spec['sizes'][0]} most frequent training classes head, the next {spec['sizes'][1]} medium, "
                "the rest tail")
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


def literature_groups(results: Sequence[dict]) -> tuple[dict, str] | None:
    """The dataset's own grouping (:data:`LITERATURE`) when every result is of that dataset and class set."""
    names = {str(r.get("dataset", {}).get("name", "")) for r in results}
    if len(names) != 1 or (name := names.pop()) not in LITERATURE:
        return None
    classes, spec, source = LITERATURE[name]
    if any(len(r["test"].get("per_class", {}).get("name") or []) != classes for r in results):
        return None  # another class set (e.g. FlexSampling's 14 classes of ISIC 2019)
    return spec, source


def resolve(spec: Mapping | None, results: Sequence[dict]) -> tuple[Mapping | None, str]:
    """The report's grouping and its name: ``groups:`` > stored ``group_sizes`` > literature > terciles.

    Returns (spec for :func:`apply_groups` — None keeps what each result stored —, description).
    """
    if spec is not None:
        return spec, describe(spec, results)
    sizes = {tuple(r.get("config", {}).get("group_sizes") or ()) for r in results}
    if len(sizes) == 1 and next(iter(sizes)):
        return None, describe(None, results)
    found = literature_groups(results)
    if found is not None:
        return found[0], f"{found[1]} (the dataset's own grouping; terciles only as a fallback)"
    return None, f"{TERCILES} (no grouping from the benchmark file or the dataset's literature)"


def class_order(results: Sequence[dict]) -> list[int]:
    """Class indices head → tail by the training counts (ties by class index): every table and figure's order."""
    names = results[0]["test"]["per_class"]["name"]
    train = (results[0].get("dataset", {}).get("class_counts") or {}).get("train") or [0] * len(names)
    return sorted(range(len(names)), key=lambda i: (-int(train[i]), i))


def class_labels(results: Sequence[dict], order: Sequence[int] | None = None) -> list[str]:
    """``"NAME (n)"`` (n = training images) in ``order`` (default :func:`class_order`)."""
    names = [str(n) for n in results[0]["test"]["per_class"]["name"]]
    train = (results[0].get("dataset", {}).get("class_counts") or {}).get("train")
    order = class_order(results) if order is None else order
    return [f"{names[i]} ({train[i]})" if train else names[i] for i in order]
