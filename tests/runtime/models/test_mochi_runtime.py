"""runtime.load follows a Mochi 1 plan cell for cell on the tiny offline pipeline (runtime/models/mochi.py).

One block list (48 `transformer_blocks`), one kind, `joint` (attn1). MochiAttnProcessor2_0 loops over the batch and
calls F.scaled_dot_product_attention once per sample (batch 1, no mask) over [video, that sample's valid text
tokens]; its MochiAttention has no `set_processor`. The processor entry serves each of those calls as the same
(step, layer) cell, so with batched CFG (one forward per step, batch 2) every cell that runs counts two calls.
The pipeline's loop sets its current timestep to `1000 - t`, which the step tracker follows through the model
support's `current_timesteps`. Which calls ran quantized is observed independently of the runtime
(tests/runtime/models/family_runtime.py). Slow: the pipeline takes seconds to build.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

import runtime
from runtime.errors import PlanMismatchError
from runtime.models import model_support, tiny_mochi
from runtime.models.base import BATCHED, ModelSupport
from runtime.models.mochi import MochiSupport
from tests.runtime.models.family_runtime import (
    STEPS,
    assert_all_native_is_stock,
    assert_wrong_step_count_refused,
    compile_shipped,
    compile_variant,
    planned_cells,
    planned_run,
    run,
)
from tests.runtime.models.tiny_family_observer import observe

# diffusers' Mochi RoPE asks CPU autocast for float32, which it declines with a warning
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:In CPU autocast")]

DATA = Path(__file__).resolve().parents[3] / "qcompiler" / "families" / "data"
LAYERS = 48


@pytest.fixture(scope="module")
def pipe_stock():
    pipe = tiny_mochi.build_tiny_pipeline(0)
    return pipe, run(tiny_mochi, pipe)


def _valid_tokens(pipe, text: str) -> int:
    return int(pipe.tokenizer(text, padding="max_length", max_length=tiny_mochi.TEXT_TOKENS, truncation=True,
                              return_tensors="pt").attention_mask.sum())


def test_one_sdpa_call_per_sample_over_its_valid_text_tokens(pipe_stock):
    """Batched CFG (one forward per step, batch 2) and, per attention module, one SDPA call per sample (batch 1,
    no mask) over the video tokens and that sample's valid text tokens: negative prompt first."""
    pipe, _ = pipe_stock
    family = json.loads((DATA / "mochi1.json").read_text())
    tiny = family["variants"]["tiny"]
    video = tiny["reference_shapes"]["tokens"]["video"]
    assert len(pipe.transformer.transformer_blocks) == family["components"][0]["block_lists"][0]["length"]
    with observe(pipe.transformer) as obs:
        run(tiny_mochi, pipe, steps=2)
    assert len(obs.forwards) == 2
    assert obs.per_forward(0) == Counter({("transformer_blocks", "attn1", "sdpa", False): 2 * 48})
    lengths = [video + _valid_tokens(pipe, text) for text in ("blurry", "a red cube")]
    calls = obs.forwards[0]
    assert [(c.batch, c.heads, c.head_dim) for c in calls] == [(1, 2, 64)] * 96
    assert [(c.q_len, c.kv_len) for c in calls] == [(n, n) for _ in range(48) for n in lengths]
    assert lengths[0] != lengths[1] and max(lengths) < video + tiny["reference_shapes"]["tokens"]["text"]


def test_shipped_plan_runs_cell_for_cell_with_one_call_per_sample(pipe_stock, tmp_path):
    """Both per-sample calls of a module's forward are its (step, layer) cell: quantized together where the plan
    quantizes the cell, native together elsewhere, and counted as two calls of that cell."""
    pipe, stock = pipe_stock
    plan = compile_shipped("mochi1", tmp_path / "plan.json")
    assert plan.uses_quantized()
    out, report, records, obs, quantized = planned_run(tiny_mochi, pipe, plan)
    assert report.matches_plan(), report.mismatches()[:5]
    assert report.pipeline_calls == 1 and report.fallback_calls == 0
    assert len(obs.forwards) == STEPS  # batched CFG: one forward per step ...
    assert {(c.batch, c.masked) for calls in obs.forwards for c in calls} == {(1, False)}  # ... one call per sample
    planned, cells = planned_cells(plan, obs, forwards_per_step=1)
    table = plan.table("transformer", "joint")
    assert 0 < len(planned) < len(cells) == 2 * STEPS * LAYERS
    assert quantized == planned
    # each cell's two calls (negative, positive sample) went the same way
    by_cell = Counter((cells[c], c in quantized) for c in cells)
    assert set(by_cell.values()) == {2} and len(by_cell) == STEPS * LAYERS
    for step in range(STEPS):
        for layer in range(LAYERS):
            cell = report.cells["transformer"]["joint"][step][layer]
            lane = "reference" if table[step][layer] else "native"
            assert cell == {lane: 2}, (step, layer, cell)
    assert report.call_counts == {"native": 2 * (STEPS * LAYERS) - len(planned), "reference": len(planned)}
    assert len(records) == len(planned) and {r.branch for r in records} == {BATCHED}
    assert not torch.equal(out, stock)
    assert torch.equal(run(tiny_mochi, pipe), stock)  # unloaded: stock, bit for bit


