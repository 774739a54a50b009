"""The one index-list <-> inclusive-ranges helper: [0, 1, 2, 5, 7, 8] <-> "0-2,5,7-8".

Inclusive ranges are the notation of the recipe selector grammar, of vllm-omni's skip selectors and of every
message that lists steps or layers.
"""

from __future__ import annotations

from collections.abc import Iterable


def index_runs(indices: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted, de-duplicated indices as maximal runs of consecutive integers: [(first, last), ...]."""
    runs: list[tuple[int, int]] = []
    for index in sorted(set(indices)):
        if runs and index == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], index)
        else:
            runs.append((index, index))
    return runs


def format_ranges(indices: Iterable[int], separator: str = ",") -> str:
    """Compact inclusive ranges, e.g. "0-2,5,37-39" ("" for no indices)."""
    return separator.join(str(a) if a == b else f"{a}-{b}" for a, b in index_runs(indices))
