"""Hostile input: each case gives a clear, located error (file:line:column for recipes, the JSON path for
plans), never a traceback, a hang or a silent accept."""

from __future__ import annotations

import copy
import json
import os
import time

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qcompiler
from qcompiler.cli.main import cli
from qcompiler.compile.compiler import compile_path, compile_source
from qcompiler.errors import PlanError
from qcompiler.fileio import MAX_JSON_DEPTH, read_regular_file
from qcompiler.plan.format import content_sha256, load_plan
from tests.conftest import RECIPES_DIR, VALID_RECIPE

HEAD = VALID_RECIPE.split("rules:")[0]


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def _rehashed(data: dict) -> dict:
    data["content_sha256"] = content_sha256(data)
    return data


def _plan_dict() -> dict:
    return qcompiler.compile_recipe_text(VALID_RECIPE).to_dict()


def _only_error(text: str):
    result = compile_source(text, name="r.yaml")
    assert result.plan is None and result.errors, result.diagnostics
    return result.errors[0]


# -- deep nesting -----------------------------------------------------------------------------------------

def test_deeply_nested_flow_yaml_is_a_located_error():
    error = _only_error(HEAD + "rules: " + "[" * 5000 + "]" * 5000 + "\n")
    assert error.line > 0 and error.column > 0 and "nesting" in error.message


def test_deeply_nested_block_yaml_is_a_located_error():
    nested = "".join("  " * depth + "- \n" for depth in range(60))
    error = _only_error(HEAD + "rules:\n" + nested)
    assert error.code == "QC009" and error.line > 0 and "levels deep" in error.message


def test_deeply_nested_plan_json_is_refused_with_line_and_column(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(PlanError, match=rf"deep.json:1:{MAX_JSON_DEPTH + 1}: nested more than {MAX_JSON_DEPTH}"):
        load_plan(path)
    for command in ("show", "check"):
        result = run(command, str(path)) if command == "show" else run("check", str(RECIPES_DIR / "wan22_i2v.yaml"), "--plan", str(path))
        assert result.exit_code == 1 and "Traceback" not in result.output and "nested more than" in result.output


def test_brackets_and_digits_inside_strings_are_not_nesting_or_numbers(tmp_path):
    data = _plan_dict()
    data["recipe"]["name"] = "[" * 1000 + "9" * 100 + ".yaml"
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(_rehashed(data)))
    assert load_plan(path).data["recipe"]["name"] == data["recipe"]["name"]


# -- huge integers ------------------------------------------------------------------------------------------

def test_five_thousand_digit_integer_in_a_plan_is_located(tmp_path):
    text = qcompiler.compile_recipe_text(VALID_RECIPE).to_json().replace('"rotation_seed": 425500', '"rotation_seed": ' + "9" * 5000)
    path = tmp_path / "huge.json"
    path.write_text(text)
    line = next(n for n, row in enumerate(text.splitlines(), 1) if "rotation_seed" in row)
    with pytest.raises(PlanError, match=rf"huge.json:{line}:\d+: number with 5000 digits"):
        load_plan(path)
    for args in (["show", str(path)], ["diff", str(path), str(path)], ["export", "--to", "vllm-omni", str(path)]):
        result = run(*args)
        expected = 2 if args[0] == "diff" else 1  # diff: 2 = cannot compare, as diff(1)
        assert result.exit_code == expected and "5000 digits" in result.output and "Traceback" not in result.output


def test_huge_integer_in_a_recipe_is_located():
    error = _only_error(VALID_RECIPE.replace("num_inference_steps: 4\n", "num_inference_steps: " + "9" * 5000 + "\n"))
    assert error.code == "QC104" and error.line == 3


# -- a big recipe compiles fast (the figure itself is in benchmarks/compile_speed.py) -----------------------

def test_two_thousand_rules_over_a_thousand_steps_compile():
    rules = "".join(f'  - {{name: r{i}, precision: {"native" if i % 2 else "fp8"}, steps: "{i % 997}-{i % 997 + 3}, all/7", '
                    f'layers: "{i % 37}-"}}\n' for i in range(2000))
    text = HEAD.replace("num_inference_steps: 4", "num_inference_steps: 1000") + "rules:\n" + rules
    start = time.perf_counter()
    result = compile_source(text, name="big.yaml")
    elapsed = time.perf_counter() - start
    assert result.plan is not None and result.plan.num_inference_steps == 1000 and len(result.plan.data["rules"]) == 2000
    assert elapsed < 20  # a generous bound against a return of the quadratic plan; the 2 s goal is benchmarked


# -- non-ASCII digits ------------------------------------------------------------------------------------

@pytest.mark.parametrize("selector", ["\u0661-\u0663", "\uff11", "0-\u0669", "first \u0663", "all/\uff12"])
def test_non_ascii_digits_in_selectors_are_refused(selector):
    error = _only_error(HEAD + f'rules:\n  - name: r\n    precision: native\n    steps: "{selector}"\n')
    assert error.code == "QC130" and "non-ASCII" in error.message and error.line == 15 and error.column > 12


