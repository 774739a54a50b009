"""dtype int8_per_tensor end to end: lint, compile, the tiny pipeline with the reference backend (executed == plan),
the fallback policy where no A2/A3 kernel is present, show, report, calibrate --dtype and suggest."""

from __future__ import annotations

import json
import textwrap
import warnings

import pytest
import torch
from click.testing import CliRunner

import runtime
from qcompiler.cli.main import cli
from qcompiler.errors import PlanError
from qcompiler.plan.format import content_sha256, load_plan
from runtime.backends.int8_npu import int8_npu_unavailable_reason
from runtime.errors import BackendUnavailableError
from runtime.tiny import run_tiny

FAMILY = "wan2.1-t2v-1.3b"

pytestmark = pytest.mark.skipif(int8_npu_unavailable_reason() is None,
                                reason="an A2/A3 NPU is present: auto would run int8-npu, not the fallback")


def int8_recipe(fallback: str = "native", numerics: str = "", steps: int = 2) -> str:
    return textwrap.dedent(f"""\
        version: 1
        family: {FAMILY}
        num_inference_steps: {steps}
        dtype: int8_per_tensor
        {numerics}
        fallback: {fallback}
        attention_kinds: [self]
        default: fp8
        rules:
          - name: first-step-native
            steps: "0"
            precision: native
          - name: odd-layers-native
            layers: "1-/2"
            precision: native
        """)


@pytest.fixture
def int8_plan(tmp_path, compile_tiny):
    return compile_tiny(int8_recipe())


def test_lint_says_where_int8_runs_and_rejects_int8_keys_on_fp8(tmp_path):
    recipe = tmp_path / "int8.yaml"
    recipe.write_text(int8_recipe(), encoding="utf-8")
    result = CliRunner().invoke(cli, ["lint", str(recipe)])
    assert result.exit_code == 0, result.output
    assert "warning[QC151]" in result.output and "Atlas A2/A3" in result.output and "910B/910C" in result.output
    assert CliRunner().invoke(cli, ["lint", "--strict", str(recipe)]).exit_code == 1
    fp8 = tmp_path / "fp8.yaml"
    fp8.write_text(int8_recipe(numerics="numerics: {v_rotation: true}").replace(
        "dtype: int8_per_tensor", "dtype: fp8_e4m3_per_block"), encoding="utf-8")
    result = CliRunner().invoke(cli, ["lint", str(fp8)])
    assert result.exit_code == 1 and "error[QC150]" in result.output and "numerics.v_rotation" in result.output
    bad_scope = tmp_path / "scope.yaml"
    bad_scope.write_text(int8_recipe(numerics="numerics: {scale_scope: block}"), encoding="utf-8")
    result = CliRunner().invoke(cli, ["lint", str(bad_scope)])
    assert result.exit_code == 1 and "scale_scope" in result.output


def test_plan_numerics_default_to_all_three_transforms(int8_plan, compile_tiny):
    assert int8_plan.data["dtype"] == "int8_per_tensor"
    assert dict(int8_plan.numerics) == {"hadamard_rotation": True, "rotation_seed": 425500, "k_mean_subtraction": True,
                                        "v_rotation": True, "p_scale": 127, "scale_scope": "call"}
    custom = compile_tiny(int8_recipe(numerics="numerics: {v_rotation: false, scale_scope: head, rotation_seed: 7}"))
    assert custom.numerics["v_rotation"] is False and custom.numerics["scale_scope"] == "head"
    # an int8 plan carrying FP8 block sizes (or missing its INT8 keys, or FP8 numerics) is not a valid plan; the
    # hash is recomputed so that the numerics check, not the edit detection, is what refuses it
    def edited(change) -> dict:
        data = json.loads(json.dumps(int8_plan.data))
        change(data)
        data["content_sha256"] = content_sha256(data)
        return data

    with pytest.raises(PlanError, match="numerics"):
        load_plan(edited(lambda d: d["numerics"].update(query_block_tokens=128)))
    with pytest.raises(PlanError, match="numerics"):
        load_plan(edited(lambda d: d["numerics"].pop("scale_scope")))
    fp8_numerics = {"hadamard_rotation": True, "rotation_seed": 1, "query_block_tokens": 128, "kv_block_tokens": 256,
                    "k_mean_subtraction": False}
    with pytest.raises(PlanError, match="v_rotation"):
        load_plan(edited(lambda d: d.update(numerics=fp8_numerics)))
    with pytest.raises(PlanError, match="numerics"):
        load_plan(edited(lambda d: d.update(dtype="fp8_e4m3_per_block")))
    assert load_plan(edited(lambda d: None)) == int8_plan


def test_tiny_pipeline_runs_the_int8_plan_with_the_reference(t2v_pipe, int8_plan):
    native = run_tiny(t2v_pipe, num_inference_steps=2)
    with runtime.load(t2v_pipe, int8_plan, backend="reference") as handle:
        out = run_tiny(t2v_pipe, num_inference_steps=2)
        report = handle.report()
    assert report.matches_plan(), report.executed
    planned = sum(sum(row) for row in int8_plan.table("transformer", "self"))
    assert 0 < planned < 2 * 30  # the rules left some cells native
    assert report.call_counts["reference"] == 2 * planned  # CFG: two calls per cell
    assert report.fallback_calls == 0 and report.quantized_backend == "reference"
    assert not torch.equal(out, native)
    assert torch.nn.functional.cosine_similarity(out.flatten().float(), native.flatten().float(), dim=0) > 0.99


