"""`qcompile RECIPE -o plan.json` (also `qcompile compile ...`): compile a recipe into a plan file, written atomically."""

from __future__ import annotations

import click

from qcompiler.cli.diagnostics_format import FORMATS, format_diagnostics
from qcompiler.compile.compiler import compile_path
from qcompiler.formats import quantized_name
from qcompiler.plan.format import write_plan
from qcompiler.recipe.schema import MAX_STEPS
from qcompiler.stats import plan_cost


@click.command(name="compile")
@click.argument("recipe", type=click.Path(dir_okay=True, path_type=str))
@click.option("-o", "--output", default="-", show_default=True, help="Plan file to write; - prints it.")
@click.option("--steps", type=click.IntRange(1, MAX_STEPS), help="Override the recipe's num_inference_steps.")
@click.option("--variant", help="Compile for a variant of the family (e.g. tiny, the offline test model).")
@click.option("--strict", is_flag=True, help="Treat warnings (e.g. a rule that changes nothing) as errors.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="text", show_default=True, help="How findings are printed.")
def command(recipe: str, output: str, steps: int | None, variant: str | None, strict: bool, fmt: str) -> None:
    """Compile RECIPE into a plan (the default command: `qcompile RECIPE -o plan.json`)."""
    result = compile_path(recipe, steps=steps, variant=variant)
    if result.diagnostics:
        click.echo(format_diagnostics(result.diagnostics, fmt), err=True, nl=False)
    if result.errors or result.plan is None or (strict and result.warnings):
        click.echo(f"error: {recipe}: not compiled ({len(result.errors)} error(s), {len(result.warnings)} "
                   f"warning(s){', --strict' if strict else ''})", err=True)
        raise SystemExit(1)
    plan = result.plan
    if output == "-":
        click.echo(plan.to_json(), nl=False)
        return
    write_plan(plan, output)
    cost = plan_cost(plan)
    click.echo(
        f"wrote {output}: {plan.family_name}{' (' + plan.variant + ')' if plan.variant else ''}, "
        f"{plan.num_inference_steps} steps, {cost.call_share:.1%} of attention calls and {cost.flop_share:.1%} "
        f"of attention FLOPs on {quantized_name(plan.data['dtype'])}; content sha256 {plan.content_hash[:12]}", err=True)
