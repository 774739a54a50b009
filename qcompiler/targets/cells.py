"""What every export target shares: plan cells, the routings a target can take, and refusals that name cells.

A cell is (component, attention kind, step, layer). Which cells an engine can reach depends on its routing:
step s of a two-expert Wan2.2 plan runs on one expert, chosen by the engine from its scheduler, `flow_shift`
and `boundary_ratio`. An export is "exact" only if it reproduces the plan on every cell the engine can reach
with the settings emitted, so each target says which experts may serve each step:

- `PINNED`: the export pins (or states) the routing the plan's `expert_schedule` was computed with; a step is
  reachable on the expert(s) that routing gives (a target may add the expert its own scheduler would pick);
- `ANY`: nothing is assumed; every row of every expert is reachable (the steps may be split anywhere).

Pure data: never imports torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from qcompiler.errors import QcompileError
from qcompiler.formats import FORMATS
from qcompiler.plan.format import Plan
from qcompiler.ranges import format_ranges

Cell = tuple[str, str, int, int]  # (component, kind, step, layer)

PINNED = "pinned"
ANY = "any"
ROUTINGS = (PINNED, ANY)

# An error lists at most this many lines of cells, so a badly mismatched 40 x 40 plan stays readable.
_MAX_CELL_LINES = 24


class NotExpressibleError(QcompileError):
    """The plan cannot be written exactly as the target's settings.

    `forced_fp8`: cells the plan keeps native that every target setting keeping all the plan's FP8 cells would
    also run quantized; `never_fp8`: planned FP8 cells the target cannot quantize at all (they would run native).
    """

    def __init__(self, message: str, forced_fp8: tuple[Cell, ...] = (), never_fp8: tuple[Cell, ...] = ()):
        super().__init__(message)
        self.forced_fp8 = forced_fp8
        self.never_fp8 = never_fp8

    @property
    def cells(self) -> tuple[Cell, ...]:
        return self.forced_fp8 + self.never_fp8


class UnsupportedDtypeError(QcompileError):
    """The plan's quantized format has no equivalent in the target."""


class UnsupportedFamilyError(QcompileError):
    """The target has settings for other models only: nothing it reads can place the plan's family's cells."""


def require_family(plan: Plan, target: str, supported: Iterable[str], missing: str) -> None:
    """Refuse (UnsupportedFamilyError) a plan whose components are not all of the `supported` diffusers classes.

    `missing` says, for the target, what it lacks for other models; it may use `{model}` (the plan's
    unsupported class) and `{module}` (the path of one of the plan's attention modules, e.g.
    `transformer_blocks.0.attn`), so the reader sees the plan's own names.
    """
    supported = tuple(supported)
    family = plan.family
    others = [c for c in family.components if c.diffusers_class not in supported]
    if not others:
        return
    kind = family.kind_specs[0].name
    module = family.module_path(others[0].name, kind, 0)
    models = ", ".join(dict.fromkeys(c.diffusers_class for c in others))
    raise UnsupportedFamilyError(
        f"plan {plan.content_hash[:12]} ({family_label(plan)}: {models}) cannot be exported to {target}: "
        + missing.format(model=models, module=module)
        + f". {target} export covers {', '.join(supported)} only; run this family's plans with qcompile's "
        "runtime (runtime.load)"
    )


def target_names(key: str) -> dict[str, str]:
    """Plan dtype -> its name in export target `key` (a FormatSpec.targets key: "vllm-omni", "mindiesd-strategy",
    "xdit", ...), for the registered formats that target runs."""
    return {name: spec.targets[key] for name, spec in FORMATS.items() if spec.target_name(key) is not None}


def target_dtype(plan: Plan, target: str, key: str) -> str:
    """The name in export target `key` (shown as `target`) of the plan's dtype, from its format spec
    (qcompiler/formats/), or UnsupportedDtypeError saying why there is none."""
    dtype = plan.data["dtype"]
    names = target_names(key)
    if dtype in names:
        return names[dtype]
    spec = FORMATS.get(dtype)
    reason = (spec.target_refusal(key) if spec else None) or f"{target} has no equivalent of it"
    supported = ", ".join(sorted(names))
    raise UnsupportedDtypeError(
        f"plan {plan.content_hash[:12]} has dtype {dtype!r}, which cannot be exported to {target}: {reason}. "
        f"{target} exports plans of dtype {supported}; compile the recipe with one of them, or run this plan "
        "with runtime.load"
    )


