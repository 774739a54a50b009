"""qcompile's fast schema validator agrees with the reference `jsonschema` implementation."""

from __future__ import annotations

import copy
import json

import jsonschema
from hypothesis import given, settings
from hypothesis import strategies as st

from qcompiler.families import BUILTIN_FAMILY_DIR
from qcompiler.recipe.source import parse_yaml
from qcompiler.schema_check import checker
from qcompiler.schemas import load_schema
from tests.conftest import RECIPES_DIR, VALID_RECIPE

VALUES = st.one_of(st.none(), st.booleans(), st.integers(-5, 2**33), st.floats(allow_nan=False, allow_infinity=False),
                   st.sampled_from(["", "self", "cross", "fp8", "native", "error", "x y", "0-2", "transformer", "a" * 70]),
                   st.lists(st.integers(-1, 50), max_size=3), st.just({}), st.just([]), st.just({"extra": 1}))


def _documents():
    recipe = parse_yaml(VALID_RECIPE, "r.yaml").data
    plan = json.loads((RECIPES_DIR / "wan22_i2v.plan.json").read_text())
    family = json.loads((BUILTIN_FAMILY_DIR / "wan22_i2v_a14b.json").read_text())
    return {"recipe": recipe, "plan": plan, "family": family}


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value[:3]):
            yield from _paths(item, (*prefix, index))


def _strict_integer(error) -> bool:
    # The one intended difference: JSON Schema counts 4.0 as an integer; qcompile refuses it (a step count
    # or seed written as a float is a mistake worth pointing at).
    return error.validator == "type" and isinstance(error.instance, float) and error.instance.is_integer()


def _agree(name, document):
    ours = sorted((tuple(map(str, e.absolute_path)), e.validator) for e in checker(name).iter_errors(document)
                  if not _strict_integer(e))
    theirs = sorted((tuple(map(str, e.absolute_path)), e.validator)
                    for e in jsonschema.Draft202012Validator(load_schema(name)).iter_errors(document))
    if any(_strict_integer(e) for e in checker(name).iter_errors(document)):
        return  # errors under the float may be hidden in ours (type fails first); compare only the rest
    assert (not ours) == (not theirs), (ours, theirs)
    assert {p for p, _ in ours} == {p for p, _ in theirs}


def test_valid_documents_pass_both():
    for name, document in _documents().items():
        _agree(name, document)
        assert not list(checker(name).iter_errors(document))


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(["recipe", "plan", "family"]), st.data())
def test_random_mutations_agree(name, data):
    document = copy.deepcopy(_documents()[name])
    paths = [p for p in _paths(document) if p]
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        target = document
        try:
            for part in path[:-1]:
                target = target[part]
            if data.draw(st.booleans()) and isinstance(target, dict):
                target.pop(path[-1], None)
            else:
                target[path[-1]] = copy.deepcopy(data.draw(VALUES))
        except (KeyError, IndexError, TypeError):
            continue
    _agree(name, document)
