"""runtime.load follows HunyuanVideo-1.5 and HunyuanVideo (1.0) plans cell for cell on their tiny offline pipelines
(runtime/models/hunyuanvideo15.py, runtime/models/hunyuanvideo.py).

Both mix two attention entries in one model: the joint (and, for 1.0, single) blocks call diffusers' dispatcher,
the token refiner's AttnProcessor2_0 calls F.scaled_dot_product_attention itself (runtime/processor_entry.py).
Every joint/single call carries a text padding mask: planned-quantized calls run quantized over each sample's valid
tokens (runtime/masks.py), padded query rows get what the stock attention gives them. HunyuanVideo-1.5 runs two
forwards per step (the guider's cond and uncond), 1.0 one (guidance-distilled). Which calls ran quantized is
observed independently of the runtime (tests/runtime/models/family_runtime.py). Slow: each pipeline takes seconds
to build.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
import torch

import runtime
from qcompiler import compile_recipe_text
from runtime.errors import UnservableCallError
from runtime.models import model_support, tiny_hunyuanvideo, tiny_hunyuanvideo15
from runtime.models.hunyuanvideo import HunyuanVideoSupport
from runtime.models.hunyuanvideo15 import HunyuanVideo15Support
from tests.runtime.models.family_runtime import (
    RECIPES,
    STEPS,
    ExactAttention,
    assert_all_native_is_stock,
    assert_wrong_step_count_refused,
    compile_shipped,
    compile_variant,
    observe_quantized,
    planned_cells,
    planned_run,
    run,
)

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Case:
    recipe: str
    tiny: object  # the tiny builder module
    support: type
    forwards_per_step: int
    quantized_kinds: tuple[str, ...]  # the kinds the shipped recipe quantizes
    refiner_mask_is_padding: bool  # 1.5: m[i] & m[j]; 1.0 also keeps key 0 for every query row


CASES = {
    "hunyuanvideo1.5": Case("hunyuanvideo15_t2v_480p", tiny_hunyuanvideo15, HunyuanVideo15Support, 2, ("joint",),
                            True),
    "hunyuanvideo": Case("hunyuanvideo_t2v_720p", tiny_hunyuanvideo, HunyuanVideoSupport, 1, ("joint", "single"),
                         False),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def case_pipe_stock(request):
    case = CASES[request.param]
    pipe = case.tiny.build_tiny_pipeline(0)
    return case, pipe, run(case.tiny, pipe)


def test_shipped_plan_runs_cell_for_cell_with_every_masked_call_packed(case_pipe_stock, tmp_path):
    case, pipe, stock = case_pipe_stock
    plan = compile_shipped(case.recipe, tmp_path / "plan.json")
    out, report, records, obs, quantized = planned_run(case.tiny, pipe, plan)
    assert len(obs.forwards) == case.forwards_per_step * STEPS
    assert all(call.masked for calls in obs.forwards for call in calls)  # every call carries its text mask
    planned, cells = planned_cells(plan, obs, forwards_per_step=case.forwards_per_step)
    assert planned and quantized == planned
    assert {cells[c][0] for c in planned} == set(case.quantized_kinds)
    assert report.matches_plan(), report.mismatches()[:5]
    assert report.fallback_calls == 0
    packed = {kind: sum(1 for c in planned if cells[c][0] == kind) for kind in case.quantized_kinds}
    assert report.packed_calls == {"transformer": packed}
    # the packed calls honour the mask: close to the stock masked attention on the same inputs
    assert len(records) == len(planned) and min(r.cos_sim for r in records) > 0.95
    assert not torch.equal(out, stock)
    assert torch.equal(run(case.tiny, pipe), stock)  # unloaded: stock, bit for bit


def test_packing_is_exact_padded_rows_included(case_pipe_stock):
    """Every joint/single call quantized with an exact mask-less kernel: packing computes the masked attention
    itself (the padded text-side rows get what stock gives them), so the run equals stock up to float rounding."""
    case, pipe, stock = case_pipe_stock
    plan = compile_variant(case.recipe, default="fp8", keep_rules=False)
    with runtime.load(pipe, plan, backend=ExactAttention()) as handle:
        out = run(case.tiny, pipe)
        report = handle.report()
    assert report.matches_plan() and report.fallback_calls == 0
    assert set(report.packed_calls["transformer"]) == set(case.quantized_kinds)
    assert torch.allclose(out, stock, rtol=1e-4, atol=1e-5), float((out - stock).abs().max())


def test_a_quantized_token_refiner_runs_through_the_processor_entry(case_pipe_stock):
    """The refiner calls SDPA itself. HunyuanVideo-1.5's refiner mask is a padding mask: its planned-quantized
    calls run quantized, packed. HunyuanVideo 1.0 keeps key 0 for every padded query row, which is no padding mask:
    the calls follow the plan's fallback policy (native: stock attention, counted and noted; error: refused)."""
    case, pipe, stock = case_pipe_stock
    kinds = "[" + ", ".join((*case.quantized_kinds, "refiner")) + "]"
    plan = compile_variant(case.recipe, default="fp8", keep_rules=False, kinds=kinds)
    assert plan.fallback == "native"
    with runtime.load(pipe, plan, backend="reference") as handle, \
            observe_quantized(pipe.transformer) as (obs, quantized):
        run(case.tiny, pipe)
        report = handle.report()
    refiner_calls = {(f, i) for f, calls in enumerate(obs.forwards) for i, call in enumerate(calls)
                     if call.block_list.endswith("refiner_blocks")}
    assert len(refiner_calls) == 2 * case.forwards_per_step * STEPS and all(
        obs.forwards[f][i].via == "sdpa" for f, i in refiner_calls)
    if case.refiner_mask_is_padding:
        assert refiner_calls <= quantized
        assert report.fallback_calls == 0 and report.packed_calls["transformer"]["refiner"] == len(refiner_calls)
    else:
        assert not refiner_calls & quantized
        assert report.fallback_calls == len(refiner_calls)
        assert "transformer / refiner: " in report.format()
        error_plan = compile_variant_with_fallback_error(case.recipe, kinds)
        with runtime.load(pipe, error_plan, backend="reference"):
            with pytest.raises(UnservableCallError, match="refiner"):
                run(case.tiny, pipe)
    assert torch.equal(run(case.tiny, pipe), stock)


def compile_variant_with_fallback_error(recipe: str, kinds: str):
    """The shipped recipe with `fallback: error`, no rules, default fp8 and `attention_kinds: kinds`."""
    text = (RECIPES / f"{recipe}.yaml").read_text().replace("fallback: native", "fallback: error")
    text = re.sub(r"(?m)^attention_kinds: .*$", f"attention_kinds: {kinds}", text)
    return compile_recipe_text(text.split("rules:")[0], name=f"{recipe}-error.yaml", steps=STEPS, variant="tiny")


def test_all_native_plan_is_bit_identical_to_stock(case_pipe_stock):
    case, pipe, stock = case_pipe_stock
    assert_all_native_is_stock(case.tiny, pipe, stock, compile_variant(case.recipe, default="native", keep_rules=False))


def test_wrong_step_count_is_refused_and_model_support_is_found(case_pipe_stock):
    case, pipe, stock = case_pipe_stock
    assert isinstance(model_support(pipe), case.support)
    assert isinstance(model_support(pipe.transformer), case.support)
    assert_wrong_step_count_refused(case.tiny, pipe, stock, compile_variant(case.recipe, default="fp8"))
