"""The README's main-job path: compile a shipped recipe for the tiny variant and run `python -m runtime.demo`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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


@pytest.mark.slow
def test_demo_under_torchrun_ulysses_2_prints_each_ranks_table(tmp_path):
    """The README's multi-card command, on CPU (gloo): each rank's executed table, then the combined one."""
    plan_path = tmp_path / "plan.json"
    write_plan(compile_recipe_file(RECIPES_DIR / "wan22_i2v.yaml", variant="tiny"), plan_path)
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([str(torchrun), "--nproc-per-node", "2", "-m", "runtime.demo", str(plan_path),
                           "--ulysses", "2"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "[rank 0] plan" in out and "[rank 1] plan" in out
    assert "rank 0 of 2 (ulysses=2)" in out and "rank 1 of 2 (ulysses=2)" in out
    assert "2 ranks combined (ulysses=2)" in out
    assert out.count("executed table == plan: yes") == 3
