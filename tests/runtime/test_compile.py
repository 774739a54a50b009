"""With compile_repeated_blocks(fullgraph=True), per-layer flags set outside the compiled blocks cause no
recompiles across steps or calls: graphs are bounded by the distinct (self, cross) flag pairs, not steps."""

from __future__ import annotations

import pytest
import torch

import runtime
from runtime.tiny import build_tiny_pipeline, run_tiny
from tests.runtime.conftest import MIXED_RULES, T2V, recipe


@pytest.mark.slow
def test_compiled_blocks_do_not_recompile_across_steps(compile_tiny):
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    pipe = build_tiny_pipeline(T2V)  # private: compiling changes the pipeline for good
    plan = compile_tiny(recipe(T2V, kinds="[self, cross]", rules=MIXED_RULES))
    with runtime.load(pipe, plan, backend="reference") as handle:
        eager = run_tiny(pipe)
        # Dynamo only (backend="eager"): recompiles are decided by Dynamo's guards, not by the codegen backend,
        # and this keeps the test fast on a 2-core CPU.
        pipe.transformer.compile_repeated_blocks(fullgraph=True, backend="eager")
        compiled = run_tiny(pipe)
        graphs_after_first_call = counters["stats"]["unique_graphs"]
        run_tiny(pipe)
        graphs_after_second_call = counters["stats"]["unique_graphs"]
        report = handle.report()
    # Flag pairs (self, cross) in this plan: (0,0), (1,1), (1,0) -> one graph each, whatever the step.
    pairs = {
        (plan.is_quantized("transformer", "self", s, layer), plan.is_quantized("transformer", "cross", s, layer))
        for s in range(4) for layer in range(30)
    }
    assert len(pairs) == 3
    assert 1 <= graphs_after_first_call <= len(pairs)
    assert graphs_after_second_call == graphs_after_first_call
    assert counters["stats"]["calls_captured"] >= graphs_after_first_call
    torch.testing.assert_close(compiled, eager)
    assert report.counted == "decisions" and report.matches_plan()