# -- control characters ------------------------------------------------------------------------------------

@pytest.mark.parametrize("char", ["\x01", "\x7f", "\x1b"])
def test_yaml_control_characters_are_located(char):
    text = VALID_RECIPE.replace("family: wan2.2-i2v-a14b", f'family: "wan2.2{char}"')
    error = _only_error(text)
    lines = text.splitlines()
    line = next(n for n, row in enumerate(lines, 1) if char in row)
    assert (error.line, error.column) == (line, lines[line - 1].index(char) + 1)
    assert f"U+{ord(char):04X}" in error.message


# -- edited, re-hashed, inconsistent plans -------------------------------------------------------------------

INCONSISTENT = [
    (lambda d: d["tables"]["transformer"]["self"].__setitem__(0, d["tables"]["transformer"]["self"][0] + "\n"),
     r"\$.tables.transformer.self\[0\]"),
    (lambda d: d["tables"]["transformer"]["self"].__setitem__(1, "2" + d["tables"]["transformer"]["self"][1][1:]),
     r"\$.tables.transformer.self\[1\]"),
    (lambda d: d["expert_schedule"].__setitem__(2, "transformer_9"), r"\$.expert_schedule\[2\]: 'transformer_9' is not a component"),
    (lambda d: d["family"]["attention_kinds"]["self"].update(block_list="nope"), r"\$.family.attention_kinds.self.block_list"),
    (lambda d: d["numerics"].update(rotation_seed=2**64), r"\$.numerics.rotation_seed"),
    (lambda d: d["numerics"].update(rotation_seed=-1), r"\$.numerics.rotation_seed"),
    (lambda d: d["family"].update(reference_shapes={}), r"\$.family.reference_shapes"),
    (lambda d: d["family"]["reference_shapes"]["tokens"].update(video=-1), r"\$.family.reference_shapes.tokens.video"),
    (lambda d: d.update(num_inference_steps=4.0), r"\$.num_inference_steps: 4.0 is not of type 'integer'"),
    (lambda d: d["family"]["components"].append(copy.deepcopy(d["family"]["components"][0])), r"\$.family.components"),
    (lambda d: d["rules"][0].update(cells_changed=d["rules"][0]["cells_changed"] + 1), r"\$.rules\[0\].cells_changed"),
]


@pytest.mark.parametrize(("mutate", "where"), INCONSISTENT)
def test_rehashed_inconsistent_plans_are_refused_by_every_reader(mutate, where, tmp_path):
    data = _plan_dict()
    mutate(data)
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(_rehashed(data)))
    with pytest.raises(PlanError, match=where):
        load_plan(path)
    for args in (["show", str(path)], ["diff", str(path), str(path)], ["export", "--to", "vllm-omni", str(path)],
                 ["check", str(RECIPES_DIR / "wan22_i2v.yaml"), "--plan", str(path)]):
        result = run(*args)
        expected = 2 if args[0] == "diff" else 1  # diff: 2 = cannot compare, as diff(1)
        assert result.exit_code == expected and "Traceback" not in result.output, (args, result.output)


# -- paths that are not regular files -------------------------------------------------------------------------

@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "pipe.json"
    os.mkfifo(path)
    return path


def test_fifo_is_refused_without_being_opened(fifo):
    with pytest.raises(Exception, match="named pipe"):  # returns at once: opening a FIFO would block
        read_regular_file(fifo, max_bytes=10)
    with pytest.raises(PlanError, match="pipe.json: is a named pipe"):
        load_plan(fifo)
    error = compile_path(fifo).errors[0]
    assert error.code == "QC001" and "named pipe" in error.message
    for args in (["show", str(fifo)], ["lint", str(fifo)], [str(fifo), "-o", "-"],
                 ["check", str(RECIPES_DIR / "wan22_i2v.yaml"), "--plan", str(fifo)]):
        result = run(*args)
        assert result.exit_code == 1 and "named pipe" in result.output and "Traceback" not in result.output


def test_device_is_refused():
    assert compile_path("/dev/null").errors[0].message.startswith("is a character device")


# -- property test: mutated plans load or fail with PlanError, nothing else ------------------------------------

LEAVES = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False),
                   st.text(alphabet="01\n2x{layer}", max_size=8), st.just([]), st.just({}))


@pytest.mark.slow
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_rehashed_plans_load_or_raise_plan_error(data):
    plan = _plan_dict()
    node = plan
    path = []
    while isinstance(node, (dict, list)) and node and data.draw(st.booleans()):
        key = data.draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
        path.append(key)
        if not isinstance(node[key], (dict, list)):
            break
        node = node[key]
    if not path:
        return
    parent = plan
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = data.draw(LEAVES)
    try:
        loaded = load_plan(_rehashed(plan))
    except PlanError as exc:
        assert "$" in str(exc) or "plan_format" in str(exc)
        return
    for table in loaded.tables.values():  # accepted: then it is a consistent plan
        assert len(table) == loaded.num_inference_steps
        assert loaded.expert_schedule[0] in loaded.component_names
