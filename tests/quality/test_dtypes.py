"""Every recipe dtype end to end through the CLI: lint, compile, show, report on the tiny pipeline (executed ==
plan, dtype named), calibrate --dtype and suggest writing the measured dtype."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from qcompiler.cli.main import cli
from qcompiler.formats import FORMATS as DTYPES
from tests.quality.conftest import FAMILY, STEPS

MX_DTYPES = ["mxfp8_e4m3", "mxfp4_e2m1"]


def recipe_text(dtype: str) -> str:
    return f"""\
version: 1
family: {FAMILY}
num_inference_steps: {STEPS}
dtype: {dtype}
numerics: {{hadamard_rotation: true, rotation_seed: 425500}}
fallback: error
attention_kinds: [self]
default: fp8
rules:
  - name: first-step-native
    steps: "0"
    precision: native
"""


@pytest.mark.slow
@pytest.mark.parametrize("dtype", MX_DTYPES)
def test_recipe_with_each_mx_dtype_lints_compiles_shows_and_reports(dtype, tmp_path):
    runner = CliRunner()
    recipe = tmp_path / "mx.yaml"
    recipe.write_text(recipe_text(dtype), encoding="utf-8")
    result = runner.invoke(cli, ["lint", "--strict", str(recipe)])
    assert result.exit_code == 0, result.output
    plan = tmp_path / "plan.json"
    result = runner.invoke(cli, [str(recipe), "--variant", "tiny", "-o", str(plan)])
    assert result.exit_code == 0, result.output
    assert json.loads(plan.read_text())["dtype"] == dtype
    result = runner.invoke(cli, ["show", str(plan)])
    assert result.exit_code == 0 and f"{dtype} ({DTYPES[dtype].label})" in result.output, result.output
    outdir = tmp_path / "out"
    result = runner.invoke(cli, ["report", str(plan), "--pipeline", "tiny", "--backend", "reference", "-o",
                                 str(outdir), "--no-progress"])
    assert result.exit_code == 0, result.output
    report = json.loads((outdir / "report.json").read_text())
    assert report["plan"]["dtype"] == dtype and report["execution"]["matches_plan"]
    assert report["measured"]["backend"] == "reference" and report["summary"]["calls"]["fp8"] > 0
    assert DTYPES[dtype].label in (outdir / "report.md").read_text()


def test_unknown_dtype_is_refused_with_the_choices(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(recipe_text("mxfp6_e3m2"), encoding="utf-8")
    result = CliRunner().invoke(cli, ["lint", str(recipe)])
    assert result.exit_code != 0 and "mxfp8_e4m3" in result.output and "Traceback" not in result.output


def test_calibrate_dtype_then_suggest_writes_the_measured_dtype(tmp_path):
    runner = CliRunner()
    out = tmp_path / "sensitivity.json"
    result = runner.invoke(cli, ["calibrate", "--pipeline", "tiny", "--family", FAMILY, "--steps", "1",
                                 "--dtype", "mxfp8_e4m3", "--no-progress", "-o", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["numerics"]["dtype"] == "mxfp8_e4m3" and data["measured"]["backend"] == "reference"
    recipe = tmp_path / "recipe.yaml"
    result = runner.invoke(cli, ["suggest", str(out), "--fp8-flop-share", "0.5", "-o", str(recipe)])
    assert result.exit_code == 0, result.output
    assert "dtype: mxfp8_e4m3" in recipe.read_text()
    result = runner.invoke(cli, ["suggest", str(out), "--fp8-flop-share", "0.5", "--dtype", "fp8_e4m3_per_block",
                                 "-o", str(tmp_path / "other.yaml")])
    assert result.exit_code == 1 and "measured mxfp8_e4m3, not fp8_e4m3_per_block" in result.output
    assert "--dtype fp8_e4m3_per_block" in result.output and not (tmp_path / "other.yaml").exists()


def test_dtype_choices_come_from_the_dtype_table():
    runner = CliRunner()
    for command in ("calibrate", "suggest"):
        help_text = runner.invoke(cli, [command, "--help"]).output
        assert all(name in help_text for name in DTYPES), help_text
