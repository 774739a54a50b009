"""Load-time checks: does the plan's family structure line up with the real pipeline?"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch

from qcompiler.errors import FamilyError
from qcompiler.families import Family, get_family
from qcompiler.plan.format import Plan
from runtime.diffusers_private import calls_sdpa
from runtime.errors import PlanMismatchError
from runtime.models import support_for_family


@dataclass(frozen=True)
class FoundComponent:
    name: str
    class_name: str
    layers: tuple[tuple[str, int], ...]  # (block list name, blocks found at its path), in the family's order
    num_heads: int
    head_dim: int

    def shape(self) -> str:
        if len(self.layers) == 1:
            count = f"{self.layers[0][1]} layers"
        else:
            count = ", ".join(f"{n} {name}" for name, n in self.layers)
        return f"{count}, {self.num_heads} heads x head dim {self.head_dim}"


def block_list_length(model: Any, path: str) -> int:
    """Blocks at `path` inside `model` (0 when there is no list there)."""
    try:
        blocks = model.get_submodule(path)
    except AttributeError:
        return 0
    return len(blocks) if isinstance(blocks, (torch.nn.ModuleList, torch.nn.Sequential)) else 0


def _family_paths(family: Family) -> dict[str, str]:
    """Block list name -> path, over every component of the family."""
    return {b.name: b.path for c in family.components for b in c.block_lists}


def inspect_component(name: str, model: Any, family: Family) -> FoundComponent:
    config = getattr(model, "config", {}) or {}
    return FoundComponent(
        name=name,
        class_name=type(model).__name__,
        layers=tuple((block_list, block_list_length(model, path)) for block_list, path in _family_paths(family).items()),
        num_heads=int(config.get("num_attention_heads", 0)),
        head_dim=int(config.get("attention_head_dim", 0)),
    )


def transformer_components(pipe: Any, family: Family) -> dict[str, torch.nn.Module]:
    """The pipeline's denoiser components: modules holding one of the family's block lists."""
    components = getattr(pipe, "components", None) or {}
    paths = tuple(_family_paths(family).values())
    return {
        name: module
        for name, module in components.items()
        if isinstance(module, torch.nn.Module) and any(block_list_length(module, p) for p in paths)
    }


def attention_paths(family: Family, component: str, kinds: tuple[str, ...] | None = None,
                    model: Any = None) -> dict[str, tuple[str, ...]]:
    """kind -> the module path of each of its layers in `component`. Layer counts are the family's, or, with
    `model`, the blocks found at the block list's path (shadow mode without a plan, where the family is one of
    the pipeline class's and may name other components)."""
    owner = component if model is None or component in family.component_names else family.component_names[0]
    paths = {}
    for kind in family.kinds if kinds is None else kinds:
        spec = family.kind(kind)
        block_list = family.block_list(owner, spec.block_list)
        count = block_list.length if model is None else block_list_length(model, block_list.path)
        paths[kind] = tuple(f"{block_list.path}.{layer}.{spec.module}" for layer in range(count))
    return paths


def _wanted(family: Family, name: str) -> FoundComponent:
    component = family.component(name)
    lengths = {b.name: b.length for b in component.block_lists}
    return FoundComponent(name, component.diffusers_class,
                          tuple((b, lengths.get(b, 0)) for b in _family_paths(family)),
                          component.num_heads, component.head_dim)


def _variant_hint(plan: Plan, found: dict[str, FoundComponent]) -> str:
    """Which variant of the plan's family the pipeline looks like, as a recompile instruction."""
    try:
        candidates = [None, *get_family(plan.family_name).variants]
        for variant in candidates:
            family = get_family(plan.family_name, variant)
            if all(c.name in found and found[c.name] == _wanted(family, c.name) for c in family.components):
                if variant == plan.variant:
                    return ""
                flag = f"--variant {variant}" if variant else "no --variant (the real model)"
                return f" The pipeline matches {family.display_name}: recompile with {flag}."
    except FamilyError:
        pass
    return " Compile the recipe for the family and variant of this pipeline (see `qcompile families`)."


def check_structure(pipe: Any, plan: Plan) -> dict[str, torch.nn.Module]:
    """Raise PlanMismatchError unless the pipeline has exactly the plan's components, layers, heads, head dims
    and attention modules. Returns the component modules by name."""
    family = plan.family
    label = f"{plan.family_name}" + (f" ({plan.variant} variant)" if plan.variant else "")
    present = transformer_components(pipe, family)
    found = {name: inspect_component(name, module, family) for name, module in present.items()}
    problems = []
    expected_class = family.pipeline_class
    # other pipeline classes that run this family's transformer in the same loop (the model module says which)
    accepted = {expected_class, *support_for_family(family).same_transformer_pipelines.get(expected_class, ())}
    if not accepted & {cls.__name__ for cls in type(pipe).__mro__}:
        problems.append(f"the plan is for a {expected_class}, the pipeline is a {type(pipe).__name__}")
    for name in plan.component_names:
        want = _wanted(family, name)
        have = found.get(name)
        if have is None:
            problems.append(f"component {name!r} ({want.shape()}) is missing from the pipeline")
            continue
        if have.class_name != want.class_name:
            problems.append(f"component {name!r} is a {have.class_name}, the plan expects a {want.class_name}")
        elif (have.layers, have.num_heads, have.head_dim) != (want.layers, want.num_heads, want.head_dim):
            problems.append(f"component {name!r}: the plan expects {want.shape()}, found {have.shape()}")
    extra = sorted(set(found) - set(plan.component_names))
    if extra:
        problems.append(f"the pipeline has component(s) {', '.join(extra)} that the plan does not cover")
    if problems:
        raise PlanMismatchError(
            f"plan for {label} does not fit this pipeline: " + "; ".join(problems) + "." + _variant_hint(plan, found)
        )
    for name in plan.component_names:
        for kind, paths in attention_paths(family, name).items():
            for path in paths:
                try:
                    module = present[name].get_submodule(path)
                except AttributeError:
                    raise PlanMismatchError(f"{name} has no attention module {path} ({kind} attention)") from None
                # MochiAttention has no set_processor, but its processor is one the processor entry serves
                if not hasattr(module, "set_processor") and not calls_sdpa(getattr(module, "processor", None)):
                    raise PlanMismatchError(
                        f"{name}.{path} ({kind} attention) is a {type(module).__name__}, not a diffusers attention "
                        f"module with a processor: qcompile's runtime cannot serve {type(present[name]).__name__} "
                        "yet (it reaches attention through a module's processor; docs/families.md says what each "
                        "family needs). Run this plan's family with the stock pipeline, or keep to the families "
                        "runtime/models/ serves")
    pipe_ratio = (getattr(pipe, "config", {}) or {}).get("boundary_ratio")
    if len(plan.component_names) > 1 and pipe_ratio != family.boundary_ratio:
        warnings.warn(
            f"the pipeline's boundary_ratio is {pipe_ratio}, the plan's family has {family.boundary_ratio}: the "
            "runtime still follows each component's rows, but the plan's expert_schedule will not match what runs",
            RuntimeWarning,
            stacklevel=3,
        )
    return {name: present[name] for name in plan.component_names}
