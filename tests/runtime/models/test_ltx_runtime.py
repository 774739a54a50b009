"""runtime.load follows an LTX-Video plan cell for cell on the tiny offline pipeline (runtime/models/ltx.py).

One block list (28 `transformer_blocks`), two kinds through diffusers' dispatcher: `self` (attn1, no mask) and
`cross` (attn2, an additive text mask on every call: a padding mask, run quantized over the valid text tokens
when the plan quantizes cross, see runtime/masks.py). Batched CFG: one forward per step serves both branches
(batch 2), so every step's row is followed once per step and the branch is "cond+uncond". Which calls ran
quantized is observed independently of the runtime (tests/runtime/models/family_runtime.py).
"""

from __future__ import annotations

import re

import pytest
import torch

import runtime
from qcompiler import compile_recipe_text
from runtime.errors import UnservableCallError
from runtime.execution_report import FALLBACK_BACKEND
from runtime.models import model_support, tiny_ltx
from runtime.models.base import BATCHED
from runtime.models.ltx import LTXVideoSupport
from tests.runtime.models.family_runtime import (
    RECIPES,
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

LAYERS = 28


@pytest.fixture(scope="module")
def pipe_and_stock():
    pipe = tiny_ltx.build_tiny_pipeline(0)
    return pipe, run(tiny_ltx, pipe)


def test_shipped_plan_runs_cell_for_cell_in_one_batched_forward_per_step(pipe_and_stock, tmp_path):
    pipe, stock = pipe_and_stock
    plan = compile_shipped("ltx_video", tmp_path / "plan.json")
    out, report, records, obs, quantized = planned_run(tiny_ltx, pipe, plan)
    assert report.matches_plan(), report.mismatches()[:5]
    assert report.pipeline_calls == 1 and report.fallback_calls == 0
    assert len(obs.forwards) == STEPS  # batched CFG: one forward per step ...
    assert {call.batch for calls in obs.forwards for call in calls} == {2}  # ... over both branches
    planned, cells = planned_cells(plan, obs, forwards_per_step=1)
    assert planned and {cells[c][0] for c in planned} == {"self"}
    assert quantized == planned
    # every quantized call is recorded as serving both CFG branches
    assert len(records) == len(planned) and {r.branch for r in records} == {BATCHED}
    assert not torch.equal(out, stock)
    assert torch.equal(run(tiny_ltx, pipe), stock)  # unloaded: stock, bit for bit


def test_planned_quantized_cross_cells_run_quantized_over_the_valid_text_tokens(pipe_and_stock):
    """The cross-attention text mask (an additive -10000 bias on the padded text tokens, on every call) is a padding
    mask: a plan quantizing cross runs every cross call quantized over each sample's valid text tokens (packed), never
    with the mask dropped, and the report says so; the plan's fallback policy is `error`, so nothing ran stock."""
    pipe, _ = pipe_and_stock
    plan = compile_variant("ltx_video", default="fp8", keep_rules=False, kinds="[self, cross]")
    assert plan.fallback == "error"
    # the prompts really are padded, and differently: the packing drops tokens, per sample
    text = pipe.encode_prompt("a red cube", "blurry", max_sequence_length=tiny_ltx.TEXT_TOKENS, device="cpu")
    lengths = {int(text[1].sum()), int(text[3].sum())}
    assert len(lengths) == 2 and max(lengths) < tiny_ltx.TEXT_TOKENS
    records = []
    with runtime.load(pipe, plan, backend="reference") as handle, \
            observe_quantized(pipe.transformer) as (obs, quantized):
        handle.set_observer(records.append)
        run(tiny_ltx, pipe)
        report = handle.report()
    planned, cells = planned_cells(plan, obs, forwards_per_step=1)
    cross = [c for c, (kind, _, _) in cells.items() if kind == "cross"]
    assert len(cross) == STEPS * LAYERS
    assert all(obs.forwards[f][i].masked and obs.forwards[f][i].mask_dtype == "float32" for f, i in cross)
    assert quantized == planned and len(quantized) == 2 * STEPS * LAYERS  # self and cross, every call
    assert min(r.cos_sim for r in records if r.kind == "cross") > 0.95  # close to the stock masked attention
    assert report.matches_plan(), report.mismatches()[:5]
    assert report.fallback_calls == 0
    assert report.packed_calls == {"transformer": {"cross": STEPS * LAYERS}}
    assert all(cell == {"reference": 1} for row in report.cells["transformer"]["cross"] for cell in row)
    assert (f"transformer / cross: {STEPS * LAYERS} planned-quantized calls carried a padding mask: they ran "
            "quantized over the valid tokens only (packed per sample)") in report.format()
    assert not any("transformer / self" in note for note in report.notes)


def test_all_native_plan_is_bit_identical_to_stock(pipe_and_stock):
    pipe, stock = pipe_and_stock
    assert_all_native_is_stock(tiny_ltx, pipe, stock, compile_variant("ltx_video", default="native", keep_rules=False, kinds="[self, cross]"))


def test_wrong_step_count_is_refused(pipe_and_stock):
    pipe, stock = pipe_and_stock
    assert_wrong_step_count_refused(tiny_ltx, pipe, stock, compile_variant("ltx_video", default="fp8"))


def test_ltx_model_support_serves_pipeline_and_tiny_builder():
    from runtime.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline("ltx-video")
    assert type(pipe).__name__ == "LTXPipeline"
    assert isinstance(model_support(pipe), LTXVideoSupport)
    assert model_support(pipe).branch(1) == BATCHED



def test_shadow_mode_measures_the_packed_cross_calls_and_leaves_the_run_stock(pipe_and_stock):
    """calibrate's shadow mode records the error of every call the quantized kernel can serve: the masked
    cross-attention calls too (packed over the valid text tokens), while the run stays stock."""
    pipe, stock = pipe_and_stock
    with runtime.shadow(pipe, num_inference_steps=STEPS, backend="reference") as recorder:
        out = run(tiny_ltx, pipe)
    assert torch.equal(out, stock)
    kinds = [r.kind for r in recorder.records]
    assert kinds.count("cross") == kinds.count("self") == STEPS * LAYERS
    assert min(r.cos_sim for r in recorder.records if r.kind == "cross") > 0.95


def _soft_masked_inputs(pipe):
    """Prompt embeddings whose text mask is soft on one token (0.9999): the transformer's bias there is -1, a
    penalty the stock softmax applies, not padding."""
    embeds, mask, negative, negative_mask = pipe.encode_prompt(
        "a red cube", "blurry", max_sequence_length=tiny_ltx.TEXT_TOKENS, device="cpu")
    mask = mask.float()
    mask[0, 0] = 0.9999
    return dict(prompt=None, negative_prompt=None, prompt_embeds=embeds, prompt_attention_mask=mask,
                negative_prompt_embeds=negative, negative_prompt_attention_mask=negative_mask)


@pytest.mark.parametrize("fallback", ["error", "native"])
def test_a_cross_mask_that_is_not_padding_follows_the_plans_fallback_policy(pipe_and_stock, fallback):
    pipe, _ = pipe_and_stock
    text = (RECIPES / "ltx_video.yaml").read_text()
    text = re.sub(r"(?m)^fallback: \w+", f"fallback: {fallback}", text)
    text = re.sub(r"(?m)^attention_kinds: .*$", "attention_kinds: [self, cross]", text)
    plan = compile_recipe_text(re.sub(r"(?ms)^rules:\n.*", "", text), name="ltx.yaml", steps=STEPS, variant="tiny")
    inputs = _soft_masked_inputs(pipe)
    if fallback == "error":
        with runtime.load(pipe, plan, backend="reference"):
            with pytest.raises(UnservableCallError, match=r"transformer / cross layer 0, step 0 \(cond\+uncond\): "
                                                          r".*not provably an exact drop.*fallback: native"):
                run(tiny_ltx, pipe, **inputs)
        return
    with runtime.load(pipe, plan, backend="reference") as handle, \
            observe_quantized(pipe.transformer) as (obs, quantized):
        run(tiny_ltx, pipe, **inputs)
        report = handle.report()
    _, cells = planned_cells(plan, obs, forwards_per_step=1)
    assert {cells[c][0] for c in quantized} == {"self"}  # no cross call ran quantized with its mask dropped
    assert report.fallback_calls == STEPS * LAYERS and not report.packed_calls
    assert all(cell == {FALLBACK_BACKEND: 1} for row in report.cells["transformer"]["cross"] for cell in row)
    assert (f"transformer / cross: {STEPS * LAYERS} planned-quantized calls carried an attention mask"
            in report.format()) and "not provably an exact drop" in report.format()
