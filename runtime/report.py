"""What ran: per (component, kind, step, layer) which backend served how many calls, comparable cell for cell
with the plan's tables. Counters are filled by the component hooks once per transformer forward."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

NATIVE, FP8, FALLBACK = 0, 1, 2  # lanes of a cell's counts
NOT_RUN, MIXED = ".", "x"
FALLBACK_BACKEND = "native-fallback"  # a cell the plan wants in FP8 that nothing could serve, run natively


class CellCounts:
    """Live call counts of one (component, kind): steps x layers x (native, fp8, fallback)."""

    def __init__(self, steps: int, layers: int):
        self.counts = [[[0, 0, 0] for _ in range(layers)] for _ in range(steps)]

    def row(self, step: int) -> list[list[int]]:
        return self.counts[step]

    def clear(self) -> None:
        for row in self.counts:
            for cell in row:
                cell[:] = [0, 0, 0]


def executed_char(cell: list[int]) -> str:
    native, fp8, fallback = cell
    if fp8 and (native or fallback):
        return MIXED
    if fp8:
        return "1"
    return "0" if native or fallback else NOT_RUN


@dataclass(frozen=True)
class Mismatch:
    component: str
    kind: str
    step: int
    layer: int
    planned: str  # "1" FP8, "0" native
    executed: str  # "1", "0", "." (not run although the component served the step) or "x" (both)


@dataclass
class ExecutionReport:
    """A snapshot of what ran since load (or the last `PlanHandle.reset_report()`).

    `executed[component][kind]` has the plan's row format: one string per step, one char per layer, "1" FP8,
    "0" native, "." never run, "x" both in different calls. `cells[component][kind][step][layer]` maps backend
    name -> calls. `observed_schedule[step]` is the component that served the step ("a+b" if both, None if
    the step never ran); `expert_schedule` is the plan's prediction.
    """

    plan_rows: dict[str, dict[str, list[str]]]
    executed: dict[str, dict[str, list[str]]]
    cells: dict[str, dict[str, list[list[dict[str, int]]]]]
    call_counts: dict[str, int]
    fallback_calls: int
    fallback_reasons: dict[str, str]
    pipeline_calls: int
    expert_schedule: list[str]
    observed_schedule: list[str | None]
    fp8_backend: str | None
    counted: str = "calls"  # "decisions" when compiled blocks ran (they cannot count calls)
    notes: list[str] = field(default_factory=list)

    def mismatches(self) -> list[Mismatch]:
        """Cells that ran otherwise than planned, and cells of a served step that never ran."""
        found = []
        for component, kinds in self.executed.items():
            served = {s for s, c in enumerate(self.observed_schedule) if c and component in c.split("+")}
            for kind, rows in kinds.items():
                for step, row in enumerate(rows):
                    planned_row = self.plan_rows[component][kind][step]
                    for layer, char in enumerate(row):
                        if char == planned_row[layer] or (char == NOT_RUN and step not in served):
                            continue
                        found.append(Mismatch(component, kind, step, layer, planned_row[layer], char))
        return found

    def matches_plan(self) -> bool:
        return not self.mismatches()

    def schedule_matches_plan(self) -> bool:
        """True when every step that ran was served by the component the plan predicted."""
        return all(seen is None or seen == want for seen, want in zip(self.observed_schedule, self.expert_schedule, strict=True))

    def to_dict(self) -> dict[str, Any]:
        return {
            "plan": self.plan_rows,
            "executed": self.executed,
            "cells": self.cells,
            "call_counts": self.call_counts,
            "fallback_calls": self.fallback_calls,
            "fallback_reasons": self.fallback_reasons,
            "pipeline_calls": self.pipeline_calls,
            "expert_schedule": self.expert_schedule,
            "observed_schedule": self.observed_schedule,
            "fp8_backend": self.fp8_backend,
            "counted": self.counted,
            "matches_plan": self.matches_plan(),
            "schedule_matches_plan": self.schedule_matches_plan(),
            "notes": self.notes,
        }

    def format(self) -> str:
        """A human table: plan row vs executed row per component, kind and step."""
        lines = [f"pipeline calls: {self.pipeline_calls}; calls per backend: "
                 + (", ".join(f"{k}={v}" for k, v in sorted(self.call_counts.items())) or "none")]
        for component, kinds in self.executed.items():
            for kind, rows in kinds.items():
                lines.append(f"{component} / {kind}   (1 = FP8, 0 = native, . = not run)")
                for step, row in enumerate(rows):
                    planned = self.plan_rows[component][kind][step]
                    seen = self.observed_schedule[step] if step < len(self.observed_schedule) else None
                    if set(row) == {NOT_RUN}:
                        verdict = "not run here"
                    else:
                        verdict = "ok" if all(a == b or a == NOT_RUN for a, b in zip(row, planned, strict=True)) else "DIFFERS"
                    lines.append(f"  step {step:>3} plan {planned}")
                    lines.append(f"           ran  {row}  {verdict}  (served by {seen or '-'})")
        lines.append(
            "expert schedule: plan " + " ".join(self.expert_schedule) + " | observed "
            + " ".join(s or "-" for s in self.observed_schedule)
            + ("" if self.schedule_matches_plan() else "   MISMATCH")
        )
        if self.fallback_calls:
            lines.append(f"fallback: {self.fallback_calls} planned-FP8 calls ran native: "
                         + "; ".join(f"{c}: {r}" for c, r in self.fallback_reasons.items()))
        lines.extend(self.notes)
        lines.append("executed table == plan: " + ("yes" if self.matches_plan() else f"NO ({len(self.mismatches())} cells)"))
        return "\n".join(lines)
