"""A format-1 plan runs exactly as its format-2 recompile: same executed table, same output."""

from __future__ import annotations

from pathlib import Path

import torch

import runtime
from qcompiler.compile.compiler import compile_path
from qcompiler.plan.format import load_plan
from runtime.tiny import run_tiny

ROOT = Path(__file__).parents[2]


def test_a_format_1_plan_runs_like_its_format_2_recompile(i2v_pipe):
    old = load_plan(ROOT / "tests" / "fixtures" / "plans_v1" / "wan22_i2v.tiny.plan.json")
    new = compile_path(ROOT / "recipes" / "wan22_i2v.yaml", variant="tiny").plan
    assert (old.plan_format, new.plan_format) == (1, 2) and old.tables == new.tables
    runs = []
    for plan in (old, new):
        with runtime.load(i2v_pipe, plan, backend="reference") as handle:
            output = run_tiny(i2v_pipe)
            report = handle.report()
        assert report.matches_plan() and report.mismatches() == []
        runs.append((output, report.executed, report.call_counts))
    assert torch.equal(runs[0][0], runs[1][0])
    assert runs[0][1:] == runs[1][1:]
