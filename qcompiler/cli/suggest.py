"""`qcompile suggest SENSITIVITY --min-cos X | --max-rel-l1 X | --fp8-flop-share X -o recipe.yaml`.

Writes the recipe that meets the budget with the most FP8 (algorithm: qcompiler/suggest.py and
docs/report-and-calibrate.md), after compiling it and checking that its plan is exactly the chosen cells.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from qcompiler.cli.common import fail
from qcompiler.cli.diagnostics_format import format_text
from qcompiler.compile.compiler import compile_source
from qcompiler.fileio import write_text_atomically
from qcompiler.formats._choice import FormatChoice
from qcompiler.schemas import schema_path
from qcompiler.suggest.cover import Budget, suggest_recipe, verify_suggestion
from qcompiler.suggest.sensitivity import load_sensitivity


@click.command(name="suggest")
@click.argument("sensitivity", type=click.Path(dir_okay=False))
@click.option("--min-cos", type=click.FloatRange(-1.0, 1.0), help="Budget: every FP8 call's cosine similarity >= X (e.g. 0.999).")
@click.option("--max-rel-l1", type=click.FloatRange(min=0.0), help="Budget: every FP8 call's relative L1 <= X (e.g. 0.03).")
@click.option("--fp8-flop-share", type=click.FloatRange(0.0, 1.0),
              help="Budget: put this share of attention FLOPs on FP8 (0.8 = 80%), least sensitive cells first.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Recipe file to write.")
@click.option("--dtype", type=FormatChoice(),
              help="The recipe's quantized format (default: the one the sensitivity file measured; another is refused).")
@click.option("--fallback", type=click.Choice(["error", "native"]),
              help="The recipe's fallback for a planned quantized call no kernel can take (no kernel at run time, a "
                   "mask that is not padding). Default: native when a kind the recipe quantizes can carry an "
                   "attention mask (the sensitivity file says which), else error.")
def command(sensitivity: str, min_cos: float | None, max_rel_l1: float | None, fp8_flop_share: float | None,
            output: str, dtype: str | None, fallback: str | None) -> None:
    """Write a recipe meeting a quality budget with the most FP8, from `qcompile calibrate` output."""
    chosen = [(kind, value) for kind, value in
              (("min_cos", min_cos), ("max_rel_l1", max_rel_l1), ("fp8_flop_share", fp8_flop_share)) if value is not None]
    if len(chosen) != 1:
        raise click.UsageError("give exactly one budget: --min-cos X, --max-rel-l1 X or --fp8-flop-share X")
    data = load_sensitivity(sensitivity)
    schema = os.path.relpath(schema_path("recipe"), Path(output).resolve().parent)
    suggestion = suggest_recipe(data, Budget(*chosen[0]), source_name=Path(sensitivity).name, fallback=fallback,
                                schema_ref=Path(schema).as_posix(), dtype=dtype)
    result = compile_source(suggestion.text, name=output, variant=data.variant)
    if result.errors or result.plan is None:  # a bug in the generator (the file was checked first); say so
        click.echo(format_text(result.diagnostics, texts={output: suggestion.text}), err=True, nl=False)
        fail(f"internal error: the recipe generated from {sensitivity} does not compile ({output} was not written); "
             "please report this with the sensitivity file")
    verify_suggestion(suggestion, data, dict(result.plan.tables))
    write_text_atomically(output, suggestion.text)
    worst = (f"worst FP8 call cos-sim {suggestion.worst_fp8_cos_sim:.6f}, rel-L1 {suggestion.worst_fp8_rel_l1:.4g}"
             if suggestion.worst_fp8_cos_sim is not None else "no cell meets the budget: the recipe runs all native")
    click.echo(
        f"wrote {output}: {len(suggestion.rules)} rule(s), default {suggestion.default}; "
        f"{len(suggestion.fp8_cells)} of {suggestion.measured_cells} measured cells on FP8 "
        f"({suggestion.fp8_flop_share:.1%} of attention FLOPs); {worst}"
    )
