"""What a new user hits first with the runtime (issue 18): the demo on a recipe, the advertised tiny Wan2.1 I2V,
calibrate against the wrong family, and MX plans' reports (no borrowed FP8 speed factor)."""

from __future__ import annotations

import pytest

from runtime.quality.pipelines import PipelineLoadError
from tests.quality.conftest import FAMILY, MIXED_RECIPE, STEPS, compile_tiny

WAN21_I2V_RECIPE = """\
version: 1
family: wan2.1-i2v-14b
num_inference_steps: 2
dtype: fp8_e4m3_per_block
fallback: error
attention_kinds: [self, cross]
default: fp8
rules:
  - name: first-block
    layers: "0"
    precision: native
"""


@pytest.mark.slow
def test_demo_runs_a_recipe_on_the_tiny_wan21_i2v_pipeline_exactly(tmp_path, capsys) -> None:
    from runtime.demo import main

    recipe = tmp_path / "wan21_i2v.yaml"
    recipe.write_text(WAN21_I2V_RECIPE, encoding="utf-8")
    assert main([str(recipe)]) == 0  # 3 would mean the executed table differs from the plan
    out = capsys.readouterr().out
    assert "wan2.1-i2v-14b (tiny model), 2 steps" in out and "executed table == plan: yes" in out


def test_demo_on_a_recipe_with_errors_prints_them_and_exits_1(tmp_path, capsys) -> None:
    from runtime.demo import main

    recipe = tmp_path / "broken.yaml"
    recipe.write_text(WAN21_I2V_RECIPE.replace("default: fp8", "default: fp9"), encoding="utf-8")
    with pytest.raises(SystemExit) as exited:
        main([str(recipe)])
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert "the recipe has errors" in err and "fp9" in err and "not valid JSON" not in err


def test_calibrate_refuses_a_pipeline_of_another_family_before_measuring(tiny_pipe) -> None:
    from runtime.quality.calibrate import CalibrateOptions, calibrate

    # The tiny Wan2.2 I2V pipeline has Wan2.1 I2V's class, layer count and tiny widths, plus a transformer_2.
    with pytest.raises(PipelineLoadError) as refused:
        calibrate(CalibrateOptions(family="wan2.1-i2v-14b", steps=STEPS, progress=False), pipe=tiny_pipe)
    message = str(refused.value)
    assert "not a wan2.1-i2v-14b pipeline" in message and "transformer_2" in message
    assert f"pass --family {FAMILY}" in message


def test_a_pipeline_of_another_class_is_refused_naming_both_classes(tiny_pipe) -> None:
    from runtime.quality.pipelines import detect_variant

    with pytest.raises(PipelineLoadError, match="it is a WanImageToVideoPipeline, the family runs a WanPipeline"):
        detect_variant(tiny_pipe, "wan2.2-t2v-a14b")
    assert detect_variant(tiny_pipe, FAMILY) == "tiny"


@pytest.mark.slow
def test_mxfp4_report_says_quantized_and_borrows_no_fp8_speed_factor(tiny_pipe, tmp_path) -> None:
    from runtime.quality.render import render_markdown
    from runtime.quality.report import ReportOptions, build_report, report_json

    plan = compile_tiny(MIXED_RECIPE.replace("dtype: fp8_e4m3_per_block", "dtype: mxfp4_e2m1"), "mx.yaml")
    report = build_report(plan, ReportOptions(backend="reference", progress=False), pipe=tiny_pipe)
    estimate = report["summary"]["estimate"]
    assert estimate["throughput_ratio"] is None and estimate["attention_time_saved"] is None
    assert estimate["throughput_ratio_source"] == "no measured speed factor for mxfp4_e2m1"
    report_json({**report, "files": {"json": "report.json", "markdown": "report.md", "heatmaps": []}})  # schema-valid
    markdown = render_markdown({**report, "files": {"heatmaps": []}})
    assert "## Error of quantized (mxfp4_e2m1) calls" in markdown and "| | quantized (mxfp4_e2m1) |" in markdown
    assert "No estimate: no measured speed factor for mxfp4_e2m1" in markdown
    assert "FP8" not in markdown


@pytest.mark.parametrize("dtype", ["fp8_e4m3_per_block", "mxfp4_e2m1"])
def test_a_suggested_recipe_comments_name_its_format(dtype) -> None:
    from qcompiler.suggest.cover import Budget, suggest_recipe
    from qcompiler.suggest.sensitivity import sensitivity_from_dict
    from tests.compiler.synthetic import synthetic_sensitivity

    data = dict(synthetic_sensitivity(steps=4, seed=0).data)
    data["numerics"] = {**data["numerics"], "dtype": dtype}
    text = suggest_recipe(sensitivity_from_dict(data), Budget("min_cos", 0.99)).text
    result = next(line for line in text.splitlines() if line.startswith("# Result:"))
    name = "FP8" if dtype == "fp8_e4m3_per_block" else f"quantized ({dtype})"
    assert f"measured cells on {name} (" in result and f"worst {name} call" in result
