"""`qcompile lint RECIPE_OR_DIR...`: check recipes without writing anything (for CI and pre-commit)."""

from __future__ import annotations

from pathlib import Path

import click

from qcompiler.cli.diagnostics_format import FORMATS, format_diagnostics
from qcompiler.compile.compiler import compile_path
from qcompiler.errors import Diagnostic

RECIPE_SUFFIXES = (".yaml", ".yml")


def expand_recipe_paths(paths: tuple[str, ...]) -> list[str]:
    """Files as given; folders expand to the .yaml/.yml files below them, sorted."""
    found: list[str] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(str(p) for p in sorted(path.rglob("*")) if p.suffix.lower() in RECIPE_SUFFIXES and p.is_file())
        else:
            found.append(raw)
    return found


@click.command(name="lint")
@click.argument("paths", nargs=-1, required=True)
@click.option("--strict", is_flag=True, help="Treat warnings as errors.")
@click.option("--steps", type=click.IntRange(1, 1000), help="Lint as if compiled for this step count.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="text", show_default=True,
              help="text for people, json for tools, github for workflow annotations.")
def command(paths: tuple[str, ...], strict: bool, steps: int | None, fmt: str) -> None:
    """Lint recipes. Exit 0 when clean, 1 on findings (errors; warnings too with --strict), 2 on usage errors."""
    recipes = expand_recipe_paths(paths)
    if not recipes:
        raise click.UsageError(f"no .yaml/.yml recipes found in {', '.join(paths)}")
    findings: list[Diagnostic] = []
    for recipe in recipes:
        findings.extend(compile_path(recipe, steps=steps, build_plan=False).diagnostics)
    if findings:
        click.echo(format_diagnostics(findings, fmt), nl=False)
    errors = sum(d.severity == "error" for d in findings)
    warnings = len(findings) - errors
    if fmt == "text":
        click.echo(f"{len(recipes)} recipe(s) linted: {errors} error(s), {warnings} warning(s)", err=True)
    if errors or (strict and warnings):
        raise SystemExit(1)
