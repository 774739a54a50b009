"""Property tests: random mutations of a valid recipe compile to a plan or fail with our own error, nothing else."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qcompiler
from qcompiler.compile.compiler import compile_source
from qcompiler.errors import RecipeError
from tests.conftest import VALID_RECIPE

SCALARS = st.one_of(
    st.sampled_from(["yes", "no", "on", "off", "10:20", "0x10", "010", "1_000", "~", "null", "true", "-1", "1e999",
                     '"0-2"', '"first 15%"', "[0, 1]", "[]", "{}", "&a x", "*a", "!!str x", "'", '"', "|", ">", ": :",
                     "all", "fp8", "native", "self", "cross", "transformer", "99999999999999999999999"]),
    st.integers(-10, 100).map(str),
    st.text(alphabet=" abc019-:,[]{}#&*!%'\"\t", max_size=12),
)


def _mutate_line(lines: list[str], index: int, value: str) -> list[str]:
    line = lines[index]
    if ":" in line:
        key, _, _ = line.partition(":")
        lines = [*lines[:index], f"{key}: {value}", *lines[index + 1:]]
    else:
        lines = [*lines[:index], value, *lines[index + 1:]]
    return lines


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_value_mutations(data):
    lines = VALID_RECIPE.splitlines()
    for _ in range(data.draw(st.integers(1, 3))):
        index = data.draw(st.integers(0, len(lines) - 1))
        lines = _mutate_line(lines, index, data.draw(SCALARS))
    text = "\n".join(lines) + "\n"
    result = compile_source(text, name="m.yaml")
    assert (result.plan is None) == bool(result.errors)
    for diagnostic in result.diagnostics:
        assert diagnostic.code.startswith("QC") and diagnostic.message
        assert 0 <= diagnostic.line <= len(lines) + 1
    try:
        qcompiler.compile_recipe_text(text)
    except RecipeError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_random_line_deletions_and_duplications(data):
    lines = VALID_RECIPE.splitlines()
    index = data.draw(st.integers(0, len(lines) - 1))
    if data.draw(st.booleans()):
        lines = lines[:index] + lines[index + 1:]
    else:
        lines = lines[:index] + [lines[index]] + lines[index:]
    result = compile_source("\n".join(lines) + "\n", name="m.yaml")
    assert (result.plan is None) == bool(result.errors)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes(raw):
    result = compile_source(raw, name="b.yaml")
    assert result.plan is None and result.errors
