"""What a new user hits first on a fresh clone (issue 18): typos of a command, `| head`, the torch-free install,
`check` of a tiny plan, and MX / INT8 plans named as what they are (not "FP8")."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from qcompiler import compile_recipe_text
from qcompiler.cli.main import cli
from qcompiler.formats import FORMATS as DTYPES
from qcompiler.plan.format import write_plan
from tests.conftest import VALID_RECIPE


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


@pytest.fixture
def plan_file(tmp_path, repo_root):
    out = tmp_path / "plan.json"
    assert run(str(repo_root / "recipes/wan22_i2v.yaml"), "--variant", "tiny", "-o", str(out)).exit_code == 0
    return out


@pytest.mark.parametrize(("typo", "command"), [("shwo", "show"), ("exprot", "export"), ("calibrat", "calibrate")])
def test_a_mistyped_command_is_a_usage_error_with_the_nearest_command(typo, command, plan_file) -> None:
    result = run(typo, "--to", "xdit", str(plan_file)) if command == "export" else run(typo, str(plan_file))
    assert result.exit_code == 2, result.output
    assert f"no such command '{typo}'; did you mean '{command}'?" in result.output
    assert "not compiled" not in result.output


def test_an_unknown_word_that_is_no_file_lists_the_commands(tmp_path) -> None:
    result = run("frobnicate", "-o", str(tmp_path / "plan.json"))
    assert result.exit_code == 2
    assert "no such command 'frobnicate' (and no recipe file of that name); commands: calibrate, check" in result.output
    assert not (tmp_path / "plan.json").exists()


def test_a_bare_recipe_path_still_compiles_even_without_a_yaml_suffix(tmp_path, repo_root) -> None:
    recipe = tmp_path / "shwo"  # a file that exists is a recipe, whatever its name
    recipe.write_text(VALID_RECIPE, encoding="utf-8")
    for source in (str(repo_root / "recipes/wan22_i2v.yaml"), str(recipe)):
        out = tmp_path / "plan.json"
        result = run(source, "-o", str(out))
        assert result.exit_code == 0, result.output
        assert json.loads(out.read_text())["plan_format"]
        out.unlink()


def _qcompile_process(*args: str, blocker: str = "") -> list[str]:
    code = f"import sys\n{blocker}\nsys.argv[0] = 'qcompile'\nfrom qcompiler.cli.main import main\nmain()\n"
    return [sys.executable, "-c", code, *args]


def test_show_into_a_pipe_closed_early_ends_quietly(plan_file) -> None:
    # `qcompile show plan.json | head`: the reader goes away before the output is written.
    process = subprocess.Popen(_qcompile_process("show", str(plan_file)), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()
    stderr = process.stderr.read().decode()
    process.stderr.close()
    assert process.wait(timeout=60) == 1
    assert stderr == ""


# A meta path finder that makes the runtime extra unimportable, as on a `pip install .` without [runtime].
NO_TORCH = """
class _NoRuntimeExtra:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'diffusers', 'transformers'):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, _NoRuntimeExtra())
"""


@pytest.mark.parametrize("command", ["report", "calibrate"])
def test_report_and_calibrate_without_torch_say_what_to_install(command, plan_file, tmp_path) -> None:
    args = (["report", str(plan_file), "-o", str(tmp_path / "out")] if command == "report" else
            ["calibrate", "--family", "wan2.2-i2v-a14b", "--steps", "2", "-o", str(tmp_path / "s.json")])
    result = subprocess.run(_qcompile_process(*args, blocker=NO_TORCH), capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert f"`qcompile {command}` runs a diffusers pipeline and needs the runtime extra" in result.stderr
    assert "no module named 'torch'" in result.stderr and "pip install '.[runtime]'" in result.stderr


def test_check_of_a_tiny_plan_compares_with_the_tiny_variant_and_keeps_it_in_the_fix(tmp_path, repo_root) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(VALID_RECIPE, encoding="utf-8")
    plan = tmp_path / "r.plan.json"
    assert run(str(recipe), "--variant", "tiny", "-o", str(plan)).exit_code == 0
    result = run("check", str(recipe), "--plan", str(plan))
    assert result.exit_code == 0, result.output
    assert "is up to date" in result.output

    recipe.write_text(VALID_RECIPE.replace('steps: "0, last 1"', 'steps: "0"'), encoding="utf-8")
    result = run("check", str(recipe), "--plan", str(plan))
    assert result.exit_code == 1
    assert f"fix: qcompile {recipe} --variant tiny -o {plan}" in result.output
    assert run("check", str(recipe), "--plan", str(plan), "--write").exit_code == 0
    assert json.loads(plan.read_text())["family"]["variant"] == "tiny"
    assert "is up to date" in run("check", str(recipe), "--plan", str(plan)).output


MX_RECIPE = VALID_RECIPE.replace("dtype: fp8_e4m3_per_block", "dtype: mxfp4_e2m1")


@pytest.mark.parametrize("dtype", ["mxfp4_e2m1", "mxfp8_e4m3", "int8_per_tensor"])
def test_compile_and_show_name_the_quantized_format_of_mx_and_int8_plans(dtype, tmp_path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(VALID_RECIPE.replace("dtype: fp8_e4m3_per_block", f"dtype: {dtype}"), encoding="utf-8")
    out = tmp_path / "plan.json"
    result = run(str(recipe), "-o", str(out))
    assert result.exit_code == 0, result.output
    assert f"of attention FLOPs on quantized ({dtype})" in result.output and "FP8" not in result.output
    shown = run("show", str(out))
    assert shown.exit_code == 0, shown.output
    assert f"quantized ({dtype}) share" in shown.output
    assert "FP8" not in shown.output.replace("FP8 e4m3", "").replace("MXFP8", "")
    # `fp8` stays where the recipe grammar spells it (default: fp8 means "quantized in the plan's dtype").
    assert " fp8" not in shown.output.replace("default: fp8", "")


def test_fp8_plans_still_say_fp8(plan_file) -> None:
    shown = run("show", str(plan_file))
    assert "\nFP8 share" in shown.output and "(# fp8, . native)" in shown.output


def test_speed_factors_are_per_dtype_and_only_where_measured() -> None:
    from qcompiler.formats import quantized_name, speed_factor

    assert speed_factor("fp8_e4m3_per_block") == pytest.approx(5.43 / 6.81, abs=5e-4)
    assert {name for name in DTYPES if speed_factor(name) is None} == {"mxfp8_e4m3", "mxfp4_e2m1", "int8_per_tensor",
                                                                       "sage1_int8_fp16pv", "sage2_int8_fp8pv_sm90"}
    assert all(row.speed_factor_source for row in DTYPES.values())
    assert quantized_name("fp8_e4m3_per_block") == "FP8" and quantized_name("mxfp4_e2m1") == "quantized (mxfp4_e2m1)"


def test_vllm_omni_export_note_names_the_plan_format(tmp_path) -> None:
    plan = compile_recipe_text(MX_RECIPE, name="mx.yaml")
    path = tmp_path / "plan.json"
    write_plan(plan, path)
    result = run("export", "--to", "vllm-omni", str(path))
    assert "runs native where quantized (mxfp4_e2m1) is unavailable" in result.output, result.output
