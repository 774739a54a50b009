"""runtime.load follows a Qwen-Image plan cell for cell on the tiny offline pipeline (runtime/models/qwenimage.py).

One block list (60 `transformer_blocks`), joint attention through diffusers' dispatcher. True CFG: two forwards
per step (cond, then uncond, with different text lengths), both following the step's row. A key-padding mask
appears only when prompts of unequal length share a batch: such calls run quantized over each sample's valid tokens
(runtime/masks.py packs them), never with the mask dropped, and the report counts them as packed. Which calls ran quantized is observed independently of the runtime
(tests/runtime/models/family_runtime.py). The tiny pipeline takes ~3 s to build: the module is slow.
"""

from __future__ import annotations

import pytest
import torch

import runtime
from runtime.models import model_support, tiny_qwenimage
from runtime.models.qwenimage import QwenImageSupport
from tests.runtime.models.family_runtime import (
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

LAYERS = 60
UNEQUAL = dict(prompt=["a red cube", "a tall red cube on a table"], negative_prompt=["blurry", "x"])


@pytest.fixture(scope="module")
def pipe_and_stock():
    pipe = tiny_qwenimage.build_tiny_pipeline(0)
    return pipe, run(tiny_qwenimage, pipe)


def test_shipped_plan_runs_cell_for_cell_in_both_cfg_forwards(pipe_and_stock, tmp_path):
    pipe, stock = pipe_and_stock
    plan = compile_shipped("qwen_image", tmp_path / "plan.json")
    out, report, records, obs, quantized = planned_run(tiny_qwenimage, pipe, plan)
    assert report.matches_plan(), report.mismatches()[:5]
    assert report.pipeline_calls == 1 and report.fallback_calls == 0
    assert len(obs.forwards) == 2 * STEPS  # true CFG: cond and uncond forwards per step
    assert not any(call.masked for calls in obs.forwards for call in calls)
    assert obs.forwards[0][0].q_len != obs.forwards[1][0].q_len  # the branches' text lengths differ
    planned, _ = planned_cells(plan, obs, forwards_per_step=2)
    assert planned and quantized == planned
    # each quantized cell served two calls, the cond forward's then the uncond forward's
    assert all(cell in ({"reference": 2}, {"native": 2}) for row in report.cells["transformer"]["joint"] for cell in row)
    assert [r.branch for r in records[:2]] == ["cond", "cond"] and records[-1].branch == "uncond"
    assert not torch.equal(out, stock)
    assert torch.equal(run(tiny_qwenimage, pipe), stock)  # unloaded: stock, bit for bit


def test_masked_calls_of_unequal_prompts_run_quantized_packed_and_are_reported_so(pipe_and_stock, tmp_path):
    """Prompts of unequal length in one batch: every joint call carries a key-padding mask ([B, 1, 1, S] bool). It
    is a padding mask, so the planned quantized calls run quantized over each sample's valid tokens (packed), never
    with the mask dropped, and the report says they were packed, with no fallback."""
    pipe, _ = pipe_and_stock
    stock = run(tiny_qwenimage, pipe, **UNEQUAL)
    plan = compile_shipped("qwen_image", tmp_path / "plan.json")
    records = []
    with runtime.load(pipe, plan, backend="reference") as handle, \
            observe_quantized(pipe.transformer) as (obs, quantized):
        handle.set_observer(records.append)
        out = run(tiny_qwenimage, pipe, **UNEQUAL)
        report = handle.report()
    calls = [call for calls in obs.forwards for call in calls]
    assert all(call.masked and call.batch == 2 and call.mask_dtype == "bool" for call in calls)
    assert {call.mask_shape for call in calls} <= {(2, 1, 1, call.kv_len) for call in calls}
    planned, _ = planned_cells(plan, obs, forwards_per_step=2)
    assert planned and quantized == planned  # every planned masked call ran the quantized kernel ...
    assert not torch.equal(out, stock)
    # ... with the mask honoured: each call's output is close to the stock masked attention on the same inputs
    assert len(records) == len(planned) and min(r.cos_sim for r in records) > 0.95
    assert report.matches_plan(), report.mismatches()[:5]
    assert report.fallback_calls == 0
    assert report.packed_calls == {"transformer": {"joint": len(planned)}}
    joint = report.cells["transformer"]["joint"]
    table = plan.table("transformer", "joint")
    for step, row in enumerate(joint):
        for layer, cell in enumerate(row):
            assert cell == ({"reference": 2} if table[step][layer] else {"native": 2}), (step, layer)
    text = report.format()
    assert (f"transformer / joint: {len(planned)} planned-quantized calls carried a padding mask: they ran "
            "quantized over the valid tokens only (packed per sample)") in text
    assert "counted as fallback" not in text
    assert report.to_dict()["packed_calls"] == {"transformer": {"joint": len(planned)}}


def test_packing_is_exact_a_mask_less_exact_kernel_reproduces_the_stock_masked_run(pipe_and_stock):
    """What packing computes is the masked attention itself: with an exact mask-less kernel in every cell, the
    unequal-prompt run (every call masked) equals the stock run up to float rounding."""
    pipe, _ = pipe_and_stock
    stock = run(tiny_qwenimage, pipe, **UNEQUAL)
    plan = compile_variant("qwen_image", default="fp8", keep_rules=False)
    with runtime.load(pipe, plan, backend=ExactAttention()) as handle:
        out = run(tiny_qwenimage, pipe, **UNEQUAL)
        report = handle.report()
    assert report.matches_plan() and report.fallback_calls == 0
    assert report.packed_calls == {"transformer": {"joint": 2 * STEPS * LAYERS}}
    assert torch.allclose(out, stock, rtol=1e-4, atol=1e-5), float((out - stock).abs().max())


def test_all_native_plan_is_bit_identical_to_stock(pipe_and_stock):
    pipe, stock = pipe_and_stock
    assert_all_native_is_stock(tiny_qwenimage, pipe, stock, compile_variant("qwen_image", default="native", keep_rules=False))


def test_wrong_step_count_is_refused(pipe_and_stock):
    pipe, stock = pipe_and_stock
    assert_wrong_step_count_refused(tiny_qwenimage, pipe, stock, compile_variant("qwen_image", default="fp8"))


def test_qwen_image_model_support_serves_pipeline_and_tiny_builder(pipe_and_stock):
    pipe, _ = pipe_and_stock
    assert isinstance(model_support(pipe), QwenImageSupport)
    assert isinstance(model_support(pipe.transformer), QwenImageSupport)
    from runtime.tiny import build_tiny_pipeline

    assert type(build_tiny_pipeline("qwen-image").transformer).__name__ == "QwenImageTransformer2DModel"
