"""A family with several block lists and open kinds, from a data file alone: lint, compile, show, diff, round-trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import qcompiler
from qcompiler.cli.main import cli
from qcompiler.compile.compiler import compile_source
from qcompiler.errors import FamilyError
from qcompiler.families import FAMILY_PATH_ENV, get_family
from qcompiler.plan.format import load_plan, write_plan
from qcompiler.stats import attention_flops, plan_cost

FAMILIES = Path(__file__).parents[1] / "fixtures" / "families"

RECIPE = """\
version: 1
family: made-up-dual-stream
num_inference_steps: 4
dtype: fp8_e4m3_per_block
fallback: error
attention_kinds: [joint, single, refiner]
default: fp8
rules:
  - name: edge-blocks
    layers: last 1
    precision: native
  - name: single-first
    block_lists: [single_transformer_blocks]
    layers: "0"
    steps: "0"
    precision: native
"""


@pytest.fixture(autouse=True)
def made_up_family(monkeypatch):
    monkeypatch.setenv(FAMILY_PATH_ENV, str(FAMILIES))


def test_family_accessors():
    family = get_family("made-up-dual-stream")
    assert family.kinds == ("joint", "refiner", "single")
    assert family.block_list_names == ("transformer_blocks", "single_transformer_blocks", "refiner_blocks")
    assert [family.num_layers("transformer", k) for k in family.kinds] == [3, 2, 5]
    assert family.module_path("transformer", "single", 4) == "single_transformer_blocks.4.attn"
    assert family.module_path("transformer", "refiner", 1) == "context_refiner.blocks.1.self_attn"
    assert family.heads("transformer", "joint") == (24, 128)
    assert family.heads("transformer", "refiner") == (8, 64)  # the kind's own heads
    assert family.call_tokens("joint") == (4096 + 512, 4096 + 512)
    assert family.call_tokens("refiner") == (512, 512)
    assert family.kinds_in(("refiner_blocks",)) == ("refiner",)
    assert get_family("made-up-dual-stream", "tiny").heads("transformer", "joint") == (2, 64)


def test_layers_resolve_per_block_list_and_block_lists_select_kinds():
    plan = qcompiler.compile_recipe_text(RECIPE)
    assert plan.plan_format == 2
    # `last 1` is the last block of each list; `block_lists` kept the second rule to the single-stream list
    assert plan.table("transformer", "joint") == ((True, True, False),) * 4
    assert plan.table("transformer", "refiner") == ((True, False),) * 4
    single = plan.table("transformer", "single")
    assert single[0] == (False, True, True, True, False)
    assert single[1:] == ((True, True, True, True, False),) * 3
    assert {r["name"]: dict(r["changed"]["transformer"]) for r in plan.data["rules"]} == {
        "edge-blocks": {"joint": 4, "single": 4, "refiner": 4},
        "single-first": {"single": 1},
    }


def test_flops_use_each_kinds_tokens_and_heads():
    plan = qcompiler.compile_recipe_text(RECIPE)
    family = plan.family
    per_call = {k: attention_flops(1, *family.heads("transformer", k)[:1], *family.call_tokens(k),
                                   family.heads("transformer", k)[1]) for k in family.kinds}
    total = 4 * sum(per_call[k] * family.num_layers("transformer", k) for k in family.kinds)  # no CFG
    assert plan_cost(plan).flops_total == pytest.approx(total)
    assert plan_cost(plan).calls_total == 4 * (3 + 5 + 2)


def test_unknown_block_list_is_located_qc122():
    text = RECIPE.replace("block_lists: [single_transformer_blocks]", "block_lists: [single_transformer_block]")
    errors = compile_source(text, name="r.yaml").errors
    assert [(e.code, e.line, e.column) for e in errors] == [("QC122", 13, 19)]
    assert "`single_transformer_block`" in errors[0].message and "did you mean `single_transformer_blocks`" in errors[0].message
    assert "transformer_blocks, single_transformer_blocks, refiner_blocks" in errors[0].hint


def test_unknown_kind_is_checked_against_the_family():
    errors = compile_source(RECIPE.replace("[joint, single, refiner]", "[joint, self]"), name="r.yaml").errors
    assert [(e.code, e.line) for e in errors] == [("QC121", 6)]
    assert "no attention kind `self`" in errors[0].message and "joint, refiner, single" in errors[0].hint


def test_a_layer_past_a_short_list_is_out_of_range():
    text = RECIPE.replace('layers: "0"\n    steps: "0"', 'layers: "4"\n    steps: "0"').replace(
        "block_lists: [single_transformer_blocks]", "attention_kinds: [joint, single]")
    errors = compile_source(text, name="r.yaml").errors
    assert [e.code for e in errors] == ["QC131"] and "3 layers" in errors[0].message


def test_lint_show_diff_and_round_trip(tmp_path):
    recipe = tmp_path / "made_up.yaml"
    recipe.write_text(RECIPE)
    runner = CliRunner()
    lint = runner.invoke(cli, ["lint", str(recipe)])
    assert lint.exit_code == 0, lint.output
    plan_path = tmp_path / "made_up.plan.json"
    assert runner.invoke(cli, [str(recipe), "-o", str(plan_path)]).exit_code == 0
    plan = load_plan(plan_path)
    assert plan == qcompiler.compile_recipe_text(RECIPE.encode(), name=str(recipe))
    again = tmp_path / "again.plan.json"
    write_plan(plan, again)
    assert again.read_bytes() == plan_path.read_bytes()

    show = runner.invoke(cli, ["show", str(plan_path)])
    assert show.exit_code == 0, show.output
    assert "transformer / transformer_blocks / joint-attention" in show.output
    assert "transformer / single_transformer_blocks / single-attention" in show.output
    assert "  step    0  .###.    3/5 fp8" in show.output
    only = runner.invoke(cli, ["show", str(plan_path), "--kind", "refiner"])
    assert "refiner-attention" in only.output and "joint-attention" not in only.output
    bad = runner.invoke(cli, ["show", str(plan_path), "--kind", "self"])
    assert bad.exit_code == 2 and "kinds: joint, refiner, single" in bad.output

    other = tmp_path / "other.yaml"
    other.write_text(RECIPE.replace('layers: "0"', 'layers: "1"'))
    diff = runner.invoke(cli, ["diff", str(plan_path), str(other)])
    assert diff.exit_code == 1
    assert diff.output.splitlines() == [
        "transformer/single step 0: native -> fp8 layers 0; fp8 -> native layers 1",
    ]


def test_families_lists_block_lists():
    result = CliRunner().invoke(cli, ["families"])
    assert "3 transformer_blocks + 5 single_transformer_blocks + 2 refiner_blocks, 24x128" in result.output
    assert "kinds: joint (transformer_blocks), refiner (refiner_blocks), single (single_transformer_blocks)" in result.output


def test_a_kind_in_a_block_list_a_component_lacks_is_refused(tmp_path, monkeypatch):
    data = json.loads((FAMILIES / "dual_stream.json").read_text())
    data["name"] = "broken-lists"
    data["attention_kinds"]["joint"]["block_list"] = "double_blocks"
    (tmp_path / "broken.json").write_text(json.dumps(data))
    monkeypatch.setenv(FAMILY_PATH_ENV, str(tmp_path))
    with pytest.raises(FamilyError, match=r"\$.attention_kinds.joint.block_list: kind 'joint' lives in block list "
                                          r"'double_blocks', which component 'transformer'"):
        get_family("broken-lists")


def test_suggest_from_a_sensitivity_file_of_several_block_lists():
    from qcompiler.suggest.cover import Budget, suggest_recipe, verify_suggestion
    from tests.compiler.synthetic import synthetic_sensitivity

    sensitivity = synthetic_sensitivity(steps=5, seed=7, family_name="made-up-dual-stream")
    components = sensitivity.data["family"]["components"]
    assert components == [{"name": "transformer", "num_layers": 5,
                           "layers": {"joint": 3, "refiner": 2, "single": 5}}]
    assert sensitivity.num_layers("transformer", "refiner") == 2
    for budget in (Budget("min_cos", 0.993), Budget("fp8_flop_share", 0.5)):
        suggestion = suggest_recipe(sensitivity, budget)
        plan = qcompiler.compile_recipe_text(suggestion.text, variant="tiny")
        verify_suggestion(suggestion, sensitivity, dict(plan.tables))
        assert suggestion.fp8_cells


@pytest.mark.parametrize(("change", "message"), [
    ({"family_format": 3}, r"family_format 3 is not supported \(this qcompile reads formats 1 and 2"),
    ({"family_format": [2]}, r"family_format \[2\] is not supported"),
])
def test_unknown_family_formats_are_refused(tmp_path, monkeypatch, change, message):
    data = {**json.loads((FAMILIES / "dual_stream.json").read_text()), **change, "name": "odd-format"}
    (tmp_path / "odd.json").write_text(json.dumps(data))
    monkeypatch.setenv(FAMILY_PATH_ENV, str(tmp_path))
    with pytest.raises(FamilyError, match=message):
        get_family("odd-format")


def test_diff_refuses_plans_laid_out_over_different_block_lists(tmp_path, monkeypatch):
    first = qcompiler.compile_recipe_text(RECIPE)
    data = json.loads((FAMILIES / "dual_stream.json").read_text())
    data["components"][0]["block_lists"][1]["length"] = 6  # the family file changed between the two compiles
    (tmp_path / "families").mkdir()
    (tmp_path / "families" / "changed.json").write_text(json.dumps(data))
    monkeypatch.setenv(FAMILY_PATH_ENV, str(tmp_path / "families"))
    second = qcompiler.compile_recipe_text(RECIPE)
    write_plan(first, tmp_path / "a.plan.json")
    write_plan(second, tmp_path / "b.plan.json")
    result = CliRunner().invoke(cli, ["diff", str(tmp_path / "a.plan.json"), str(tmp_path / "b.plan.json")])
    assert result.exit_code == 2  # cannot compare (diff(1)'s "trouble")
    assert "cannot compare cell by cell" in result.stderr
    assert "single x 5 layers" in result.stderr and "single x 6 layers" in result.stderr
