"""runtime.load follows CogVideoX-2B and -5B plans cell for cell on the tiny offline pipelines
(runtime/models/cogvideox.py), through the processor entry (runtime/processor_entry.py).

One block list (30 or 42 `transformer_blocks`), one kind: `joint` (attn1 over text and video tokens in one call,
no mask), whose CogVideoXAttnProcessor2_0 calls `F.scaled_dot_product_attention` itself. Batched CFG: one forward
per step serves both branches (batch 2). The 5B runs CogVideoXDPMScheduler, whose `step` draws noise from the
`generator` the pipeline passes only if the signature names it. Which calls ran quantized is observed
independently of the runtime (tests/runtime/models/family_runtime.py: the observer wraps F.scaled_dot_product_attention
and the reference backend's `attend`).
"""

from __future__ import annotations

import inspect
import threading

import pytest
import torch
import torch.nn.functional as F

import runtime
from runtime.models import model_support, tiny_cogvideox
from runtime.models.base import BATCHED
from runtime.models.cogvideox import CogVideoXSupport
from tests.runtime.models.family_runtime import (
    STEPS,
    assert_all_native_is_stock,
    assert_wrong_step_count_refused,
    compile_shipped,
    compile_variant,
    observe_quantized,
    planned_cells,
    run,
)

pytestmark = pytest.mark.slow

LAYERS = {"2b": 30, "5b": 42}


@pytest.fixture(scope="module")
def pipes():
    """variant -> (pipeline, its stock output)."""
    built = {}
    for variant in LAYERS:
        pipe = tiny_cogvideox.build_tiny_pipeline(0, variant=variant)
        built[variant] = (pipe, run(tiny_cogvideox, pipe))
    return built


def _processors(pipe) -> dict:
    return dict(pipe.transformer.attn_processors)


@pytest.mark.parametrize("variant", list(LAYERS))
def test_shipped_plan_runs_cell_for_cell_in_one_batched_forward_per_step(pipes, variant, tmp_path):
    pipe, stock = pipes[variant]
    processors = _processors(pipe)
    plan = compile_shipped(f"cogvideox_{variant}", tmp_path / "plan.json")
    records = []
    handle = runtime.load(pipe, plan, backend="reference")
    try:
        assert _processors(pipe) == processors  # the stock processor objects stay in place
        handle.set_observer(records.append)
        with observe_quantized(pipe.transformer) as (obs, quantized):
            out = run(tiny_cogvideox, pipe)
        report = handle.report()
    finally:
        handle.unload()
    assert report.matches_plan(), report.mismatches()[:5]
    assert report.pipeline_calls == 1 and report.fallback_calls == 0
    assert len(obs.forwards) == STEPS  # batched CFG: one forward per step ...
    calls = [call for forward in obs.forwards for call in forward]
    assert {call.batch for call in calls} == {2}  # ... over both branches
    assert {(call.via, call.masked) for call in calls} == {("sdpa", False)}  # the processor's own SDPA call
    assert len(calls) == STEPS * LAYERS[variant]
    planned, cells = planned_cells(plan, obs, forwards_per_step=1)
    assert planned and 0 < len(planned) < len(calls)
    assert quantized == planned
    # every quantized call is recorded as serving both CFG branches, at its own step and layer
    assert len(records) == len(planned) and {r.branch for r in records} == {BATCHED}
    assert {(r.kind, r.step, r.layer) for r in records} == {cells[c] for c in planned}
    assert not torch.equal(out, stock)
    assert _processors(pipe) == processors
    assert torch.equal(run(tiny_cogvideox, pipe), stock)  # unloaded: stock, bit for bit


@pytest.mark.parametrize("variant", list(LAYERS))
def test_all_native_plan_is_bit_identical_to_stock(pipes, variant):
    pipe, stock = pipes[variant]
    report, obs = assert_all_native_is_stock(
        tiny_cogvideox, pipe, stock, compile_variant(f"cogvideox_{variant}", default="native", keep_rules=False))
    assert report.call_counts == {"native": STEPS * LAYERS[variant]}  # every call served, by the stock call
    assert sum(map(len, obs.forwards)) == STEPS * LAYERS[variant]


def test_wrong_step_count_is_refused(pipes):
    pipe, stock = pipes["2b"]
    assert_wrong_step_count_refused(tiny_cogvideox, pipe, stock, compile_variant("cogvideox_2b", default="fp8"))


