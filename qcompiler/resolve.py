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
    layers: frozenset[int]


@dataclass(frozen=True)
class RuleEffect:
    name: str
    precision: str
    changed: dict[tuple[str, str], frozenset[tuple[int, int]]]  # (component, kind) -> {(step, layer)}

    @property
    def cells_changed(self) -> int:
        return sum(len(cells) for cells in self.changed.values())


@dataclass(frozen=True)
class Resolution:
    tables: dict[tuple[str, str], tuple[tuple[bool, ...], ...]]
    effects: tuple[RuleEffect, ...]


def resolve_tables(
    family: Family,
    num_steps: int,
    scope_components: tuple[str, ...],
    scope_kinds: tuple[str, ...],
    default_fp8: bool,
    rules: list[RuleSelection],
) -> Resolution:
    grids: dict[tuple[str, str], list[list[bool]]] = {}
    for component in family.components:
        for kind in family.attention_kinds:
            in_scope = component.name in scope_components and kind in scope_kinds
            grids[(component.name, kind)] = [[default_fp8 and in_scope] * component.num_layers for _ in range(num_steps)]
    effects = []
    for rule in rules:
        value = rule.precision == "fp8"
        changed: dict[tuple[str, str], frozenset[tuple[int, int]]] = {}
        for component in rule.components:
            for kind in rule.kinds:
                grid = grids[(component, kind)]
                cells = set()
                for step in rule.steps:
                    row = grid[step]
                    for layer in rule.layers:
                        if row[layer] != value:
                            row[layer] = value
                            cells.add((step, layer))
                if cells:
                    changed[(component, kind)] = frozenset(cells)
        effects.append(RuleEffect(rule.name, rule.precision, changed))
    tables = {key: tuple(tuple(row) for row in grid) for key, grid in grids.items()}
    return Resolution(tables=tables, effects=tuple(effects))


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
