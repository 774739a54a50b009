"""Export a plan as xDiT (xfuser 0.7.0) `--hybrid_attn_schedule`: one attention backend per transformer forward.

xDiT's model (xfuser 0.7.0 wheel: core/distributed/attention_schedule.py, runtime_state.py,
model_executor/models/runner_models/{base_model,wan}.py, transformers/transformer_wan.py):

- `--use_hybrid_attn_schedule --hybrid_attn_schedule "B0,B1,..."` gives one AttentionBackendType name per
  transformer forward: each forward of either expert advances one shared counter (increment_step_counter), so
  with CFG (guidance_scale > 1) there are two entries per step, unless `--use_cfg_parallel` (one forward per
  rank per step); xDiT refuses a schedule whose length is not num_inference_steps x that multiplier;
- one backend covers every layer of the forward; cross-attention uses it too unless `--cross_attention_backend`
  is given; `--attention_backend` cannot be combined with the schedule;
- the expert per step comes from the diffusers pipeline: `boundary_ratio` from the checkpoint's model_index.json,
  `flow_shift` from `--flow_shift`, else the runner's default (runner_models/wan.py: 5 for Wan2.2-I2V, 12 for
  Wan2.2-T2V). The pinned export writes the plan's `--flow_shift` only when the result depends on the routing
  (the experts' rows differ on some step), since the flag replaces any --flow_shift of the user's; also when
  nothing is quantized, if the plan quantizes cells only on (step, expert) pairs its routing does not serve.

So the plan must be quantized on whole steps of the expert serving them: self-attention all layers or none,
and cross-attention following self-attention, always native or always quantized. Pure data: never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from qcompiler.plan.format import Plan
from qcompiler.targets.cells import (
    PINNED,
    Cell,
    NotExpressibleError,
    count,
    diffusers_expert_schedule,
    family_label,
    fp8_layers,
    group_cells,
    num_layers,
    reachable_experts,
    require_family,
    routing_lines,
    target_dtype,
)

TARGET = "xDiT (xfuser 0.7.0)"
SELF, CROSS = "self", "cross"

# The schedule's length and routing are known for xfuser's Wan runner only (runner_models/wan.py).
SUPPORTED_MODELS = ("WanTransformer3DModel",)
MISSING = ("the --hybrid_attn_schedule export is Wan-only: it is laid out by xfuser 0.7.0's Wan runner "
           "(runner_models/wan.py: one entry per transformer forward, two per step with separate CFG branches, "
           "Wan's expert routing and flow_shift defaults); how many forwards per step xDiT's runner for {model} "
           "makes (batched or separate CFG, guidance-distilled), and whether its attention (such as {module}) "
           "follows the schedule, are not modelled")

# Plan dtype -> the default xDiT quantized backend for it (AttentionBackendType names, xfuser 0.7.0).
# Each format's spec names it (qcompiler/formats/<dtype>.py, target "xdit").
BACKEND_KEY = "xdit"
NATIVE_BACKEND = "FLASH_3"
# xfuser 0.7.0's quantized attention backends (low-precision names of AttentionBackendType), and its others.
QUANTIZED_BACKENDS = frozenset({
    "FLASH_3_FP8", "NVTE_FP8", "FLASH_4_FP4", "AITER_BF16FP8", "AITER_I8FP8", "AITER_FP8", "AITER_MXFP8",
    "AITER_F8F6", "AITER_MXFP6", "AITER_F6F4", "AITER_MXFP4", "AITER_F4F4", "AITER_FLYDSL_FP8", "AITER_MLA",
})
NATIVE_BACKENDS = frozenset({
    "SDPA", "SDPA_MATH", "SDPA_EFFICIENT", "SDPA_FLASH", "FLASH", "CUDNN", "FLASH_3", "FLASH_4", "AITER",
    "AITER_BF16", "NPU",
})
# What each default quantized backend does differently from the plan's numerics (attention_backend.py).
# Wan-only because the engine path is: xDiT's two-expert runner is runner_models/wan.py.
# xDiT's runner default flow_shift per two-expert family (DefaultInputValues in runner_models/wan.py: the Wan2.2
# models inherit the Wan2.1 I2V / T2V values).
RUNNER_FLOW_SHIFT = {"wan2.2-i2v-a14b": 5.0, "wan2.2-t2v-a14b": 12.0}
BACKEND_NOTES = {
    "FLASH_3_FP8": "xDiT's FLASH_3_FP8 quantizes Q, K and V per tensor (one scale each, no rotation), not per block "
                   "with a Hadamard rotation as the plan does: expect larger error than qcompile's runtime",
}


@dataclass(frozen=True)
class XditSettings:
    """What to give xDiT for one plan. `quantized` False: run xDiT without a hybrid schedule."""

    quantized: bool
    schedule: tuple[str, ...]  # one backend per transformer forward
    cross_attention_backend: str | None
    use_cfg_parallel: bool
    forwards_per_step: int
    num_inference_steps: int
    flow_shift: float | None  # pinned (multi-expert plans)
    family: str
    plan_sha256: str
    routing: str
    fp8_cells: int
    planned_fp8_cells: int
    conservative: bool
    notes: tuple[str, ...]

    @property
    def given_up_cells(self) -> int:
        return self.planned_fp8_cells - self.fp8_cells

    def to_flags(self) -> str:
        if not self.quantized:
            # No schedule, but the run is all native only with the plan's routing when the other expert's rows
            # quantize some step.
            if self.flow_shift is None:
                return ""
            return f"--num_inference_steps {self.num_inference_steps} --flow_shift {self.flow_shift}"
        words = ["--use_hybrid_attn_schedule", f'--hybrid_attn_schedule "{",".join(self.schedule)}"',
                 f"--num_inference_steps {self.num_inference_steps}"]
        if self.cross_attention_backend is not None:
            words.append(f"--cross_attention_backend {self.cross_attention_backend}")
        if self.use_cfg_parallel:
            words.append("--use_cfg_parallel")
        if self.flow_shift is not None:
            words.append(f"--flow_shift {self.flow_shift}")
        return " ".join(words)

    def summary_lines(self) -> list[str]:
        lines = [f"qcompile export --to xdit: plan {self.plan_sha256[:12]} ({self.family}) for xfuser 0.7.0, "
                 f"num_inference_steps={self.num_inference_steps}"]
        if not self.quantized:
            if self.flow_shift is None:
                lines.append("no quantized attention on any call: run xDiT without --use_hybrid_attn_schedule")
            else:
                lines.append("no quantized attention on any call with the plan's routing: run xDiT without "
                             f"--use_hybrid_attn_schedule, with --num_inference_steps {self.num_inference_steps} "
                             f"--flow_shift {self.flow_shift} (the plan quantizes cells only on steps that "
                             "another routing would give to the other expert)")
            return lines + list(self.notes)
        per = ("1 entry per step (--use_cfg_parallel: one forward per rank per step)" if self.use_cfg_parallel
               else f"{self.forwards_per_step} entries per step (the conditional and unconditional forwards); "
                    "assumes guidance_scale > 1" if self.forwards_per_step == 2 else "1 entry per step; assumes "
                    "guidance_scale <= 1 (no CFG)")
        lines.append(f"{len(self.schedule)} schedule entries, {per}; quantized on {self.fp8_cells} cells")
        if self.conservative:
            lines.append(f"--conservative: gives up {self.given_up_cells} of the plan's {self.planned_fp8_cells} "
                         "quantized cells (they run native); no cell the plan keeps native runs quantized")
        return lines + list(self.notes)


def export_xdit(plan: Plan, *, conservative: bool = False, routing: str = PINNED, cfg: bool = True,
                use_cfg_parallel: bool = False, quantized_backend: str | None = None,
                native_backend: str = NATIVE_BACKEND) -> XditSettings:
    """xDiT settings that quantize exactly the plan's quantized cells on every reachable (step, expert).

    `cfg`: the pipeline runs classifier-free guidance (xDiT: guidance_scale > 1). Raises UnsupportedDtypeError,
    ValueError for an unknown backend name, NotExpressibleError naming the cells the schedule cannot follow.
    """
    require_family(plan, TARGET, SUPPORTED_MODELS, MISSING)
    default_backend = target_dtype(plan, TARGET, BACKEND_KEY)
    fp8_backend = quantized_backend or default_backend
    if fp8_backend not in QUANTIZED_BACKENDS:
        raise ValueError(f"{fp8_backend!r} is not a quantized xDiT attention backend; choose one of "
                         f"{', '.join(sorted(QUANTIZED_BACKENDS))}")
    if native_backend not in NATIVE_BACKENDS:
        raise ValueError(f"{native_backend!r} is not a full-precision xDiT attention backend; choose one of "
                         f"{', '.join(sorted(NATIVE_BACKENDS))}")
    reach = reachable_experts(plan, routing, extra=[diffusers_expert_schedule(plan)])
    steps = plan.num_inference_steps
    kinds = [k for k in (SELF, CROSS) if k in plan.attention_kinds]
    never = tuple(sorted((c, k, s, layer) for s, cs in enumerate(reach) for c in cs
                         for k in plan.attention_kinds if k not in kinds for layer in fp8_layers(plan, c, k, s)))

    def whole(kind: str, step: int) -> tuple[bool, bool]:
        """(any quantized cell, every cell quantized) of `kind` at `step` over the reachable experts."""
        sizes = [(len(fp8_layers(plan, c, kind, step)), num_layers(plan, c, kind)) for c in reach[step]]
        return any(n for n, _ in sizes), all(n == total for n, total in sizes)

    state = {k: [whole(k, s) for s in range(steps)] for k in kinds}
    self_steps = {s for s in range(steps) if SELF in state and state[SELF][s][0]}
    # Cross-attention: follow the schedule, or be pinned native / quantized with --cross_attention_backend.
    cross_any = {s for s in range(steps) if CROSS in state and state[CROSS][s][0]}
    cross_mode = _cross_mode(cross_any, steps)
    if cross_mode == "follow":
        # One backend per forward: every step quantized for either kind runs both kinds quantized.
        self_steps |= cross_any
    forced = _forced_cells(plan, reach, SELF, self_steps) if SELF in state else ()
    if cross_mode != "native":
        forced += _forced_cells(plan, reach, CROSS, self_steps if cross_mode == "follow" else cross_any)
    forced = tuple(sorted(forced))
    planned = sum(len(fp8_layers(plan, c, k, s)) for s, cs in enumerate(reach) for c in cs for k in plan.attention_kinds)
    if forced or never:
        safe_self = {s for s in range(steps) if SELF in state and state[SELF][s][1]}
        cross_all = {s for s in range(steps) if CROSS in state and state[CROSS][s][1]}
        options = [("native", safe_self)]
        if safe_self and safe_self <= cross_all:
            options.append(("follow", safe_self))
        if CROSS in state and cross_all == set(range(steps)):
            options.append(("quantized", safe_self))
        self_steps, cross_mode = max(((s, m) for m, s in options),
                                     key=lambda o: _cells(plan, reach, o[0], o[1], steps))[:2]
    multiplier = 1 if use_cfg_parallel or not cfg else 2
    cross_backend = {"native": native_backend, "quantized": fp8_backend, "follow": None}[cross_mode]
    schedule = tuple(fp8_backend if s in self_steps else native_backend for s in range(steps) for _ in range(multiplier))
    fp8_cells = _cells(plan, reach, self_steps, cross_mode, steps)
    quantized = fp8_cells > 0
    family = plan.family
    pinned = routing == PINNED and len(plan.component_names) > 1 and family.boundary_ratio is not None
    # Routing matters only if some step's result would change with the expert serving it; also when nothing is
    # quantized, since the other expert's row may quantize a step.
    write_shift = pinned and not _same_on_every_expert(plan, self_steps, cross_mode, steps,
                                                                      exact=not (forced or never))
    if write_shift:
        notes = routing_lines(plan, routing)
        default = RUNNER_FLOW_SHIFT.get(plan.family_name)
        same = ("equals xDiT's runner default for this model" if default == family.flow_shift
                else f"differs from xDiT's runner default ({default})" if default is not None
                else "xDiT's runner has no default for this family")
        notes.append(f"--flow_shift {family.flow_shift} is the plan's flow_shift ({same}); it replaces any "
                     "--flow_shift of your own, since the export is exact only with the routing it gives. Routing "
                     f"also assumes the checkpoint's model_index.json has boundary_ratio={family.boundary_ratio} "
                     "(xDiT reads it from there)")
    elif pinned and quantized:
        notes = ["routing: does not matter (at every step the schedule's backend gives the same result on either "
                 "expert), so no --flow_shift is written: any flow_shift or boundary_ratio gives the same cells"]
    else:
        notes = routing_lines(plan, routing)
    if quantized and fp8_backend in BACKEND_NOTES:
        notes.append("note: " + BACKEND_NOTES[fp8_backend])
    settings = XditSettings(
        quantized=quantized,
        schedule=schedule if quantized else (),
        cross_attention_backend=cross_backend if quantized else None,
        use_cfg_parallel=use_cfg_parallel,
        forwards_per_step=multiplier,
        num_inference_steps=steps,
        flow_shift=family.flow_shift if write_shift else None,
        family=family_label(plan),
        plan_sha256=plan.content_hash,
        routing=routing,
        fp8_cells=fp8_cells,
        planned_fp8_cells=planned,
        conservative=conservative,
        notes=tuple(notes),
    )
    if (forced or never) and not conservative:
        raise NotExpressibleError(_message(plan, forced, never, settings), forced, never)
    return settings


def _forced_cells(plan: Plan, reach, kind: str, steps_on: set[int]) -> tuple[Cell, ...]:
    """Native cells of `kind` on steps that must run the quantized backend (all of a forward is one backend)."""
    return tuple((c, kind, s, layer) for s in sorted(steps_on) for c in sorted(reach[s])
                 for layer in range(num_layers(plan, c, kind)) if layer not in fp8_layers(plan, c, kind, s))


def _same_on_every_expert(plan: Plan, self_steps: set[int], cross_mode: str, steps: int, exact: bool) -> bool:
    """Whether the settings give the plan's cells (`exact`) or a subset of them (conservative) on every expert at
    every step, so whichever expert the engine routes a step to does not change the result."""
    for s in range(steps):
        for c in plan.component_names:
            for kind in plan.attention_kinds:
                on = (kind == SELF and s in self_steps) or (kind == CROSS and (
                    cross_mode == "quantized" or (cross_mode == "follow" and s in self_steps)))
                got = frozenset(range(num_layers(plan, c, kind))) if on else frozenset()
                want = fp8_layers(plan, c, kind, s)
                if (got != want) if exact else not got <= want:
                    return False
    return True


def _cross_mode(cross_any: set[int], steps: int) -> str:
    """How cross-attention is written: pinned native (--cross_attention_backend NATIVE) when the plan never
    quantizes it, pinned quantized when it quantizes it on every step, else following the schedule."""
    if not cross_any:
        return "native"
    if cross_any == set(range(steps)):
        return "quantized"
    return "follow"


def _cells(plan: Plan, reach, self_steps: set[int], cross_mode: str, steps: int) -> int:
    """Cells the settings quantize, counted on the reachable experts."""
    total = 0
    for s in range(steps):
        for c in reach[s]:
            if SELF in plan.attention_kinds and s in self_steps:
                total += num_layers(plan, c, SELF)
            if CROSS in plan.attention_kinds and (cross_mode == "quantized" or (cross_mode == "follow" and s in self_steps)):
                total += num_layers(plan, c, CROSS)
    return total


def _message(plan: Plan, forced: tuple[Cell, ...], never: tuple[Cell, ...], settings: XditSettings) -> str:
    lines = [
        f"plan {plan.content_hash[:12]} ({plan.family_name}, {plan.num_inference_steps} steps) cannot be expressed "
        "as an xDiT --hybrid_attn_schedule: xDiT runs one backend per transformer forward (every layer alike), "
        "and cross-attention follows it unless --cross_attention_backend pins it.",
        *routing_lines(plan, settings.routing),
    ]
    if forced:
        lines.append(f"Keeping every quantized cell of the plan would also quantize {count(len(forced))} it keeps native:")
        lines.extend(group_cells(forced))
    if never:
        lines.append(f"{count(len(never))} the plan quantizes are of a kind xDiT's schedule does not reach:")
        lines.extend(group_cells(never))
    lines.append(
        f"Fix: pass --conservative to export the largest schedule that keeps every native cell native "
        f"({settings.fp8_cells} of the plan's {settings.planned_fp8_cells} quantized cells stay quantized), or change "
        "the recipe so it quantizes whole steps (all layers) and no layer rule applies."
    )
    return "\n".join(lines)
