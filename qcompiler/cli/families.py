"""`qcompile families`: the model families recipes can name, from the data files."""

from __future__ import annotations

import click

from qcompiler.families import list_families


@click.command(name="families")
def command() -> None:
    """List known model families: components, layers, heads x head dim, attention kinds, variants."""
    for family in list_families():
        components = ", ".join(f"{c.name} ({c.role}: {c.num_layers} layers, {c.num_heads}x{c.head_dim})" for c in family.components)
        boundary = f", expert switch at t >= {family.boundary_ratio} * {family.num_train_timesteps}" if family.boundary_ratio else ""
        variants = f"; variants: {', '.join(family.variants)}" if family.variants else ""
        click.echo(f"{family.name}: {family.description}")
        click.echo(f"    {components}; kinds: {', '.join(family.attention_kinds)}{boundary}{variants}")