def reachable_experts(plan: Plan, routing: str, extra: Sequence[Sequence[str]] = ()) -> tuple[frozenset[str], ...]:
    """For each step, the components that may serve it: the plan's expert_schedule (plus the same-length
    schedules in `extra`, e.g. the target's own scheduler) when PINNED, every component when ANY."""
    if routing not in ROUTINGS:
        raise ValueError(f"routing must be one of {ROUTINGS}, got {routing!r}")
    if routing == ANY:
        return tuple(frozenset(plan.component_names) for _ in range(plan.num_inference_steps))
    return tuple(frozenset({plan.expert_schedule[s], *(other[s] for other in extra)})
                 for s in range(plan.num_inference_steps))


def diffusers_expert_schedule(plan: Plan) -> list[str]:
    """The expert a diffusers Wan pipeline runs per step with the plan's family data (flow_shift, boundary_ratio,
    num_train_timesteps): what xDiT and a MindIE-SD-patched diffusers pipeline do. Equal to the plan's
    expert_schedule for every compiled plan; recomputed here so a plan whose schedule was written by hand
    cannot make a pinned export claim cells the pipeline never routes that way."""
    from qcompiler.compile.resolve import predict_expert_schedule

    return predict_expert_schedule(plan.family, plan.num_inference_steps)


def fp8_layers(plan: Plan, component: str, kind: str, step: int) -> frozenset[int]:
    return frozenset(layer for layer, fp8 in enumerate(plan.table(component, kind)[step]) if fp8)


def num_layers(plan: Plan, component: str, kind: str) -> int:
    return plan.family.num_layers(component, kind)


def family_label(plan: Plan) -> str:
    return plan.family_name if plan.variant is None else f"{plan.family_name} {plan.variant} variant"


def count(cells: int) -> str:
    return f"{cells} cell" if cells == 1 else f"{cells} cells"


def group_cells(cells: Iterable[Cell]) -> list[str]:
    """Readable lines, one per (component, kind, layer set): "  transformer/self steps 0-1,3: layers 0-2"."""
    by_row: dict[tuple[str, str, int], list[int]] = {}
    for component, kind, step, layer in cells:
        by_row.setdefault((component, kind, step), []).append(layer)
    groups: dict[tuple[str, str, str], list[int]] = {}
    for (component, kind, step), layers in by_row.items():
        groups.setdefault((component, kind, format_ranges(layers)), []).append(step)
    ordered = sorted(groups.items(), key=lambda item: (item[0][0], item[0][1], min(item[1])))
    lines = [
        f"  {component}/{kind} step{'s' if len(steps) > 1 else ''} {format_ranges(steps)}: "
        f"layer{'s' if ('-' in layers or ',' in layers) else ''} {layers}"
        for (component, kind, layers), steps in ordered
    ]
    if len(lines) > _MAX_CELL_LINES:
        hidden = len(lines) - _MAX_CELL_LINES
        lines = lines[:_MAX_CELL_LINES] + [f"  ... and {hidden} more lines like these"]
    return lines


def routing_lines(plan: Plan, routing: str) -> list[str]:
    """What a PINNED export assumes about routing, or that an ANY export assumes nothing."""
    if len(plan.component_names) < 2:
        return []
    if routing == ANY:
        return ["routing: any (every row of every expert is treated as reachable; nothing about flow_shift or "
                "boundary_ratio is assumed)"]
    family = plan.family
    return [f"routing: pinned to the plan's expert_schedule (flow_shift={family.flow_shift}, "
            f"boundary_ratio={family.boundary_ratio}, num_inference_steps={plan.num_inference_steps}): "
            f"{schedule_text(plan.expert_schedule)}"]


def schedule_text(schedule: Sequence[str]) -> str:
    """["transformer", "transformer", "transformer_2"] -> "steps 0-1 transformer, step 2 transformer_2"."""
    parts = []
    for component in dict.fromkeys(schedule):
        steps = [s for s, c in enumerate(schedule) if c == component]
        parts.append(f"step{'s' if len(steps) > 1 else ''} {format_ranges(steps)} {component}")
    return ", ".join(parts)
