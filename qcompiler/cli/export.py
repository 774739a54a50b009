"""`qcompile export --to vllm-omni PLAN`: a plan as vllm-omni diffusion settings (CLI flags and/or stage YAML)."""

from __future__ import annotations

import click

from qcompiler.cli.common import load_plan_or_recipe
from qcompiler.targets.vllm_omni import export_vllm_omni

TARGETS = ("vllm-omni",)


@click.command(name="export")
@click.argument("plan_path", metavar="PLAN")
@click.option("--to", "target", type=click.Choice(TARGETS), required=True, help="Export target.")
@click.option("--conservative", is_flag=True,
              help="If the plan is not expressible, emit the largest setting that never runs FP8 on a cell the "
                   "plan keeps native, and report how many FP8 cells it gives up.")
@click.option("--format", "output_format", type=click.Choice(["flags", "yaml", "both"]), default="both",
              show_default=True, help="CLI flags, a stage-config engine_args snippet, or both.")
def command(plan_path: str, target: str, conservative: bool, output_format: str) -> None:
    """Print PLAN (a plan.json, or a recipe compiled on the fly) as vllm-omni settings.

    \b
    vllm-omni runs self-attention in FP8 iff the step is not skipped and the layer is not skipped (one layer
    list for both experts, cross-attention never quantized). Plans of another shape are refused with the
    cells that cannot be expressed, unless --conservative. Summary and notes go to stderr, settings to stdout.
    """
    plan = load_plan_or_recipe(plan_path)
    settings = export_vllm_omni(plan, conservative=conservative)
    if output_format in ("flags", "both"):
        if output_format == "both":
            click.echo("# vllm-omni CLI flags")
        click.echo(settings.to_flags())
    if output_format in ("yaml", "both"):
        if output_format == "both":
            click.echo("\n# vllm-omni stage config (merge into the diffusion stage's engine_args)")
        click.echo(settings.to_yaml(), nl=False)
    if output_format == "flags":
        # The YAML carries the summary as comments; the flags line cannot, so say it on stderr.
        for line in settings.summary_lines():
            click.echo(line, err=True)
