"""`qcompile lint RECIPE_OR_DIR...`: check recipes without writing anything (for CI and pre-commit)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import click

from qcompiler.cli.diagnostics_format import FORMATS, format_diagnostics
from qcompiler.compile.compiler import compile_path
from qcompiler.errors import Diagnostic
from qcompiler.recipe.schema import MAX_STEPS

RECIPE_SUFFIXES = (".yaml", ".yml")
# A folder walk lints only files that say they are recipes: the editor marker the shipped recipes start with,
# or top-level `version:` and `family:` keys (read from the text, so a recipe with a syntax error still counts).
_SCHEMA_MARKER = re.compile(r"^#\s*yaml-language-server:\s*\$schema=\S*recipe\.schema\.json", re.M)
_TOP_LEVEL_KEY = r"""^["']?{}["']?\s*:"""
_PEEK_BYTES = 1_000_000


def _skipped_folder(folder: Path) -> bool:
    """Hidden folders (.git, .venv, .tox), virtualenvs (a pyvenv.cfg inside) and installed packages."""
    return (folder.name.startswith(".") or folder.name in ("site-packages", "dist-packages", "node_modules", "__pycache__")
            or (folder / "pyvenv.cfg").is_file())


def looks_like_recipe(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            text = handle.read(_PEEK_BYTES).decode("utf-8", "replace")
    except OSError:
        return True  # lint it, so the reason it cannot be read is reported
    if _SCHEMA_MARKER.search(text):
        return True
    return all(re.search(_TOP_LEVEL_KEY.format(key), text, re.M) for key in ("version", "family"))


def expand_recipe_paths(paths: tuple[str, ...]) -> list[str]:
    """Files as given; folders expand to the recipes below them (see find_recipes)."""
    return find_recipes(paths)[0]


def find_recipes(paths: tuple[str, ...]) -> tuple[list[str], int]:
    """Files as given (always linted); folders expand to the recipes below them, sorted, skipping hidden folders,
    virtualenvs, site-packages and YAML files that are not recipes. Returns (recipes, YAML files skipped)."""
    found: list[str] = []
    skipped = 0
    for raw in paths:
        root = Path(raw)
        if not root.is_dir():
            found.append(raw)
            continue
        below: list[Path] = []
        for folder, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if not _skipped_folder(Path(folder) / d)]
            for name in files:
                path = Path(folder) / name
                if path.suffix.lower() in RECIPE_SUFFIXES and path.is_file():
                    if not name.startswith(".") and looks_like_recipe(path):
                        below.append(path)
                    else:
                        skipped += 1
        found.extend(str(p) for p in sorted(below))
    return found, skipped


@click.command(name="lint")
@click.argument("paths", nargs=-1, required=True)
@click.option("--strict", is_flag=True, help="Treat warnings as errors.")
@click.option("--steps", type=click.IntRange(1, MAX_STEPS), help="Lint as if compiled for this step count.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="text", show_default=True,
              help="text for people, json for tools, github for workflow annotations.")
def command(paths: tuple[str, ...], strict: bool, steps: int | None, fmt: str) -> None:
    """Lint recipes. Exit 0 when clean, 1 on findings (errors; warnings too with --strict), 2 on usage errors.

    Files named on the command line are always linted; folders are searched for recipes (YAML files with
    top-level `version` and `family` keys, or the recipe schema marker), skipping hidden folders, virtualenvs
    and site-packages.
    """
    recipes, skipped = find_recipes(paths)
    if not recipes:
        raise click.UsageError(f"no recipes found in {', '.join(paths)} (a recipe is a .yaml/.yml file with top-level "
                               "`version` and `family` keys)")
    findings: list[Diagnostic] = []
    for recipe in recipes:
        findings.extend(compile_path(recipe, steps=steps, build_plan=False).diagnostics)
    if findings or fmt == "json":  # JSON consumers always get a document: `[]` when clean
        click.echo(format_diagnostics(findings, fmt), nl=False)
    errors = sum(d.severity == "error" for d in findings)
    warnings = len(findings) - errors
    if fmt == "text":
        also = f" ({skipped} other YAML file(s) skipped: not recipes)" if skipped else ""
        click.echo(f"{len(recipes)} recipe(s) linted: {errors} error(s), {warnings} warning(s){also}", err=True)
    if errors or (strict and warnings):
        raise SystemExit(1)