def test_all_native_plan_is_bit_identical_to_stock(pipe_stock):
    pipe, stock = pipe_stock
    report, obs = assert_all_native_is_stock(tiny_mochi, pipe, stock,
                                             compile_variant("mochi1", default="native", keep_rules=False))
    assert report.call_counts == {"native": 2 * STEPS * LAYERS}
    assert sum(len(calls) for calls in obs.forwards) == 2 * STEPS * LAYERS


def test_wrong_step_count_is_refused(pipe_stock):
    pipe, stock = pipe_stock
    assert_wrong_step_count_refused(tiny_mochi, pipe, stock, compile_variant("mochi1", default="fp8"))


def test_the_step_tracker_follows_the_loops_reflected_timestep(pipe_stock, tmp_path, monkeypatch):
    """MochiPipeline sets its current timestep to `1000 - t`: `current_timesteps` says so, value for value, and
    without it (the default identity) the tracker's cross-check refuses the loop, leaving the pipeline stock."""
    pipe, stock = pipe_stock
    seen = []
    handle = pipe.transformer.register_forward_pre_hook(lambda *_: seen.append(pipe._current_timestep))
    try:
        run(tiny_mochi, pipe)
    finally:
        handle.remove()
    mapped = MochiSupport().current_timesteps(pipe.scheduler.timesteps)
    assert [float(t) for t in seen] == [float(v) for v in mapped]
    assert [float(t) for t in seen] != [float(v) for v in pipe.scheduler.timesteps]
    plan = compile_shipped("mochi1", tmp_path / "plan.json")
    monkeypatch.setattr(MochiSupport, "current_timesteps", ModelSupport.current_timesteps)
    with runtime.load(pipe, plan, backend="reference"):
        with pytest.raises(PlanMismatchError, match="step tracking lost"):
            run(tiny_mochi, pipe)
    assert torch.equal(run(tiny_mochi, pipe), stock)


def test_a_module_without_set_processor_is_refused_unless_its_processor_calls_sdpa(pipe_stock, tmp_path):
    """MochiAttention has no `set_processor`: it is served for its processor alone. Another processor there (a
    subclass, which may call attention otherwise) is refused with the message for modules without a processor,
    and the pipeline stays stock."""
    from diffusers.models.attention_processor import MochiAttnProcessor2_0

    class OtherProcessor(MochiAttnProcessor2_0):
        pass

    pipe, stock = pipe_stock
    attn = pipe.transformer.transformer_blocks[3].attn1
    assert not hasattr(attn, "set_processor")
    saved, attn.processor = attn.processor, OtherProcessor()
    try:
        with pytest.raises(PlanMismatchError, match=r"transformer_blocks\.3\.attn1 \(joint attention\) is a "
                                                    r"MochiAttention, .*cannot serve MochiTransformer3DModel yet"):
            runtime.load(pipe, compile_shipped("mochi1", tmp_path / "plan.json"), backend="reference")
    finally:
        attn.processor = saved
    assert torch.equal(run(tiny_mochi, pipe), stock)


def test_mochi_model_support_serves_pipeline_tiny_builder_and_call_arguments(pipe_stock):
    """The registry finds MochiSupport for the pipeline and the family; its call arguments run the pipeline as
    tiny_inputs does (same output, bit for bit)."""
    from runtime.tiny import build_tiny_pipeline

    pipe, stock = pipe_stock
    support = model_support(pipe)
    assert isinstance(support, MochiSupport) and support.branch(1) == BATCHED and support.masked_kinds == ()
    assert support.has_call_arguments()
    kwargs = support.call_kwargs(pipe, prompt="a red cube", negative_prompt="blurry", height=tiny_mochi.HEIGHT,
                                 width=tiny_mochi.WIDTH, num_frames=None, steps=STEPS, guidance_scale=4.5, seed=0,
                                 max_length=support.text_tokens(pipe, tiny=True), output_type="latent")
    with torch.no_grad():
        assert torch.equal(pipe(**kwargs)[0], stock)
    built = build_tiny_pipeline("mochi-1")
    assert type(built).__name__ == "MochiPipeline" and isinstance(model_support(built), MochiSupport)
