"""Format-1 plans and family files keep working: load (same hash), show, export, diff and check as before.

tests/fixtures/plans_v1/ holds plans written by the format-1 compiler (full and `--variant tiny`) and, under
expected/, what that compiler's `show` and exports printed for them (make_expected.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from qcompiler.cli.main import cli
from qcompiler.compile.compiler import compile_path
from qcompiler.families import FAMILY_PATH_ENV, get_family
from qcompiler.plan.format import load_plan
from qcompiler.stats import plan_cost

ROOT = Path(__file__).parents[2]
V1 = ROOT / "tests" / "fixtures" / "plans_v1"
PLANS = sorted(p.name.removesuffix(".plan.json") for p in V1.glob("*.plan.json"))
sys.path.insert(0, str(V1))
from make_expected import COMMANDS  # noqa: E402

sys.path.remove(str(V1))


def _recipe(stem: str) -> Path:
    return ROOT / "recipes" / (stem.removesuffix(".tiny") + ".yaml")


def test_there_are_full_and_tiny_fixtures_of_every_shipped_recipe():
    # Format 1 knew one block list, `blocks`, and the Wan families; the families of issue 20 exist in format 2
    # only (SkyReels-V2 has Wan's `blocks` too).
    shipped = sorted(p.stem for p in (ROOT / "recipes").glob("*.yaml")
                     if (plan := load_plan(p.with_name(p.stem + ".plan.json"))).family_name.startswith("wan")
                     and all(c.block_list_names == ("blocks",) for c in plan.family.components))
    assert len(shipped) == 6
    assert PLANS == sorted([*shipped, *(s + ".tiny" for s in shipped)])


@pytest.mark.parametrize("stem", PLANS)
def test_v1_plan_loads_with_its_hash_and_a_typed_family(stem):
    path = V1 / f"{stem}.plan.json"
    stored = json.loads(path.read_text())
    plan = load_plan(path)
    assert plan.plan_format == 1 and stored["plan_format"] == 1
    assert plan.content_hash == stored["content_sha256"]
    assert plan.to_json() == path.read_text()  # the data stays as stored
    family = get_family(plan.family_name, plan.variant)
    assert plan.family.structure() == family.structure()  # converted in memory to what format 2 records
    for component in plan.component_names:
        for kind in plan.family.kinds:
            assert len(plan.table(component, kind)[0]) == plan.family.num_layers(component, kind)


@pytest.mark.parametrize("stem", PLANS)
def test_v1_plan_shows_and_exports_exactly_as_the_format_1_compiler(stem, monkeypatch):
    monkeypatch.chdir(ROOT)  # the recorded outputs name the plan by its path from the repository root
    expected = json.loads((V1 / "expected" / f"{stem}.json").read_text())
    runner = CliRunner()
    for name, args in COMMANDS.items():
        result = runner.invoke(cli, [*args, f"tests/fixtures/plans_v1/{stem}.plan.json"])
        got = {"exit_code": result.exit_code, "stdout": result.stdout, "stderr": result.stderr}
        assert got == expected[name], f"{stem}: {name}"


@pytest.mark.parametrize("stem", PLANS)
def test_v1_plan_equals_its_format_2_recompile(stem):
    old = load_plan(V1 / f"{stem}.plan.json")
    new = compile_path(_recipe(stem), variant=old.variant).plan
    assert new.plan_format == 2
    assert new.tables == old.tables and new.expert_schedule == old.expert_schedule
    assert plan_cost(new) == plan_cost(old)


@pytest.mark.parametrize("stem", [s for s in PLANS if not s.endswith(".tiny")])
def test_diff_of_a_v1_plan_and_its_recipe(stem):
    result = CliRunner().invoke(cli, ["diff", str(V1 / f"{stem}.plan.json"), str(_recipe(stem))])
    assert result.exit_code == 0 and result.output == "plans are equal: same tables and numerics\n"


def test_diff_of_a_tiny_v1_plan_and_its_format_2_plan(tmp_path):
    new = compile_path(_recipe("wan22_i2v"), variant="tiny").plan
    target = tmp_path / "new.plan.json"
    target.write_text(new.to_json())
    result = CliRunner().invoke(cli, ["diff", str(V1 / "wan22_i2v.tiny.plan.json"), str(target)])
    assert result.exit_code == 0 and result.output == "plans are equal: same tables and numerics\n"


def test_check_names_a_v1_plan_and_the_refresh_command(tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["check", str(_recipe("wan22_i2v")), "--plan", str(V1 / "wan22_i2v.tiny.plan.json")])
    assert result.exit_code == 1
    assert "is a format-1 plan (this qcompile writes format 2" in result.stderr
    assert f"fix: qcompile {_recipe('wan22_i2v')} --variant tiny -o {V1 / 'wan22_i2v.tiny.plan.json'}" in result.stderr
    full = runner.invoke(cli, ["check", str(_recipe("wan21_t2v_14b")), "--plan", str(V1 / "wan21_t2v_14b.plan.json")])
    assert full.exit_code == 1 and f"fix: qcompile {_recipe('wan21_t2v_14b')} -o " in full.stderr
    copy = tmp_path / "old.plan.json"
    copy.write_bytes((V1 / "wan22_i2v.tiny.plan.json").read_bytes())
    written = runner.invoke(cli, ["check", str(_recipe("wan22_i2v")), "--plan", str(copy), "--write"])
    assert written.exit_code == 0
    refreshed = load_plan(copy)
    assert refreshed.plan_format == 2 and refreshed.variant == "tiny"
    assert refreshed.tables == load_plan(V1 / "wan22_i2v.tiny.plan.json").tables
    again = runner.invoke(cli, ["check", str(_recipe("wan22_i2v")), "--plan", str(copy)])
    assert again.exit_code == 0 and "is up to date" in again.output  # checked against the recipe's tiny variant


def test_shipped_plans_are_format_2():
    for path in (ROOT / "recipes").glob("*.plan.json"):
        assert json.loads(path.read_text())["plan_format"] == 2, path


def test_a_format_1_family_file_still_loads(monkeypatch):
    monkeypatch.setenv(FAMILY_PATH_ENV, str(ROOT / "tests" / "fixtures" / "families_v1"))
    old = get_family("my-format1-family")
    builtin = get_family("wan2.1-t2v-1.3b")
    assert {**old.structure(), "name": None} == {**builtin.structure(), "name": None}
    assert old.kind("cross").description == builtin.kind("cross").description
    assert get_family("my-format1-family", "tiny").heads("transformer", "self") == (2, 64)


def test_a_format_1_family_file_whose_modules_are_not_one_block_list_is_refused(tmp_path, monkeypatch):
    from qcompiler.errors import FamilyError

    data = json.loads((ROOT / "tests" / "fixtures" / "families_v1" / "my_format1_family.json").read_text())
    data["attention_kinds"]["cross"]["module"] = "other_blocks.{layer}.attn2"
    (tmp_path / "f.json").write_text(json.dumps(data))
    monkeypatch.setenv(FAMILY_PATH_ENV, str(tmp_path))
    with pytest.raises(FamilyError, match=r"\$.attention_kinds: format-1 kinds live in one block list"):
        get_family("my-format1-family")
