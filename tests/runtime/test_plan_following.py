"""The pipeline provably follows the plan: executed table == plan table cell for cell, step tracking across
CFG, the expert switch, guidance 1, interrupt, repeated calls and an exception mid-call."""

from __future__ import annotations

import pytest
import torch

import runtime
from runtime.tiny import run_tiny
from tests.runtime.conftest import I2V, I2V_RULES, MIXED_RULES, T2V, TI2V, expected_rows, recipe


@pytest.fixture(scope="module")
def i2v_plan(compile_tiny):
    return compile_tiny(recipe(I2V, kinds="[self, cross]", rules=I2V_RULES))


def assert_follows_plan(report, plan, calls_per_cell: int) -> None:
    for component in plan.component_names:
        for kind in plan.attention_kinds:
            assert report.executed[component][kind] == expected_rows(plan, component, kind), (component, kind)
            for step, row in enumerate(report.cells[component][kind]):
                if plan.expert_schedule[step] != component:
                    assert all(cell == {} for cell in row)
                    continue
                for layer, cell in enumerate(row):
                    backend = "reference" if plan.is_quantized(component, kind, step, layer) else "native"
                    assert cell == {backend: calls_per_cell}, (component, kind, step, layer)
    assert report.matches_plan() and report.mismatches() == []
    assert report.observed_schedule == list(plan.expert_schedule)
    assert report.schedule_matches_plan()


@pytest.mark.parametrize("guidance_scale, calls_per_cell", [(5.0, 2), (1.0, 1)], ids=["cfg", "no-cfg"])
def test_executed_table_equals_plan_for_both_experts(i2v_pipe, i2v_plan, guidance_scale, calls_per_cell):
    assert set(i2v_plan.expert_schedule) == {"transformer", "transformer_2"}  # both experts really run
    with runtime.load(i2v_pipe, i2v_plan, backend="reference") as handle:
        run_tiny(i2v_pipe, guidance_scale=guidance_scale)
        report = handle.report()
    assert report.pipeline_calls == 1
    assert_follows_plan(report, i2v_plan, calls_per_cell)
    fp8_cells = sum(row.count("1") for kinds in report.executed.values() for rows in kinds.values() for row in rows)
    assert report.call_counts["reference"] == fp8_cells * calls_per_cell > 0


@pytest.mark.parametrize("family", [TI2V, T2V])
def test_one_transformer_families_follow_the_plan(request, compile_tiny, family):
    pipe = request.getfixturevalue("ti2v_pipe" if family == TI2V else "t2v_pipe")
    plan = compile_tiny(recipe(family, kinds="[self, cross]", rules=MIXED_RULES))
    with runtime.load(pipe, plan, backend="reference") as handle:
        run_tiny(pipe)
        report = handle.report()
    assert_follows_plan(report, plan, calls_per_cell=2)


def test_cfg_passes_share_the_step_and_are_told_apart(i2v_pipe, i2v_plan):
    records = []
    with runtime.load(i2v_pipe, i2v_plan, backend="reference") as handle:
        handle.set_observer(records.append)
        run_tiny(i2v_pipe)
    by_cell = {}
    for r in records:
        by_cell.setdefault((r.component, r.kind, r.step, r.layer), []).append(r.branch)
    assert by_cell and all(branches == ["cond", "uncond"] for branches in by_cell.values())
    # Every FP8 call was observed, with a sane error: FP8 is close to native but not identical.
    assert len(records) == handle.report().call_counts["reference"]
    assert all(0.99 < r.cos_sim <= 1.0 and 0 < r.rel_l1 < 0.1 and r.used == "fp8" for r in records)


def test_repeated_calls_accumulate_the_same_cells(i2v_pipe, i2v_plan):
    with runtime.load(i2v_pipe, i2v_plan, backend="reference") as handle:
        first = run_tiny(i2v_pipe)
        second = run_tiny(i2v_pipe)
        report = handle.report()
    assert torch.equal(first, second)
    assert report.pipeline_calls == 2
    assert_follows_plan(report, i2v_plan, calls_per_cell=4)


def test_interrupt_stops_cells_and_the_next_call_is_complete(i2v_pipe, i2v_plan):
    def interrupt_after_step_0(pipe, step, timestep, kwargs):
        if step == 0:
            pipe._interrupt = True
        return kwargs

    with runtime.load(i2v_pipe, i2v_plan, backend="reference") as handle:
        run_tiny(i2v_pipe, callback_on_step_end=interrupt_after_step_0)
        interrupted = handle.report()
        handle.reset_report()
        run_tiny(i2v_pipe)
        full = handle.report()
    assert interrupted.observed_schedule == ["transformer", None, None, None]
    assert interrupted.executed["transformer"]["self"][1] == "." * 40
    assert interrupted.matches_plan()  # what ran, ran as planned
    assert_follows_plan(full, i2v_plan, calls_per_cell=2)


def test_exception_mid_forward_then_next_call_starts_clean(i2v_pipe, i2v_plan, i2v_stock):
    block = i2v_pipe.transformer_2.blocks[5]  # a diffusers module; a plain torch hook makes it fail once

    def fail_once(module, args):
        handle_.remove()
        raise RuntimeError("injected failure in transformer_2 block 5")

    with runtime.load(i2v_pipe, i2v_plan, backend="reference") as handle:
        handle_ = block.register_forward_pre_hook(fail_once)
        with pytest.raises(RuntimeError, match="injected"):
            run_tiny(i2v_pipe)
        broken = handle.report()
        handle.reset_report()
        out = run_tiny(i2v_pipe)
        report = handle.report()
    # The failed call ran steps 0-1 and layers 0-4 of step 2's cond pass, as planned.
    assert broken.executed["transformer_2"]["self"][2][:5] == i2v_plan.data["tables"]["transformer_2"]["self"][2][:5]
    assert broken.executed["transformer_2"]["self"][2][5:] == "." * 35
    assert_follows_plan(report, i2v_plan, calls_per_cell=2)
    with runtime.load(i2v_pipe, i2v_plan, backend="reference"):
        assert torch.equal(run_tiny(i2v_pipe), out)  # the failure left no state behind


def test_exception_in_step_callback_then_next_call_is_right(i2v_pipe, i2v_plan):
    def fail_at_step_1(pipe, step, timestep, kwargs):
        if step == 1:
            raise ValueError("callback failed")
        return kwargs

    with runtime.load(i2v_pipe, i2v_plan, backend="reference") as handle:
        with pytest.raises(ValueError):
            run_tiny(i2v_pipe, callback_on_step_end=fail_at_step_1)
        handle.reset_report()
        run_tiny(i2v_pipe)
        assert_follows_plan(handle.report(), i2v_plan, calls_per_cell=2)


@pytest.mark.parametrize("order", ["offload-then-load", "load-then-offload"])
def test_model_cpu_offload_before_or_after_load(compile_tiny, order):
    from runtime.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline(T2V)  # a private pipeline: offloading changes it for good
    plan = compile_tiny(recipe(T2V, kinds="[self, cross]", rules=MIXED_RULES))
    if order == "offload-then-load":
        pipe.enable_model_cpu_offload(device="cpu")
    handle = runtime.load(pipe, plan, backend="reference")
    if order == "load-then-offload":
        pipe.enable_model_cpu_offload(device="cpu")
    # Two calls: accelerate re-installs its hooks at the end of the first one.
    run_tiny(pipe)
    run_tiny(pipe)
    report = handle.report()
    handle.unload()
    assert report.pipeline_calls == 2
    assert_follows_plan(report, plan, calls_per_cell=4)
