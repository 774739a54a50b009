"""The qcompile command line through click's CliRunner: output, files and exit codes."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from qcompiler.cli.main import cli
from qcompiler.plan.format import load_plan
from tests.conftest import VALID_RECIPE


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_compile_writes_the_plan_and_a_summary(tmp_path, repo_root):
    out = tmp_path / "plan.json"
    result = run(str(repo_root / "recipes/wan22_i2v.yaml"), "-o", str(out))
    assert result.exit_code == 0, result.output
    plan = load_plan(out)
    assert plan.family_name == "wan2.2-i2v-a14b" and plan.num_inference_steps == 4
    assert "of attention calls" in result.output and plan.content_hash[:12] in result.output


def test_compile_steps_and_variant_options(tmp_path, repo_root):
    out = tmp_path / "plan.json"
    assert run(str(repo_root / "recipes/wan22_i2v.yaml"), "--steps", "8", "--variant", "tiny", "-o", str(out)).exit_code == 0
    plan = load_plan(out)
    assert plan.num_inference_steps == 8 and plan.variant == "tiny"


def test_compile_to_stdout_is_the_plan_json(repo_root):
    result = CliRunner().invoke(cli, [str(repo_root / "recipes/wan22_i2v.yaml")])
    assert result.exit_code == 0
    assert json.loads(result.stdout)["family"]["name"] == "wan2.2-i2v-a14b"


def test_lint_clean_exit_0(repo_root):
    result = run("lint", str(repo_root / "recipes"))
    assert result.exit_code == 0, result.output


def test_lint_text_shows_source_line_caret_and_hint(write_recipe):
    path = write_recipe(VALID_RECIPE.replace('steps: "0, last 1"', "steps: 10:20"))
    result = run("lint", str(path))
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[0] == f"{path}:14:12: error[QC101] YAML 1.1 reads unquoted 10:20 as the base-60 number 620"
    assert lines[1] == "  14 |     steps: 10:20"
    assert lines[2] == " " * 18 + "^"
    assert lines[3].startswith("  hint: ")


def test_lint_json_and_github_formats(write_recipe):
    path = write_recipe(VALID_RECIPE.replace("default: fp8", "defualt: fp8"))
    result = CliRunner().invoke(cli, ["lint", "--format", "json", str(path)])
    findings = json.loads(result.stdout)
    assert result.exit_code == 1
    assert {f["code"] for f in findings} == {"QC110", "QC113"}
    github = run("lint", "--format", "github", str(path))
    assert github.exit_code == 1
    assert f"::error file={path},line=11,col=1,title=qcompile QC110::unknown key `defualt` (hint: did you mean `default`?)" in github.output


def test_lint_warning_exit_0_strict_exit_1(write_recipe):
    path = write_recipe(VALID_RECIPE + '  - name: again\n    steps: "0"\n    precision: native\n')
    assert run("lint", str(path)).exit_code == 0
    assert run("lint", "--strict", str(path)).exit_code == 1


def test_lint_usage_errors_exit_2(tmp_path):
    assert run("lint").exit_code == 2
    assert run("lint", str(tmp_path)).exit_code == 2  # a folder with no recipes
    assert run("lint", "--format", "xml", "x.yaml").exit_code == 2


def test_show_heatmap_and_shares(repo_root):
    result = run("show", str(repo_root / "recipes/wan22_i2v.plan.json"))
    assert result.exit_code == 0, result.output
    assert "transformer / self-attention" in result.output
    assert "  step    1  .######################################.   38/40 fp8" in result.output
    # 4 steps x 40 layers x 2 kinds x 2 CFG branches = 640 calls. FP8: steps 1 (transformer) and 2
    # (transformer_2), 38 self-attention layers each (blocks 0 and 39 native), x 2 branches = 152.
    assert "152/640 attention calls = 23.8%" in result.output


def test_show_accepts_a_recipe_too(repo_root):
    assert run("show", str(repo_root / "recipes/wan22_t2v.yaml")).exit_code == 0


def test_diff_reports_changed_cells(tmp_path, repo_root, write_recipe):
    other = write_recipe(VALID_RECIPE.replace('layers: "0"', 'layers: "0-2"'), "other.yaml")
    base = write_recipe(VALID_RECIPE, "base.yaml")
    result = run("diff", str(base), str(other))
    assert result.exit_code == 1
    assert "transformer/self step 1: fp8 -> native layers 1-2" in result.output
    assert run("diff", str(base), str(base)).exit_code == 0
    mismatch = run("diff", str(base), str(repo_root / "recipes/wan22_t2v.yaml"))
    assert mismatch.exit_code == 2 and "cannot compare" in mismatch.output


def test_check_detects_stale_and_missing_plans(tmp_path, repo_root):
    shutil.copy(repo_root / "recipes/wan22_i2v.yaml", tmp_path / "r.yaml")
    assert run("check", str(tmp_path / "r.yaml")).exit_code == 1  # missing plan
    assert run("check", "--write", str(tmp_path / "r.yaml")).exit_code == 0
    assert run("check", str(tmp_path / "r.yaml")).exit_code == 0
    recipe = (tmp_path / "r.yaml").read_text().replace('layers: "0, 39"\n', 'layers: "0-1, 39"\n')
    (tmp_path / "r.yaml").write_text(recipe)
    result = run("check", str(tmp_path / "r.yaml"))
    assert result.exit_code == 1 and "is stale" in result.output and "fix: qcompile" in result.output


def test_shipped_plans_are_not_stale(repo_root):
    result = run("check", str(repo_root / "recipes"))
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("which", ["recipe", "plan", "family"])
def test_schema_command(which):
    result = run("schema", which)
    assert result.exit_code == 0 and json.loads(result.output)["$schema"].endswith("2020-12/schema")


def test_families_lists_every_family():
    result = run("families")
    for name in ("wan2.2-i2v-a14b", "wan2.2-t2v-a14b", "wan2.2-ti2v-5b", "wan2.1-t2v-14b", "wan2.1-t2v-1.3b", "wan2.1-i2v-14b"):
        assert name + ":" in result.output


def test_missing_plan_file_is_a_clear_error(tmp_path):
    result = run("show", str(tmp_path / "nope.json"))
    assert result.exit_code == 1 and "no such plan file" in result.output


def test_console_module_compiles_the_plain_form(tmp_path, repo_root):
    import subprocess
    import sys

    out = tmp_path / "plan.json"
    done = subprocess.run([sys.executable, "-m", "qcompiler.cli.main", "recipes/wan22_i2v.yaml", "-o", str(out)],
                          capture_output=True, text=True, cwd=repo_root)
    assert done.returncode == 0, done.stderr
    assert load_plan(out).family_name == "wan2.2-i2v-a14b"
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("args", [["x.yaml", "--steps", "0"], ["x.yaml", "-o"], ["x.yaml", "--format", "xml"],
                                  ["a.yaml", "b.yaml"], ["--steps", "4"]])
def test_click_reports_usage_errors_of_the_compile_form(args):
    result = run(*args)
    assert result.exit_code == 2 and "Error:" in result.output and "Traceback" not in result.output


def test_unwritable_output_is_one_clear_error(tmp_path, repo_root):
    result = run(str(repo_root / "recipes/wan22_i2v.yaml"), "-o", str(tmp_path / "no" / "plan.json"))
    assert result.exit_code == 1
    assert f"error: {tmp_path / 'no' / 'plan.json'}: No such file or directory" in result.output
