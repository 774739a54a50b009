"""Issue 18: hostile files (diff of unlike plans, huge or unknown sensitivity files, rule names ending in a line
break, truncated recipes, stale temp files) and what a new user hits first with lint and diff."""

from __future__ import annotations

import copy
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

import qcompiler
from qcompiler.cli.main import cli
from qcompiler.compile.compiler import compile_source
from qcompiler.fileio import TEMP_MARKER, remove_stale_temp_files, write_text_atomically
from qcompiler.plan.format import content_sha256
from qcompiler.recipe.schema import MAX_STEPS
from tests.compiler.synthetic import synthetic_sensitivity
from tests.conftest import RECIPES_DIR, REPO_ROOT, VALID_RECIPE


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def _plan_dict(**compile_args) -> dict:
    return qcompiler.compile_recipe_text(VALID_RECIPE, **compile_args).to_dict()


def _write(path, data: dict):
    data["content_sha256"] = content_sha256(data)
    path.write_text(json.dumps(data), encoding="utf-8")
    return str(path)


# -- diff -------------------------------------------------------------------------------------------------------

def test_diff_of_plans_whose_attention_kinds_differ_exits_2_without_traceback(tmp_path):
    data = _plan_dict()
    other = copy.deepcopy(data)
    del other["family"]["attention_kinds"]["cross"]
    for planes in other["tables"].values():
        planes.pop("cross")
    for rule in other["rules"]:
        for planes in rule["changed"].values():
            rule["cells_changed"] -= planes.pop("cross", 0)
    a, b = _write(tmp_path / "a.json", data), _write(tmp_path / "b.json", other)
    for first, second in ((a, b), (b, a)):
        result = run("diff", first, second)
        assert result.exit_code == 2, result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
        assert "cannot compare cell by cell" in result.output
        assert "cross x 40 layers, self x 40 layers" in result.output and "transformer: self x 40 layers" in result.output


def test_diff_of_plans_whose_layer_counts_differ_exits_2_without_traceback(tmp_path):
    data = _plan_dict()
    other = copy.deepcopy(data)
    other["family"]["components"][0]["block_lists"][0]["length"] = 3
    other["tables"]["transformer"] = {kind: [row[:3] for row in rows] for kind, rows in other["tables"]["transformer"].items()}
    other["rules"] = []
    result = run("diff", _write(tmp_path / "a.json", data), _write(tmp_path / "b.json", other))
    assert result.exit_code == 2 and result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "transformer: cross x 40 layers, self x 40 layers" in result.output
    assert "transformer: cross x 3 layers, self x 3 layers" in result.output


def test_diff_of_two_families_says_full_size_and_exits_2(tmp_path):
    result = run("diff", str(RECIPES_DIR / "wan22_i2v.yaml"), str(RECIPES_DIR / "wan22_t2v.yaml"))
    assert result.exit_code == 2
    assert "None" not in result.output and "(full-size)" in result.output


def test_diff_of_tiny_and_full_size_plans_names_both(tmp_path):
    full = _write(tmp_path / "full.json", _plan_dict())
    tiny = _write(tmp_path / "tiny.json", _plan_dict(variant="tiny"))
    result = run("diff", full, tiny)
    assert result.exit_code == 2 and "None" not in result.output
    assert "(full-size)" in result.output and "(tiny variant)" in result.output


