"""Helpers shared by commands: failing with a message, loading plans or recipes."""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import click

from qcompiler.compiler import compile_path
from qcompiler.diagnostics_format import format_text
from qcompiler.errors import QcompileError
from qcompiler.plan import Plan, load_plan
from qcompiler.ranges import format_ranges


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    raise SystemExit(code)


def load_plan_or_fail(path: str) -> Plan:
    try:
        return load_plan(path)
    except QcompileError as exc:
        fail(str(exc))


def load_plan_or_recipe(path: str, *, steps: int | None = None, variant: str | None = None) -> Plan:
    """A plan file as is, or a recipe compiled on the fly (recognised by its .yaml/.yml suffix)."""
    if Path(path).suffix.lower() in (".yaml", ".yml"):
        result = compile_path(path, steps=steps, variant=variant)
        if result.errors or result.plan is None:
            click.echo(format_text(result.diagnostics), err=True, nl=False)
            fail(f"{path}: the recipe has errors (see above)")
        return result.plan
    return load_plan_or_fail(path)


def describe_indices(indices: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> "0-2,5,7-8" (inclusive ranges, the selector grammar's notation)."""
    return format_ranges(indices)
