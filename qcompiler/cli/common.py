"""Helpers shared by commands: failing with a message, loading plans or recipes."""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import click

from qcompiler.cli.diagnostics_format import format_text
from qcompiler.compile.compiler import compile_path
from qcompiler.plan.format import Plan, load_plan


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    raise SystemExit(code)


def load_plan_or_recipe(path: str, *, steps: int | None = None, variant: str | None = None) -> Plan:
    """A plan file as is, or a recipe compiled on the fly (recognised by its .yaml/.yml suffix)."""
    if Path(path).suffix.lower() in (".yaml", ".yml"):
        result = compile_path(path, steps=steps, variant=variant)
        if result.errors or result.plan is None:
            click.echo(format_text(result.diagnostics), err=True, nl=False)
            fail(f"{path}: the recipe has errors (see above)")
        return result.plan
    return load_plan(path)
