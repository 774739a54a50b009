"""diffusers' caches beside a loaded plan (enabled before or after `runtime.load`): every attention call that runs
follows the plan, and a cell a cache skipped in a forward counts as skipped (symbol "s", lane "skipped"), not as
a mismatch."""

from __future__ import annotations

import pytest
from diffusers import (
    FasterCacheConfig,
    FirstBlockCacheConfig,
    MagCacheConfig,
    PyramidAttentionBroadcastConfig,
    TaylorSeerCacheConfig,
)

import runtime
from runtime.execution_report import SKIPPED_CHAR, SKIPPED_KEY
from runtime.tiny import run_tiny
from tests.runtime.conftest import I2V, I2V_RULES, recipe

STEPS = 4
ALWAYS = (-1, 1001)  # a timestep range covering every step of the tiny schedule (1000 training timesteps)
# FasterCache approximates from the outputs of earlier calls, and fails (diffusers 0.42.1) if asked to skip the
# first call a module sees: per expert, a range that leaves out its first step (the tiny 4-step schedule has
# timesteps 999, 900 | 750, 500, the boundary at 875).
FASTER_RANGES = {"transformer": (-1, 950), "transformer_2": (-1, 600)}


def _configs(pipe):
    timestep = lambda: pipe.current_timestep  # noqa: E731 - diffusers' callback form
    return {
        "first-block": lambda name: FirstBlockCacheConfig(threshold=0.2),
        "pyramid-attention-broadcast": lambda name: PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=ALWAYS,
            cross_attention_block_skip_range=2, cross_attention_timestep_skip_range=ALWAYS,
            current_timestep_callback=timestep),
        # mag_ratios all 1 and a generous threshold: the accumulated error stays small, so it skips steps.
        "mag": lambda name: MagCacheConfig(threshold=10.0, max_skip_steps=2, retention_ratio=0.0,
                                      num_inference_steps=STEPS * 2, mag_ratios=[1.0] * (STEPS * 2)),
        # Its default identifiers ("^blocks.*attn", fullmatched) miss Wan's "blocks.N.attn1": name them.
        "taylorseer": lambda name: TaylorSeerCacheConfig(
            cache_interval=2, disable_cache_before_step=1, max_order=1, taylor_factors_dtype=None,
            cache_identifiers=[r"blocks\.\d+\.attn[12]"]),
        "faster": lambda name: FasterCacheConfig(
            spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=FASTER_RANGES[name],
            current_timestep_callback=timestep, attention_weight_callback=lambda _: 0.5,
            is_guidance_distilled=True),
    }


@pytest.fixture(scope="module")
def mixed_plan(compile_tiny):
    return compile_tiny(recipe(I2V, kinds="[self, cross]", rules=I2V_RULES))


def _enable(pipe, config_factory):
    for name in ("transformer", "transformer_2"):
        getattr(pipe, name).enable_cache(config_factory(name))


def _disable(pipe):
    for model in (pipe.transformer, pipe.transformer_2):
        model.disable_cache()


@pytest.mark.parametrize("order", ["cache-first", "plan-first"])
@pytest.mark.parametrize("cache", ["first-block", "pyramid-attention-broadcast", "mag", "taylorseer", "faster"])
def test_cache_skips_are_counted_as_skipped_and_the_rest_follows_the_plan(i2v_pipe, mixed_plan, cache, order):
    factory = _configs(i2v_pipe)[cache]
    if order == "cache-first":
        _enable(i2v_pipe, factory)
    try:
        with runtime.load(i2v_pipe, mixed_plan, backend="fp8-reference") as handle:
            if order == "plan-first":
                _enable(i2v_pipe, factory)
            run_tiny(i2v_pipe, num_inference_steps=STEPS)
            report = handle.report()
    finally:
        _disable(i2v_pipe)
    assert report.skipped > 0, f"{cache} skipped nothing: the test would not show skips are counted"
    assert report.matches_plan(), report.format()
    assert report.schedule_matches_plan()
    forwards_per_step = 2  # CFG: cond and uncond, each one forward of the serving expert
    for component, kinds in report.cells.items():
        for kind, rows in kinds.items():
            for step, row in enumerate(rows):
                if report.observed_schedule[step] != component:
                    continue
                planned = report.plan_rows[component][kind][step]
                for layer, cell in enumerate(row):
                    # Every forward that reached the step either called this cell's attention or skipped it.
                    assert sum(cell.values()) == forwards_per_step, (component, kind, step, layer, cell)
                    ran = {name for name in cell if name != SKIPPED_KEY}
                    if ran:  # what ran is what the plan says
                        assert ran == ({"reference"} if planned[layer] == "1" else {"native"})
                    else:
                        assert report.executed[component][kind][step][layer] == SKIPPED_CHAR
    assert f"skipped by a cache: {report.skipped}" in report.format()
