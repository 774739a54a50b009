"""Video-to-video with strength < 1 (WanVideoToVideoPipeline slices its scheduler's timesteps without
set_begin_index and runs only the last steps): the plan's step i is step i of the scheduler's full schedule, the
steps strength skips are not run, and a plan for the wrong step count is refused saying how steps map."""

from __future__ import annotations

import pytest
import torch

import runtime
from runtime.models.wan import build_tiny_video_to_video_pipeline
from runtime.tiny import run_tiny
from tests.runtime.conftest import MIXED_RULES, T2V, recipe

STEPS = 4


@pytest.fixture(scope="module")
def v2v_pipe():
    return build_tiny_video_to_video_pipeline(T2V)


@pytest.mark.parametrize("strength, first_step", [(0.75, 1), (0.5, 2), (1.0, 0)])
def test_video_to_video_follows_the_plan_from_the_step_strength_starts_at(v2v_pipe, compile_tiny, strength,
                                                                          first_step):
    plan = compile_tiny(recipe(T2V, kinds="[self, cross]", rules=MIXED_RULES))
    with runtime.load(v2v_pipe, plan, backend="reference") as handle:
        run_tiny(v2v_pipe, strength=strength)
        report = handle.report()
    assert report.pipeline_calls == 1
    assert report.observed_schedule == [None] * first_step + ["transformer"] * (STEPS - first_step)
    assert report.matches_plan(), report.format()
    planned_fp8 = 0
    for kind in ("self", "cross"):
        rows = plan.data["tables"]["transformer"][kind]
        executed = report.executed["transformer"][kind]
        assert executed[:first_step] == ["." * len(row) for row in rows[:first_step]]
        assert executed[first_step:] == list(rows[first_step:])  # executed table == plan, for every step that ran
        planned_fp8 += sum(row.count("1") for row in rows[first_step:])
    assert report.call_counts["reference"] == 2 * planned_fp8  # cond and uncond
    assert "executed table == plan: yes" in report.format()


def test_video_to_video_with_an_all_native_plan_is_the_stock_computation(v2v_pipe, compile_tiny):
    stock = run_tiny(v2v_pipe, strength=0.75)
    with runtime.load(v2v_pipe, compile_tiny(recipe(T2V, default="native")), backend="reference") as handle:
        planned = run_tiny(v2v_pipe, strength=0.75)
        assert handle.report().matches_plan()
    assert torch.equal(planned, stock)


def test_a_plan_laid_out_over_the_steps_run_is_refused_saying_how_steps_map(v2v_pipe, compile_tiny):
    # 4 scheduler steps at strength 0.75 run 3: a plan compiled for 3 steps does not fit the 4-step schedule.
    plan = compile_tiny(recipe(T2V, steps=3))
    with runtime.load(v2v_pipe, plan, backend="reference"):
        with pytest.raises(runtime.StepCountError) as caught:
            run_tiny(v2v_pipe, strength=0.75, num_inference_steps=4)
    message = str(caught.value)
    assert "called with 4 denoising steps, expected 3: call it with num_inference_steps=3" in message
    assert "starts at step 1 of its 4-step schedule" in message
    assert "a plan's steps are the scheduler's full schedule, not the steps run" in message
