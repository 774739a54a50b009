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

`quantize` is called per transformer, each with its own OnlineQuantConfig, so the quantized sets it can express
are, per expert, (steps registered FP8/MXFP4) x (modules in fa_layers), per-step precision. Every config names
the transformers it applies to (the JSON's `components`), so no consumer can apply one expert's config alone
and run the other expert's quantized steps native. Pure data: never imports torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from qcompiler.plan.format import Plan
from qcompiler.ranges import format_ranges, index_runs
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
from qcompiler.targets.rectangles import best_rectangle

TARGET = "MindIE-SD 3.1.0"
MINDIESD_VERSION = "3.1.0"

# Plan dtype -> the TimestepPolicyConfig FA strategy that runs it (FA_STRATEGIES = ("MXFP4", "FP8", "FLOAT")).
# Each format's spec names it (qcompiler/formats/<dtype>.py, target "mindiesd-strategy") or says why there is none.
STRATEGY_KEY = "mindiesd-strategy"
NATIVE_STRATEGY = "FLOAT"
# The only fa_quant_type whose module asks the policy per step.
SWITCHING_FA_QUANT_TYPE = "MXFP4_DYNAMIC"
# quant_type is required to be an online type; every Linear is then kept at W16A16 by FALLBACK_PATTERNS.
LINEAR_QUANT_TYPE = "W8A8_DYNAMIC"
WEIGHTS_UNTOUCHED = "W16A16"
# Wan-specific engine knowledge (the only transformer this export was checked on with MindIE-SD): a family whose
# modules are named otherwise needs its own patterns here.
# fnmatch patterns (no braces: they work with and without wcmatch) matching every nn.Linear of a diffusers
# WanTransformer3DModel and no attention module `blocks.N.attn1` / `blocks.N.attn2` (a fallback match on an
# attention module would switch its FA quantization off):
#   "*.*.*.*"        any name of 4+ dotted parts: blocks.N.attn1.to_q, blocks.N.ffn.net.2, ...
#   "[!b]*"          any name not starting with "b": proj_out, condition_embedder.time_embedder.linear_1, ...
#   "blocks.*.[!a]*" a 3-part block child not starting with "a" (no Linear today; kept for safety)
FALLBACK_PATTERNS = ("*.*.*.*", "[!b]*", "blocks.*.[!a]*")
# FALLBACK_PATTERNS and the fa_layers names are Wan's module names: for another model "[!b]*" matches its
# attention modules too (transformer_blocks.0.attn), which would switch their FA quantization off.
SUPPORTED_MODELS = ("WanTransformer3DModel",)
MISSING = ("the export's module patterns are Wan-only: fallback_layers (which keep every Linear at W16A16) are "
           "written for WanTransformer3DModel's names and would also match {model}'s attention modules (such as "
           "{module}), switching their FA quantization off; patterns for {model}'s Linear and attention names, and "
           "a MindIE-SD model whose attention calls fa_quant for them, are missing")
MINDIESD_ROTATION_SEED = 1234  # ONLINE_FA_ROT_SEED in mindiesd/quantization/utils.py, not configurable


@dataclass(frozen=True)
class ComponentConfig:
    """One OnlineQuantConfig (with its own TimestepPolicyConfig), and the transformers `quantize` applies it to."""

    components: tuple[str, ...]  # e.g. ("transformer",) or ("transformer", "transformer_2")
    fa_layers: tuple[str, ...]  # module names, e.g. "blocks.1.attn1"
    quantized_steps: tuple[int, ...]

    def registrations(self) -> list[tuple[int, int]]:
        """Inclusive runs of quantized steps: one `register(range(a, b + 1), strategy, target="fa")` each."""
        return index_runs(self.quantized_steps)

    def shape(self) -> str:
        modules, steps = len(self.fa_layers), len(self.quantized_steps)
        return (f"{modules} attention module{'s' if modules != 1 else ''} x {steps} step{'s' if steps != 1 else ''} "
                f"({format_ranges(self.quantized_steps)})")


@dataclass(frozen=True)
class MindieSdSettings:
    """What to give MindIE-SD for one plan: one config per group of transformers (`quantize(pipe.<name>,
    online_config=...)` for each name of its group); a transformer in no group is not passed to quantize."""

    strategy: str  # the FA strategy of quantized steps: FP8 or MXFP4
    configs: tuple[ComponentConfig, ...]
    components: tuple[str, ...]  # every transformer of the pipeline
    num_inference_steps: int
    family: str
    plan_sha256: str
    routing: str
    fp8_cells: int
    planned_fp8_cells: int
    conservative: bool
    notes: tuple[str, ...]

    @property
    def quantized(self) -> bool:
        return bool(self.configs)

    @property
    def native_components(self) -> tuple[str, ...]:
        configured = {c for config in self.configs for c in config.components}
        return tuple(c for c in self.components if c not in configured)

    @property
    def given_up_cells(self) -> int:
        return self.planned_fp8_cells - self.fp8_cells

    def config_of(self, component: str) -> ComponentConfig | None:
        return next((config for config in self.configs if component in config.components), None)

    def to_dict(self) -> dict:
        """The JSON form: per config, the transformers it applies to, the OnlineQuantConfig keyword arguments and
        the TimestepPolicyConfig calls; `native_components` must not be passed to quantize."""
        return {
            "mindiesd_version": MINDIESD_VERSION,
            "plan": {"sha256": self.plan_sha256, "family": self.family,
                     "num_inference_steps": self.num_inference_steps},
            "summary": self.summary_lines(),
            "configs": [
                {
                    "components": list(config.components),
                    "timestep_policy_config": {
                        "init": {"fa_default_strategy": NATIVE_STRATEGY},
                        "register": [{"step_range": list(range(a, b + 1)), "strategy": self.strategy, "target": "fa"}
                                     for a, b in config.registrations()],
                    },
                    "online_quant_config": {
                        "quant_type": LINEAR_QUANT_TYPE,
                        "fa_quant_type": SWITCHING_FA_QUANT_TYPE,
                        "fa_layers": list(config.fa_layers),
                        "fallback_layers": {pattern: WEIGHTS_UNTOUCHED for pattern in FALLBACK_PATTERNS},
                        "timestep_config": "timestep_policy_config",
                    },
                }
                for config in self.configs
            ],
            "native_components": list(self.native_components),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def to_python(self) -> str:
        lines = [f"# {line}" for line in self.summary_lines()]
        if not self.quantized:
            lines.append("# Nothing to configure: do not call mindiesd.quantization.quantize on the transformers.")
            return "\n".join(lines) + "\n"
        lines.append("from mindiesd.quantization import OnlineQuantConfig, TimestepPolicyConfig, TimestepManager, quantize")
        for config in self.configs:
            suffix = "" if len(self.configs) == 1 else "_" + config.components[0]
            policy, online = f"policy{suffix}", f"online_config{suffix}"
            lines += [
                "",
                f"# {' and '.join(config.components)}: {config.shape()}",
                f'{policy} = TimestepPolicyConfig(fa_default_strategy="{NATIVE_STRATEGY}")  # unregistered steps: native',
            ]
            for a, b in config.registrations():
                lines.append(f'{policy}.register(range({a}, {b + 1}), "{self.strategy}", target="fa")'
                             f"  # step{'s' if b > a else ''} {a if a == b else f'{a}-{b}'}")
            lines += [f"{online} = OnlineQuantConfig(",
                      f'    quant_type="{LINEAR_QUANT_TYPE}",  # required; every Linear is kept at W16A16 below',
                      f'    fa_quant_type="{SWITCHING_FA_QUANT_TYPE}",  # the only FA type that follows the policy per step',
                      "    fa_layers=("]
            per_line = 6  # keeps a 40-layer list at 7 readable lines
            lines += ["        " + " ".join(f'"{name}",' for name in config.fa_layers[i:i + per_line])
                      for i in range(0, len(config.fa_layers), per_line)]
            lines += ["    ),",
                      "    fallback_layers={" + ", ".join(f'"{p}": "{WEIGHTS_UNTOUCHED}"' for p in FALLBACK_PATTERNS)
                      + "},",
                      f"    timestep_config={policy},",
                      ")"]
            lines += [f"quantize(pipe.{name}, online_config={online})" for name in config.components]
        lines += [f"# pipe.{name}: no quantized attention on any step it can serve; do not call quantize on it"
                  for name in self.native_components]
        lines += ["# The attention code must call the attached fa_quant (diffusers' Wan processor does not), and the",
                  "# denoising loop must call TimestepManager.set_timestep_idx(i) at the start of step i."]
        return "\n".join(lines) + "\n"

    def summary_lines(self) -> list[str]:
        lines = [f"qcompile export --to mindiesd: plan {self.plan_sha256[:12]} ({self.family}) for MindIE-SD "
                 f"{MINDIESD_VERSION}, valid for num_inference_steps={self.num_inference_steps} only"]
        if not self.quantized:
            lines.append("no quantized attention on any call: leave MindIE-SD's online quantization off")
        else:
            shapes = "; ".join(f"{' and '.join(c.components)}: {c.shape()}" for c in self.configs)
            lines.append(f"{self.strategy} on {self.fp8_cells} (step, module) cells, one OnlineQuantConfig for "
                         f"{shapes}; Linear weights stay W16A16")
            if self.native_components:
                lines.append(f"{', '.join(self.native_components)}: no quantized attention, not passed to quantize")
        if self.conservative:
            lines.append(f"--conservative: gives up {self.given_up_cells} of the plan's {self.planned_fp8_cells} "
                         "quantized cells (they run native); no cell the plan keeps native runs quantized")
        lines.extend(self.notes)
        return lines


def export_mindiesd(plan: Plan, *, conservative: bool = False, routing: str = PINNED) -> MindieSdSettings:
    """MindIE-SD settings that quantize exactly the plan's quantized cells on every reachable (step, expert).

    MindIE-SD quantizes each transformer with its own OnlineQuantConfig, so a plan is exact when each expert's
    reachable rows form one (registered steps) x (fa_layers modules) rectangle. Raises UnsupportedDtypeError
    (MXFP8, INT8, unknown dtypes), NotExpressibleError naming the cells otherwise; `conservative=True` returns
    the largest safe rectangle per expert.
    """
    require_family(plan, TARGET, SUPPORTED_MODELS, MISSING)
    strategy = target_dtype(plan, TARGET, STRATEGY_KEY)
    reach = reachable_experts(plan, routing, extra=[diffusers_expert_schedule(plan)])
    kinds = plan.attention_kinds
    width = max(num_layers(plan, c, k) for c in plan.component_names for k in kinds)

    def column(kind: str, layer: int) -> int:
        return kinds.index(kind) * width + layer

    def cell_of(component: str, step: int, col: int) -> Cell:
        return (component, kinds[col // width], step, col % width)

    reachable = {c: frozenset(s for s, cs in enumerate(reach) if c in cs) for c in plan.component_names}
    rows = {c: {s: frozenset(column(k, layer) for k in kinds for layer in fp8_layers(plan, c, k, s))
                for s in sorted(reachable[c])} for c in plan.component_names}
    planned = sum(len(r) for by_step in rows.values() for r in by_step.values())
    forced: list[Cell] = []
    chosen: dict[str, tuple[frozenset[int], frozenset[int]]] = {}
    for c in plan.component_names:
        on = {s: r for s, r in rows[c].items() if r}
        union = frozenset().union(*on.values())
        missing = [cell_of(c, s, col) for s, r in on.items() for col in union - r]
        forced += missing
        steps, cols = best_rectangle(on) if missing else (frozenset(on), union)
        if steps and cols:
            chosen[c] = (steps, cols)
    configs: list[tuple[list[str], frozenset[int], frozenset[int]]] = []
    for c, (steps, cols) in chosen.items():
        # Share a config with an earlier transformer when its steps, registered for both, change nothing either
        # transformer can reach (the usual plan: the same layers in both experts).
        for group in configs:
            merged = group[1] | steps
            if group[2] == cols and all(merged & reachable[m] == chosen[m][0] for m in (*group[0], c)):
                group[0].append(c)
                configs[configs.index(group)] = (group[0], merged, cols)
                break
        else:
            configs.append(([c], steps, cols))
    settings = MindieSdSettings(
        strategy=strategy,
        configs=tuple(
            ComponentConfig(
                components=tuple(names),
                fa_layers=tuple(plan.family.module_path(names[0], kinds[col // width], col % width)
                                for col in sorted(cols)),
                quantized_steps=tuple(sorted(steps)),
            )
            for names, steps, cols in configs
        ),
        components=plan.component_names,
        num_inference_steps=plan.num_inference_steps,
        family=family_label(plan),
        plan_sha256=plan.content_hash,
        routing=routing,
        fp8_cells=sum(len(steps) * len(cols) for steps, cols in chosen.values()),
        planned_fp8_cells=planned,
        conservative=conservative,
        notes=tuple(routing_lines(plan, routing) + (_notes(plan) if chosen else [])),
    )
    if forced and not conservative:
        raise NotExpressibleError(_message(plan, tuple(sorted(forced)), settings), tuple(sorted(forced)), ())
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
        f"as MindIE-SD {MINDIESD_VERSION} settings: MindIE-SD quantizes each transformer with its own "
        f"OnlineQuantConfig, exactly (steps registered {settings.strategy}) x (modules in fa_layers).",
        *routing_lines(plan, settings.routing),
        f"Keeping every quantized cell of the plan would also quantize {count(len(forced))} it keeps native:",
        *group_cells(forced),
        f"Fix: pass --conservative to export the largest setting that keeps every native cell native "
        f"({settings.fp8_cells} of the plan's {settings.planned_fp8_cells} quantized cells stay quantized), or "
        "change the recipe so every quantized step of an expert quantizes the same layers and kinds as that "
        "expert's other quantized steps.",
    ]
    return "\n".join(lines)
