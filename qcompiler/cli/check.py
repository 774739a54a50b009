"""`qcompile check RECIPE...`: recompile recipes and fail when a committed plan is stale or missing.

The committed plan of `recipes/x.yaml` is `recipes/x.plan.json` unless `--plan` names it. Plans compare by
content_sha256 (the meaning), so a new qcompile version that compiles the same tables is not "stale". A plan
compiled for a variant (`--variant tiny`) is checked against the recipe compiled for that variant, which the plan
records (family.variant).
"""

from __future__ import annotations

from pathlib import Path

import click

from qcompiler.cli.diagnostics_format import format_text
from qcompiler.cli.lint import expand_recipe_paths
from qcompiler.compile.compiler import compile_path
from qcompiler.errors import PlanError
from qcompiler.plan.format import PLAN_FORMAT, load_plan, write_plan


def committed_plan_path(recipe: str) -> Path:
    path = Path(recipe)
    return path.with_name(path.stem + ".plan.json")


def _recipe_steps(recipe: str) -> int | None:
    """The recipe's own num_inference_steps (None when it does not compile)."""
    plan = compile_path(recipe, build_plan=True).plan
    return plan.num_inference_steps if plan is not None else None


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
        committed, unreadable = None, None
        try:
            committed = load_plan(target)
        except PlanError as exc:
            unreadable = str(exc)
        variant = committed.variant if committed is not None else None
        # a format-1 plan is refreshed for the compile it was made with: its variant and its step count
        old_format = committed is not None and committed.plan_format < PLAN_FORMAT
        steps = committed.num_inference_steps if old_format else None
        result = compile_path(recipe, variant=variant, steps=steps)
        if result.errors or result.plan is None:
            click.echo(format_text(result.diagnostics), err=True, nl=False)
            click.echo(f"{recipe}: does not compile{f' (variant {variant})' if variant else ''}", err=True)
            problems += 1
            continue
        fresh = result.plan
        if committed is None:
            stale_reason = unreadable
        elif old_format:
            stale_reason = (f"is a format-{committed.plan_format} plan (this qcompile writes format {PLAN_FORMAT}; "
                            "format-1 plans still load, show, export and run as before)")
        elif committed.content_hash != fresh.content_hash:
            stale_reason = "differs from what the recipe compiles to now"
        else:
            stale_reason = None
        if stale_reason is None:
            click.echo(f"{recipe}: {target} is up to date")
            continue
        if write:
            write_plan(fresh, target)
            click.echo(f"{recipe}: wrote {target}")
            continue
        problems += 1
        variant_option = f" --variant {variant}" if variant else ""
        steps_option = f" --steps {steps}" if steps is not None and steps != _recipe_steps(recipe) else ""
        click.echo(f"{recipe}: {target} is stale: {stale_reason}\n  fix: qcompile {recipe}{variant_option}{steps_option} "
                   f"-o {target}", err=True)
    if problems:
        raise SystemExit(1)
