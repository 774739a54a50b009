"""`qcompile RECIPE -o plan.json`: compile a recipe into a plan file (written atomically)."""

from __future__ import annotations

import click

from qcompiler.cli.compile_run import MAX_STEPS, run_compile
from qcompiler.cli.diagnostics_format import FORMATS


@click.command(name="compile")
@click.argument("recipe", type=click.Path(dir_okay=True, path_type=str))
@click.option("-o", "--output", default="-", show_default=True, help="Plan file to write; - prints it.")
@click.option("--steps", type=click.IntRange(1, MAX_STEPS), help="Override the recipe's num_inference_steps.")
@click.option("--variant", help="Compile for a variant of the family (e.g. tiny, the offline test model).")
@click.option("--strict", is_flag=True, help="Treat warnings (e.g. a rule that changes nothing) as errors.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="text", show_default=True, help="How findings are printed.")
def command(recipe: str, output: str, steps: int | None, variant: str | None, strict: bool, fmt: str) -> None:
    """Compile RECIPE into a plan (the default command: `qcompile RECIPE -o plan.json`)."""
    code = run_compile(recipe, output, steps, variant, strict, fmt)
    if code:
        raise SystemExit(code)
