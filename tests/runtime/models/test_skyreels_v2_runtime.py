"""runtime.load follows SkyReels-V2 plans cell for cell on the tiny offline pipelines (runtime/models/skyreels_v2.py):
text-to-video (cond and uncond forwards per step, as Wan) and diffusion forcing, where a plan's step is the index
of the denoising loop's iteration (one row of the pipeline's per-frame step matrix) and every frame computed in
that iteration follows the row (runtime/step_tracker.py).

Which calls ran quantized is observed independently of the runtime (tests/runtime/models/family_runtime.py): the
step of forward f is f // 2 (cond and uncond per iteration), the loop's iteration count taken from the pipeline
itself. Slow: each pipeline takes seconds to build.
"""

from __future__ import annotations

import pytest
import torch

import runtime
from qcompiler import compile_recipe_text
from runtime.errors import StepCountError, UnservableCallError
from runtime.models import model_support, tiny_skyreels_v2
from runtime.models.skyreels_v2 import SkyReelsV2DiffusionForcingSupport, SkyReelsV2Support
from tests.runtime.models.family_runtime import RECIPES as RECIPE_DIR
from tests.runtime.models.family_runtime import (
    STEPS,
    compile_shipped,
    compile_variant,
    observe_quantized,
    planned_cells,
    run,
)

pytestmark = pytest.mark.slow

RECIPES = {False: "skyreels_v2_t2v_540p", True: "skyreels_v2_df_540p"}
SUPPORTS = {False: SkyReelsV2Support, True: SkyReelsV2DiffusionForcingSupport}
FORWARDS_PER_STEP = 2  # cond, uncond


@pytest.fixture(scope="module", params=[False, True], ids=["t2v", "diffusion-forcing"])
def df_pipe_stock(request):
    pipe = tiny_skyreels_v2.build_tiny_pipeline(0, diffusion_forcing=request.param)
    return request.param, pipe, run(tiny_skyreels_v2, pipe)


@pytest.fixture(scope="module")
def df_pipe():
    return tiny_skyreels_v2.build_tiny_pipeline(0, diffusion_forcing=True)


def _follows(plan, pipe, **extra):
    """Run with `plan`; assert the quantized calls are exactly the plan's cells at step = forward // 2."""
    with runtime.load(pipe, plan, backend="reference") as handle, \
            observe_quantized(pipe.transformer) as (obs, quantized):
        out = run(tiny_skyreels_v2, pipe, steps=extra.pop("steps", STEPS), **extra)
        report = handle.report()
    planned, cells = planned_cells(plan, obs, forwards_per_step=FORWARDS_PER_STEP)
    assert planned and quantized == planned
    assert report.matches_plan(), report.mismatches()[:5]
    return out, obs, planned, cells, report


def test_shipped_plan_runs_cell_for_cell(df_pipe_stock, tmp_path):
    diffusion_forcing, pipe, stock = df_pipe_stock
    plan = compile_shipped(RECIPES[diffusion_forcing], tmp_path / "plan.json")
    out, obs, planned, cells, report = _follows(plan, pipe)
    assert len(obs.forwards) == FORWARDS_PER_STEP * STEPS  # synchronous: one loop iteration per step
    assert report.fallback_calls == 0 and not any(c.masked for calls in obs.forwards for c in calls)
    assert {cells[c][0] for c in planned} == {"self"}
    assert not torch.equal(out, stock)
    assert torch.equal(run(tiny_skyreels_v2, pipe), stock)  # unloaded: stock, bit for bit


def test_all_native_plan_is_bit_identical_to_stock(df_pipe_stock):
    diffusion_forcing, pipe, stock = df_pipe_stock
    plan = compile_variant(RECIPES[diffusion_forcing], default="native", keep_rules=False)
    with runtime.load(pipe, plan, backend="reference") as handle, \
            observe_quantized(pipe.transformer) as (_, quantized):
        out = run(tiny_skyreels_v2, pipe)
        assert handle.report().matches_plan()
    assert not quantized
    assert torch.equal(out, stock)


def test_wrong_step_count_is_refused_and_model_support_is_found(df_pipe_stock):
    diffusion_forcing, pipe, stock = df_pipe_stock
    assert isinstance(model_support(pipe), SUPPORTS[diffusion_forcing])
    plan = compile_variant(RECIPES[diffusion_forcing], default="fp8")
    expected = (f"diffusion-forcing loop runs 3 iterations, expected {STEPS}" if diffusion_forcing
                else f"called with 3 denoising steps, expected {STEPS}")
    with runtime.load(pipe, plan, backend="reference"):
        with pytest.raises(StepCountError, match=expected):
            run(tiny_skyreels_v2, pipe, steps=3)
    assert torch.equal(run(tiny_skyreels_v2, pipe), stock)


