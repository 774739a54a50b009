"""`qcompile export` and `qcompile patch` through click's CliRunner: output, exit codes, no tracebacks."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from qcompiler.cli.main import cli
from qcompiler.plan.format import load_plan, write_plan
from qcompiler.targets.pipeline_dir import PLAN_KEY

from . import vllm_decoder as vllm
from .conftest import RECIPE


@pytest.fixture
def run():
    def invoke(*args: str):
        return CliRunner().invoke(cli, [str(a) for a in args])

    return invoke


@pytest.fixture
def notch_plan(tmp_path):
    """The edge-steps recipe: not expressible (FP8 is all cells but a notch at steps 0/3 x layers 0-2)."""
    from qcompiler import compile_recipe_text

    path = tmp_path / "plan.json"
    write_plan(compile_recipe_text(RECIPE), path)
    return path


@pytest.fixture
def rectangle_recipe(tmp_path):
    path = tmp_path / "rect.yaml"
    path.write_text(RECIPE.replace('    steps: "0, last 1"\n    layers: "0-2"\n', '    steps: "0, last 1"\n'))
    return path


def test_export_flags_decode_to_the_plan(run, rectangle_recipe, tmp_path):
    from qcompiler import compile_recipe_file

    plan = compile_recipe_file(rectangle_recipe)
    result = run("export", "--to", "vllm-omni", rectangle_recipe, "--format", "flags")
    assert result.exit_code == 0, result.output
    assert result.stdout == '--diffusion-kv-cache-dtype fp8 --diffusion-kv-cache-skip-steps "0,3" --boundary-ratio 0.9 --flow-shift 5.0\n'
    assert vllm.decode(plan, vllm.flags(result.stdout)) == vllm.planned(plan)
    assert "valid for num_inference_steps=4 only" in result.stderr


def test_export_yaml_and_both(run, rectangle_recipe):
    from qcompiler import compile_recipe_file

    plan = compile_recipe_file(rectangle_recipe)
    as_yaml = run("export", "--to", "vllm-omni", rectangle_recipe, "--format", "yaml")
    assert as_yaml.exit_code == 0
    assert vllm.decode(plan, vllm.yaml_args(as_yaml.stdout)) == vllm.planned(plan)
    both = run("export", "--to", "vllm-omni", rectangle_recipe)
    assert both.exit_code == 0
    flags_part, yaml_part = both.stdout.split("\n# vllm-omni 0.30 stage config")
    from_flags, from_yaml = vllm.flags(flags_part.splitlines()[1]), vllm.yaml_args(yaml_part.split("\n", 1)[1])
    assert vllm.decode(plan, from_flags) == vllm.decode(plan, from_yaml) == vllm.planned(plan)
    assert from_flags.keys() == from_yaml.keys()


def test_export_of_an_inexpressible_plan_names_the_cells(run, notch_plan):
    result = run("export", "--to", "vllm-omni", notch_plan)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith("error: plan ")
    assert "  transformer/self step 0: layers 0-2" in result.stderr
    assert isinstance(result.exception, SystemExit)  # a clean exit 1, not an exception escaping the command


def test_export_conservative_reports_what_it_gives_up(run, notch_plan):
    plan = load_plan(notch_plan)
    result = run("export", "--to", "vllm-omni", notch_plan, "--conservative", "--format", "flags")
    assert result.exit_code == 0
    assert "gives up 6 of the plan's 154 quantized cells" in result.stderr
    decoded = vllm.decode(plan, vllm.flags(result.stdout))
    assert decoded <= vllm.planned(plan) and len(decoded) == 148


def test_export_needs_a_target(run, notch_plan):
    result = run("export", notch_plan)
    assert result.exit_code == 2 and "--to" in result.stderr


@pytest.mark.slow
def test_patch_and_remove_through_the_cli(run, config_only_pipeline_dir, tiny_plan_path):
    folder = config_only_pipeline_dir
    original = (folder / "transformer" / "config.json").read_bytes()
    patched = run("patch", folder, tiny_plan_path)
    assert patched.exit_code == 0, patched.output
    assert "transformer_2/config.json: embedded plan" in patched.stdout
    assert PLAN_KEY in json.loads((folder / "transformer_2" / "config.json").read_text())
    removed = run("patch", folder, "--remove")
    assert removed.exit_code == 0, removed.output
    assert "restored the original" in removed.stdout
    assert (folder / "transformer" / "config.json").read_bytes() == original


def test_patch_refusals_are_errors_not_tracebacks(run, config_only_pipeline_dir, notch_plan):
    # notch_plan is for the full-size model; the saved pipeline is the tiny variant.
    result = run("patch", config_only_pipeline_dir, notch_plan)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: plan ") and "num_attention_heads is 2" in result.stderr
    assert isinstance(result.exception, SystemExit)


@pytest.mark.parametrize("args", [("--remove", "PLAN"), ()])
def test_patch_wants_a_plan_or_remove(run, config_only_pipeline_dir, tiny_plan_path, args):
    extra = [tiny_plan_path if a == "PLAN" else a for a in args]
    result = run("patch", config_only_pipeline_dir, *extra)
    assert result.exit_code == 2 and "give PLAN to patch, or --remove" in result.stderr


# -- the MindIE-SD and xDiT targets -----------------------------------------------------------------


def test_export_mindiesd_python_and_json_decode_to_the_plan(run):
    from pathlib import Path

    from . import mindiesd_decoder as mindiesd
    from . import routings

    path = Path(__file__).parents[2] / "recipes" / "wan22_i2v.plan.json"
    plan = load_plan(path)
    python = run("export", "--to", "mindiesd", path, "--format", "python")
    as_json = run("export", "--to", "mindiesd", path, "--format", "json")
    assert python.exit_code == 0 and as_json.exit_code == 0, python.output + as_json.output
    for configs in (mindiesd.run_snippet(python.stdout, plan.component_names),
                    mindiesd.configs_from_json(as_json.stdout, plan.component_names)):
        assert mindiesd.decode(plan, configs, plan.expert_schedule) == routings.planned_cells(plan, plan.expert_schedule)
    assert "seed 1234" in python.stdout and json.loads(as_json.stdout)["mindiesd_version"] == "3.1.0"


def test_export_mindiesd_of_the_issue_18_plan_is_one_config_per_expert(run, tmp_path):
    """The plan the issue reported refused ("one module set for both experts") exports exactly."""
    from . import mindiesd_decoder as mindiesd
    from . import routings
    from .test_targets import ISSUE_18_RECIPE

    recipe = tmp_path / "issue18.yaml"
    recipe.write_text(ISSUE_18_RECIPE)
    plan = run("compile", recipe, "-o", tmp_path / "issue18.plan.json")
    assert plan.exit_code == 0, plan.output
    plan = load_plan(tmp_path / "issue18.plan.json")
    python = run("export", "--to", "mindiesd", recipe, "--format", "python")
    as_json = run("export", "--to", "mindiesd", recipe, "--format", "json")
    assert python.exit_code == 0 and as_json.exit_code == 0, python.output + as_json.output
    for configs in (mindiesd.run_snippet(python.stdout, plan.component_names),
                    mindiesd.configs_from_json(as_json.stdout, plan.component_names)):
        for routing in routings.every_split(plan)[2:3]:  # the pinned split: steps 0-1 transformer
            assert mindiesd.decode(plan, configs, routing) == routings.planned_cells(plan, routing)
    assert [e["components"] for e in json.loads(as_json.stdout)["configs"]] == [["transformer"], ["transformer_2"]]


def test_export_xdit_refuses_the_shipped_plan_and_conservative_says_so(run):
    from pathlib import Path

    path = Path(__file__).parents[2] / "recipes" / "wan22_i2v.plan.json"
    refused = run("export", "--to", "xdit", path)
    assert refused.exit_code == 1 and "  transformer/self step 1: layers 0,39" in refused.stderr
    conservative = run("export", "--to", "xdit", path, "--conservative")
    assert conservative.exit_code == 0 and conservative.stdout == "\n"
    assert "run xDiT without --use_hybrid_attn_schedule" in conservative.stderr


@pytest.mark.parametrize(("args", "message"), [
    (("--to", "mindiesd", "--format", "flags"), "--format flags is not a format of --to mindiesd"),
    (("--to", "vllm-omni", "--use-cfg-parallel"), "are options of --to xdit"),
    (("--to", "xdit", "--quantized-backend", "FLASH_3"), "not a quantized xDiT attention backend"),
])
def test_export_option_mistakes_are_clear_errors(run, notch_plan, args, message):
    result = run("export", notch_plan, *args)
    assert result.exit_code in (1, 2) and message in result.stderr
    assert isinstance(result.exception, SystemExit)
