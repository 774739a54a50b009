"""`qcompile families`: the model families recipes can name, from the data files."""

from __future__ import annotations

import click

from qcompiler.families import Component, list_families


def _layers(component: Component) -> str:
    if len(component.block_lists) == 1:
        return f"{component.block_lists[0].length} layers"
    return " + ".join(f"{b.length} {b.name}" for b in component.block_lists)


@click.command(name="families")
def command() -> None:
    """List known model families: components, layers, heads x head dim, attention kinds, variants."""
    for family in list_families():
        components = ", ".join(f"{c.name} ({c.role}: {_layers(c)}, {c.num_heads}x{c.head_dim})" for c in family.components)
        several = len(family.block_list_names) > 1
        kinds = ", ".join(f"{k.name} ({k.block_list})" if several else k.name for k in family.kind_specs)
        boundary = f", expert switch at t >= {family.boundary_ratio} * {family.num_train_timesteps}" if family.boundary_ratio else ""
        variants = f"; variants: {', '.join(family.variants)}" if family.variants else ""
        click.echo(f"{family.name}: {family.description}")
        click.echo(f"    {components}; kinds: {kinds}{boundary}{variants}")
