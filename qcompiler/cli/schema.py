"""`qcompile schema [recipe|plan|family]`: print a JSON Schema (for editors and other tools)."""

from __future__ import annotations

import json

import click

from qcompiler.schemas import load_schema


@click.command(name="schema")
@click.argument("which", type=click.Choice(["recipe", "plan", "family"]), default="recipe")
def command(which: str) -> None:
    """Print the JSON Schema of recipes (default), plans or family files."""
    click.echo(json.dumps(load_schema(which), indent=2, sort_keys=True))
