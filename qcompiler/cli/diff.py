"""`qcompile diff A B`: which cells differ between two plans or recipes.

Exit status, as diff(1): 0 the plans are equal, 1 they differ, 2 they cannot be compared (a file that does
not load, a recipe with errors, or plans of different families, variants, step counts or structures).
"""

from __future__ import annotations

from pathlib import Path

import click

from qcompiler.cli.common import fail
from qcompiler.cli.diagnostics_format import format_text
from qcompiler.compile.compiler import compile_path
from qcompiler.errors import QcompileError
from qcompiler.plan.format import Plan, load_plan
from qcompiler.ranges import format_ranges

CANNOT_COMPARE = 2


def table_differences(a: Plan, b: Plan) -> list[str]:
    """One line per (component, kind, step) whose row differs: layers turned fp8 and turned native.
    The plans must have the same structure (see structure_difference)."""
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


def _show(value: object) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in sorted(value.items())) + "}"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def setting_differences(a: Plan, b: Plan) -> list[str]:
    lines = []
    for key in ("dtype", "numerics", "fallback"):
        if a.data[key] != b.data[key]:
            lines.append(f"{key}: {_show(a.data[key])} -> {_show(b.data[key])}")
    return lines


def describe(plan: Plan) -> str:
    """`wan2.2-i2v-a14b (full-size), 40 steps`: what a plan was compiled for, in words (no Python reprs)."""
    variant = "full-size" if plan.variant is None else f"{plan.variant} variant"
    return f"{plan.family_name} ({variant}), {plan.num_inference_steps} steps"


def _layout(plan: Plan) -> str:
    """`transformer: cross x 40, self x 40; ...`: the (component, kind) row lengths two plans must share."""
    family = plan.family
    return "; ".join(f"{c}: " + ", ".join(f"{k} x {family.num_layers(c, k)} layers" for k in family.kinds)
                     for c in family.component_names)


def structure_difference(a: Plan, b: Plan, name_a: str, name_b: str) -> str | None:
    """Why the two plans cannot be compared cell by cell, or None when they can."""
    if (a.family_name, a.variant, a.num_inference_steps) != (b.family_name, b.variant, b.num_inference_steps):
        return f"{name_a} is {describe(a)}, {name_b} is {describe(b)}"
    if _layout(a) != _layout(b):
        return f"{name_a} has {_layout(a)}; {name_b} has {_layout(b)}"
    return None


def _load(path: str) -> Plan:
    """A plan file, or a recipe compiled on the fly; anything that does not load ends the command with exit 2."""
    if Path(path).suffix.lower() in (".yaml", ".yml"):
        result = compile_path(path)
        if result.errors or result.plan is None:
            click.echo(format_text(result.diagnostics), err=True, nl=False)
            fail(f"{path}: the recipe has errors (see above); nothing compared", CANNOT_COMPARE)
        return result.plan
    try:
        return load_plan(path)
    except QcompileError as exc:
        fail(f"{exc}; nothing compared", CANNOT_COMPARE)
    except OSError as exc:
        fail(f"{exc.filename or path}: {exc.strerror or exc}; nothing compared", CANNOT_COMPARE)


@click.command(name="diff")
@click.argument("a")
@click.argument("b")
def command(a: str, b: str) -> None:
    """Compare plans or recipes A and B cell by cell.

    Exit status (as diff(1)): 0 equal, 1 they differ, 2 cannot compare (unreadable input, or plans of different
    families, variants, step counts or layer structures).
    """
    plan_a, plan_b = _load(a), _load(b)
    why_not = structure_difference(plan_a, plan_b, a, b)
    if why_not:
        fail(f"cannot compare cell by cell: {why_not}", CANNOT_COMPARE)
    lines = setting_differences(plan_a, plan_b) + table_differences(plan_a, plan_b)
    if not lines:
        click.echo("plans are equal: same tables and numerics")
        return
    for line in lines:
        click.echo(line)
    raise SystemExit(1)
