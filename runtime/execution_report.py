"""The execution report: per (component, kind, step, layer) which backend served how many calls, comparable
cell for cell with the plan's tables. Counters are filled by the component hooks once per transformer forward.

A cell whose attention module a diffusers cache skipped in a forward (FirstBlockCache, PyramidAttentionBroadcast,
MagCache, TaylorSeer, FasterCache) counts as skipped: its own lane, symbol "s", never a mismatch. Under context
parallelism each rank has its own report; `gather_reports` (a collective) or `combine_reports` merges them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from qcompiler.plan.format import Plan, table_to_rows

NATIVE, FP8, FALLBACK, SKIPPED = 0, 1, 2, 3  # lanes of a cell's counts (SKIPPED: forwards a cache skipped it)
NOT_RUN, MIXED, SKIPPED_CHAR = ".", "x", "s"
SKIPPED_KEY = "skipped"  # the key of skipped forwards in a cell's counts and in call_counts
FALLBACK_BACKEND = "native-fallback"  # a cell the plan wants in FP8 that nothing could serve, run natively


class CellCounts:
    """Live call counts of one (component, kind): steps x layers x (native, fp8, fallback, skipped)."""

    def __init__(self, steps: int, layers: int):
        self.counts = [[[0, 0, 0, 0] for _ in range(layers)] for _ in range(steps)]

    def row(self, step: int) -> list[list[int]]:
        return self.counts[step]

    def clear(self) -> None:
        for row in self.counts:
            for cell in row:
                cell[:] = [0, 0, 0, 0]


def executed_char(cell: list[int]) -> str:
    """"1" FP8, "0" native, "x" both, "s" only skipped by a cache, "." never reached. A cell that ran in some
    forwards and was skipped in others shows what ran (the skips are in its counts)."""
    native, fp8, fallback, skipped = cell
    if fp8 and (native or fallback):
        return MIXED
    if fp8:
        return "1"
    if native or fallback:
        return "0"
    return SKIPPED_CHAR if skipped else NOT_RUN


@dataclass(frozen=True)
class Mismatch:
    component: str
    kind: str
    step: int
    layer: int
    planned: str  # "1" FP8, "0" native
    executed: str  # "1", "0", "." (not run although the component served the step) or "x" (both)
    rank: int = 0


@dataclass
class ExecutionReport:
    """A snapshot of what ran since load (or the last `PlanHandle.reset_report()`).

    `executed[component][kind]` has the plan's row format: one string per step, one char per layer, "1" FP8,
    "0" native, "." never run, "x" both in different calls, "s" skipped by a cache in every forward that reached
    it. `cells[component][kind][step][layer]` maps backend name -> calls (and "skipped" -> forwards skipped).
    `rank`/`world_size`: the process this report is from (0/1 in one process; `ranks` > 1 for a combined one). `observed_schedule[step]` is the component that served the step ("a+b" if both, None if
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
    quantized_backend: str | None  # JSON key "fp8_backend" (schemas/report.schema.json): INT8 included
    counted: str = "calls"  # "decisions" when compiled blocks ran (they cannot count calls)
    notes: list[str] = field(default_factory=list)
    skipped: int = 0  # cell-forwards a cache skipped (not attention calls: a skipped call never happened)
    rank: int = 0
    world_size: int = 1
    parallel: str | None = None  # "ulysses=2" etc. when the components ran context-parallel
    ranks: int = 1  # how many ranks' reports this one combines
    # component -> kind -> quantized calls that carried a padding mask and ran over the valid tokens only
    # (runtime/masks.py); they are quantized calls of their cells (the backend's lane), counted here once more
    packed_calls: dict[str, dict[str, int]] = field(default_factory=dict)

    def mismatches(self) -> list[Mismatch]:
        """Cells that ran otherwise than planned, and cells of a served step that never ran."""
        found = []
        for component, kinds in self.executed.items():
            served = {s for s, c in enumerate(self.observed_schedule) if c and component in c.split("+")}
            for kind, rows in kinds.items():
                for step, row in enumerate(rows):
                    planned_row = self.plan_rows[component][kind][step]
                    for layer, char in enumerate(row):
                        if char == planned_row[layer] or char == SKIPPED_CHAR or (char == NOT_RUN and step not in served):
                            continue
                        found.append(Mismatch(component, kind, step, layer, planned_row[layer], char, self.rank))
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
            "fp8_backend": self.quantized_backend,
            "counted": self.counted,
            "matches_plan": self.matches_plan(),
            "schedule_matches_plan": self.schedule_matches_plan(),
            "notes": self.notes,
            "skipped": self.skipped,
            "rank": self.rank,
            "world_size": self.world_size,
            "parallel": self.parallel,
            "ranks": self.ranks,
            "packed_calls": self.packed_calls,
        }

    def format(self) -> str:
        """A human table: plan row vs executed row per component, kind and step."""
        where = ""
        if self.ranks > 1:
            where = f"{self.ranks} ranks combined ({self.parallel}); "
        elif self.world_size > 1:
            where = f"rank {self.rank} of {self.world_size} ({self.parallel or 'no context parallelism'}); "
        lines = [f"{where}pipeline calls: {self.pipeline_calls}; calls per backend: "
                 + (", ".join(f"{k}={v}" for k, v in sorted(self.call_counts.items())) or "none")]
        if self.skipped:
            lines.append(f"skipped by a cache: {self.skipped} cell-forwards (s)")
        for component, kinds in self.executed.items():
            for kind, rows in kinds.items():
                lines.append(f"{component} / {kind}   (1 = FP8, 0 = native, s = skipped by a cache, . = not run)")
                for step, row in enumerate(rows):
                    planned = self.plan_rows[component][kind][step]
                    seen = self.observed_schedule[step] if step < len(self.observed_schedule) else None
                    if set(row) == {NOT_RUN}:
                        verdict = "not run here"
                    else:
                        verdict = "ok" if all(a in (b, NOT_RUN, SKIPPED_CHAR) for a, b in zip(row, planned, strict=True)) else "DIFFERS"
                    lines.append(f"  step {step:>3} plan {planned}")
                    lines.append(f"           ran  {row}  {verdict}  (served by {seen or '-'})")
        lines.append(
            "expert schedule: plan " + " ".join(self.expert_schedule) + " | observed "
            + " ".join(s or "-" for s in self.observed_schedule)
            + ("" if self.schedule_matches_plan() else "   MISMATCH")
        )
        packed = sum(calls for kinds in self.packed_calls.values() for calls in kinds.values())
        if packed:
            lines.append(f"packed: {packed} quantized calls carried a padding mask and ran over the valid tokens only")
        if self.fallback_calls:
            lines.append(f"fallback: {self.fallback_calls} planned-FP8 calls ran native: "
                         + "; ".join(f"{c}: {r}" for c, r in self.fallback_reasons.items()))
        lines.extend(self.notes)
        lines.append("executed table == plan: " + ("yes" if self.matches_plan() else f"NO ({len(self.mismatches())} cells)"))
        return "\n".join(lines)


