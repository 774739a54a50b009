"""The one index-list <-> ranges helper: [0, 1, 2, 5, 7, 8] <-> "0-2,5,7-8" (inclusive runs).

Used wherever indices are written for people or for other tools: selectors in suggested recipes, vllm-omni's
skip lists, `qcompile diff`. Reading ranges back is the selector grammar's job (qcompiler.recipe.selectors).
"""

from __future__ import annotations

from collections.abc import Iterable


def index_runs(indices: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted, de-duplicated indices as inclusive (first, last) runs of consecutive values."""
    runs: list[tuple[int, int]] = []
    for index in sorted(set(indices)):
        if runs and index == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], index)
        else:
            runs.append((index, index))
    return runs


def format_ranges(indices: Iterable[int], *, separator: str = ",", length: int | None = None) -> str:
    """"0-2,5,7-8"; "all" when `length` is given and the indices are exactly range(length)."""
    runs = index_runs(indices)
    if length is not None and length > 0 and runs == [(0, length - 1)]:
        return "all"
    return separator.join(str(first) if first == last else f"{first}-{last}" for first, last in runs)
