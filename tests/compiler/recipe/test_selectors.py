"""The selector grammar: every documented form, and properties over random inputs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qcompiler.ranges import format_ranges
from qcompiler.recipe.selectors import SelectorError, select


@pytest.mark.parametrize(
    ("text", "length", "axis", "expected"),
    [
        ("7", 40, "layers", {7}),
        ("2-5", 40, "layers", {2, 3, 4, 5}),
        ("37-", 40, "layers", {37, 38, 39}),
        ("all", 4, "steps", {0, 1, 2, 3}),
        ("first 3", 40, "layers", {0, 1, 2}),
        ("last 2", 40, "layers", {38, 39}),
        ("0-9/4", 40, "layers", {0, 4, 8}),
        ("30-/4", 40, "layers", {30, 34, 38}),
        ("all/10", 40, "layers", {0, 10, 20, 30}),
        (" 0 , 3 ", 4, "steps", {0, 3}),
        ("0-2, 1-3", 40, "layers", {0, 1, 2, 3}),
        # Percentages round the count UP: ceil(15 * 4 / 100) = ceil(0.6) = 1 step.
        ("first 15%", 4, "steps", {0}),
        ("last 15%", 40, "steps", {34, 35, 36, 37, 38, 39}),
        ("first 12.5%", 8, "steps", {0}),
        ("first 100%", 3, "steps", {0, 1, 2}),
    ],
)
def test_documented_forms(text, length, axis, expected):
    assert select(text, length, axis) == frozenset(expected)


def test_lists_of_ints():
    assert select([0, 3, 3], 4, "steps") == frozenset({0, 3})


@pytest.mark.parametrize(
    ("value", "code"),
    [("4", "QC131"), ("3-4", "QC131"), ("2-1", "QC132"), ("first 0", "QC133"), ("first 5", "QC131"),
     ("first 0%", "QC130"), ("first 101%", "QC130"), ("", "QC133"), ("  ", "QC133"), ("1,", "QC130"),
     ("7/2", "QC130"), ("0-3/0", "QC130"), ("x", "QC130"), ([True], "QC134"), ([1.5], "QC134"), (3, "QC134"),
     (None, "QC134"), (True, "QC134"), ([], "QC133"), ([-1], "QC131")],
)
def test_invalid_selectors(value, code):
    with pytest.raises(SelectorError) as info:
        select(value, 4, "steps")
    assert info.value.code == code


@given(st.sets(st.integers(0, 39), min_size=1))
def test_compact_ranges_round_trip(indices):
    # format_ranges writes the grammar's own notation; reading it back gives the same set.
    assert select(format_ranges(indices), 40, "layers") == frozenset(indices)


@given(st.text(alphabet="0123456789-,/% alfirstlx", max_size=30), st.integers(1, 60), st.sampled_from(["steps", "layers"]))
def test_any_string_is_a_set_in_range_or_a_selector_error(text, length, axis):
    try:
        chosen = select(text, length, axis)
    except SelectorError as error:
        assert error.code.startswith("QC1") and error.message
        return
    assert chosen and all(0 <= index < length for index in chosen)


@given(st.integers(1, 1000), st.decimals(min_value="0.01", max_value="100", places=2))
def test_percentages_select_ceil_of_the_share(length, percent):
    chosen = select(f"first {percent}%", length, "steps")
    count = len(chosen)
    assert chosen == frozenset(range(count))
    # count is the smallest integer >= percent * length / 100
    assert count * 100 >= percent * length and (count - 1) * 100 < percent * length
