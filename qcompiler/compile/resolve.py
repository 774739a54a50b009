"""Resolve a validated recipe into per-(component, attention kind) steps x layers tables.

Precedence (the one rule, documented in docs/recipes.md): every cell in scope starts at `default`; rules
apply in recipe order; the last rule that selects a cell decides it. Cells outside the scope (kinds not in
`attention_kinds`, components not in `components`) are native and no rule may select them.
"""

from __future__ import annotations

from dataclasses import dataclass

from qcompiler.families import Family


@dataclass(frozen=True)
class RuleSelection:
    """A rule after its selectors were read: the concrete cells it selects."""

    name: str
    precision: str  # "fp8" | "native"
    components: tuple[str, ...]
    kinds: tuple[str, ...]
    steps: frozenset[int]
    layers: dict[str, frozenset[int]]  # block list -> the layers selected in it (`layers` is read per list)

@dataclass(frozen=True)
class RuleEffect:
    name: str
    precision: str
    # (component, kind) -> how many cells of that plane this rule changed (planes it left alone are absent)
    changed: dict[tuple[str, str], int]

    @property
    def cells_changed(self) -> int:
        return sum(self.changed.values())


@dataclass(frozen=True)
class Resolution:
    # (component, kind) -> one int per step; bit `layer` set = FP8. Bitmasks make a rule O(steps), not O(cells).
    masks: dict[tuple[str, str], tuple[int, ...]]
    num_layers: dict[tuple[str, str], int]  # (component, kind) -> row length
    effects: tuple[RuleEffect, ...]

    def rows(self, component: str, kind: str) -> list[str]:
        return masks_to_rows(self.masks[(component, kind)], self.num_layers[(component, kind)])


def masks_to_rows(masks: tuple[int, ...], num_layers: int) -> list[str]:
    """Bit `layer` of each mask -> character `layer` of each row ('1' FP8, '0' native)."""
    return [format(mask, f"0{num_layers}b")[::-1] for mask in masks]


def _mask_of(layers: frozenset[int]) -> int:
    mask = 0
    for layer in layers:
        mask |= 1 << layer
    return mask


def resolve_tables(
    family: Family,
    num_steps: int,
    scope_components: tuple[str, ...],
    scope_kinds: tuple[str, ...],
    default_fp8: bool,
    rules: list[RuleSelection],
) -> Resolution:
    grids: dict[tuple[str, str], list[int]] = {}
    num_layers = {(c, k): family.num_layers(c, k) for c in family.component_names for k in family.kinds}
    for (component, kind), layers in num_layers.items():
        in_scope = component in scope_components and kind in scope_kinds
        grids[(component, kind)] = [(1 << layers) - 1 if default_fp8 and in_scope else 0] * num_steps
    effects = []
    for rule in rules:
        set_fp8 = rule.precision == "fp8"
        changed: dict[tuple[str, str], int] = {}
        for component in rule.components:
            for kind in rule.kinds:
                # a layer past the end of this component's list (the selector read the shortest) selects nothing
                layer_mask = _mask_of(rule.layers[family.kind(kind).block_list]) & ((1 << num_layers[(component, kind)]) - 1)
                grid = grids[(component, kind)]
                cells = 0
                for step in rule.steps:  # O(selected steps) per plane: a rule is a bitmask operation per row
                    before = grid[step]
                    after = before | layer_mask if set_fp8 else before & ~layer_mask
                    cells += (before ^ after).bit_count()
                    grid[step] = after
                if cells:
                    changed[(component, kind)] = cells
        effects.append(RuleEffect(rule.name, rule.precision, changed))
    return Resolution(
        masks={key: tuple(grid) for key, grid in grids.items()},
        num_layers=num_layers,
        effects=tuple(effects),
    )


def predict_expert_schedule(family: Family, num_steps: int) -> list[str]:
    """Which component serves each step, as diffusers' Wan pipelines choose it.

    Mirrors UniPCMultistepScheduler.set_timesteps with use_flow_sigmas (diffusers 0.42): sigmas =
    linspace(1, 1/T, N+1)[:-1], shifted s' = shift*s / (1 + (shift-1)*s), the first nudged by 1e-6 when it
    is 1 (diffusers avoids log(0) that way), timesteps = int64(s' * T); the pipeline picks the first
    component while t >= boundary_ratio * T. The runtime records the observed schedule next to this one.
    """
    names = family.component_names
    if family.boundary_ratio is None or len(names) < 2:
        return [names[0]] * num_steps
    train_steps = family.num_train_timesteps
    shift = family.flow_shift
    start, stop = 1.0, 1.0 / train_steps
    step_size = (stop - start) / num_steps  # numpy.linspace with num_steps + 1 points: i * step + start
    boundary = family.boundary_ratio * train_steps
    schedule = []
    for index in range(num_steps):
        sigma = index * step_size + start
        sigma = shift * sigma / (1 + (shift - 1) * sigma)
        if index == 0 and abs(sigma - 1) < 1e-6:
            sigma -= 1e-6
        timestep = int(sigma * train_steps)
        schedule.append(names[0] if timestep >= boundary else names[1])
    return schedule