def test_a_loop_timestep_outside_the_schedule_is_refused(pipes):
    """CogVideoX's schedulers keep no step_index: the step comes from the loop's timestep, and a forward whose
    timestep is not in the rest of the schedule stops the call instead of following the wrong row."""
    pipe, stock = pipes["2b"]
    plan = compile_variant("cogvideox_2b", default="fp8")

    def drift(*_):  # registered before load: runs before qcompile's hook
        if pipe._current_timestep is not None and float(pipe._current_timestep) < 600:
            pipe._current_timestep = pipe._current_timestep + 1

    handle = pipe.transformer.register_forward_pre_hook(drift)
    try:
        with runtime.load(pipe, plan, backend="reference"):
            with pytest.raises(runtime.PlanMismatchError, match=r"step tracking lost: the pipeline's current timestep "
                                                                r"\d+ is not in the rest of its scheduler's 4-step schedule "
                                                                r"after step \d"):
                run(tiny_cogvideox, pipe)
    finally:
        handle.remove()
    assert torch.equal(run(tiny_cogvideox, pipe), stock)


def test_5b_dpm_scheduler_stays_seeded_under_a_loaded_plan(pipes, tmp_path):
    """Nothing qcompile installs may hide `generator` or `eta` from the pipeline's look at `scheduler.step`: the
    DPM step (eta=1 in the tiny inputs) would draw unseeded noise and two seeded runs would differ."""
    pipe, stock = pipes["5b"]
    stock_other_seed = run(tiny_cogvideox, pipe, seed=1)
    plan = compile_shipped("cogvideox_5b", tmp_path / "plan.json")
    with runtime.load(pipe, plan, backend="reference") as handle:
        parameters = inspect.signature(pipe.scheduler.step).parameters
        assert {"generator", "eta"} <= set(parameters)
        first, second = run(tiny_cogvideox, pipe, seed=0), run(tiny_cogvideox, pipe, seed=0)
        other = run(tiny_cogvideox, pipe, seed=1)
        assert handle.report().pipeline_calls == 3
    assert torch.equal(first, second)
    assert not torch.equal(first, stock) and not torch.equal(first, other)
    assert not torch.equal(stock, stock_other_seed)  # the seed reaches the step's noise (and the first latents)


def test_sdpa_calls_outside_the_attention_modules_are_untouched(pipes, tmp_path):
    """An SDPA call inside the transformer's forward but outside its attention modules (here: a hook on a
    block's norm), and one between forwards (a step callback), run stock and reach no site."""
    pipe, _ = pipes["2b"]
    plan = compile_variant("cogvideox_2b", default="fp8", keep_rules=False)
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 2, 28, 64) for _ in range(3))
    expected = F.scaled_dot_product_attention(q, k, v)
    seen = []

    def own_call(*_):
        seen.append(torch.equal(F.scaled_dot_product_attention(q, k, v), expected))

    def callback(pipe, step, timestep, kwargs):
        own_call()
        return kwargs

    block = pipe.transformer.transformer_blocks[3]
    handle = block.norm1.register_forward_pre_hook(own_call)
    try:
        with runtime.load(pipe, plan, backend="reference") as loaded:
            run(tiny_cogvideox, pipe, callback_on_step_end=callback)
            report = loaded.report()
    finally:
        handle.remove()
    assert seen == [True] * (2 * STEPS)
    assert report.matches_plan() and report.call_counts == {"reference": STEPS * LAYERS["2b"]}


def test_another_threads_sdpa_during_an_attention_forward_is_untouched(pipes):
    """While block 5's attention forward runs in the pipeline's thread (its entry pushed there), another thread's
    SDPA call runs stock; the pipeline's call is unaffected."""
    pipe, _ = pipes["2b"]
    plan = compile_variant("cogvideox_2b", default="fp8", keep_rules=False)
    torch.manual_seed(2)
    q, k, v = (torch.randn(1, 2, 16, 64) for _ in range(3))
    expected = F.scaled_dot_product_attention(q, k, v)
    go, done = threading.Event(), threading.Event()
    results: list[bool] = []

    def other_thread():
        while go.wait(timeout=60):
            go.clear()
            results.append(torch.equal(F.scaled_dot_product_attention(q, k, v), expected))
            done.set()
            if len(results) == STEPS:
                return

    def inside_attention(*_):  # runs inside attn1's forward, after its entry was pushed
        go.set()
        assert done.wait(timeout=60)
        done.clear()

    with runtime.load(pipe, plan, backend="reference") as handle:
        alone = run(tiny_cogvideox, pipe)
        handle.reset_report()
        hook = pipe.transformer.transformer_blocks[5].attn1.to_q.register_forward_pre_hook(inside_attention)
        thread = threading.Thread(target=other_thread, name="other-sdpa")
        thread.start()
        try:
            out = run(tiny_cogvideox, pipe)
        finally:
            hook.remove()
            thread.join(timeout=60)
        report = handle.report()
    assert results == [True] * STEPS
    assert torch.equal(out, alone)
    assert report.matches_plan() and report.call_counts == {"reference": STEPS * LAYERS["2b"]}