def test_asynchronous_diffusion_forcing_plan_steps_are_loop_iterations(df_pipe):
    """ar_step=1 over 3 latent frames (3 blocks of 1) with 4 steps: 4 + 2 x 1 = 6 loop iterations, the frames
    staggered by one timestep. A plan for 6 steps is followed row by row per iteration (rows 0 and 5 native, the
    rest FP8); a plan for the 4 scheduler steps is refused, naming the iteration count."""
    text = (RECIPE_DIR / f"{RECIPES[True]}.yaml").read_text().split("rules:")[0]
    text += "rules:\n  - name: ends\n    why: test rows\n    steps: \"0, 5\"\n    precision: native\n"
    plan = compile_recipe_text(text, name="async.yaml", steps=6, variant="tiny")
    _, obs, planned, cells, _ = _follows(plan, df_pipe, ar_step=1, causal_block_size=1)
    assert df_pipe.num_timesteps == 6 and len(obs.forwards) == 6 * FORWARDS_PER_STEP
    assert {cells[c][1] for c in planned} == {1, 2, 3, 4}  # rows 0 and 5 native

    four = compile_variant(RECIPES[True], default="fp8")
    with runtime.load(df_pipe, four, backend="reference"):
        with pytest.raises(StepCountError, match=f"loop runs 6 iterations, expected {STEPS}"):
            run(tiny_skyreels_v2, df_pipe, ar_step=1, causal_block_size=1)


def test_long_video_chunks_each_start_at_plan_step_0(df_pipe):
    """overlap_history splits a long video into chunks, each its own denoising loop: every chunk follows the
    plan's rows from step 0 (17 frames = 5 latent frames in chunks of 3 with 2 overlapping: 3 chunks)."""
    plan = compile_variant(RECIPES[True], default="fp8", keep_rules=True)
    with runtime.load(df_pipe, plan, backend="reference") as handle, \
            observe_quantized(df_pipe.transformer) as (obs, quantized):
        run(tiny_skyreels_v2, df_pipe, num_frames=17, base_num_frames=9, overlap_history=5)
        report = handle.report()
    chunks, rest = divmod(len(obs.forwards), FORWARDS_PER_STEP * STEPS)
    assert chunks == 3 and rest == 0
    table = plan.table("transformer", "self")
    expected = {(f, i) for f, calls in enumerate(obs.forwards) for i, call in enumerate(calls)
                if call.kind_module == "attn1" and table[(f // FORWARDS_PER_STEP) % STEPS][call.layer]}
    assert expected and quantized == expected
    assert report.matches_plan()


def test_causal_blocks_mask_self_attention_and_follow_the_fallback_policy():
    """causal_block_size=2 over 4 latent frames (13 frames) sets the transformer's num_frame_per_block: every
    self-attention call carries a block-causal mask, which is no padding mask, so the planned-quantized self calls
    run native under `fallback: native` (counted), and are refused under `fallback: error`. A fresh pipeline:
    `causal_block_size` stays written on the transformer's config."""
    pipe = tiny_skyreels_v2.build_tiny_pipeline(0, diffusion_forcing=True)
    plan = compile_variant(RECIPES[True], default="fp8", keep_rules=False)
    assert plan.fallback == "native"
    with runtime.load(pipe, plan, backend="reference") as handle, \
            observe_quantized(pipe.transformer) as (obs, quantized):
        run(tiny_skyreels_v2, pipe, num_frames=13, causal_block_size=2)
        report = handle.report()
    assert pipe.transformer.config.num_frame_per_block == 2
    self_calls = {(f, i) for f, calls in enumerate(obs.forwards) for i, c in enumerate(calls)
                  if c.kind_module == "attn1"}
    assert len(self_calls) == 40 * FORWARDS_PER_STEP * STEPS
    assert all(obs.forwards[f][i].masked for f, i in self_calls)
    assert not self_calls & quantized
    assert report.fallback_calls == len(self_calls)

    text = (RECIPE_DIR / f"{RECIPES[True]}.yaml").read_text().replace("fallback: native", "fallback: error")
    error_plan = compile_recipe_text(text.split("rules:")[0], name="df-error.yaml", steps=STEPS, variant="tiny")
    with runtime.load(pipe, error_plan, backend="reference"):
        with pytest.raises(UnservableCallError):
            run(tiny_skyreels_v2, pipe, num_frames=13, causal_block_size=2)


@pytest.mark.parametrize("diffusion_forcing", [False, True], ids=["t2v", "diffusion-forcing"])
def test_report_runs_the_tiny_pipeline_through_the_model_modules_call_arguments(diffusion_forcing, tmp_path):
    """`qcompile report --pipeline tiny` (the real CLI): the model module's call arguments (embeddings encoded
    without ftfy; `prompt=None` for the diffusion-forcing pipeline) run the plan, which it follows."""
    report = cli_report(RECIPES[diffusion_forcing], tmp_path)
    assert report["execution"]["matches_plan"] and report["summary"]["calls"]["fp8"] > 0
    assert report["measured"]["num_frames"] == 9


def cli_report(recipe: str, folder, steps: int = STEPS) -> dict:
    """The shipped recipe cut to `steps` steps, reported on the family's tiny pipeline with the real CLI."""
    import json
    import re

    from click.testing import CliRunner

    from qcompiler.cli.main import cli

    path = folder / f"{recipe}.yaml"
    path.write_text(re.sub(r"(?m)^num_inference_steps: *\d+", f"num_inference_steps: {steps}",
                           (RECIPE_DIR / f"{recipe}.yaml").read_text()))
    out = folder / "report"
    result = CliRunner().invoke(cli, ["report", str(path), "--pipeline", "tiny", "--backend", "reference",
                                      "--no-progress", "-o", str(out)])
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    return json.loads((out / "report.json").read_text())
