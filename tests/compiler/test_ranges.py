"""qcompiler.ranges: the one index-list -> ranges writer, read back by the selector grammar."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from qcompiler.ranges import format_ranges, index_runs
from qcompiler.recipe.selectors import select


def test_runs_and_text():
    assert index_runs([8, 0, 1, 2, 5, 7, 2]) == [(0, 2), (5, 5), (7, 8)]
    assert format_ranges([8, 0, 1, 2, 5, 7]) == "0-2,5,7-8"
    assert format_ranges([0, 1, 2, 5], separator=", ") == "0-2, 5"
    assert format_ranges(range(4), length=4) == "all" and format_ranges(range(3), length=4) == "0-2"
    assert format_ranges([]) == ""


@given(st.sets(st.integers(0, 39), min_size=1))
def test_selector_grammar_reads_back_what_format_ranges_writes(indices):
    for text in (format_ranges(indices), format_ranges(indices, separator=", ", length=40)):
        assert select(text, 40, "layers") == frozenset(indices)
