"""Export a plan as vllm-omni diffusion settings (`diffusion_kv_cache_dtype`, `_skip_steps`, `_skip_layers`).

vllm-omni's model (../shared/reference/ascend-fp8-attention.md, docs/export-and-patch.md): a self-attention call
runs FP8 iff the dtype is "fp8" AND its step is not in skip_steps AND its layer is not in skip_layers. The step
is the 0-based denoising index, continuous across Wan2.2's expert switch; the layer list is shared by both
experts; cross-attention is never quantized. So the FP8 sets it can express are exactly the rectangles
(all steps - S) x (all layers - L).

Which cells matter: step s is served by one expert, `plan.expert_schedule[s]`. vllm-omni applies S and L to
whichever expert runs, so only the cells an expert actually serves are compared; the rows of a table for steps
its component does not serve are ignored. The export is therefore exact as long as the pipeline routes steps
the way the plan's expert_schedule predicts (same scheduler, boundary ratio and step count).

Pure data: never imports torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from qcompiler.errors import QcompileError
from qcompiler.numerics import DEFAULT_ROTATION_SEED, INT8_DTYPE
from qcompiler.plan.format import Plan
from qcompiler.ranges import format_ranges

# vllm-omni quantizes only Wan's self-attention (attn1); it opts cross-attention (text K/V of 512 tokens) out
# as no faster and worse in quality. Cells of any other kind can only ever run native there.
QUANTIZED_KIND = "self"

# vllm-omni's numerics are fixed: msModelSlim's randomized Hadamard with seed 425500, no K-mean subtraction.
VLLM_OMNI_ROTATION_SEED = DEFAULT_ROTATION_SEED

# Past this many candidate layer sets the exact search stops and a greedy search takes over (see _best_rectangle).
_MAX_EXACT_CANDIDATES = 4096
# An error lists at most this many lines of cells, so a badly mismatched 40 x 40 plan stays readable.
_MAX_CELL_LINES = 24

Cell = tuple[str, str, int, int]  # (component, kind, step, layer)


class NotExpressibleError(QcompileError):
    """The plan's FP8 cells are not one vllm-omni (steps - S) x (layers - L) rectangle.

    `forced_fp8` lists the cells the plan keeps native that every vllm-omni setting keeping all the plan's
    FP8 cells would also run in FP8; `never_fp8` lists planned FP8 cells vllm-omni cannot quantize at all.
    """

    def __init__(self, message: str, forced_fp8: tuple[Cell, ...], never_fp8: tuple[Cell, ...]):
        super().__init__(message)
        self.forced_fp8 = forced_fp8
        self.never_fp8 = never_fp8

    @property
    def cells(self) -> tuple[Cell, ...]:
        return self.forced_fp8 + self.never_fp8


@dataclass(frozen=True)
class VllmOmniSettings:
    """What to give vllm-omni for one plan. `fp8` False means: leave diffusion_kv_cache_dtype unset."""

    fp8: bool
    skip_steps: tuple[int, ...]
    skip_layers: tuple[int, ...]
    num_inference_steps: int
    family: str
    plan_sha256: str
    fp8_cells: int  # served cells these settings run in FP8
    planned_fp8_cells: int  # served cells the plan runs in FP8 (any kind)
    conservative: bool
    notes: tuple[str, ...]  # what vllm-omni will do differently from the plan besides placement

    @property
    def given_up_cells(self) -> int:
        """Planned FP8 cells these settings run native (0 unless the export was conservative)."""
        return self.planned_fp8_cells - self.fp8_cells

    def engine_args(self) -> dict[str, str]:
        """The stage-config `engine_args` entries; empty selectors are left out (vllm-omni's default: none)."""
        if not self.fp8:
            return {}
        args = {"diffusion_kv_cache_dtype": "fp8"}
        if self.skip_steps:
            args["diffusion_kv_cache_skip_steps"] = format_selector(self.skip_steps)
        if self.skip_layers:
            args["diffusion_kv_cache_skip_layers"] = format_selector(self.skip_layers)
        return args

    def to_flags(self) -> str:
        """One line of vllm-omni CLI flags ("" when the plan runs every vllm-omni call native)."""
        return " ".join(
            f'--{key.replace("_", "-")} "{value}"' if "skip" in key else f"--{key.replace('_', '-')} {value}"
            for key, value in self.engine_args().items()
        )

    def to_yaml(self) -> str:
        """A stage-config snippet. Selectors are double-quoted: an unquoted `3` would load as an int."""
        lines = [f"# {line}" for line in self.summary_lines()]
        args = self.engine_args()
        if not args:
            lines.append("engine_args: {}")
        else:
            lines.append("engine_args:")
            lines.extend(f'  {key}: "{value}"' for key, value in args.items())
        return "\n".join(lines) + "\n"

    def summary_lines(self) -> list[str]:
        lines = [
            f"qcompile export --to vllm-omni: plan {self.plan_sha256[:12]} ({self.family}), "
            f"valid for num_inference_steps={self.num_inference_steps} only",
        ]
        if not self.fp8:
            lines.append("no FP8 on any call vllm-omni runs: leave diffusion_kv_cache_dtype unset")
        else:
            lines.append(f"FP8 on {self.fp8_cells} (step, layer) cells of self-attention")
        if self.conservative:
            lines.append(
                f"--conservative: gives up {self.given_up_cells} of the plan's {self.planned_fp8_cells} FP8 cells "
                "(they run native); no cell the plan keeps native runs FP8"
            )
        lines.extend(self.notes)
        return lines


def format_selector(indices: Iterable[int]) -> str:
    """Compact vllm-omni selector: sorted, de-duplicated, runs as inclusive ranges, e.g. "0-2,5,37-39"."""
    return format_ranges(indices)


def export_vllm_omni(plan: Plan, *, conservative: bool = False) -> VllmOmniSettings:
    """vllm-omni settings that run exactly the plan's served FP8 cells.

    Raises NotExpressibleError when no setting does. With `conservative=True`, returns instead the largest
    expressible setting that never runs FP8 on a cell the plan keeps native (see _best_rectangle).
    """
    _refuse_int8(plan)
    served = _served_fp8_layers(plan)
    self_rows = {step: layers for (kind, step), layers in served.items() if kind == QUANTIZED_KIND and layers}
    never = tuple(
        (plan.expert_schedule[step], kind, step, layer)
        for (kind, step), layers in sorted(served.items())
        if kind != QUANTIZED_KIND
        for layer in sorted(layers)
    )
    planned = sum(len(layers) for layers in served.values())
    # The smallest rectangle holding every planned FP8 self cell: FP8 steps x union of FP8 layers.
    union = frozenset().union(*self_rows.values())
    forced = tuple(
        (plan.expert_schedule[step], QUANTIZED_KIND, step, layer)
        for step, layers in sorted(self_rows.items())
        for layer in sorted(union - layers)
        if layer < _num_layers(plan, plan.expert_schedule[step])
    )
    if not forced and not never:
        return _settings(plan, frozenset(self_rows), union, planned, conservative)
    steps, layers = _best_rectangle(self_rows)
    settings = _settings(plan, steps, layers, planned, conservative)
    if not conservative:
        raise NotExpressibleError(_not_expressible_message(plan, forced, never, settings), forced, never)
    return settings


def _refuse_int8(plan: Plan) -> None:
    """vllm-omni's only quantized attention is FP8 (`diffusion_kv_cache_dtype: fp8`); an int8_per_tensor plan
    exported anyway would silently run FP8 (and on Atlas A2/A3, which have no FP8, nothing). Refuse it (issue 14)."""
    if plan.data["dtype"] == INT8_DTYPE:
        raise QcompileError(
            f"plan dtype {INT8_DTYPE} cannot be exported to vllm-omni: vllm-omni runs only FP8 attention, so the "
            "settings would run FP8, not INT8. Run the plan with runtime.load on Atlas A2/A3 (backend int8-npu), "
            "or recompile the recipe with `dtype: fp8_e4m3_per_block` for an Ascend 950"
        )


def _served_fp8_layers(plan: Plan) -> dict[tuple[str, int], frozenset[int]]:
    """(kind, step) -> FP8 layers of the expert that serves the step, per plan.expert_schedule."""
    served: dict[tuple[str, int], frozenset[int]] = {}
    for step, component in enumerate(plan.expert_schedule):
        for kind in plan.attention_kinds:
            row = plan.table(component, kind)[step]
            served[(kind, step)] = frozenset(layer for layer, fp8 in enumerate(row) if fp8)
    return served


def _num_layers(plan: Plan, component: str) -> int:
    return next(c["num_layers"] for c in plan.components if c["name"] == component)


def _settings(plan: Plan, steps: frozenset[int], layers: frozenset[int], planned: int,
              conservative: bool) -> VllmOmniSettings:
    all_layers = range(max(c["num_layers"] for c in plan.components))
    fp8 = bool(steps) and bool(layers)
    fp8_cells = sum(
        len([layer for layer in layers if layer < _num_layers(plan, plan.expert_schedule[step])]) for step in steps
    ) if fp8 else 0
    return VllmOmniSettings(
        fp8=fp8,
        skip_steps=tuple(s for s in range(plan.num_inference_steps) if s not in steps) if fp8 else (),
        skip_layers=tuple(layer for layer in all_layers if layer not in layers) if fp8 else (),
        num_inference_steps=plan.num_inference_steps,
        family=plan.family_name if plan.variant is None else f"{plan.family_name} {plan.variant} variant",
        plan_sha256=plan.content_hash,
        fp8_cells=fp8_cells,
        planned_fp8_cells=planned,
        conservative=conservative,
        notes=_numerics_notes(plan) if fp8 else (),
    )


def _numerics_notes(plan: Plan) -> tuple[str, ...]:
    """What vllm-omni cannot honour besides placement: it has one fixed numerics recipe and no fallback policy."""
    notes = []
    numerics = plan.numerics
    if not numerics["hadamard_rotation"] or numerics["rotation_seed"] != VLLM_OMNI_ROTATION_SEED:
        notes.append(
            f"note: vllm-omni always rotates Q/K with Hadamard seed {VLLM_OMNI_ROTATION_SEED}; this plan asks for "
            f"hadamard_rotation={str(numerics['hadamard_rotation']).lower()}, rotation_seed={numerics['rotation_seed']}"
        )
    if numerics["k_mean_subtraction"]:
        notes.append("note: vllm-omni does no K-mean subtraction; this plan asks for it")
    if plan.fallback == "error":
        notes.append(
            "note: fallback=error cannot be expressed: vllm-omni warns and runs native where FP8 is unavailable"
        )
    return tuple(notes)


def _best_rectangle(rows: Mapping[int, frozenset[int]]) -> tuple[frozenset[int], frozenset[int]]:
    """The steps x layers rectangle with the most cells inside the plan's FP8 self cells (`rows`: step -> layers).

    Exact when possible: the best rectangle's layer set is the intersection of its steps' FP8 layer sets, so
    the candidates are the closure of the distinct rows under intersection, each scored with every step whose
    row contains it. When that closure passes _MAX_EXACT_CANDIDATES (many distinct irregular rows), a greedy
    search takes over: start from all FP8 steps and repeatedly drop the step whose removal leaves the largest
    rectangle, keeping the best seen (and never less than the widest single step). Either way every cell of the result is an FP8 cell of the plan, which is
    the safety property; only optimality is lost in the greedy case. Ties go to more steps, then lower layers.
    """
    if not rows:
        return frozenset(), frozenset()
    distinct = set(rows.values())
    candidates = set(distinct)
    frontier = set(distinct)
    while frontier:
        grown = {a & b for a in frontier for b in distinct} - candidates
        candidates |= grown
        frontier = grown
        if len(candidates) > _MAX_EXACT_CANDIDATES:
            return _greedy_rectangle(rows)
    scored = []
    for layers in candidates:
        steps = frozenset(step for step, row in rows.items() if layers <= row)
        scored.append((len(steps) * len(layers), len(steps), _rank(layers), steps, layers))
    best = max(scored, key=lambda item: item[:3])
    return best[3], best[4]


def _greedy_rectangle(rows: Mapping[int, frozenset[int]]) -> tuple[frozenset[int], frozenset[int]]:
    steps = set(rows)
    # A single step's row is always a rectangle; starting from the widest one means greedy never returns less.
    widest = max(sorted(rows), key=lambda step: len(rows[step]))
    best = (len(rows[widest]), frozenset({widest}), rows[widest])
    while steps:
        layers = frozenset.intersection(*(rows[s] for s in steps))
        if len(steps) * len(layers) > best[0]:
            best = (len(steps) * len(layers), frozenset(steps), layers)

        def remaining_area(dropped: int) -> tuple[int, int]:
            rest = steps - {dropped}
            kept = frozenset.intersection(*(rows[s] for s in rest)) if rest else frozenset()
            return len(rest) * len(kept), -dropped

        steps.remove(max(steps, key=remaining_area))
    return best[1], best[2]


def _rank(layers: frozenset[int]) -> tuple[int, ...]:
    # Deterministic tie-break between equal-area layer sets: prefer the one with the lower layers.
    return tuple(-layer for layer in sorted(layers))


def _not_expressible_message(plan: Plan, forced: tuple[Cell, ...], never: tuple[Cell, ...],
                             conservative: VllmOmniSettings) -> str:
    lines = [
        f"plan {plan.content_hash[:12]} ({plan.family_name}, {plan.num_inference_steps} steps) cannot be expressed "
        "as vllm-omni settings: vllm-omni runs FP8 on exactly (steps not skipped) x (layers not skipped) of "
        "self-attention, one layer list for both experts, and never quantizes cross-attention.",
    ]
    if forced:
        lines.append(
            f"Keeping every FP8 cell of the plan would also run FP8 on {_count(len(forced))} it keeps native:"
        )
        lines.extend(group_cells(forced))
    if never:
        lines.append(f"{_count(len(never))} the plan runs in FP8 are of a kind vllm-omni never quantizes "
                     "(they would run native):")
        lines.extend(group_cells(never))
    lines.append(
        f"Fix: pass --conservative to export the largest setting that keeps every native cell native "
        f"({conservative.fp8_cells} of the plan's {conservative.planned_fp8_cells} FP8 cells stay FP8), or change the recipe so its FP8 cells form one "
        "steps x layers rectangle of self-attention (native rules that span all layers for some steps, or all "
        "steps for some layers)."
    )
    return "\n".join(lines)


def _count(cells: int) -> str:
    return f"{cells} cell" if cells == 1 else f"{cells} cells"


def group_cells(cells: Iterable[Cell]) -> list[str]:
    """Readable lines, one per (component, kind, layer set): "  transformer/self steps 0-1,3: layers 0-2"."""
    by_row: dict[tuple[str, str, int], list[int]] = {}
    for component, kind, step, layer in cells:
        by_row.setdefault((component, kind, step), []).append(layer)
    groups: dict[tuple[str, str, str], list[int]] = {}
    for (component, kind, step), layers in by_row.items():
        groups.setdefault((component, kind, format_selector(layers)), []).append(step)
    ordered = sorted(groups.items(), key=lambda item: (item[0][0], item[0][1], min(item[1])))
    lines = [
        f"  {component}/{kind} step{'s' if len(steps) > 1 else ''} {format_selector(steps)}: "
        f"layer{'s' if ('-' in layers or ',' in layers) else ''} {layers}"
        for (component, kind, layers), steps in ordered
    ]
    if len(lines) > _MAX_CELL_LINES:
        hidden = len(lines) - _MAX_CELL_LINES
        lines = lines[:_MAX_CELL_LINES] + [f"  ... and {hidden} more lines like these"]
    return lines
