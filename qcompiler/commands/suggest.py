"""`qcompile suggest SENSITIVITY --min-cos X | --max-rel-l1 X | --fp8-flop-share X -o recipe.yaml`.

Writes the recipe that meets the budget with the most FP8 (algorithm: qcompiler/suggest.py and
docs/report-and-calibrate.md), after compiling it and checking that its plan is exactly the chosen cells.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from qcompiler.commands._common import fail
from qcompiler.compiler import compile_source
from qcompiler.diagnostics_format import format_text
from qcompiler.errors import QcompileError
from qcompiler.plan import write_text_atomically
from qcompiler.schemas import schema_path
from qcompiler.sensitivity import load_sensitivity
from qcompiler.suggest import Budget, suggest_recipe, verify_suggestion


@click.command(name="suggest")
@click.argument("sensitivity", type=click.Path(dir_okay=False))
@click.option("--min-cos", type=click.FloatRange(-1.0, 1.0), help="Budget: every FP8 call's cosine similarity >= X (e.g. 0.999).")
@click.option("--max-rel-l1", type=click.FloatRange(min=0.0), help="Budget: every FP8 call's relative L1 <= X (e.g. 0.03).")
@click.option("--fp8-flop-share", type=click.FloatRange(0.0, 1.0),
              help="Budget: put this share of attention FLOPs on FP8 (0.8 = 80%), least sensitive cells first.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Recipe file to write.")
@click.option("--fallback", type=click.Choice(["error", "native"]), default="error", show_default=True,
              help="The recipe's fallback when no FP8 kernel is available at run time.")
@click.option("--dtype", type=click.Choice(["fp8_e4m3_per_block", "int8_per_tensor"]),
              help="The recipe's dtype; must be the one the sensitivity file measured (default: that one).")
def command(sensitivity: str, min_cos: float | None, max_rel_l1: float | None, fp8_flop_share: float | None,
            output: str, fallback: str, dtype: str | None) -> None:
    """Write a recipe meeting a quality budget with the most FP8, from `qcompile calibrate` output."""
    chosen = [(kind, value) for kind, value in
              (("min_cos", min_cos), ("max_rel_l1", max_rel_l1), ("fp8_flop_share", fp8_flop_share)) if value is not None]
    if len(chosen) != 1:
        raise click.UsageError("give exactly one budget: --min-cos X, --max-rel-l1 X or --fp8-flop-share X")
    try:
        data = load_sensitivity(sensitivity)
        measured_dtype = data.data.get("dtype", "fp8_e4m3_per_block")
        if dtype is not None and dtype != measured_dtype:
            fail(f"{sensitivity} measured {measured_dtype}, not {dtype}: its errors say nothing about {dtype}; "
                 f"measure again with `qcompile calibrate ... --dtype {dtype}`")
        schema = os.path.relpath(schema_path("recipe"), Path(output).resolve().parent)
        suggestion = suggest_recipe(data, Budget(*chosen[0]), source_name=Path(sensitivity).name, fallback=fallback,
                                    schema_ref=Path(schema).as_posix())
    except QcompileError as exc:
        fail(str(exc))
    result = compile_source(suggestion.text, name=output, variant=data.variant)
    if result.errors or result.plan is None:  # a bug in the generator, never the user's fault; say so
        click.echo(format_text(result.diagnostics), err=True, nl=False)
        fail("internal error: the generated recipe does not compile; please report this with the sensitivity file")
    try:
        verify_suggestion(suggestion, data, dict(result.plan.tables))
    except QcompileError as exc:
        fail(str(exc))
    try:
        write_text_atomically(output, suggestion.text)
    except OSError as exc:
        fail(f"{output}: cannot write: {exc}")
    worst = (f"worst FP8 call cos-sim {suggestion.worst_fp8_cos_sim:.6f}, rel-L1 {suggestion.worst_fp8_rel_l1:.4g}"
             if suggestion.worst_fp8_cos_sim is not None else "no cell meets the budget: the recipe runs all native")
    click.echo(
        f"wrote {output}: {len(suggestion.rules)} rule(s), default {suggestion.default}; "
        f"{len(suggestion.fp8_cells)} of {suggestion.measured_cells} measured cells on FP8 "
        f"({suggestion.fp8_flop_share:.1%} of attention FLOPs); {worst}"
    )
