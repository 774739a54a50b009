"""Every generated command example in the README and docs/ shows what the command prints today."""

from __future__ import annotations

import pytest

from tests.docs_examples import MARKER, documents, examples, run

ALL = [example for path in documents() for example in examples(path)]


def test_every_marker_is_a_generated_example():
    for path in documents():
        text = path.read_text(encoding="utf-8")
        assert text.count(MARKER) == len(examples(path)), (
            f"{path}: a {MARKER} line is not followed by a ```-block starting with `$ qcompile ...`")


def test_there_are_generated_examples():
    assert len(ALL) >= 5


@pytest.mark.parametrize("example", ALL, ids=[f"{e.path.name}:{e.command}" for e in ALL])
def test_example_is_what_the_command_prints(example):
    assert run(example.command) == example.output, (
        f"{example.path.name}: the example of `{example.command}` is stale; refresh it with "
        "`python -m tests.docs_examples --write`")
