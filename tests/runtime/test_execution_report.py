"""The one builder of execution reports (runtime.execution_report.build_report), used by runtime.load's
PlanHandle and by the vllm-omni plugin: lanes named per component, totals, fallbacks and cache skips."""

from __future__ import annotations

from qcompiler import compile_recipe_text
from qcompiler.plan.format import table_to_rows
from runtime.execution_report import FALLBACK, FALLBACK_BACKEND, FP8, NATIVE, SKIPPED, CellCounts, build_report
from tests.runtime.conftest import recipe


def test_build_report_names_each_lane_and_counts_totals_fallbacks_and_skips():
    plan = compile_recipe_text(recipe(steps=2), name="t.yaml", variant="tiny")
    counts = {(c, "self"): CellCounts(2, plan.family.num_layers(c, "self")) for c in plan.component_names}
    first, second = plan.component_names
    counts[(first, "self")].row(0)[0][FP8] = 3
    counts[(first, "self")].row(0)[1][NATIVE] = 2
    counts[(first, "self")].row(1)[0][SKIPPED] = 1
    counts[(second, "self")].row(1)[0][FALLBACK] = 4
    counts[(second, "self")].row(1)[0][FP8] = 1  # the second component has no backend: its FP8 lane is fallback too
    report = build_report(plan, counts, {first: "reference", second: FALLBACK_BACKEND},
                          fallback_reasons={second: "why"}, pipeline_calls=1, observed_schedule=[first, second],
                          quantized_backend="reference")
    assert report.cells[first]["self"][0][:2] == [{"reference": 3}, {"native": 2}]
    assert report.cells[first]["self"][1][0] == {"skipped": 1}
    assert report.cells[second]["self"][1][0] == {FALLBACK_BACKEND: 5}
    assert report.call_counts == {"reference": 3, "native": 2, FALLBACK_BACKEND: 5}
    assert (report.fallback_calls, report.skipped) == (4, 1)
    assert report.executed[first]["self"][0].startswith("10") and report.executed[first]["self"][1][0] == "s"
    assert report.to_dict()["fp8_backend"] == "reference"  # the JSON key is unchanged (schemas/report.schema.json)
    assert report.plan_rows[first]["self"] == table_to_rows(plan.table(first, "self"))