def test_where_no_a2a3_kernel_runs_the_fallback_policy_applies(t2v_pipe, compile_tiny):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with runtime.load(t2v_pipe, compile_tiny(int8_recipe()), backend="auto") as handle:
            run_tiny(t2v_pipe, num_inference_steps=2)
            report = handle.report()
    assert any("int8_per_tensor" in str(w.message) for w in caught)
    assert report.fallback_calls > 0 and set(report.call_counts) <= {"native", "native-fallback"}
    assert "torch_npu" in report.fallback_reasons["transformer"]
    with pytest.raises(BackendUnavailableError, match="int8_per_tensor"):
        runtime.load(t2v_pipe, compile_tiny(int8_recipe(fallback="error")), backend="auto")
    with pytest.raises(BackendUnavailableError, match="cannot run int8_per_tensor"):
        runtime.load(t2v_pipe, compile_tiny(int8_recipe(fallback="error")), backend="npu-torch-fia")


def test_show_prints_the_int8_numerics(tmp_path):
    recipe = tmp_path / "int8.yaml"
    recipe.write_text(int8_recipe(), encoding="utf-8")
    plan = tmp_path / "plan.json"
    assert CliRunner().invoke(cli, [str(recipe), "--variant", "tiny", "-o", str(plan)]).exit_code == 0
    result = CliRunner().invoke(cli, ["show", str(plan)])
    assert result.exit_code == 0, result.output
    assert "int8_per_tensor" in result.output
    assert "k_mean_subtraction=on, q/k rotation=on, v_rotation=on, p_scale=127, scale_scope=call" in result.output


def test_calibrate_with_dtype_int8_then_suggest(tmp_path):
    out = tmp_path / "sens.json"
    runner = CliRunner()
    result = runner.invoke(cli, ["calibrate", "--pipeline", "tiny", "--family", FAMILY, "--steps", "1",
                                 "--dtype", "int8_per_tensor", "--scale-scope", "head", "--no-progress", "-o", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["measured"]["backend"] == "reference"
    assert data["numerics"] == {"dtype": "int8_per_tensor", "hadamard_rotation": True, "rotation_seed": 425500, "k_mean_subtraction": True,
                                "v_rotation": True, "p_scale": 127, "scale_scope": "head"}
    assert all(0.9 < c["cos_sim"]["worst"] < 1 for c in data["cells"])
    from qcompiler.suggest.sensitivity import SensitivityError, load_sensitivity

    assert load_sensitivity(data).dtype == "int8_per_tensor"
    with pytest.raises(SensitivityError, match="query_block_tokens"):  # FP8 numerics need block sizes
        load_sensitivity({**data, "numerics": {**data["numerics"], "dtype": "fp8_e4m3_per_block"}})
    recipe = tmp_path / "suggested.yaml"
    result = runner.invoke(cli, ["suggest", str(out), "--fp8-flop-share", "0.5", "-o", str(recipe)])
    assert result.exit_code == 0, result.output
    text = recipe.read_text()
    assert "dtype: int8_per_tensor" in text and "scale_scope: head" in text
    result = runner.invoke(cli, ["suggest", str(out), "--dtype", "fp8_e4m3_per_block", "--min-cos", "0.9",
                                 "-o", str(tmp_path / "x.yaml")])
    assert result.exit_code == 1 and "measured int8_per_tensor" in result.output
    result = runner.invoke(cli, ["calibrate", "--pipeline", "tiny", "--family", FAMILY, "--steps", "1",
                                 "--scale-scope", "head", "-o", str(tmp_path / "y.json")])
    assert result.exit_code == 2 and "int8_per_tensor only" in result.output


def test_report_on_an_int8_plan_uses_the_reference_backend(tmp_path):
    recipe = tmp_path / "int8.yaml"
    recipe.write_text(int8_recipe(steps=1).replace('steps: "0"', 'steps: "0"\n    layers: "0"'), encoding="utf-8")
    plan = tmp_path / "plan.json"
    assert CliRunner().invoke(cli, [str(recipe), "--variant", "tiny", "-o", str(plan)]).exit_code == 0
    result = CliRunner().invoke(cli, ["report", str(plan), "--pipeline", "tiny", "-o", str(tmp_path / "rep")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert report["measured"]["backend"] == "reference" and report["plan"]["dtype"] == "int8_per_tensor"
    assert report["execution"]["matches_plan"] and report["summary"]["calls"]["fp8"] > 0


def test_export_to_vllm_omni_refuses_an_int8_plan(tmp_path):
    """vllm-omni runs only FP8: exporting an INT8 plan must not quietly become FP8 settings."""
    recipe = tmp_path / "int8.yaml"
    recipe.write_text(int8_recipe(), encoding="utf-8")
    plan = tmp_path / "plan.json"
    assert CliRunner().invoke(cli, [str(recipe), "--variant", "tiny", "-o", str(plan)]).exit_code == 0
    result = CliRunner().invoke(cli, ["export", str(plan), "--to", "vllm-omni"])
    assert result.exit_code == 1, result.output
    assert "'int8_per_tensor', which cannot be exported to vllm-omni" in result.output
    assert "diffusion_kv_cache_dtype" not in result.output
