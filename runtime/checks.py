"""Load-time checks: does the plan's family structure line up with the real pipeline?"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch

from qcompiler.errors import FamilyError
from qcompiler.families import get_family
from qcompiler.plan.format import Plan
from runtime.errors import PlanMismatchError


@dataclass(frozen=True)
class FoundComponent:
    name: str
    class_name: str
    num_layers: int
    num_heads: int
    head_dim: int

    def shape(self) -> str:
        return f"{self.num_layers} layers, {self.num_heads} heads x head dim {self.head_dim}"


def inspect_component(name: str, model: Any) -> FoundComponent:
    config = getattr(model, "config", {}) or {}
    blocks = getattr(model, "blocks", None)
    return FoundComponent(
        name=name,
        class_name=type(model).__name__,
        num_layers=len(blocks) if blocks is not None else 0,
        num_heads=int(config.get("num_attention_heads", 0)),
        head_dim=int(config.get("attention_head_dim", 0)),
    )


def transformer_components(pipe: Any) -> dict[str, torch.nn.Module]:
    """The pipeline's denoiser components: modules with transformer `blocks` (transformer, transformer_2)."""
    components = getattr(pipe, "components", None) or {}
    return {
        name: module
        for name, module in components.items()
        if isinstance(module, torch.nn.Module) and hasattr(module, "blocks")
    }


def _variant_hint(plan: Plan, found: dict[str, FoundComponent]) -> str:
    """Which variant of the plan's family the pipeline looks like, as a recompile instruction."""
    try:
        candidates = [None, *get_family(plan.family_name).variants]
        for variant in candidates:
            family = get_family(plan.family_name, variant)
            if all(
                c.name in found and (found[c.name].num_layers, found[c.name].num_heads, found[c.name].head_dim)
                == (c.num_layers, c.num_heads, c.head_dim)
                for c in family.components
            ):
                if variant == plan.variant:
                    return ""
                flag = f"--variant {variant}" if variant else "no --variant (the real model)"
                return f" The pipeline matches {family.display_name}: recompile with {flag}."
    except FamilyError:
        pass
    return " Compile the recipe for the family and variant of this pipeline (see `qcompile families`)."


# Pipelines that run a family's transformer as the family's own pipeline class does: WanVideoToVideoPipeline is
# diffusers' video-to-video loop over the text-to-video transformer (strength < 1 starts mid-schedule).
SAME_TRANSFORMER_PIPELINES = {"WanPipeline": ("WanVideoToVideoPipeline",)}


def check_structure(pipe: Any, plan: Plan) -> dict[str, torch.nn.Module]:
    """Raise PlanMismatchError unless the pipeline has exactly the plan's components, layers, heads, head dims
    and attention modules. Returns the component modules by name."""
    family = plan.data["family"]
    label = f"{plan.family_name}" + (f" ({plan.variant} variant)" if plan.variant else "")
    present = transformer_components(pipe)
    found = {name: inspect_component(name, module) for name, module in present.items()}
    problems = []
    expected_class = family["pipeline_class"]
    accepted = {expected_class, *SAME_TRANSFORMER_PIPELINES.get(expected_class, ())}
    if not accepted & {cls.__name__ for cls in type(pipe).__mro__}:
        problems.append(f"the plan is for a {expected_class}, the pipeline is a {type(pipe).__name__}")
    for component in plan.components:
        name = component["name"]
        want = FoundComponent(name, component["diffusers_class"], component["num_layers"], component["num_heads"],
                              component["head_dim"])
        have = found.get(name)
        if have is None:
            problems.append(f"component {name!r} ({want.shape()}) is missing from the pipeline")
            continue
        if have.class_name != want.class_name:
            problems.append(f"component {name!r} is a {have.class_name}, the plan expects a {want.class_name}")
        elif (have.num_layers, have.num_heads, have.head_dim) != (want.num_layers, want.num_heads, want.head_dim):
            problems.append(f"component {name!r}: the plan expects {want.shape()}, found {have.shape()}")
    extra = sorted(set(found) - set(plan.component_names))
    if extra:
        problems.append(f"the pipeline has component(s) {', '.join(extra)} that the plan does not cover")
    if problems:
        raise PlanMismatchError(
            f"plan for {label} does not fit this pipeline: " + "; ".join(problems) + "." + _variant_hint(plan, found)
        )
    for name in plan.component_names:
        for kind, spec in family["attention_kinds"].items():
            for layer in range(found[name].num_layers):
                path = spec["module"].format(layer=layer)
                try:
                    module = present[name].get_submodule(path)
                except AttributeError:
                    raise PlanMismatchError(f"{name} has no attention module {path} ({kind} attention)") from None
                if not hasattr(module, "set_processor"):
                    raise PlanMismatchError(f"{name}.{path} is not a diffusers attention module")
    pipe_ratio = (getattr(pipe, "config", {}) or {}).get("boundary_ratio")
    if len(plan.component_names) > 1 and pipe_ratio != family["boundary_ratio"]:
        warnings.warn(
            f"the pipeline's boundary_ratio is {pipe_ratio}, the plan's family has {family['boundary_ratio']}: the "
            "runtime still follows each component's rows, but the plan's expert_schedule will not match what runs",
            RuntimeWarning,
            stacklevel=3,
        )
    return {name: present[name] for name in plan.component_names}
