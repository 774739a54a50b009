"""Export a plan as MindIE-SD 3.1.0 online quantization: `OnlineQuantConfig` + `TimestepPolicyConfig`.

MindIE-SD's model (mindiesd 3.1.0 wheel, quantization/{config,quantize,utils,layer}.py; facts in
../shared/reference/npu-entry-points.md):

- `quantize(model, online_config=OnlineQuantConfig(...))` attaches FA quantization to every module whose name,
  class name or `module.Class` matches a `fa_layers` pattern (fnmatch; `{a,b}` braces only with wcmatch);
- per-step switching exists only for `fa_quant_type="MXFP4_DYNAMIC"`: each call asks
  `TimestepPolicyConfig.get_strategy(t_idx, target="fa")` for "MXFP4", "FP8" (per-block FP8) or "FLOAT"
  (native); `FP8_DYNAMIC` quantizes every step and ignores the policy; `MXFP8_DYNAMIC` is rejected online;
- the policy's defaults are `fa_default_strategy="MXFP4"` and `target="w4a4_linear"`: both are passed
  explicitly (default FLOAT, so a step never registered, or an unset step index, runs native);
- `quant_type` (default W8A8_DYNAMIC) quantizes every `nn.Linear` unless a `fallback_layers` pattern keeps it
  at W16A16, and a fallback pattern that matches an attention module switches its FA quantization off; the
  export keeps weights untouched with patterns that match every Linear of a Wan transformer but no
  `blocks.N.attnK` module;
- the online rotation seed is fixed at 1234.

So the quantized sets it can express are (steps registered FP8/MXFP4) x (modules in fa_layers), one module set
for both experts (one config, applied to each transformer), per-step precision. Pure data: never imports torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from qcompiler.plan.format import Plan
from qcompiler.ranges import index_runs
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
    routing_lines,
    target_dtype,
)
from qcompiler.targets.rectangles import best_rectangle

TARGET = "MindIE-SD 3.1.0"
MINDIESD_VERSION = "3.1.0"

# Plan dtype -> the TimestepPolicyConfig FA strategy that runs it (FA_STRATEGIES = ("MXFP4", "FP8", "FLOAT")).
DTYPE_STRATEGIES = {"fp8_e4m3_per_block": "FP8", "mxfp4_e2m1": "MXFP4"}
DTYPE_REFUSALS = {
    "mxfp8_e4m3": "MXFP8 is not available online (OnlineQuantConfig accepts fa_quant_type FP8_DYNAMIC or "
                  "MXFP4_DYNAMIC only; MXFP8 attention exists only through a msModelSlim description file)",
}
NATIVE_STRATEGY = "FLOAT"
# The only fa_quant_type whose module asks the policy per step.
SWITCHING_FA_QUANT_TYPE = "MXFP4_DYNAMIC"
# quant_type is required to be an online type; every Linear is then kept at W16A16 by FALLBACK_PATTERNS.
LINEAR_QUANT_TYPE = "W8A8_DYNAMIC"
WEIGHTS_UNTOUCHED = "W16A16"
# fnmatch patterns (no braces: they work with and without wcmatch) matching every nn.Linear of a diffusers
# WanTransformer3DModel and no attention module `blocks.N.attn1` / `blocks.N.attn2` (a fallback match on an
# attention module would switch its FA quantization off):
#   "*.*.*.*"        any name of 4+ dotted parts: blocks.N.attn1.to_q, blocks.N.ffn.net.2, ...
#   "[!b]*"          any name not starting with "b": proj_out, condition_embedder.time_embedder.linear_1, ...
#   "blocks.*.[!a]*" a 3-part block child not starting with "a" (no Linear today; kept for safety)
FALLBACK_PATTERNS = ("*.*.*.*", "[!b]*", "blocks.*.[!a]*")
MINDIESD_ROTATION_SEED = 1234  # ONLINE_FA_ROT_SEED in mindiesd/quantization/utils.py, not configurable


@dataclass(frozen=True)
class MindieSdSettings:
    """What to give MindIE-SD for one plan. `quantized` False: do not call mindiesd.quantize at all."""

    quantized: bool
    strategy: str  # the FA strategy of quantized steps: FP8 or MXFP4
    fa_layers: tuple[str, ...]  # module names, e.g. "blocks.1.attn1"
    quantized_steps: tuple[int, ...]
    components: tuple[str, ...]  # the transformers to call quantize on, e.g. ("transformer", "transformer_2")
    num_inference_steps: int
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

    def registrations(self) -> list[tuple[int, int]]:
        """Inclusive runs of quantized steps: one `register(range(a, b + 1), strategy, target="fa")` each."""
        return index_runs(self.quantized_steps)

    def to_dict(self) -> dict:
        """The JSON form: OnlineQuantConfig keyword arguments and the TimestepPolicyConfig calls."""
        data: dict = {
            "mindiesd_version": MINDIESD_VERSION,
            "plan": {"sha256": self.plan_sha256, "family": self.family,
                     "num_inference_steps": self.num_inference_steps},
            "summary": self.summary_lines(),
        }
        if not self.quantized:
            data["online_quant_config"] = None
            return data
        data["timestep_policy_config"] = {
            "init": {"fa_default_strategy": NATIVE_STRATEGY},
            "register": [{"step_range": list(range(a, b + 1)), "strategy": self.strategy, "target": "fa"}
                         for a, b in self.registrations()],
        }
        data["online_quant_config"] = {
            "quant_type": LINEAR_QUANT_TYPE,
            "fa_quant_type": SWITCHING_FA_QUANT_TYPE,
            "fa_layers": list(self.fa_layers),
            "fallback_layers": {pattern: WEIGHTS_UNTOUCHED for pattern in FALLBACK_PATTERNS},
            "timestep_config": "timestep_policy_config",
        }
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def to_python(self) -> str:
        lines = [f"# {line}" for line in self.summary_lines()]
        if not self.quantized:
            lines.append("# Nothing to configure: do not call mindiesd.quantization.quantize on the transformers.")
            return "\n".join(lines) + "\n"
        lines += [
            "from mindiesd.quantization import OnlineQuantConfig, TimestepPolicyConfig, TimestepManager, quantize",
            "",
            f'policy = TimestepPolicyConfig(fa_default_strategy="{NATIVE_STRATEGY}")  # unregistered steps: native',
        ]
        for a, b in self.registrations():
            lines.append(f'policy.register(range({a}, {b + 1}), "{self.strategy}", target="fa")'
                         f"  # step{'s' if b > a else ''} {a if a == b else f'{a}-{b}'}")
        lines += ["online_config = OnlineQuantConfig(",
                  f'    quant_type="{LINEAR_QUANT_TYPE}",  # required; every Linear is kept at W16A16 below',
                  f'    fa_quant_type="{SWITCHING_FA_QUANT_TYPE}",  # the only FA type that follows the policy per step',
                  "    fa_layers=("]
        per_line = 6  # keeps a 40-layer list at 7 readable lines
        lines += ["        " + " ".join(f'"{name}",' for name in self.fa_layers[i:i + per_line])
                  for i in range(0, len(self.fa_layers), per_line)]
        lines += ["    ),",
                  "    fallback_layers={" + ", ".join(f'"{p}": "{WEIGHTS_UNTOUCHED}"' for p in FALLBACK_PATTERNS) + "},",
                  "    timestep_config=policy,",
                  ")",
                  "for name in (" + "".join(f'"{c}", ' for c in self.components) + "):",
                  "    quantize(getattr(pipe, name), online_config=online_config)",
                  "# The attention code must call the attached fa_quant (diffusers' Wan processor does not), and the",
                  "# denoising loop must call TimestepManager.set_timestep_idx(i) at the start of step i."]
        return "\n".join(lines) + "\n"

    def summary_lines(self) -> list[str]:
        lines = [f"qcompile export --to mindiesd: plan {self.plan_sha256[:12]} ({self.family}) for MindIE-SD "
                 f"{MINDIESD_VERSION}, valid for num_inference_steps={self.num_inference_steps} only"]
        if not self.quantized:
            lines.append("no quantized attention on any call: leave MindIE-SD's online quantization off")
        else:
            lines.append(f"{self.strategy} on {self.fp8_cells} (step, module) cells: {len(self.fa_layers)} attention "
                         f"modules x {len(self.quantized_steps)} steps; Linear weights stay W16A16")
        if self.conservative:
            lines.append(f"--conservative: gives up {self.given_up_cells} of the plan's {self.planned_fp8_cells} "
                         "quantized cells (they run native); no cell the plan keeps native runs quantized")
        lines.extend(self.notes)
        return lines


def export_mindiesd(plan: Plan, *, conservative: bool = False, routing: str = PINNED) -> MindieSdSettings:
    """MindIE-SD settings that quantize exactly the plan's quantized cells on every reachable (step, expert).

    Raises UnsupportedDtypeError (MXFP8, INT8, unknown dtypes), NotExpressibleError naming the cells when the
    plan is not (steps) x (one module set for both experts); `conservative=True` returns the largest safe setting.
    """
    strategy = target_dtype(plan, TARGET, DTYPE_STRATEGIES, DTYPE_REFUSALS)
    reach = reachable_experts(plan, routing, extra=[diffusers_expert_schedule(plan)])
    kinds = plan.attention_kinds
    width = max(num_layers(plan, c, k) for c in plan.component_names for k in kinds)

    def column(kind: str, layer: int) -> int:
        return kinds.index(kind) * width + layer

    def cell_of(component: str, step: int, col: int) -> Cell:
        return (component, kinds[col // width], step, col % width)

    def columns_of(component: str) -> frozenset[int]:
        return frozenset(column(k, layer) for k in kinds for layer in range(num_layers(plan, component, k)))

    rows = {(step, c): frozenset(column(k, layer) for k in kinds for layer in fp8_layers(plan, c, k, step))
            for step, cs in enumerate(reach) for c in cs}
    planned = sum(len(r) for r in rows.values())
    steps_on = sorted({step for (step, _), r in rows.items() if r})
    union = frozenset().union(*rows.values())
    forced = tuple(sorted(
        cell_of(c, step, col) for step in steps_on for c in reach[step]
        for col in (union & columns_of(c)) - rows[(step, c)]
    ))
    if forced:
        safe = {s: frozenset.intersection(*(rows[(s, c)] for c in reach[s])) for s in steps_on}
        chosen_steps, chosen_cols = best_rectangle({s: r for s, r in safe.items() if r})
    else:
        chosen_steps, chosen_cols = frozenset(steps_on), union
    quantized = bool(chosen_steps) and bool(chosen_cols)
    first = plan.component_names[0]  # fa_layers name modules once for every component (same paths)
    fp8_cells = sum(len(chosen_cols & columns_of(c)) for s in chosen_steps for c in reach[s]) if quantized else 0
    settings = MindieSdSettings(
        quantized=quantized,
        strategy=strategy,
        fa_layers=tuple(plan.family.module_path(first, kinds[col // width], col % width) for col in sorted(chosen_cols))
        if quantized else (),
        quantized_steps=tuple(sorted(chosen_steps)) if quantized else (),
        components=plan.component_names,
        num_inference_steps=plan.num_inference_steps,
        family=family_label(plan),
        plan_sha256=plan.content_hash,
        routing=routing,
        fp8_cells=fp8_cells,
        planned_fp8_cells=planned,
        conservative=conservative,
        notes=tuple(routing_lines(plan, routing) + (_notes(plan) if quantized else [])),
    )
    if forced and not conservative:
        raise NotExpressibleError(_message(plan, forced, settings), forced, ())
    return settings


def _notes(plan: Plan) -> list[str]:
    numerics = plan.numerics
    notes = []
    if not numerics["hadamard_rotation"] or numerics["rotation_seed"] != MINDIESD_ROTATION_SEED:
        notes.append(
            f"note: MindIE-SD's online FA rotation uses seed {MINDIESD_ROTATION_SEED} and cannot be switched off or "
            f"reseeded; this plan asks for hadamard_rotation={str(numerics['hadamard_rotation']).lower()}, "
            f"rotation_seed={numerics['rotation_seed']}: the quantized cells run with different numerics there"
        )
    if numerics["k_mean_subtraction"]:
        notes.append("note: MindIE-SD does no K-mean subtraction; this plan asks for it")
    if plan.fallback == "error":
        notes.append("note: fallback=error cannot be expressed: MindIE-SD has no fallback policy")
    return notes


def _message(plan: Plan, forced: tuple[Cell, ...], settings: MindieSdSettings) -> str:
    lines = [
        f"plan {plan.content_hash[:12]} ({plan.family_name}, {plan.num_inference_steps} steps) cannot be expressed "
        f"as MindIE-SD {MINDIESD_VERSION} settings: MindIE-SD quantizes exactly (steps registered "
        f"{settings.strategy}) x (modules in fa_layers), one module set for both experts.",
        *routing_lines(plan, settings.routing),
        f"Keeping every quantized cell of the plan would also quantize {count(len(forced))} it keeps native:",
        *group_cells(forced),
        f"Fix: pass --conservative to export the largest setting that keeps every native cell native "
        f"({settings.fp8_cells} of the plan's {settings.planned_fp8_cells} quantized cells stay quantized), or "
        "change the recipe so every quantized step quantizes the same layers and kinds in both experts.",
    ]
    return "\n".join(lines)
