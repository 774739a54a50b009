"""Threads: planned pipelines called in their own threads at once give exactly their sequential results and true
reports; one pipeline entered from a second thread during a call is refused with ConcurrentCallError, and the
running call is unharmed."""

from __future__ import annotations

import threading

import pytest
import torch

import runtime
from qcompiler.errors import QcompileError
from runtime.tiny import build_tiny_pipeline, run_tiny
from tests.runtime.conftest import MIXED_RULES, T2V, recipe

THREADS = 4


def _report_facts(report: runtime.ExecutionReport) -> dict:
    facts = report.to_dict()
    return {key: facts[key] for key in ("executed", "cells", "call_counts", "pipeline_calls", "matches_plan",
                                        "observed_schedule")}


@pytest.mark.slow
def test_four_planned_pipelines_in_four_threads_give_their_sequential_results(compile_tiny):
    # Each pipeline its own weights and its own plan (FP8 everywhere, mixed, native with FP8 exceptions), so a
    # site, flag or counter of one pipeline used by another shows in the outputs and the reports.
    pipes = [build_tiny_pipeline(T2V, seed=i) for i in range(THREADS)]
    plans = [compile_tiny(recipe(T2V, kinds="[self, cross]", default=("fp8", "native")[i % 2],
                                 rules=MIXED_RULES if i % 3 else "")) for i in range(THREADS)]
    handles = [runtime.load(pipe, plan, backend="reference") for pipe, plan in zip(pipes, plans, strict=True)]
    try:
        sequential = [run_tiny(pipe, seed=i) for i, pipe in enumerate(pipes)]
        sequential_reports = [_report_facts(handle.report()) for handle in handles]
        for handle in handles:
            handle.reset_report()

        outputs: list[torch.Tensor | None] = [None] * THREADS
        errors: list[BaseException | None] = [None] * THREADS
        start = threading.Barrier(THREADS)

        def work(i: int) -> None:
            start.wait()
            try:
                outputs[i] = run_tiny(pipes[i], seed=i)
            except BaseException as error:  # reported below, with the thread it came from
                errors[i] = error

        threads = [threading.Thread(target=work, args=(i,), name=f"pipeline-{i}") for i in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == [None] * THREADS
        for i in range(THREADS):
            assert torch.equal(outputs[i], sequential[i]), f"pipeline {i}: threaded output differs from sequential"
            facts = _report_facts(handles[i].report())
            assert facts == sequential_reports[i], f"pipeline {i}: threaded report differs from sequential"
            assert facts["matches_plan"] and facts["pipeline_calls"] == 1
    finally:
        for handle in handles:
            handle.unload()
    # The plans really differ: a mix-up between pipelines could not have gone unseen.
    assert len({str(report["call_counts"]) for report in sequential_reports}) >= 2


def test_a_second_thread_entering_a_running_pipeline_is_refused(t2v_pipe, compile_tiny):
    pipe = t2v_pipe
    plan = compile_tiny(recipe(T2V, kinds="[self, cross]", rules=MIXED_RULES))
    refused: dict[str, BaseException | None] = {}

    def try_in_thread(name: str, fn) -> None:
        def target() -> None:
            try:
                fn()
                refused[name] = None
            except BaseException as error:
                refused[name] = error

        thread = threading.Thread(target=target, name=name)
        thread.start()
        thread.join()

    def intrude(pipe_, step, timestep, callback_kwargs):
        if step == 1:  # mid-call, in the calling thread: another thread calls the pipeline, or its transformer
            try_in_thread("intruder-call", lambda: run_tiny(pipe))
            latents = callback_kwargs["latents"]
            try_in_thread("intruder-forward", lambda: pipe.transformer(
                hidden_states=latents, timestep=timestep.expand(latents.shape[0]),
                encoder_hidden_states=callback_kwargs["prompt_embeds"], return_dict=False))
            try_in_thread("intruder-unload", handle.unload)
        return {}

    handle = runtime.load(pipe, plan, backend="reference")
    with handle:
        expected = run_tiny(pipe)
        expected_report = _report_facts(handle.report())
        handle.reset_report()

        outputs = {}

        def owner() -> None:
            outputs["owner"] = run_tiny(pipe, callback_on_step_end=intrude,
                                        callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"])

        owner_thread = threading.Thread(target=owner, name="owner")
        owner_thread.start()
        owner_thread.join()

        for name, what in (("intruder-call", "called the pipeline"), ("intruder-forward", "ran its transformer"),
                           ("intruder-unload", "tried to unload the plan")):
            error = refused[name]
            assert isinstance(error, runtime.ConcurrentCallError) and isinstance(error, QcompileError), repr(error)
            message = str(error)
            assert "this pipeline is already running a call in thread 'owner'" in message
            assert "use one pipeline per thread" in message
            assert f"thread {name!r} {what}" in message
        # The running call went on unharmed: its output and its report are those of an undisturbed call.
        assert torch.equal(outputs["owner"], expected)
        assert _report_facts(handle.report()) == expected_report
        assert handle.active

        # The call is over: another thread may now call the pipeline.
        handle.reset_report()
        try_in_thread("next", lambda: outputs.__setitem__("next", run_tiny(pipe)))
        assert refused["next"] is None
        assert torch.equal(outputs["next"], expected)
        assert _report_facts(handle.report()) == expected_report
    # Unloaded: no owner left behind, a call from any thread runs.
    try_in_thread("after-unload", lambda: run_tiny(pipe))
    assert refused["after-unload"] is None


def test_load_keeps_the_pipeline_class_identity_and_unload_restores_it(t2v_pipe, compile_tiny):
    from diffusers import WanPipeline

    pipe = t2v_pipe
    assert type(pipe) is WanPipeline
    with runtime.load(pipe, compile_tiny(recipe(T2V)), backend="native"):
        assert isinstance(pipe, WanPipeline) and type(pipe).__name__ == "WanPipeline"
        assert type(pipe).__module__ == WanPipeline.__module__
    assert type(pipe) is WanPipeline
