"""A note when a row's CPU runs used different torch thread counts (issue 21).

On the CPU, float sums depend on the thread count (kernels split their reductions by thread), so a
row whose seeds ran with different counts (``--jobs 2`` then ``--jobs 1``, or two machines) is not
the table that either count alone would give (issue 21's probe: one run's test Acc 66.17 at 1 thread,
66.33 at 2). The count is each result's ``threads`` (recorded since issue 21; not in the run key).
"""
from __future__ import annotations

from collections.abc import Sequence


def thread_lines(results: Sequence[dict]) -> list[str]:
    """One markdown line naming each row whose CPU runs recorded different thread counts, or none."""
    per_row: dict[str, dict[int, list]] = {}
    for r in results:
        threads = r.get("threads")
        if not isinstance(threads, int) or isinstance(threads, bool) or not str(r.get("device", "cpu")).startswith("cpu"):
            continue  # not recorded (older results), or a GPU run (its kernels do not split by CPU thread)
        per_row.setdefault(str(r.get("method")), {}).setdefault(threads, []).append(r.get("seed"))
    mixed = [f"{row} ({'; '.join(_count(n, seeds) for n, seeds in sorted(counts.items()))})"
             for row, counts in per_row.items() if len(counts) > 1]
    if not mixed:
        return []
    return [f"Mixed torch thread counts (CPU results reproduce only at equal counts; `--threads` fixes it): "
            f"{', '.join(mixed)}.", ""]


def _count(threads: int, seeds: list) -> str:
    plural = "s" if threads != 1 else ""
    return f"{threads} thread{plural}: seed{'s' if len(seeds) != 1 else ''} {', '.join(map(str, sorted(seeds, key=lambda s: (0, s) if isinstance(s, int) else (1, str(s)))))}"