def test_diff_exit_status_is_0_equal_1_differ_2_cannot_compare(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(VALID_RECIPE)
    other = tmp_path / "other.yaml"
    other.write_text(VALID_RECIPE.replace('layers: "0"', 'layers: "0-2"'))
    assert run("diff", str(base), str(base)).exit_code == 0
    assert run("diff", str(base), str(other)).exit_code == 1
    assert run("diff", str(base), str(tmp_path / "missing.json")).exit_code == 2
    broken = tmp_path / "broken.yaml"
    broken.write_text(VALID_RECIPE.replace("default: fp8", "default: fp9"))
    assert run("diff", str(base), str(broken)).exit_code == 2


# -- suggest ----------------------------------------------------------------------------------------------------

def _sensitivity(tmp_path, mutate) -> str:
    data = json.loads(json.dumps(dict(synthetic_sensitivity(steps=4, seed=0).data)))
    mutate(data)
    path = tmp_path / "sens.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_suggest_refuses_a_trillion_steps_at_once(tmp_path):
    sens = _sensitivity(tmp_path, lambda d: d.update(num_inference_steps=10**12))
    start = time.perf_counter()
    result = run("suggest", sens, "--min-cos", "0.99", "-o", str(tmp_path / "r.yaml"))
    assert time.perf_counter() - start < 10
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "sens.json" in result.output and "num_inference_steps" in result.output and f"at most {MAX_STEPS}" in result.output
    assert not (tmp_path / "r.yaml").exists()


def test_suggest_with_an_unknown_family_names_the_input_file(tmp_path):
    sens = _sensitivity(tmp_path, lambda d: d["family"].update(name="wan9-nothing"))
    out = tmp_path / "r.yaml"
    result = run("suggest", sens, "--min-cos", "0.99", "-o", str(out))
    assert result.exit_code == 1
    assert "internal error" not in result.output and "unknown model family" in result.output
    assert "sens.json" in result.output and "r.yaml" not in result.output and not out.exists()


def test_suggest_with_another_layer_structure_names_the_input_file(tmp_path):
    sens = _sensitivity(tmp_path, lambda d: d["family"]["components"][0].update(num_layers=10**9))
    result = run("suggest", sens, "--min-cos", "0.99", "-o", str(tmp_path / "r.yaml"))
    assert result.exit_code == 1 and "internal error" not in result.output
    assert "sens.json: $.family.components" in result.output


# -- recipes: names, truncation, staged errors, QC121 -----------------------------------------------------------

def test_rule_name_ending_in_a_line_break_is_refused_at_the_name():
    text = VALID_RECIPE.replace("- name: edge-steps", "- name: |\n      edge-steps")
    assert "name: |" in text
    result = compile_source(text, name="r.yaml")
    assert result.plan is None
    error = next(d for d in result.errors if "line break" in d.message)
    assert error.code == "QC114" and text.splitlines()[error.line - 1].strip().startswith("- name: |")


@pytest.mark.parametrize("cut", [0.3, 0.5, 0.77, 0.95, 0.999])
def test_truncated_recipe_errors_point_inside_the_file(cut):
    text = VALID_RECIPE[: int(len(VALID_RECIPE) * cut)]
    lines = text.splitlines()
    for diagnostic in compile_source(text, name="r.yaml").diagnostics:
        if diagnostic.line:
            assert diagnostic.line <= len(lines), (diagnostic, len(lines))
            assert diagnostic.column <= len(lines[diagnostic.line - 1]) + 1


def test_unterminated_flow_list_at_the_end_is_located_on_the_last_line():
    text = VALID_RECIPE.split("rules:")[0] + "rules: [\n"
    error = compile_source(text, name="r.yaml").errors[0]
    assert error.code == "QC005" and error.line == len(text.splitlines())


def test_independent_errors_are_reported_in_one_run():
    text = (VALID_RECIPE.replace("default: fp8", "default: yes")
            .replace('layers: "0"', 'layers: 10:20')
            .replace("fallback: error", "fallback: error\nfallback: native")
            .replace("dtype: fp8_e4m3_per_block", "dtype: fp9"))
    codes = sorted(d.code for d in compile_source(text, name="r.yaml").errors)
    assert codes == ["QC006", "QC101", "QC102", "QC112"], codes


def test_semantic_errors_are_reported_next_to_schema_errors():
    text = VALID_RECIPE.replace("default: fp8", "default: fp9").replace('steps: "0, last 1"', 'steps: "0-99"')
    assert text.count('"0-99"') == 1
    codes = sorted(d.code for d in compile_source(text, name="r.yaml").errors)
    assert codes == ["QC112", "QC131"], codes


def test_qc121_for_a_component_the_family_lacks_names_the_family_components():
    text = VALID_RECIPE.replace("precision: native", "components: [transformer3]\n    precision: native", 1)
    errors = compile_source(text, name="r.yaml").errors
    assert [d.code for d in errors] == ["QC121"]
    assert "top-level" not in errors[0].hint and "transformer, transformer_2" in errors[0].hint


# -- lint: json, folder walks, plans ----------------------------------------------------------------------------

def test_lint_json_on_clean_recipes_prints_an_empty_list():
    result = run("lint", "--format", "json", str(RECIPES_DIR))
    assert result.exit_code == 0 and json.loads(result.stdout) == []


def test_lint_of_a_folder_skips_virtualenvs_hidden_folders_and_other_yaml(tmp_path):
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "r.yaml").write_text(VALID_RECIPE)
    venv = tmp_path / "env"
    (venv / "lib").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr\n")
    (venv / "lib" / "schema.yaml").write_text("a: [1\n")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "bad.yaml").write_text("version: 1\nfamily: x\n")
    (tmp_path / "site-packages").mkdir()
    (tmp_path / "site-packages" / "bad.yaml").write_text("version: 1\nfamily: x\n")
    (tmp_path / ".pre-commit-hooks.yaml").write_text("- id: qcompile-lint\n")
    (tmp_path / "ci.yml").write_text("jobs: {}\n")
    broken = tmp_path / "broken.yaml"  # a recipe with a syntax error is still found (top-level keys, from the text)
    broken.write_text("version: 1\nfamily: wan2.2-i2v-a14b\nrules: [\n")
    result = run("lint", "--format", "json", str(tmp_path))
    paths = {d["path"] for d in json.loads(result.stdout)}
    assert paths == {str(broken)}, result.output
    assert run("lint", str(tmp_path / "ci.yml")).exit_code == 1  # named files are always linted