def build_report(plan: Plan, counts: Mapping[tuple[str, str], CellCounts], quantized_names: Mapping[str, str], *,
                 fallback_reasons: Mapping[str, str], pipeline_calls: int, observed_schedule: list[str | None],
                 quantized_backend: str | None, counted: str = "calls", notes: Sequence[str] = (), rank: int = 0,
                 world_size: int = 1, parallel: str | None = None,
                 packed_calls: Mapping[str, Mapping[str, int]] | None = None) -> ExecutionReport:
    """The one builder of an ExecutionReport from live counts (runtime.load's PlanHandle and the vllm-omni
    plugin): `counts[(component, kind)]` are the cells, `quantized_names[component]` names the backend whose calls
    the quantized lane holds (the fallback lane is FALLBACK_BACKEND, skipped forwards SKIPPED_KEY)."""
    plan_rows: dict[str, dict[str, list[str]]] = {}
    executed: dict[str, dict[str, list[str]]] = {}
    cells: dict[str, dict[str, list[list[dict[str, int]]]]] = {}
    totals: dict[str, int] = {}
    fallback_calls = skipped = 0
    for (component, kind), cell_counts in counts.items():
        lanes = (("native", NATIVE), (quantized_names[component], FP8), (FALLBACK_BACKEND, FALLBACK),
                 (SKIPPED_KEY, SKIPPED))
        plan_rows.setdefault(component, {})[kind] = table_to_rows(plan.table(component, kind))
        executed.setdefault(component, {})[kind] = ["".join(map(executed_char, row)) for row in cell_counts.counts]
        kind_cells = []
        for row in cell_counts.counts:
            row_cells = []
            for cell in row:
                named: dict[str, int] = {}
                for lane_name, lane in lanes:
                    if cell[lane]:
                        named[lane_name] = named.get(lane_name, 0) + cell[lane]
                for backend_name, calls in named.items():
                    if backend_name != SKIPPED_KEY:
                        totals[backend_name] = totals.get(backend_name, 0) + calls
                fallback_calls += cell[FALLBACK]
                skipped += cell[SKIPPED]
                row_cells.append(named)
            kind_cells.append(row_cells)
        cells.setdefault(component, {})[kind] = kind_cells
    return ExecutionReport(
        plan_rows=plan_rows, executed=executed, cells=cells, call_counts=totals, fallback_calls=fallback_calls,
        fallback_reasons=dict(fallback_reasons), pipeline_calls=pipeline_calls,
        expert_schedule=list(plan.expert_schedule), observed_schedule=observed_schedule,
        quantized_backend=quantized_backend, counted=counted, notes=list(notes), skipped=skipped, rank=rank,
        world_size=world_size, parallel=parallel,
        packed_calls={c: dict(kinds) for c, kinds in (packed_calls or {}).items()},
    )


