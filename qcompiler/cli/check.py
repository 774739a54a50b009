"""`qcompile check RECIPE...`: recompile recipes and fail when a committed plan is stale or missing.

The committed plan of `recipes/x.yaml` is `recipes/x.plan.json` unless `--plan` names it. Plans compare by
content_sha256 (the meaning), so a new qcompile version that compiles the same tables is not "stale".
"""

from __future__ import annotations

from pathlib import Path

import click

from qcompiler.cli.diagnostics_format import format_text
from qcompiler.cli.lint import expand_recipe_paths
from qcompiler.compile.compiler import compile_path
from qcompiler.errors import PlanError
from qcompiler.plan.format import PLAN_FORMAT, Plan, load_plan, write_plan


def committed_plan_path(recipe: str) -> Path:
    path = Path(recipe)
    return path.with_name(path.stem + ".plan.json")


def _refresh_command(recipe: str, target: Path, committed: Plan, fresh: Plan) -> str:
    """The compile that remakes `committed` in the current format: the same recipe, variant and step count."""
    variant = f" --variant {committed.variant}" if committed.variant else ""
    steps = f" --steps {committed.num_inference_steps}" if committed.num_inference_steps != fresh.num_inference_steps else ""
    return f"qcompile {recipe}{variant}{steps} -o {target}"


@click.command(name="check")
@click.argument("recipes", nargs=-1, required=True)
@click.option("--plan", "plan_path", help="The committed plan (only with one recipe); default RECIPE_STEM.plan.json beside it.")
@click.option("--write", is_flag=True, help="Rewrite stale or missing plans instead of failing.")
def command(recipes: tuple[str, ...], plan_path: str | None, write: bool) -> None:
    """Fail (exit 1) when a committed plan does not match what its recipe compiles to now."""
    paths = expand_recipe_paths(recipes)
    if plan_path and len(paths) != 1:
        raise click.UsageError("--plan goes with exactly one recipe")
    if not paths:
        raise click.UsageError(f"no .yaml/.yml recipes found in {', '.join(recipes)}")
    problems = 0
    for recipe in paths:
        target = Path(plan_path) if plan_path else committed_plan_path(recipe)
        result = compile_path(recipe)
        if result.errors or result.plan is None:
            click.echo(format_text(result.diagnostics), err=True, nl=False)
            click.echo(f"{recipe}: does not compile", err=True)
            problems += 1
            continue
        fresh = result.plan
        refresh = f"qcompile {recipe} -o {target}"
        try:
            committed = load_plan(target)
            stale_reason = None if committed.content_hash == fresh.content_hash else "differs from what the recipe compiles to now"
            if committed.plan_format < PLAN_FORMAT:
                # same meaning, older layout: it still loads and runs; refresh it for the compile it was made with
                stale_reason = (f"is a format-{committed.plan_format} plan (this qcompile writes format {PLAN_FORMAT}; "
                                "format-1 plans still load, show, export and run as before)")
                refresh = _refresh_command(recipe, target, committed, fresh)
                if write:
                    again = compile_path(recipe, steps=committed.num_inference_steps, variant=committed.variant)
                    fresh = again.plan if again.plan is not None and not again.errors else fresh
        except PlanError as exc:
            stale_reason = str(exc)
        if stale_reason is None:
            click.echo(f"{recipe}: {target} is up to date")
            continue
        if write:
            write_plan(fresh, target)
            click.echo(f"{recipe}: wrote {target}")
            continue
        problems += 1
        click.echo(f"{recipe}: {target} is stale: {stale_reason}\n  fix: {refresh}", err=True)
    if problems:
        raise SystemExit(1)