def test_lint_of_the_repository_root_lints_only_recipes():
    result = subprocess.run([sys.executable, "-m", "qcompiler.cli.main", "lint", "--format", "json", "."], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout) == []


def test_lint_of_a_plan_says_it_is_a_plan(tmp_path):
    plan = _write(tmp_path / "plan.json", _plan_dict())
    result = run("lint", "--format", "json", plan)
    findings = json.loads(result.stdout)
    assert result.exit_code == 1 and [d["code"] for d in findings] == ["QC011"]
    assert "a qcompile plan, not a recipe" in findings[0]["message"] and "show" in findings[0]["message"]


# -- stale temp files -------------------------------------------------------------------------------------------

def _dead_pid() -> int:
    process = multiprocessing.get_context("fork").Process(target=os._exit, args=(0,))
    process.start()
    process.join()
    return process.pid


def test_next_write_removes_temp_files_of_dead_writers_only(tmp_path):
    target = tmp_path / "plan.json"
    dead = tmp_path / f".plan.json.{TEMP_MARKER}-{_dead_pid()}.abc123.tmp"
    alive = tmp_path / f".plan.json.{TEMP_MARKER}-{os.getppid()}.abc123.tmp"
    other_target = tmp_path / f".other.json.{TEMP_MARKER}-{_dead_pid()}.abc123.tmp"
    foreign = tmp_path / ".plan.json.abc123.tmp"
    for path in (dead, alive, other_target, foreign):
        path.write_text("half")
    write_text_atomically(target, "{}\n")
    assert target.read_text() == "{}\n"
    assert not dead.exists()
    assert alive.exists() and other_target.exists() and foreign.exists()
    assert remove_stale_temp_files(tmp_path / "other.json") == [str(other_target)]


@pytest.mark.slow
def test_a_killed_compile_leaves_a_temp_file_the_next_compile_removes(tmp_path):
    """A writer killed between creating its temp file and the rename (here: stopped inside fsync, then SIGKILL)."""
    target = tmp_path / "plan.json"
    code = (
        "import os, sys, time\n"
        "os.fsync = lambda fd: (print('ready', flush=True), time.sleep(60))\n"
        "from qcompiler.cli.main import main\n"
        f"sys.argv = ['qcompile', {str(RECIPES_DIR / 'wan22_i2v.yaml')!r}, '-o', {str(target)!r}]\n"
        "main()\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    try:
        assert writer.stdout.readline().strip() == "ready"
        os.kill(writer.pid, signal.SIGKILL)
    finally:
        writer.wait(timeout=30)
    left = [p for p in os.listdir(tmp_path) if TEMP_MARKER in p]
    assert len(left) == 1 and not target.exists()
    assert run(str(RECIPES_DIR / "wan22_i2v.yaml"), "-o", str(target)).exit_code == 0
    assert [p for p in os.listdir(tmp_path) if TEMP_MARKER in p] == [] and target.exists()


def test_a_rule_whose_name_is_wrong_still_has_its_selectors_checked():
    text = VALID_RECIPE.replace("- name: edge-steps", "- name: |\n      edge-steps").replace('"0, last 1"', '"0-9"')
    errors = compile_source(text, name="r.yaml").errors
    assert sorted(d.code for d in errors) == ["QC114", "QC131"]
    assert all("\n" not in d.message.split(":")[0] for d in errors)
    assert any(d.message.startswith("rule `#0`: steps index 9") for d in errors)
