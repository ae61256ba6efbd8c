"""Paper recipes: the training settings a method's paper or official code uses, declared as data.

The shared protocol trains every row alike (one lr, schedule, budget), so that a table compares like
with like. A method's *recipe* is what its authors ran instead: a class attribute
``recipes = {"paper": Recipe(...)}`` on the method, shown by ``ltbench methods --recipes``. A
benchmark row opts in with ``recipe: paper`` (``scl_paper: {method: scl, recipe: paper}``); its
settings then sit between the benchmark file's ``train:`` and the command line (flag and ``--set``
still win, so ``--epochs 2`` shortens a recipe for a try-out), and its ``params`` under the row's
own parameters. The report names each row's recipe. The recipe's name is a label: the run key holds
the effective settings and parameters, so a recipe and the same settings written out share results.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping


@dataclass(frozen=True)
class Recipe:
    """One recipe: where it comes from, TrainConfig overrides and method keyword overrides."""

    source: str  # the paper's table or the official script (and commit) the numbers come from
    train: Mapping[str, object] = field(default_factory=dict)  # TrainConfig fields (lr, epochs, ...)
    params: Mapping[str, object] = field(default_factory=dict)  # the method's keyword arguments
    note: str = ""  # what the recipe leaves out or had to translate (e.g. a dataset the suite lacks)

    def describe(self) -> str:
        """One line: the settings, the parameters and the source."""
        parts = [f"{k}={_show(v)}" for k, v in self.train.items()]
        parts += [f"{k}={_show(v)}" for k, v in self.params.items()]
        text = ", ".join(parts) or "(the shared protocol)"
        return f"{text} — {self.source}" + (f" ({self.note})" if self.note else "")


def _show(value: object) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_show(v) for v in value) + "]"
    return f"{value:g}" if isinstance(value, float) else str(value)


def recipe_lines(results) -> list[str]:
    """Markdown lines naming the rows that ran a recipe (from their results), for the report."""
    rows: dict[str, tuple[str, str]] = {}
    own: dict[str, dict] = {}
    for result in results:
        if result.get("recipe"):
            rows.setdefault(result["method"], (result.get("registered_method", result["method"]), result["recipe"]))
        if result.get("row_train"):
            own.setdefault(result["method"], result["row_train"])
    lines = []
    if rows:
        named = "; ".join(f"`{row}`: {method}'s `{recipe}` recipe" for row, (method, recipe) in rows.items())
        lines.append(f"**Recipes** (`ltbench methods --recipes` lists their settings and sources): {named}.")
    if own:
        named = "; ".join(f"`{row}`: " + ", ".join(f"{k} {v}" for k, v in settings.items())
                          for row, settings in own.items())
        lines.append(f"**Rows with their own settings** (their `train:` in the benchmark file): {named}.")
    return [" ".join(lines) + " Every other row: the shared protocol in the header.", ""] if lines else []