def test_two_planned_pipelines_in_two_threads_give_their_sequential_results(pipes, tmp_path):
    outputs, reports, handles = {}, {}, {}
    for variant in LAYERS:
        pipe, _ = pipes[variant]
        handles[variant] = runtime.load(pipe, compile_shipped(f"cogvideox_{variant}", tmp_path / f"{variant}.json"),
                                        backend="reference")
    try:
        for variant, handle in handles.items():
            outputs[variant] = run(tiny_cogvideox, pipes[variant][0])
            reports[variant] = handle.report().to_dict()["cells"]
            handle.reset_report()
        threaded: dict[str, torch.Tensor] = {}
        errors: list[BaseException] = []
        start = threading.Barrier(len(LAYERS))

        def work(variant: str) -> None:
            start.wait()
            try:
                threaded[variant] = run(tiny_cogvideox, pipes[variant][0])
            except BaseException as error:  # reported below
                errors.append(error)

        threads = [threading.Thread(target=work, args=(v,), name=f"cogvideox-{v}") for v in LAYERS]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors
        for variant, handle in handles.items():
            assert torch.equal(threaded[variant], outputs[variant])
            report = handle.report()
            assert report.matches_plan() and report.to_dict()["cells"] == reports[variant]
    finally:
        for handle in handles.values():
            handle.unload()


def test_cogvideox_model_support_serves_pipelines_and_tiny_builders():
    from runtime.tiny import build_tiny_pipeline, encode_prompts, text_tokens

    for family, blocks, scheduler in (("cogvideox-2b", 30, "CogVideoXDDIMScheduler"),
                                      ("cogvideox-5b", 42, "CogVideoXDPMScheduler")):
        pipe = build_tiny_pipeline(family)
        assert type(pipe).__name__ == "CogVideoXPipeline" and type(pipe.scheduler).__name__ == scheduler
        assert len(pipe.transformer.transformer_blocks) == blocks
        support = model_support(pipe)
        assert isinstance(support, CogVideoXSupport) and support.branch(1) == BATCHED
        assert text_tokens(pipe) == tiny_cogvideox.TEXT_TOKENS
    positive, negative = encode_prompts(pipe, "a red cube on a table", "blurry")
    with torch.no_grad():
        expected = pipe.encode_prompt("a red cube on a table", "blurry", max_sequence_length=text_tokens(pipe),
                                      device="cpu")
    assert torch.equal(positive, expected[0]) and torch.equal(negative, expected[1])


def test_report_and_calibrate_drive_the_tiny_pipelines(tmp_path):
    """The quality tools' call arguments (CogVideoXSupport.text_tokens / encode_prompts / call_kwargs) drive both
    tiny pipelines: `qcompile report --pipeline tiny` follows the shipped plan, calibrate measures every cell."""
    import json

    from click.testing import CliRunner

    from qcompiler.cli.main import cli

    plan = tmp_path / "plan.json"
    compile_shipped("cogvideox_5b", plan)
    result = CliRunner().invoke(cli, ["report", str(plan), "--pipeline", "tiny", "--backend", "reference",
                                      "-o", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    execution = json.loads((tmp_path / "report" / "report.json").read_text())["execution"]
    assert execution["matches_plan"] and execution["fallback_calls"] == 0
    sensitivity = tmp_path / "sensitivity.json"
    result = CliRunner().invoke(cli, ["calibrate", "--family", "cogvideox-2b", "--pipeline", "tiny", "--steps",
                                      str(STEPS), "-o", str(sensitivity)])
    assert result.exit_code == 0, result.output
    cells = json.loads(sensitivity.read_text())["cells"]
    assert {(c["kind"], c["step"], c["layer"]) for c in cells} == {
        ("joint", step, layer) for step in range(STEPS) for layer in range(LAYERS["2b"])}
