"""Checks at load (plan integrity, family vs real structure, backend vs fallback policy) and at call time
(step count), each failing with a message that says what was expected, what was found and how to fix it."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import runtime
from qcompiler import compile_recipe_text
from qcompiler.errors import PlanError, QcompileError
from runtime.tiny import build_tiny_pipeline, run_tiny
from tests.runtime.conftest import I2V, T2V, recipe


def test_edited_plan_is_refused(i2v_pipe, compile_tiny, tmp_path):
    data = compile_tiny(recipe(I2V)).to_dict()
    data["tables"]["transformer"]["self"][1] = "0" * 40  # hand-edited after compiling
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(data))
    with pytest.raises(PlanError, match="edited"):
        runtime.load(i2v_pipe, path)
    assert i2v_pipe.transformer.blocks[0].attn1.processor.__class__.__name__ == "WanAttnProcessor"


def test_real_model_plan_on_tiny_pipeline_says_to_compile_for_the_tiny_variant(i2v_pipe):
    plan = compile_recipe_text(recipe(I2V), name="r.yaml")  # the real 40 heads x 128 model
    with pytest.raises(runtime.PlanMismatchError) as err:
        runtime.load(i2v_pipe, plan)
    message = str(err.value)
    assert "40 heads x head dim 128" in message and "2 heads x head dim 64" in message
    assert "--variant tiny" in message


def test_plan_of_another_family_is_refused(i2v_pipe, compile_tiny):
    plan = compile_tiny(recipe("wan2.2-t2v-a14b"))
    with pytest.raises(runtime.PlanMismatchError, match="WanPipeline, the pipeline is a WanImageToVideoPipeline"):
        runtime.load(i2v_pipe, plan)


def test_uncovered_expert_is_refused(i2v_pipe, compile_tiny):
    # A one-transformer plan (its class made to match) loaded into a two-expert pipeline: transformer_2 would
    # run unplanned, so load refuses.
    from qcompiler.plan.format import content_sha256, load_plan

    data = compile_tiny(recipe(T2V)).to_dict()
    data["family"]["pipeline_class"] = "WanImageToVideoPipeline"
    data["content_sha256"] = content_sha256(data)
    with pytest.raises(runtime.PlanMismatchError, match="transformer_2 that the plan does not cover"):
        runtime.load(i2v_pipe, load_plan(data))


def test_missing_expert_is_named(t2v_pipe, compile_tiny):
    from qcompiler.plan.format import content_sha256, load_plan

    data = compile_tiny(recipe("wan2.2-t2v-a14b")).to_dict()
    data["family"]["boundary_ratio"] = None
    data["content_sha256"] = content_sha256(data)
    with pytest.raises(runtime.PlanMismatchError, match="'transformer_2' .* is missing"):
        runtime.load(t2v_pipe, load_plan(data))


def test_step_count_mismatch_fails_before_the_first_attention_call(t2v_pipe, compile_tiny):
    plan = compile_tiny(recipe(T2V), name="recipes/mine.yaml")
    seen = []
    hook = t2v_pipe.transformer.blocks[0].attn1.register_forward_pre_hook(lambda m, a: seen.append(1))
    try:
        with runtime.load(t2v_pipe, plan, backend="reference") as handle:
            with pytest.raises(runtime.StepCountError) as err:
                run_tiny(t2v_pipe, num_inference_steps=6)
            assert seen == []  # no attention ran
            assert "qcompile mine.yaml --variant tiny --steps 6 -o plan.json" in str(err.value)
            assert "num_inference_steps=4" in str(err.value)
            run_tiny(t2v_pipe, num_inference_steps=4)  # the right count still works afterwards
            assert handle.report().matches_plan()
    finally:
        hook.remove()
    assert isinstance(err.value, QcompileError)


def test_fallback_error_refuses_at_load_when_nothing_serves_fp8(t2v_pipe, compile_tiny):
    plan = compile_tiny(recipe(T2V, fallback="error"))
    with pytest.raises(runtime.BackendUnavailableError) as err:
        runtime.load(t2v_pipe, plan)  # auto: no torch_npu on this machine
    assert "torch_npu" in str(err.value) and "fallback: native" in str(err.value)
    assert not hasattr(t2v_pipe, "_qcompile_runtime")


def test_fallback_native_runs_native_with_one_warning_and_counts_calls(t2v_pipe, compile_tiny):
    plan = compile_tiny(recipe(T2V, fallback="native"))
    stock = run_tiny(t2v_pipe)
    with pytest.warns(RuntimeWarning, match="planned FP8 cells run native") as caught:
        handle = runtime.load(t2v_pipe, plan)
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1
    with handle, warnings.catch_warnings():
        warnings.simplefilter("error")  # no further warning per call
        out = run_tiny(t2v_pipe)
        report = handle.report()
    assert torch.equal(out, stock)
    planned_fp8 = sum(row.count("1") for row in plan.data["tables"]["transformer"]["self"])
    assert report.fallback_calls == 2 * planned_fp8 == report.call_counts["native-fallback"] > 0
    assert "torch_npu" in report.fallback_reasons["transformer"]
    assert not report.matches_plan()  # honest: planned FP8 cells ran native
    assert {m.planned + m.executed for m in report.mismatches()} == {"10"}


def _family_with_head_dim(tmp_path, monkeypatch, head_dim: int) -> str:
    from qcompiler.families import BUILTIN_FAMILY_DIR

    data = json.loads(next(p for p in BUILTIN_FAMILY_DIR.glob("*.json") if "t2v_13b" in p.name).read_text())
    data["name"] = f"test-wan-hd{head_dim}"
    for component in data["variants"]["tiny"]["components"]:
        component["head_dim"] = head_dim
    (tmp_path / "family.json").write_text(json.dumps(data))
    monkeypatch.setenv("QCOMPILE_FAMILY_PATH", str(tmp_path))
    return data["name"]


@pytest.mark.parametrize("fallback", ["error", "native"])
def test_head_dim_the_kernel_cannot_take_follows_the_policy(tmp_path, monkeypatch, fallback):
    from runtime.tiny import tiny_family

    name = _family_with_head_dim(tmp_path, monkeypatch, 32)
    pipe = build_tiny_pipeline(name, family=tiny_family(name))
    plan = compile_recipe_text(recipe(name, fallback=fallback), name="hd.yaml", variant="tiny")
    if fallback == "error":
        with pytest.raises(runtime.BackendUnavailableError, match="head dim 32"):
            runtime.load(pipe, plan, backend="reference")
        return
    with pytest.warns(RuntimeWarning, match="head dim 32"):
        handle = runtime.load(pipe, plan, backend="reference")
    with handle:
        run_tiny(pipe)
    assert handle.report().fallback_calls > 0 and "reference" not in handle.report().call_counts


def test_double_load_is_refused_and_unknown_backend_named(i2v_pipe, compile_tiny):
    plan = compile_tiny(recipe(I2V))
    with runtime.load(i2v_pipe, plan, backend="reference"):
        with pytest.raises(runtime.PlanMismatchError, match="unload it first"):
            runtime.load(i2v_pipe, plan, backend="reference")
    with pytest.raises(ValueError, match="reference"):
        runtime.load(i2v_pipe, plan, backend="fp8")


def test_all_native_plan_loads_with_auto_and_no_fp8_kernel(i2v_pipe, compile_tiny):
    plan = compile_tiny(recipe(I2V, default="native"))  # nothing asks for FP8: nothing to refuse
    with runtime.load(i2v_pipe, plan) as handle:
        assert handle.quantized_backend is None
