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
    assert result.stdout == '--diffusion-kv-cache-dtype fp8 --diffusion-kv-cache-skip-steps "0,3"\n'
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
    flags_part, yaml_part = both.stdout.split("\n# vllm-omni stage config")
    assert vllm.flags(flags_part.splitlines()[1]) == vllm.yaml_args(yaml_part.split("\n", 1)[1])


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
    assert "gives up 6 of the plan's 154 FP8 cells" in result.stderr
    decoded = vllm.decode(plan, vllm.flags(result.stdout))
    assert decoded <= vllm.planned(plan) and len(decoded) == 148


def test_export_needs_a_target(run, notch_plan):
    result = run("export", notch_plan)
    assert result.exit_code == 2 and "--to" in result.stderr


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