def combine_reports(reports: list[ExecutionReport]) -> ExecutionReport:
    """One report for the ranks of a context-parallel run: calls summed per cell and backend; the executed
    tables must agree (a cell where ranks differ shows "x" and the combined report does not match the plan)."""
    if not reports:
        raise ValueError("combine_reports needs at least one report")
    first = reports[0]
    executed: dict[str, dict[str, list[str]]] = {}
    cells: dict[str, dict[str, list[list[dict[str, int]]]]] = {}
    notes = list(first.notes)
    for component, kinds in first.executed.items():
        for kind, rows in kinds.items():
            combined_rows = []
            for step, row in enumerate(rows):
                chars = []
                for layer, char in enumerate(row):
                    seen = {r.executed[component][kind][step][layer] for r in reports}
                    chars.append(char if len(seen) == 1 else MIXED)
                combined_rows.append("".join(chars))
            executed.setdefault(component, {})[kind] = combined_rows
            kind_cells = []
            for step, row in enumerate(first.cells[component][kind]):
                row_cells = []
                for layer in range(len(row)):
                    summed: dict[str, int] = {}
                    for r in reports:
                        for name, calls in r.cells[component][kind][step][layer].items():
                            summed[name] = summed.get(name, 0) + calls
                    row_cells.append(summed)
                kind_cells.append(row_cells)
            cells.setdefault(component, {})[kind] = kind_cells
    differing = [r.rank for r in reports if r.executed != first.executed]
    if differing:
        notes.append(f"ranks {differing} executed other tables than rank {first.rank}: those cells show x")
    totals: dict[str, int] = {}
    for r in reports:
        for name, calls in r.call_counts.items():
            totals[name] = totals.get(name, 0) + calls
    reasons: dict[str, str] = {}
    for r in reports:
        reasons.update(r.fallback_reasons)
    packed: dict[str, dict[str, int]] = {}
    for r in reports:
        for component, kinds in r.packed_calls.items():
            for kind, calls in kinds.items():
                packed.setdefault(component, {})[kind] = packed.get(component, {}).get(kind, 0) + calls
    return ExecutionReport(
        plan_rows=first.plan_rows, executed=executed, cells=cells, call_counts=totals,
        fallback_calls=sum(r.fallback_calls for r in reports), fallback_reasons=reasons,
        pipeline_calls=first.pipeline_calls, expert_schedule=first.expert_schedule,
        observed_schedule=first.observed_schedule if all(r.observed_schedule == first.observed_schedule
                                                         for r in reports) else [None] * len(first.observed_schedule),
        quantized_backend=first.quantized_backend, counted=first.counted, notes=notes,
        skipped=sum(r.skipped for r in reports), rank=0, world_size=first.world_size, parallel=first.parallel,
        ranks=len(reports), packed_calls=packed,
    )


def gather_reports(report: ExecutionReport, group: Any = None) -> ExecutionReport:
    """Collective: every rank of `group` (default: the world) passes its own report and gets the combined one."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return report
    gathered: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, report.to_dict(), group=group)
    return combine_reports([report_from_dict(d) for d in gathered])


def report_from_dict(data: dict[str, Any]) -> ExecutionReport:
    """The inverse of ExecutionReport.to_dict (the derived verdicts are recomputed, not read)."""
    return ExecutionReport(
        plan_rows=data["plan"], executed=data["executed"], cells=data["cells"], call_counts=data["call_counts"],
        fallback_calls=data["fallback_calls"], fallback_reasons=data["fallback_reasons"],
        pipeline_calls=data["pipeline_calls"], expert_schedule=data["expert_schedule"],
        observed_schedule=data["observed_schedule"], quantized_backend=data["fp8_backend"], counted=data["counted"],
        notes=list(data["notes"]), skipped=data["skipped"], rank=data["rank"], world_size=data["world_size"],
        parallel=data["parallel"], ranks=data["ranks"], packed_calls=data.get("packed_calls", {}),
    )
