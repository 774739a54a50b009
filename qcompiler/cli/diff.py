"""`qcompile diff A B`: which cells differ between two plans or recipes (exit 1 when they differ)."""

from __future__ import annotations

import click

from qcompiler.cli.common import fail, load_plan_or_recipe
from qcompiler.plan.format import Plan
from qcompiler.ranges import format_ranges


def table_differences(a: Plan, b: Plan) -> list[str]:
    """One line per (component, kind, step) whose row differs: layers turned fp8 and turned native."""
    lines = []
    for component in a.component_names:
        for kind in a.family.kinds:
            for step, (row_a, row_b) in enumerate(zip(a.table(component, kind), b.table(component, kind), strict=True)):
                to_fp8 = [layer for layer, (x, y) in enumerate(zip(row_a, row_b, strict=True)) if not x and y]
                to_native = [layer for layer, (x, y) in enumerate(zip(row_a, row_b, strict=True)) if x and not y]
                parts = []
                if to_fp8:
                    parts.append(f"native -> fp8 layers {format_ranges(to_fp8)}")
                if to_native:
                    parts.append(f"fp8 -> native layers {format_ranges(to_native)}")
                if parts:
                    lines.append(f"{component}/{kind} step {step}: " + "; ".join(parts))
    return lines


def setting_differences(a: Plan, b: Plan) -> list[str]:
    lines = []
    for key in ("dtype", "numerics", "fallback"):
        if a.data[key] != b.data[key]:
            lines.append(f"{key}: {dict(a.data[key]) if key == 'numerics' else a.data[key]} -> "
                         f"{dict(b.data[key]) if key == 'numerics' else b.data[key]}")
    return lines


def _layout(plan: Plan) -> dict[tuple[str, str], int]:
    """(component, kind) -> row length: what two plans must share to be compared cell by cell."""
    family = plan.family
    return {(c, k): family.num_layers(c, k) for c in family.component_names for k in family.kinds}


def _describe(a: dict[tuple[str, str], int], b: dict[tuple[str, str], int]) -> str:
    """`transformer/single: 5 vs 6 layers` for each (component, kind) the two layouts disagree on."""
    return ", ".join(f"{c}/{k}: {a.get((c, k), 'no')} vs {b.get((c, k), 'no')} layers"
                     for c, k in sorted(a.keys() | b.keys()) if a.get((c, k)) != b.get((c, k)))


@click.command(name="diff")
@click.argument("a")
@click.argument("b")
def command(a: str, b: str) -> None:
    """Compare plans or recipes A and B cell by cell. Exit 0 when equal, 1 when they differ."""
    plan_a, plan_b = load_plan_or_recipe(a), load_plan_or_recipe(b)
    if (plan_a.family_name, plan_a.variant, plan_a.num_inference_steps) != (plan_b.family_name, plan_b.variant, plan_b.num_inference_steps):
        fail(f"cannot compare cell by cell: {a} is {plan_a.family_name} x {plan_a.num_inference_steps} steps, "
             f"{b} is {plan_b.family_name} x {plan_b.num_inference_steps} steps (variants {plan_a.variant}, {plan_b.variant})")
    layout_a, layout_b = _layout(plan_a), _layout(plan_b)
    if layout_a != layout_b:
        fail(f"cannot compare cell by cell: {a} and {b} lay their tables out differently "
             f"({_describe(layout_a, layout_b)}); compile both with the same family data")
    lines = setting_differences(plan_a, plan_b) + table_differences(plan_a, plan_b)
    if not lines:
        click.echo("plans are equal: same tables and numerics")
        return
    for line in lines:
        click.echo(line)
    raise SystemExit(1)
