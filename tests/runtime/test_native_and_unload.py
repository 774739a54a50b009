"""An all-native plan is bit-identical to stock; unload restores exactly; shadow mode changes nothing."""

from __future__ import annotations

import pytest
import torch

import runtime
from runtime.tiny import run_tiny
from tests.runtime.conftest import I2V, I2V_RULES, recipe


@pytest.mark.parametrize("guidance_scale", [5.0, 1.0])
def test_all_native_plan_is_bit_identical_to_stock(i2v_pipe, i2v_stock, compile_tiny, guidance_scale):
    plan = compile_tiny(recipe(I2V, default="native", kinds="[self, cross]"))
    with runtime.load(i2v_pipe, plan, backend="reference") as handle:
        out = run_tiny(i2v_pipe, guidance_scale=guidance_scale)
        report = handle.report()
    assert (out - i2v_stock[guidance_scale]).abs().max().item() == 0.0
    assert report.matches_plan() and set(report.call_counts) == {"native"}


def test_backend_native_overrides_an_fp8_plan_and_says_so(i2v_pipe, i2v_stock, compile_tiny):
    plan = compile_tiny(recipe(I2V, rules=I2V_RULES, kinds="[self, cross]"))
    with runtime.load(i2v_pipe, plan, backend="native") as handle:
        out = run_tiny(i2v_pipe)
    assert torch.equal(out, i2v_stock[5.0])
    assert not handle.report().matches_plan() and set(handle.report().call_counts) == {"native"}


def test_unload_restores_processors_hooks_and_output(i2v_pipe, i2v_stock, compile_tiny):
    before = {
        name: (dict(model.attn_processors), dict(model._forward_pre_hooks), dict(model._forward_hooks))
        for name, model in (("transformer", i2v_pipe.transformer), ("transformer_2", i2v_pipe.transformer_2))
    }
    plan = compile_tiny(recipe(I2V, rules=I2V_RULES, kinds="[self, cross]"))
    handle = runtime.load(i2v_pipe, plan, backend="reference")
    changed = run_tiny(i2v_pipe)
    assert not torch.equal(changed, i2v_stock[5.0])  # the FP8 plan really changed the output
    handle.unload()
    handle.unload()  # idempotent
    for name, model in (("transformer", i2v_pipe.transformer), ("transformer_2", i2v_pipe.transformer_2)):
        processors, pre_hooks, hooks = before[name]
        assert model.attn_processors == processors  # the very same stock processor objects
        assert dict(model._forward_pre_hooks) == pre_hooks and dict(model._forward_hooks) == hooks
    assert not hasattr(i2v_pipe, "_qcompile_runtime")
    assert (run_tiny(i2v_pipe) - i2v_stock[5.0]).abs().max().item() == 0.0
    assert handle.report().pipeline_calls == 1  # the report outlives the unload


def test_shadow_records_every_call_and_leaves_the_output_unchanged(i2v_pipe, i2v_stock):
    with runtime.shadow(i2v_pipe, num_inference_steps=4, backend="reference") as rec:
        out = run_tiny(i2v_pipe)
    assert (out - i2v_stock[5.0]).abs().max().item() == 0.0
    # 4 steps x 2 CFG branches x 40 layers x 2 kinds, each expert serving two steps.
    assert len(rec.records) == 4 * 2 * 40 * 2 and rec.pipeline_calls == 1
    keys = {(r.component, r.step, r.layer, r.kind, r.branch) for r in rec.records}
    assert len(keys) == len(rec.records)
    assert {(r.component, r.step) for r in rec.records} == {
        ("transformer", 0), ("transformer", 1), ("transformer_2", 2), ("transformer_2", 3)}
    assert all(0.99 < r.cos_sim <= 1.0 and r.rel_l1 > 0 and r.rmse > 0 and r.used == "native" for r in rec.records)
    assert rec.to_dicts()[0].keys() >= {"component", "step", "layer", "kind", "branch", "cos_sim", "rel_l1", "rmse"}
    assert i2v_pipe.transformer.blocks[0].attn1.processor.__class__.__name__ == "WanAttnProcessor"


def test_shadow_checks_the_step_count(i2v_pipe):
    with runtime.shadow(i2v_pipe, num_inference_steps=3, kinds=("self",)) as rec:
        with pytest.raises(runtime.StepCountError, match="num_inference_steps=3"):
            run_tiny(i2v_pipe)
    assert rec.records == []
