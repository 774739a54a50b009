"""Resolution, precedence, provenance, determinism, hashing and atomic writes of plans."""

from __future__ import annotations

import json
import os

import pytest

import qcompiler
from qcompiler.errors import PlanError, RecipeError
from qcompiler.plan.format import Plan, content_sha256, load_plan, write_plan
from tests.conftest import VALID_RECIPE


def test_precedence_last_matching_rule_wins():
    # The worked example of docs/recipes.md: default fp8, steps 0-1 native, then layer 5 fp8 again.
    text = VALID_RECIPE.split("rules:")[0] + """rules:
  - name: early-native
    steps: "0-1"
    precision: native
  - name: layer5-back-on
    layers: "5"
    steps: "0"
    precision: fp8
"""
    plan = qcompiler.compile_recipe_text(text)
    table = plan.table("transformer", "self")
    assert table[0][5] is True and table[0][4] is False
    assert table[1][5] is False and all(table[2]) and all(table[3])
    rules = {r["name"]: r for r in plan.data["rules"]}
    assert rules["early-native"]["cells_changed"] == 2 * 2 * 40
    assert rules["layer5-back-on"]["cells_changed"] == 2
    assert rules["layer5-back-on"]["changed"] == {"transformer": {"self": 1}, "transformer_2": {"self": 1}}


def test_out_of_scope_cells_stay_native():
    plan = qcompiler.compile_recipe_text(VALID_RECIPE)
    assert not any(any(row) for row in plan.table("transformer", "cross"))
    assert plan.table("transformer", "self")[1] == (False,) + (True,) * 39


def test_rule_that_changes_nothing_warns_and_strict_refuses():
    text = VALID_RECIPE + "  - name: again\n    steps: \"0\"\n    precision: native\n"
    plan = qcompiler.compile_recipe_text(text)
    assert plan is not None
    with pytest.raises(RecipeError) as info:
        qcompiler.compile_recipe_text(text, strict=True)
    warning = info.value.diagnostics[0]
    assert warning.code == "QC201" and "`again` changes nothing" in warning.message and warning.line == 19


def test_all_native_plan_warns():
    from qcompiler.compile.compiler import compile_source

    result = compile_source(VALID_RECIPE.replace("default: fp8", "default: native").split("rules:")[0], name="n.yaml")
    assert [d.code for d in result.warnings] == ["QC202"]
    assert result.plan is not None and not result.plan.uses_quantized()


def test_same_recipe_same_bytes(repo_root):
    first = qcompiler.compile_recipe_file(repo_root / "recipes/wan22_i2v.yaml").to_json()
    second = qcompiler.compile_recipe_file(repo_root / "recipes/wan22_i2v.yaml").to_json()
    assert first == second
    assert first == (repo_root / "recipes/wan22_i2v.plan.json").read_text(encoding="utf-8")


def test_steps_override_recomputes_percentages(repo_root):
    plan = qcompiler.compile_recipe_file(repo_root / "recipes/wan22_i2v.yaml", steps=40)
    table = plan.table("transformer", "self")
    native_steps = [step for step, row in enumerate(table) if not any(row)]
    assert native_steps == [0, 1, 2, 3, 4, 5, 34, 35, 36, 37, 38, 39]  # ceil(15% of 40) = 6 at each end
    assert plan.num_inference_steps == 40


def test_variant_keeps_structure_and_changes_widths():
    plan = qcompiler.compile_recipe_text(VALID_RECIPE, variant="tiny")
    assert plan.variant == "tiny"
    family = plan.family
    assert [(family.num_layers(c.name, "self"), c.num_heads, c.head_dim) for c in family.components] == [(40, 2, 64), (40, 2, 64)]
    real = qcompiler.compile_recipe_text(VALID_RECIPE)
    assert real.tables == plan.tables


def test_expert_schedule_follows_the_boundary():
    plan = qcompiler.compile_recipe_text(VALID_RECIPE, steps=40)
    schedule = plan.expert_schedule
    switch = schedule.index("transformer_2")
    assert set(schedule[:switch]) == {"transformer"} and set(schedule[switch:]) == {"transformer_2"}


def test_hash_detects_an_edited_plan(tmp_path):
    plan = qcompiler.compile_recipe_text(VALID_RECIPE)
    data = plan.to_dict()
    rows = data["tables"]["transformer"]["self"]
    rows[1] = "1" * 40  # flip layer 0 of step 1 to fp8 by hand
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(PlanError, match="edited after compiling"):
        load_plan(path)


def test_compiler_version_is_not_part_of_the_meaning():
    data = qcompiler.compile_recipe_text(VALID_RECIPE).to_dict()
    data["compiler"]["version"] = "9.9.9"
    assert content_sha256(data) == data["content_sha256"]
    assert load_plan(data).content_hash == data["content_sha256"]


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda d: d.update(plan_format=3), "plan_format 3 is not supported"),
        (lambda d: d.pop("tables"), "schemas/plan.schema.json"),
        (lambda d: d["tables"]["transformer"]["self"].pop(), "3 rows for 4 steps"),
    ],
)
def test_malformed_plans_are_refused(mutate, fragment):
    data = qcompiler.compile_recipe_text(VALID_RECIPE).to_dict()
    mutate(data)
    with pytest.raises(PlanError, match=fragment):
        load_plan(data)


def test_plan_files_that_are_not_plans(tmp_path):
    (tmp_path / "bad.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(PlanError, match=r"bad.json:1:2: not valid JSON"):
        load_plan(tmp_path / "bad.json")
    with pytest.raises(PlanError, match="no such plan file"):
        load_plan(tmp_path / "absent.json")
    with pytest.raises(PlanError, match="is a directory"):
        load_plan(tmp_path)


def test_plans_are_immutable():
    plan = qcompiler.compile_recipe_text(VALID_RECIPE)
    with pytest.raises(TypeError):
        plan.data["fallback"] = "native"  # type: ignore[index]
    with pytest.raises(TypeError):
        plan.tables[("transformer", "self")] = ()  # type: ignore[index]
    assert isinstance(plan.table("transformer", "self"), tuple)


def test_interrupted_write_keeps_the_old_plan(tmp_path, monkeypatch):
    path = tmp_path / "plan.json"
    plan = qcompiler.compile_recipe_text(VALID_RECIPE)
    write_plan(plan, path)
    before = path.read_bytes()

    def interrupted(src, dst):
        raise KeyboardInterrupt  # the moment between writing the temp file and renaming it

    monkeypatch.setattr(os, "replace", interrupted)
    other = qcompiler.compile_recipe_text(VALID_RECIPE.replace("default: fp8", "default: native").split("rules:")[0])
    with pytest.raises(KeyboardInterrupt):
        write_plan(other, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]  # no temp file left behind
    assert isinstance(load_plan(path), Plan)


def test_written_plans_get_ordinary_permissions(tmp_path):
    path = tmp_path / "plan.json"
    write_plan(qcompiler.compile_recipe_text(VALID_RECIPE), path)
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    path.chmod(0o640)
    write_plan(qcompiler.compile_recipe_text(VALID_RECIPE), path)
    assert path.stat().st_mode & 0o777 == 0o640
