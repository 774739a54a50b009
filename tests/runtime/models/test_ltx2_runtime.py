"""runtime.load follows the LTX-2 plan cell for cell on the tiny offline audio-video pipeline
(runtime/models/ltx2.py, runtime/models/tiny_ltx2.py).

Six attention modules per block, all through diffusers' dispatcher; three transformer forwards per step at the
pipeline's defaults (the batched CFG pair, an STG forward, a modality-isolation forward that skips the two
cross-modal modules). Which calls ran quantized is observed independently of the runtime
(tests/runtime/models/family_runtime.py; the step of forward f is f // 3). Slow: the pipeline takes seconds to
build.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

import runtime
from runtime.errors import StepCountError
from runtime.models import model_support, tiny_ltx2
from runtime.models.base import BATCHED, COND
from runtime.models.ltx2 import LTX2Support
from tests.runtime.models.family_runtime import (
    STEPS,
    compile_shipped,
    compile_variant,
    observe_quantized,
    planned_cells,
    run,
)
from tests.runtime.models.tiny_family_observer import observe

pytestmark = pytest.mark.slow

DATA = Path(__file__).resolve().parents[3] / "qcompiler" / "families" / "data"

RECIPE = "ltx2"
FORWARDS_PER_STEP = 3  # batched CFG, STG, modality isolation
ALL_KINDS = "[video_self, audio_self, video_text, audio_text, audio_to_video, video_to_audio]"


@pytest.fixture(scope="module")
def pipe_stock():
    pipe = tiny_ltx2.build_tiny_pipeline(0)
    return pipe, run(tiny_ltx2, pipe)


def test_tiny_pipeline_matches_the_family_data_and_its_observed_calls(pipe_stock):
    """Per forward: all six modules in the CFG (batch 2) and STG forwards, the cross-modal two skipped in the
    modality-isolation forward; each call's shape is its kind's token roles at the tiny reference shapes."""
    pipe, _ = pipe_stock
    family = json.loads((DATA / "ltx2.json").read_text())
    tokens = family["variants"]["tiny"]["reference_shapes"]["tokens"]
    kinds = {k["module"]: k for k in family["attention_kinds"].values()}
    with observe(pipe.transformer) as obs:
        run(tiny_ltx2, pipe, steps=2)
    assert len(obs.forwards) == 2 * FORWARDS_PER_STEP
    every = Counter({("transformer_blocks", m, "dispatch", m in ("attn2", "audio_attn2")): 48 for m in kinds})
    isolated = every - Counter({k: 48 for k in every if k[1] in ("audio_to_video_attn", "video_to_audio_attn")})
    for f in range(len(obs.forwards)):
        assert obs.per_forward(f) == (isolated if f % FORWARDS_PER_STEP == 2 else every), f
    for f, batch in ((0, 2), (1, 1), (2, 1)):
        for call in obs.forwards[f]:
            kind = kinds[call.kind_module]
            assert (call.heads, call.head_dim, call.batch) == (2, 64, batch)
            assert call.q_len == sum(tokens[r] for r in kind["query_tokens"])
            assert call.kv_len == sum(tokens[r] for r in kind["key_tokens"])


def test_shipped_plan_runs_cell_for_cell(pipe_stock, tmp_path):
    pipe, stock = pipe_stock
    plan = compile_shipped(RECIPE, tmp_path / "plan.json")
    records = []
    with runtime.load(pipe, plan, backend="reference") as handle:
        handle.set_observer(records.append)
        with observe_quantized(pipe.transformer) as (obs, quantized):
            out = run(tiny_ltx2, pipe)
        report = handle.report()
    assert len(obs.forwards) == FORWARDS_PER_STEP * STEPS
    planned, cells = planned_cells(plan, obs, forwards_per_step=FORWARDS_PER_STEP)
    assert planned and quantized == planned
    assert {cells[c][0] for c in planned} == {"video_self"}
    # every forward of a quantized step follows the row: the CFG pair, STG and modality-isolation forwards
    assert {c[0] % FORWARDS_PER_STEP for c in planned} == {0, 1, 2}
    assert report.matches_plan(), report.mismatches()[:5]
    assert report.fallback_calls == 0
    assert {r.branch for r in records} == {BATCHED, COND}
    assert len(records) == len(planned) and min(r.cos_sim for r in records) > 0.95
    assert not torch.equal(out, stock)
    assert torch.equal(run(tiny_ltx2, pipe), stock)  # unloaded: stock, bit for bit


def test_every_kind_quantized_text_calls_with_their_zero_bias(pipe_stock):
    """All six kinds planned FP8: every call runs quantized, the text crosses with the connectors' all-zeros
    bias (a padding mask that drops no key), none falls back."""
    pipe, _ = pipe_stock
    plan = compile_variant(RECIPE, default="fp8", keep_rules=False, kinds=ALL_KINDS)
    with runtime.load(pipe, plan, backend="reference") as handle, \
            observe_quantized(pipe.transformer) as (obs, quantized):
        run(tiny_ltx2, pipe)
        report = handle.report()
    every = {(f, i) for f, calls in enumerate(obs.forwards) for i in range(len(calls))}
    assert quantized == every
    assert report.matches_plan() and report.fallback_calls == 0


def test_all_native_plan_is_bit_identical_to_stock(pipe_stock):
    pipe, stock = pipe_stock
    plan = compile_variant(RECIPE, default="native", keep_rules=False, kinds=ALL_KINDS)
    assert not plan.uses_quantized()
    stock_audio = _audio(pipe)
    with runtime.load(pipe, plan, backend="reference") as handle, \
            observe_quantized(pipe.transformer) as (_, quantized):
        out = run(tiny_ltx2, pipe)
        audio = _audio(pipe)
        assert handle.report().matches_plan()
    assert not quantized
    assert torch.equal(out, stock) and torch.equal(audio, stock_audio)


def _audio(pipe) -> torch.Tensor:
    """The audio latents of a tiny call (`run` returns the video latents)."""
    with torch.no_grad():
        return pipe(**tiny_ltx2.tiny_inputs(pipe, num_inference_steps=STEPS)).audio


def test_wrong_step_count_is_refused_and_model_support_is_found(pipe_stock):
    pipe, stock = pipe_stock
    assert isinstance(model_support(pipe), LTX2Support)
    assert isinstance(model_support(pipe.transformer), LTX2Support)
    plan = compile_variant(RECIPE, default="fp8")
    with runtime.load(pipe, plan, backend="reference"):
        with pytest.raises(StepCountError, match=f"called with 3 denoising steps, expected {STEPS}"):
            run(tiny_ltx2, pipe, steps=3)
    assert torch.equal(run(tiny_ltx2, pipe), stock)


def test_report_runs_the_tiny_pipeline_through_the_model_modules_call_arguments(tmp_path):
    """`qcompile report --pipeline tiny` (the real CLI): the prompt strings go to the pipeline, which encodes them
    itself; the video and audio VAEs and the vocoder decode; the plan is followed."""
    from tests.runtime.models.test_skyreels_v2_runtime import cli_report

    report = cli_report(RECIPE, tmp_path)
    assert report["execution"]["matches_plan"] and report["summary"]["calls"]["fp8"] > 0
    assert report["measured"]["num_frames"] == 9
    assert set(report["measured"]["attention_tokens"]) == {
        f"transformer/{k}" for k in ("video_self", "audio_self", "video_text", "audio_text", "audio_to_video",
                                     "video_to_audio")}
