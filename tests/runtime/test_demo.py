"""The README's main-job path: compile a shipped recipe for the tiny variant and run `python -m runtime.demo`."""

from __future__ import annotations

from qcompiler import compile_recipe_file
from qcompiler.plan.format import write_plan
from runtime.demo import main
from tests.conftest import RECIPES_DIR


def test_demo_runs_a_shipped_recipe_and_shows_the_executed_table_equal_to_the_plan(tmp_path, capsys):
    plan_path = tmp_path / "plan.json"
    write_plan(compile_recipe_file(RECIPES_DIR / "wan22_i2v.yaml", variant="tiny"), plan_path)
    assert main([str(plan_path)]) == 0
    out = capsys.readouterr().out
    assert "executed table == plan: yes" in out
    assert "observed transformer transformer transformer_2 transformer_2" in out
    assert "reference: " in out and "cosine similarity 0.99" in out and "PSNR" in out


def test_demo_refuses_a_plan_for_the_real_model_with_a_fix(tmp_path, capsys):
    plan_path = tmp_path / "plan.json"
    write_plan(compile_recipe_file(RECIPES_DIR / "wan22_i2v.yaml"), plan_path)
    assert main([str(plan_path)]) == 1
    assert "--variant tiny" in capsys.readouterr().err
