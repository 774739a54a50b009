"""Export a plan as vllm-omni 0.30 diffusion settings (`diffusion_kv_cache_dtype`, `_skip_steps`, `_skip_layers`).

vllm-omni's model (../shared/reference/npu-entry-points.md, docs/export-and-patch.md): a self-attention call
runs quantized iff the dtype is set AND its step is not in skip_steps AND its layer is not in skip_layers. The
step is the 0-based denoising index, continuous across Wan2.2's expert switch; the layer list is shared by both
experts; cross-attention is never quantized. So the sets it can express are exactly the rectangles
(all steps - S) x (all layers - L), applied to whichever expert serves each step.

Routing: vllm-omni picks the expert per step from its own scheduler, `flow_shift` and `boundary_ratio`
(defaults 5.0 and 0.875; the plan's family may differ). With `routing="pinned"` the export writes the plan's
`flow_shift` and `boundary_ratio` into the settings (a stage-config `boundary_ratio` wins over a request's;
a request's `flow_shift` or `sample_solver` does not, so the output says it assumes neither is sent), and a
step counts as reachable on the plan's expert and on the expert vllm-omni 0.30's UniPC scheduler would pick
(they differ only where a timestep sits on the boundary). With `routing="any"` every row of every expert is
reachable. "Exact" means exact on every reachable cell.

Pure data: never imports torch.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

from qcompiler.formats import quantized_name
from qcompiler.numerics import DEFAULT_ROTATION_SEED
from qcompiler.plan.format import Plan
from qcompiler.ranges import format_ranges
from qcompiler.targets.cells import (
    ANY,
    PINNED,
    Cell,
    NotExpressibleError,
    count,
    family_label,
    fp8_layers,
    group_cells,
    num_layers,
    reachable_experts,
    require_family,
    routing_lines,
    target_dtype,
)
from qcompiler.targets.rectangles import best_rectangle as _best_rectangle

__all__ = ["NotExpressibleError", "VllmOmniSettings", "export_vllm_omni", "format_selector", "group_cells",
           "numerics_notes", "vllm_omni_expert_schedule"]

TARGET = "vllm-omni"

# Engine knowledge, Wan-only because the engine is: vllm-omni 0.30's diffusion KV-cache quantization exists only in
# its Wan pipelines (models/wan2_2), so this target speaks of the Wan kinds by name.
# vllm-omni quantizes only Wan's self-attention (attn1); it opts cross-attention (text K/V of 512 tokens) out
# (`disable_kv_quant=True`). Cells of any other kind can only ever run native there.
QUANTIZED_KIND = "self"

# vllm-omni gates FP8 attention by (step, layer) tags its Wan pipelines set, with Wan's expert routing.
SUPPORTED_MODELS = ("WanTransformer3DModel",)
MISSING = ("vllm-omni's FP8 attention gate is Wan-only: its layer tags and expert routing exist for Wan "
           "(diffusion_kv_cache_skip_layers indexes Wan's blocks.N.attn1 only); nothing tags {model}'s attention "
           "calls (such as {module}) with a layer and step")

# Plan dtype -> the value of vllm-omni 0.30's `diffusion_kv_cache_dtype` ("fp8, mxfp8, mxfp4, or float (NPU)"):
# the same spelling as MindIE-SD's quant_attention `precision=`, which is what vllm-omni passes it on.
# Each format's spec names it (qcompiler/formats/<dtype>.py, target "vllm-omni").
DTYPE_KEY = "vllm-omni"

# vllm-omni's numerics are fixed: a randomized Hadamard rotation with seed 425500 (our default seed), no K-mean
# subtraction.
VLLM_OMNI_ROTATION_SEED = DEFAULT_ROTATION_SEED



@dataclass(frozen=True)
class VllmOmniSettings:
    """What to give vllm-omni for one plan. `fp8` False means: leave diffusion_kv_cache_dtype unset."""

    fp8: bool  # any quantized attention at all (of `dtype`, not only FP8)
    dtype: str  # the diffusion_kv_cache_dtype value: fp8, mxfp8 or mxfp4
    skip_steps: tuple[int, ...]
    skip_layers: tuple[int, ...]
    num_inference_steps: int
    family: str
    plan_sha256: str
    routing: str
    boundary_ratio: float | None  # pinned in the settings (None: not written)
    flow_shift: float | None
    fp8_cells: int  # reachable cells these settings quantize
    planned_fp8_cells: int  # reachable cells the plan quantizes (any kind)
    conservative: bool
    notes: tuple[str, ...]  # what vllm-omni will do differently from the plan besides placement

    @property
    def given_up_cells(self) -> int:
        """Planned quantized cells these settings run native (0 unless the export was conservative)."""
        return self.planned_fp8_cells - self.fp8_cells

    def _routing_args(self) -> dict[str, float]:
        args: dict[str, float] = {}
        if self.boundary_ratio is not None:
            args["boundary_ratio"] = self.boundary_ratio
        if self.flow_shift is not None:
            args["flow_shift"] = self.flow_shift
        return args

    def engine_args(self) -> dict[str, object]:
        """The stage-config `engine_args` entries. Selectors in the list form vllm-omni 0.30 accepts there
        (`parse_kv_cache_skip_selector` takes a list of ints); empty selectors are left out (default: none)."""
        if not self.fp8:
            return dict(self._routing_args())
        args: dict[str, object] = {"diffusion_kv_cache_dtype": self.dtype}
        if self.skip_steps:
            args["diffusion_kv_cache_skip_steps"] = list(self.skip_steps)
        if self.skip_layers:
            args["diffusion_kv_cache_skip_layers"] = list(self.skip_layers)
        args.update(self._routing_args())
        return args

    def to_flags(self) -> str:
        """One line of vllm-omni CLI flags (only the routing, or "", when every call runs native). The CLI's
        selector flags are strings (argparse type=str), so selectors are written as "0-2,5"."""
        words = [f"--diffusion-kv-cache-dtype {self.dtype}"] if self.fp8 else []
        if self.fp8 and self.skip_steps:
            words.append(f'--diffusion-kv-cache-skip-steps "{format_selector(self.skip_steps)}"')
        if self.fp8 and self.skip_layers:
            words.append(f'--diffusion-kv-cache-skip-layers "{format_selector(self.skip_layers)}"')
        words.extend(f"--{key.replace('_', '-')} {value}" for key, value in self._routing_args().items())
        return " ".join(words)

    def to_yaml(self) -> str:
        """A stage-config snippet (engine_args of the diffusion stage), summary as comments."""
        lines = [f"# {line}" for line in self.summary_lines()]
        args = self.engine_args()
        if not args:
            lines.append("engine_args: {}")
        else:
            lines.append("engine_args:")
            for key, value in args.items():
                text = "[" + ", ".join(map(str, value)) + "]" if isinstance(value, list) else value
                lines.append(f"  {key}: {text}")
        return "\n".join(lines) + "\n"

    def summary_lines(self) -> list[str]:
        lines = [
            f"qcompile export --to vllm-omni: plan {self.plan_sha256[:12]} ({self.family}), "
            f"valid for num_inference_steps={self.num_inference_steps} only (vllm-omni 0.30 names)",
        ]
        if not self.fp8:
            lines.append("no quantized attention on any call vllm-omni runs: leave diffusion_kv_cache_dtype unset")
        else:
            lines.append(f"{self.dtype.upper()} on {self.fp8_cells} (step, layer) cells of self-attention")
        if self.routing == PINNED and self.boundary_ratio is not None:
            lines.append(
                f"routing pinned: boundary_ratio={self.boundary_ratio} and flow_shift={self.flow_shift} are part of "
                "these settings; assumes requests send no flow_shift and no sample_solver (unipc) and use "
                f"num_inference_steps={self.num_inference_steps}"
            )
        elif self.routing == ANY and self.boundary_ratio is None and self.fp8:
            lines.append("routing: any (exact whatever flow_shift, boundary_ratio or sample_solver a request uses; "
                         "cell counts include every expert that may serve a step)")
        if self.conservative:
            lines.append(
                f"--conservative: gives up {self.given_up_cells} of the plan's {self.planned_fp8_cells} quantized "
                "cells (they run native); no cell the plan keeps native runs quantized"
            )
        lines.extend(self.notes)
        return lines


def format_selector(indices: Iterable[int]) -> str:
    """Compact vllm-omni selector: sorted, de-duplicated, runs as inclusive ranges, e.g. "0-2,5,37-39"."""
    return format_ranges(indices)


def _float32(value: float) -> float:
    return struct.unpack("f", struct.pack("f", value))[0]


def vllm_omni_expert_schedule(plan: Plan) -> list[str]:
    """The expert vllm-omni 0.30 runs at each step with the plan's flow_shift and boundary_ratio (UniPC solver).

    Mirrors `FlowUniPCMultistepScheduler` (diffusion/models/schedulers/scheduling_flow_unipc_multistep.py):
    training sigmas 1 - linspace(1, 1/T, T)[::-1] in float32 give sigma_max = float32(1 - 1/T) and sigma_min = 0;
    set_timesteps takes linspace(sigma_max, sigma_min, N + 1)[:-1] (float64), shifts s' = shift*s/(1+(shift-1)*s),
    and truncates s' * T to int64. The pipeline (pipeline_wan2_2*.py) runs `transformer_2` iff t < boundary_ratio
    * T, a comparison torch makes in float32 (an int64 tensor against a Python float).
    """
    names = plan.component_names
    family = plan.family
    steps = plan.num_inference_steps
    if family.boundary_ratio is None or len(names) < 2:
        return [names[0]] * steps
    train = family.num_train_timesteps
    shift = family.flow_shift
    sigma_max = _float32(1.0 - 1.0 / train)
    step_size = (0.0 - sigma_max) / steps
    boundary = _float32(family.boundary_ratio * train)
    schedule = []
    for index in range(steps):
        sigma = index * step_size + sigma_max
        sigma = shift * sigma / (1 + (shift - 1) * sigma)
        timestep = int(sigma * train)
        schedule.append(names[1] if _float32(float(timestep)) < boundary else names[0])
    return schedule


def export_vllm_omni(plan: Plan, *, conservative: bool = False, routing: str = PINNED) -> VllmOmniSettings:
    """vllm-omni settings that quantize exactly the plan's quantized cells on every reachable (step, expert).

    Raises UnsupportedDtypeError for a dtype vllm-omni has no name for, NotExpressibleError when no setting is
    exact. With `conservative=True`, returns instead the largest expressible setting that never quantizes a
    cell the plan keeps native (see _best_rectangle).
    """
    require_family(plan, TARGET, SUPPORTED_MODELS, MISSING)
    dtype = target_dtype(plan, TARGET, DTYPE_KEY)
    reach = reachable_experts(plan, routing, extra=[vllm_omni_expert_schedule(plan)])
    # (step, component) -> quantized self-attention layers, for every reachable pair.
    rows = {(step, c): fp8_layers(plan, c, QUANTIZED_KIND, step) for step, cs in enumerate(reach) for c in cs}
    never = tuple(sorted(
        (c, kind, step, layer)
        for step, cs in enumerate(reach) for c in cs
        for kind in plan.attention_kinds if kind != QUANTIZED_KIND
        for layer in fp8_layers(plan, c, kind, step)
    ))
    planned = sum(len(layers) for layers in rows.values()) + len(never)
    fp8_steps = sorted({step for (step, _), layers in rows.items() if layers})
    # The smallest rectangle holding every planned self cell: quantized steps x union of their layers.
    union = frozenset().union(*rows.values())
    forced = tuple(
        (c, QUANTIZED_KIND, step, layer)
        for step in fp8_steps for c in sorted(reach[step])
        for layer in sorted(union - rows[(step, c)]) if layer < num_layers(plan, c, QUANTIZED_KIND)
    )
    pinned = routing == PINNED and len(plan.component_names) > 1 and plan.family.boundary_ratio is not None
    if not forced and not never:
        return _settings(plan, dtype, frozenset(fp8_steps), union, reach, planned, conservative, routing, pinned)
    # Conservative: a step may run its layers L only if L is quantized on every expert that can serve it.
    safe_rows = {step: frozenset.intersection(*(rows[(step, c)] for c in reach[step])) for step in fp8_steps}
    steps, layers = _best_rectangle({s: r for s, r in safe_rows.items() if r})
    settings = _settings(plan, dtype, steps, layers, reach, planned, conservative, routing, pinned)
    if not conservative:
        raise NotExpressibleError(_not_expressible_message(plan, forced, never, settings), forced, never)
    return settings


def _settings(plan: Plan, dtype: str, steps: frozenset[int], layers: frozenset[int], reach, planned: int,
              conservative: bool, routing: str, pinned: bool) -> VllmOmniSettings:
    all_layers = range(max(num_layers(plan, c, QUANTIZED_KIND) for c in plan.component_names))
    fp8 = bool(steps) and bool(layers)
    fp8_cells = sum(
        len([layer for layer in layers if layer < num_layers(plan, c, QUANTIZED_KIND)]) for step in steps for c in reach[step]
    ) if fp8 else 0
    family = plan.family
    return VllmOmniSettings(
        fp8=fp8,
        dtype=dtype,
        skip_steps=tuple(s for s in range(plan.num_inference_steps) if s not in steps) if fp8 else (),
        skip_layers=tuple(layer for layer in all_layers if layer not in layers) if fp8 else (),
        num_inference_steps=plan.num_inference_steps,
        family=family_label(plan),
        plan_sha256=plan.content_hash,
        routing=routing,
        # Pinned even when nothing is quantized: the plan's cells are those of its routing.
        boundary_ratio=family.boundary_ratio if pinned else None,
        flow_shift=family.flow_shift if pinned else None,
        fp8_cells=fp8_cells,
        planned_fp8_cells=planned,
        conservative=conservative,
        notes=numerics_notes(plan) if fp8 else (),
    )


def numerics_notes(plan: Plan) -> tuple[str, ...]:
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
    if numerics.get("pv_precision", "e4m3") != "e4m3":
        notes.append(f"note: vllm-omni's NPU kernel quantizes P to e4m3; this plan asks pv_precision={numerics['pv_precision']}")
    if plan.fallback == "error":
        notes.append(
            "note: fallback=error cannot be expressed: vllm-omni warns and runs native where "
            f"{quantized_name(plan.data['dtype'])} is unavailable"
        )
    return tuple(notes)


def _not_expressible_message(plan: Plan, forced: tuple[Cell, ...], never: tuple[Cell, ...],
                             conservative: VllmOmniSettings) -> str:
    lines = [
        f"plan {plan.content_hash[:12]} ({plan.family_name}, {plan.num_inference_steps} steps) cannot be expressed "
        "as vllm-omni settings: vllm-omni quantizes exactly (steps not skipped) x (layers not skipped) of "
        "self-attention, one layer list for both experts, and never quantizes cross-attention.",
        *routing_lines(plan, conservative.routing),
    ]
    if forced:
        lines.append(
            f"Keeping every quantized cell of the plan would also quantize {count(len(forced))} it keeps native:"
        )
        lines.extend(group_cells(forced))
    if never:
        lines.append(f"{count(len(never))} the plan quantizes are of a kind vllm-omni never quantizes "
                     "(they would run native):")
        lines.extend(group_cells(never))
    lines.append(
        f"Fix: pass --conservative to export the largest setting that keeps every native cell native "
        f"({conservative.fp8_cells} of the plan's {conservative.planned_fp8_cells} quantized cells stay quantized), "
        "or change the recipe so its quantized cells form one steps x layers rectangle of self-attention (native "
        "rules that span all layers for some steps, or all steps for some layers)."
    )
    return "\n".join(lines)
