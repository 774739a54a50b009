"""runtime.load follows a Flux.1 plan cell for cell on the tiny offline pipeline (runtime/models/flux.py).

Two block lists (`joint`: 19 dual-stream `transformer_blocks`, `single`: 38 `single_transformer_blocks`), both
reached through diffusers' dispatcher, no masks, one forward per step (two with true CFG). Which calls ran
quantized is observed independently of the runtime (tests/runtime/models/family_runtime.py).
"""

from __future__ import annotations

import pytest
import torch

import runtime
from runtime.models import model_support, tiny_flux
from runtime.models.flux import FluxSupport
from tests.runtime.models.family_runtime import (
    STEPS,
    assert_all_native_is_stock,
    assert_wrong_step_count_refused,
    compile_shipped,
    compile_variant,
    observe_quantized,
    planned_cells,
    planned_run,
    run,
)

RECIPES = {"dev": "flux1_dev", "schnell": "flux1_schnell"}


@pytest.fixture(scope="module")
def pipes():
    built = {}

    def get(variant: str):
        if variant not in built:
            pipe = tiny_flux.build_tiny_pipeline(0, variant=variant)
            built[variant] = (pipe, run(tiny_flux, pipe))
        return built[variant]

    return get


@pytest.mark.parametrize("variant", ["dev", "schnell"])
def test_shipped_plan_runs_cell_for_cell_and_unload_restores_stock(variant, pipes, tmp_path):
    pipe, stock = pipes(variant)
    plan = compile_shipped(RECIPES[variant], tmp_path / "plan.json")
    out, report, _, obs, quantized = planned_run(tiny_flux, pipe, plan)
    assert report.matches_plan(), report.mismatches()[:5]
    assert report.pipeline_calls == 1 and report.fallback_calls == 0
    assert len(obs.forwards) == STEPS  # guidance-distilled: one forward per step
    assert not any(call.masked for calls in obs.forwards for call in calls)
    planned, cells = planned_cells(plan, obs, forwards_per_step=1)
    # both block lists have quantized and native cells, and exactly the planned ones ran quantized
    assert {cells[c][0] for c in planned} == {"joint", "single"}
    assert len(planned) < len(cells)
    assert quantized == planned
    assert not torch.equal(out, stock)
    assert torch.equal(run(tiny_flux, pipe), stock)  # unloaded: stock, bit for bit


def test_all_native_plan_is_bit_identical_to_stock(pipes):
    pipe, stock = pipes("dev")
    assert_all_native_is_stock(tiny_flux, pipe, stock, compile_variant("flux1_dev", default="native", keep_rules=False))


def test_true_cfg_runs_both_forwards_of_a_step_on_the_steps_row(pipes):
    """true_cfg_scale > 1 with a negative prompt: two forwards per step, both follow that step's row."""
    pipe, _ = pipes("dev")
    plan = compile_variant("flux1_dev", default="fp8")
    with runtime.load(pipe, plan, backend="reference") as handle, \
            observe_quantized(pipe.transformer) as (obs, quantized):
        run(tiny_flux, pipe, negative_prompt="blurry", true_cfg_scale=2.0)
        report = handle.report()
    assert len(obs.forwards) == 2 * STEPS
    assert report.matches_plan()
    planned, _ = planned_cells(plan, obs, forwards_per_step=2)
    assert planned and quantized == planned
    # every quantized cell served two calls (cond and uncond), each by the reference backend
    cells = report.cells["transformer"]["joint"][1]
    assert cells[1] == {"reference": 2} and cells[0] == {"native": 2}


def test_wrong_step_count_is_refused(pipes):
    pipe, stock = pipes("dev")
    assert_wrong_step_count_refused(tiny_flux, pipe, stock, compile_variant("flux1_dev", default="fp8"))


def test_flux_model_support_serves_pipeline_tiny_builder_and_private_api():
    from runtime.diffusers_private import check_private_api
    from runtime.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline("flux.1-schnell")
    assert isinstance(model_support(pipe), FluxSupport)
    assert isinstance(model_support(pipe.transformer), FluxSupport)
    assert not pipe.transformer.config.guidance_embeds  # schnell
    assert check_private_api() == []


def test_tiny_builder_refuses_a_family_whose_sizes_it_cannot_build():
    """tiny_flux's sizes are fixed: the full-size family (24 heads x 128) is refused by name, not built wrong."""
    from qcompiler.families import get_family
    from runtime.models import ModelSupportError

    with pytest.raises(ModelSupportError, match=r"do not fit family flux.1-dev: .*2 heads x 64, the family 24 x 128"):
        FluxSupport().build_tiny(get_family("flux.1-dev"))
